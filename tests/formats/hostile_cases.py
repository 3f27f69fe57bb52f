"""A generator of bad and hostile checkpoint files (and a few good ones), for the hostile-file and fuzz tests.

Each :class:`Case` writes one file (or FIFO, socket, link...) into a folder and says what the readers must do with
it: ``error`` (a CheckpointError / exit 1), ``read`` (loads) or ``any`` (either, e.g. a NaN in a 16-bit weight
loads as stored but is refused by convert). Loaded by path from the tests (tests/ is not a package).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
               torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3", torch.int64: "I64", torch.bool: "BOOL"}
N = K = 64


@dataclass
class Case:
    name: str
    make: Callable[[Path], Path]  # writes into the folder, returns the path to give the tools
    expect: str = "error"  # "error", "read" or "any"


def cq(conf: object) -> torch.Tensor:
    """A comfy_quant tensor of ``conf`` (JSON-encoded unless already bytes)."""
    raw = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    return torch.tensor(list(raw), dtype=torch.uint8)


def header_and_data(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> tuple[dict, bytes]:
    """A well-formed safetensors header (dict, editable) and data section for ``tensors``."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata is not None else {}
    chunks, offset = [], 0
    for name, t in tensors.items():
        b = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    return header, b"".join(chunks)


def raw(header: object, data: bytes = b"", header_bytes: bytes | None = None, length: int | None = None) -> bytes:
    hb = json.dumps(header).encode() if header_bytes is None else header_bytes
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def int8_layer(prefix: str = "blocks.0.lin.", conf: object = None, **override: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {prefix + "weight": torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g),
          prefix + "weight_scale": torch.full((N, 1), 0.01),
          prefix + "comfy_quant": cq({"format": "int8_tensorwise"} if conf is None else conf)}
    for suffix, t in override.items():
        if t is None:
            sd.pop(prefix + suffix, None)
        else:
            sd[prefix + suffix] = t
    return sd


def float_model(dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"blocks.0.lin.weight": torch.randn(N, K, generator=g).to(dtype), "blocks.0.lin.bias": torch.zeros(N, dtype=dtype),
            "final.weight": torch.randn(16, N, generator=g).to(dtype)}


def _bytes_case(name: str, content: Callable[[], bytes], expect: str = "error", filename: str = "m.safetensors") -> Case:
    def make(folder: Path) -> Path:
        path = folder / filename
        path.write_bytes(content())
        return path
    return Case(name, make, expect)


def _tensors_case(name: str, tensors: Callable[[], dict], expect: str = "error", metadata: dict | None = None) -> Case:
    return _bytes_case(name, lambda: raw(*header_and_data(tensors(), metadata)), expect)


def _edit_case(name: str, edit: Callable[[dict], object], tensors: Callable[[], dict] = float_model,
               expect: str = "error") -> Case:
    """A header edited after it was built: ``edit(header)`` changes it in place (or returns a replacement)."""
    def content() -> bytes:
        header, data = header_and_data(tensors())
        header = edit(header) or header
        return raw(header, data)
    return _bytes_case(name, content, expect)


def _entry(field: str, value: object, key: str = "blocks.0.lin.weight") -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        header[key][field] = value
    return edit


def _deep(n: int, leaf: str = "[]") -> str:
    return "[" * n + leaf + "]" * n


def container_cases() -> list[Case]:
    cases = [
        _bytes_case("empty_file", lambda: b""),
        _bytes_case("seven_bytes", lambda: b"\x10\0\0\0\0\0\0"),
        _bytes_case("header_len_zero", lambda: raw({}, length=0)),
        _bytes_case("header_len_one", lambda: raw({}, header_bytes=b"{", length=1)),
        _bytes_case("header_len_past_eof", lambda: raw({}, length=1 << 20)),
        _bytes_case("header_len_2_63", lambda: raw({}, length=1 << 63)),
        _bytes_case("header_not_utf8", lambda: raw(None, header_bytes=b'{"\xff\xfe": 1}')),
        _bytes_case("header_not_json", lambda: raw(None, header_bytes=b"{not json}")),
        _bytes_case("header_json_list", lambda: raw([1, 2])),
        _bytes_case("header_json_string", lambda: raw("x")),
        _bytes_case("header_json_null", lambda: raw(None)),
        _bytes_case("header_nested_100k", lambda: raw(None, header_bytes=_deep(100_000).encode())),
        _bytes_case("header_value_nested_100k", lambda: raw(None, header_bytes=(
            '{"a": ' + _deep(100_000) + "}").encode())),
        _bytes_case("header_nul_padded", lambda: raw(None, header_bytes=b"{}" + b"\0" * 6)),
        _bytes_case("header_utf8_bom", lambda: raw(None, header_bytes=b"\xef\xbb\xbf{}")),
        _bytes_case("empty_header_reads", lambda: raw({}), "read"),
        _bytes_case("truncated_data", lambda: (lambda h, d: raw(h, d[:-3]))(*header_and_data(float_model()))),
        _bytes_case("trailing_bytes", lambda: (lambda h, d: raw(h, d + b"xx"))(*header_and_data(float_model()))),
        _edit_case("entry_is_list", lambda h: h.__setitem__("blocks.0.lin.weight", [1, 2])),
        _edit_case("entry_is_null", lambda h: h.__setitem__("blocks.0.lin.weight", None)),
        _edit_case("entry_is_nested", lambda h: h.__setitem__("blocks.0.lin.weight", {"dtype": {"a": {"b": [[]]}}})),
        _edit_case("entry_missing_dtype", lambda h: h["blocks.0.lin.weight"].pop("dtype")),
        _edit_case("metadata_non_string_value", lambda h: h.__setitem__("__metadata__", {"a": 1})),
        _edit_case("metadata_list", lambda h: h.__setitem__("__metadata__", ["a"])),
        _edit_case("metadata_nested", lambda h: h.__setitem__("__metadata__", {"a": {"b": {"c": []}}})),
        _edit_case("duplicate_offsets_overlap", lambda h: h["final.weight"].__setitem__(
            "data_offsets", h["blocks.0.lin.weight"]["data_offsets"])),
        _edit_case("offsets_gap", lambda h: h["final.weight"].__setitem__(
            "data_offsets", [o + 2 for o in h["final.weight"]["data_offsets"]])),
    ]
    for field, values in {
        "dtype": [["F32"], {"F32": 1}, 7, None, "F128", "f32", "", True, 1e400],
        "shape": [[-1, 64], [64.0, 64], [True, 64], "64,64", [1] * 9, [2**47] * 8, [[64], [64]], None, [64, 1e400]],
        "data_offsets": [[-2, 0], [0.0, 8192.0], [False, True], [0, 1, 2], [8192, 0], [0, 2**63], "0-8192", None,
                         [0, 1e400], [[0], [8192]]],
    }.items():
        for i, value in enumerate(values):
            cases.append(_edit_case(f"{field}_{i}_{type(value).__name__}", _entry(field, value)))
    cases += [
        _tensors_case("control_chars_in_names", lambda: {"blk\n\x1b[31m.weight": torch.zeros(4, 4)}, "read",
                      metadata={"note\x1b[2J": "line1\nline2\r\x07"}),
        _tensors_case("long_tensor_name", lambda: {"x" * 100_000 + ".weight": torch.zeros(4, 4)}, "read"),
        _tensors_case("unicode_names", lambda: {"блок.0.线性.weight": torch.zeros(4, 4)}, "read"),
        _tensors_case("scalar_and_empty_tensors", lambda: {"a.weight": torch.zeros(()), "b.weight": torch.zeros(0, 4)},
                      "read"),
    ]
    return cases


def _torch_save_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/comfy_int8_pwned",))  # would run if anything unpickled it


def _zip_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    return buf.getvalue()


def foreign_format_cases() -> list[Case]:
    cases = [_bytes_case(f"torch_save{ext.replace('.', '_')}", _torch_save_bytes, filename=f"m{ext}")
             for ext in (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".CKPT", ".safetensors")]
    for proto in (2, 3, 4, 5):
        for ext in (".safetensors", ".pt", ".bin"):
            cases.append(_bytes_case(f"raw_pickle_p{proto}{ext.replace('.', '_')}",
                                     lambda p=proto: pickle.dumps(_Evil(), protocol=p), filename=f"m{ext}"))
    cases += [
        _bytes_case("zip_named_safetensors", _zip_bytes),
        _bytes_case("safetensors_content_named_pt", lambda: raw(*header_and_data(float_model())), filename="m.pt"),
        _bytes_case("gguf_magic", lambda: b"GGUF" + b"\3\0\0\0" + b"\0" * 64),
        _bytes_case("html_error_page", lambda: b"<!DOCTYPE html><html>404 Not Found</html>"),
        _bytes_case("git_lfs_pointer", lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"),
    ]
    return cases


def _special(name: str, build: Callable[[Path], None]) -> Case:
    def make(folder: Path) -> Path:
        path = folder / "m.safetensors"
        build(path)
        return path
    return Case(name, make)


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))  # left bound: the file stays a socket until the folder is removed
    except OSError as exc:  # AF_UNIX paths are limited to ~104 bytes (long macOS temp folders)
        pytest.skip(f"cannot bind a unix socket at {path}: {exc}")


def special_file_cases() -> list[Case]:
    cases = [_special("directory", lambda p: p.mkdir())]
    if os.name != "posix":
        return cases  # symlinks need admin rights on Windows, which has no FIFOs or unix sockets in a folder
    cases.append(_special("dangling_symlink", lambda p: p.symlink_to(p.with_name("nowhere"))))
    if hasattr(os, "mkfifo"):
        cases += [_special("fifo", lambda p: os.mkfifo(p)),
                  _special("symlink_to_fifo", lambda p: (os.mkfifo(p.with_name("f")), p.symlink_to(p.with_name("f"))))]
    if hasattr(socket, "AF_UNIX"):
        cases.append(_special("unix_socket", _socket))
    if os.path.exists("/dev/null"):
        cases += [_special("symlink_to_dev_null", lambda p: p.symlink_to("/dev/null")),
                  _special("symlink_to_dev_zero", lambda p: p.symlink_to("/dev/zero"))]
    return cases


def _layer_case(name: str, expect: str = "error", conf: object = None, metadata: dict | None = None,
                **override: torch.Tensor) -> Case:
    return _tensors_case(name, lambda: {**int8_layer(conf=conf, **override), "final.weight": torch.zeros(16, N)},
                         expect, metadata)


def _qmeta(value: object) -> dict:
    return {"_quantization_metadata": value if isinstance(value, str) else json.dumps(value)}


def quant_config_cases() -> list[Case]:
    cq_bad = {
        "not_utf8": b"\xff\xfe", "not_json": b"{format", "json_list": ["int8_tensorwise"], "json_string": "int8",
        "empty": b"", "format_list": {"format": ["int8_tensorwise"]}, "format_int": {"format": 8},
        "format_object": {"format": {"a": 1}}, "format_unknown": {"format": "mxfp4"},
        "params_string": {"format": "int8_tensorwise", "params": "x", "convrot": True},
        "params_list": {"format": "int8_tensorwise", "params": [1]},
        "groupsize_1e400": b'{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 1e400}',
        "groupsize_string": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": "64"},
        "groupsize_negative": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": -64},
        "groupsize_zero": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 0},
        "groupsize_3": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 3},
        "groupsize_2_70": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 2**70},
        "groupsize_bool": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": True},
        "groupsize_1_5": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 1.5},
        "groupsize_in_params_nan": b'{"format": "int8_tensorwise", "params": {"convrot": true, '
                                   b'"convrot_groupsize": NaN}}',
        "convrot_string": {"format": "int8_tensorwise", "convrot": "yes"},
        "nested_deep": ('{"format": "int8_tensorwise", "x": ' + _deep(2000) + "}").encode(),
        "nested_10": {"format": "int8_tensorwise", "x": [[[[[[[[[[1]]]]]]]]]]},
    }
    cases = [_layer_case(f"comfy_quant_{name}", conf=conf) for name, conf in cq_bad.items()]
    cases += [
        _layer_case("comfy_quant_groupsize_float_64", "read",
                    conf={"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 64.0}),
        _layer_case("comfy_quant_extra_fields", "read", conf={"format": "int8_tensorwise", "tool": {"v": [1, 2]}}),
        _layer_case("comfy_quant_float_dtype", comfy_quant=torch.zeros(8)),
        _layer_case("comfy_quant_2d", comfy_quant=torch.zeros(2, 4, dtype=torch.uint8)),
        _layer_case("comfy_quant_too_big", comfy_quant=cq({"format": "int8_tensorwise", "pad": "x" * 5000})),
    ]
    qm_bad = {
        "not_json": "{layers", "nested_deep": '{"layers": ' + _deep(100_000) + "}", "list": [1],
        "layers_list": {"layers": []}, "no_layers": {"format_version": 1},
        "layer_conf_string": {"layers": {"blocks.0.lin": "int8_tensorwise"}},
        "format_list": {"layers": {"blocks.0.lin": {"format": ["int8_tensorwise"]}}},
        "params_not_object": {"layers": {"blocks.0.lin": {"format": "int8_tensorwise", "params": 3}}},
        "groupsize_1e400": '{"layers": {"blocks.0.lin": {"format": "int8_tensorwise", "convrot": true, '
                           '"convrot_groupsize": 1e400}}}',
        "conf_nested_deep": '{"layers": {"blocks.0.lin": {"format": "int8_tensorwise", "x": ' + _deep(5000) + "}}}",
    }
    cases += [_layer_case(f"quant_metadata_{name}", metadata=_qmeta(v), comfy_quant=None) for name, v in qm_bad.items()]
    cases.append(_layer_case("quant_metadata_good", "read", comfy_quant=None,
                             metadata=_qmeta({"layers": {"blocks.0.lin": {"format": "int8_tensorwise"}}})))
    return cases


def shape_and_scale_cases() -> list[Case]:
    nan, inf = float("nan"), float("inf")
    bad = {
        "int8_weight_1d": {"weight": torch.zeros(N, dtype=torch.int8)},
        "int8_weight_3d": {"weight": torch.zeros(2, N, K, dtype=torch.int8)},
        "int8_weight_0d": {"weight": torch.zeros((), dtype=torch.int8)},
        "int8_no_scale": {"weight_scale": None},
        "scale_int_dtype": {"weight_scale": torch.ones(N, 1, dtype=torch.int64)},
        "scale_wrong_count": {"weight_scale": torch.ones(N + 1)},
        "scale_3d": {"weight_scale": torch.ones(1, N, 1)},
        "scale_nan": {"weight_scale": torch.full((N, 1), nan)},
        "scale_one_nan": {"weight_scale": torch.tensor([0.01] * (N - 1) + [nan]).reshape(N, 1)},
        "scale_inf": {"weight_scale": torch.tensor(inf)},
        "scale_minus_inf": {"weight_scale": torch.full((N,), -inf)},
        "scale_bf16_nan": {"weight_scale": torch.full((N, 1), nan, dtype=torch.bfloat16)},
        "quarot_0d": {"quarot_hadamard": torch.tensor(1.0)},
        "quarot_1d": {"quarot_hadamard": torch.ones(64)},
        "quarot_not_square": {"quarot_hadamard": torch.ones(32, 64)},
        "quarot_not_dividing": {"quarot_hadamard": torch.eye(48)},
        "quarot_empty": {"quarot_hadamard": torch.zeros(0, 0)},
        "quarot_nan": {"quarot_hadamard": torch.full((64, 64), nan)},
        "sigma_wrong_count": {"hadanorm_sigma": torch.ones(K + 1)},
        "sigma_zero": {"hadanorm_sigma": torch.zeros(K)},
        "sigma_nan": {"hadanorm_sigma": torch.full((K,), nan)},
        "bias_wrong_count": {"bias": torch.zeros(N + 3)},
        "bias_int": {"bias": torch.zeros(N, dtype=torch.int64)},
        "bias_inf": {"bias": torch.full((N,), inf)},
    }
    cases = [_layer_case(name, **override) for name, override in bad.items()]
    cases += [
        _layer_case("scale_zero_reads", "read", weight_scale=torch.zeros(N, 1)),
        _layer_case("scale_per_tensor_reads", "read", weight_scale=torch.tensor(0.02)),
        _layer_case("scale_row_vector", weight_scale=torch.ones(1, N)),
        _layer_case("quarot_identity_reads", "read", quarot_hadamard=torch.eye(64)),
        _tensors_case("fp8_weight_0d", lambda: {"a.weight": torch.zeros((), dtype=torch.float8_e4m3fn),
                                                 "a.scale_weight": torch.tensor(1.0)}, "any"),
        _tensors_case("fp8_scale_nan", lambda: {"a.weight": torch.zeros(N, K, dtype=torch.float8_e4m3fn),
                                                 "a.scale_weight": torch.tensor(nan), "scaled_fp8": torch.zeros(0)}),
        _tensors_case("fp8_scale_bad_shape", lambda: {"a.weight": torch.zeros(N, K, dtype=torch.float8_e4m3fn),
                                                       "a.scale_weight": torch.ones(3), "scaled_fp8": torch.zeros(0)}),
        _tensors_case("fp8_nan_codes", lambda: {"a.weight": torch.full((N, K), nan).to(torch.float8_e4m3fn),
                                                 "a.scale_weight": torch.tensor(1.0), "scaled_fp8": torch.zeros(0)}),
        _tensors_case("bf16_weight_nan", lambda: {**float_model(), "blocks.1.lin.weight": torch.full(
            (256, 256), nan, dtype=torch.bfloat16)}, "any"),
        _tensors_case("bf16_bias_inf", lambda: {**float_model(), "blocks.0.lin.bias": torch.full(
            (N,), inf, dtype=torch.bfloat16)}, "any"),
        _tensors_case("float_weight_1d", lambda: {"a.weight": torch.zeros(N)}, "read"),
        _tensors_case("conv_weight_4d", lambda: {"a.weight": torch.zeros(8, 4, 3, 3)}, "read"),
        _tensors_case("bool_and_int64_weights", lambda: {"a.weight": torch.zeros(8, 8, dtype=torch.bool),
                                                          "b.weight": torch.zeros(8, 8, dtype=torch.int64)}, "any"),
    ]
    return cases


def valid_cases() -> list[Case]:
    return [
        _tensors_case("valid_float_bf16", float_model, "read"),
        _tensors_case("valid_float_f16_prefixed", lambda: {f"model.diffusion_model.{k}": v
                                                           for k, v in float_model(torch.float16).items()}, "read"),
        _layer_case("valid_comfy_int8", "read"),
        _layer_case("valid_comfy_int8_bias", "read", bias=torch.zeros(N)),
        _layer_case("valid_comfy_int8_convrot", "read",
                    conf={"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 64}),
    ]


def all_cases() -> list[Case]:
    return (container_cases() + foreign_format_cases() + special_file_cases() + quant_config_cases()
            + shape_and_scale_cases() + valid_cases())
