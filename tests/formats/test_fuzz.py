"""Seeded mutation fuzz of checkpoint files: every mutant through the reader, ``inspect``'s summary and the
converter must end in a CheckpointError or a correct read, never another exception, a hang or a leftover file.

CI runs ``COMFY_INT8_FUZZ_CASES`` mutants (default 2,000, ~30 s on 2 cores). The long run:
``COMFY_INT8_FUZZ_CASES=10000 pytest tests/formats/test_fuzz.py -s`` prints the outcome counts.
"""

import faulthandler
import json
import os
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import torch

from comfy_int8_w8a8.cli.inspect import summarize
from comfy_int8_w8a8.int8.formats import CheckpointError, load_state_dict_for_comfy, open_checkpoint
from comfy_int8_w8a8.int8.formats.converter import convert_checkpoint
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig
from comfy_int8_w8a8.presets import load_preset

SEED = 20260
HOSTILE_VALUES = [None, True, False, -1, 0, 1, 3, 64, 2**31, 2**64, 1.5, float("inf"), float("nan"), "", "F32", "I8",
                  "U8", "F8_E4M3", "int8_tensorwise", "float8_e4m3fn", [], {}, [0], [1, 2], [2**63, 0], {"a": 1},
                  [[[[[[[[[[]]]]]]]]]], "x" * 300]
CQ_FIELDS = ["format", "params", "convrot", "convrot_groupsize", "group_size", "full_precision_matrix_mult"]


def _cases():
    import importlib.util
    import sys

    name = "comfy_int8_hostile_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("hostile_cases.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def base_files() -> list[tuple[dict, dict | None]]:
    """(tensors, metadata) of the files the mutants start from: int8 (convrot, bias, per-tensor scale, foreign
    rotation, HadaNorm), fp8, float and _quantization_metadata layouts."""
    hc = _cases()
    g = torch.Generator().manual_seed(SEED)
    int8 = {**hc.int8_layer("blocks.0.a.", {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 64},
                            bias=torch.zeros(hc.N)),
            **hc.int8_layer("blocks.0.b.", weight_scale=torch.tensor(0.01)),
            **hc.int8_layer("blocks.1.c.", quarot_hadamard=torch.eye(64), hadanorm_sigma=torch.ones(hc.K)),
            "final.weight": torch.randn(16, hc.N, generator=g)}
    fp8 = {"blocks.0.a.weight": torch.randn(64, 64, generator=g).to(torch.float8_e4m3fn),
           "blocks.0.a.scale_weight": torch.tensor(0.5), "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    qmeta = {k: v for k, v in hc.int8_layer("model.diffusion_model.blocks.0.a.").items() if not k.endswith("comfy_quant")}
    layers = {"model.diffusion_model.blocks.0.a": {"format": "int8_tensorwise"}}
    return [(int8, None), (fp8, None), (hc.float_model(), {"note": "x"}),
            (qmeta, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})]


def _mutate_json(value: object, rng: random.Random) -> object:
    """One random change somewhere inside a parsed JSON value (replace, delete, add a field)."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        choice = rng.random()
        if choice < 0.15:
            del value[key]
        elif choice < 0.5:
            value[key] = _mutate_json(value[key], rng)
        else:
            value[key] = rng.choice(HOSTILE_VALUES)
        return value
    if isinstance(value, dict):
        value[rng.choice(CQ_FIELDS)] = rng.choice(HOSTILE_VALUES)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        value[i] = _mutate_json(value[i], rng) if rng.random() < 0.4 else rng.choice(HOSTILE_VALUES)
        return value
    return rng.choice(HOSTILE_VALUES)


def _mutate_tensor(t: torch.Tensor, rng: random.Random) -> torch.Tensor:
    t = t.clone()
    if t.numel() and t.is_floating_point():
        t.reshape(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, 1e30])
    elif t.numel():
        t.reshape(-1)[rng.randrange(t.numel())] = rng.randrange(256) - 128 if t.dtype == torch.int8 else rng.randrange(256)
    return t


def mutant(rng: random.Random) -> bytes:
    """One mutated file: a structural change (header JSON, comfy_quant JSON, a tensor's values or shape) or a raw
    byte-level one (flips, overwrites, truncation, insertion), on one of :func:`base_files`."""
    hc = _cases()
    tensors, metadata = rng.choice(base_files())
    tensors = dict(tensors)
    kind = rng.randrange(7)
    if kind == 0:  # a comfy_quant payload
        keys = [k for k in tensors if k.endswith("comfy_quant")] or list(tensors)
        key = rng.choice(keys)
        try:
            conf = json.loads(bytes(tensors[key].tolist()))
        except (ValueError, TypeError):
            conf = {}
        tensors[key] = hc.cq(json.dumps(_mutate_json(conf, rng), allow_nan=True).encode())
    elif kind == 1:  # a tensor's values (NaN/Inf scales, odd int8 codes)
        key = rng.choice(list(tensors))
        tensors[key] = _mutate_tensor(tensors[key], rng)
    elif kind == 2:  # a tensor's shape or dtype
        key = rng.choice(list(tensors))
        t = tensors[key]
        changes = [lambda: t.reshape(-1), lambda: t.reshape(1, -1), lambda: t.reshape(-1)[:1], lambda: t.unsqueeze(0),
                   lambda: t.float() if t.dtype != torch.float32 else t.half(), lambda: torch.zeros(()),
                   lambda: t.to(torch.int8), lambda: t.reshape(-1)[: t.numel() // 2]]
        tensors[key] = rng.choice(changes)().contiguous()
    header, data = hc.header_and_data(tensors, metadata)
    if kind == 3:  # the header's JSON
        header = _mutate_json(header, rng)
    elif kind == 4 and metadata is not None and "_quantization_metadata" in metadata:
        qm = _mutate_json(json.loads(metadata["_quantization_metadata"]), rng)
        header["__metadata__"] = {"_quantization_metadata": json.dumps(qm, allow_nan=True)}
    blob = bytearray(hc.raw(header, data))
    if kind >= 5:  # raw bytes, mostly in the header where a flip changes structure
        header_end = 8 + struct.unpack("<Q", bytes(blob[:8]))[0]
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            at = rng.randrange(len(blob)) if rng.random() < 0.3 else rng.randrange(min(header_end, len(blob)))
            if op == 0:
                blob[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                blob[at:at + 4] = bytes(rng.randrange(256) for _ in range(4))
            elif op == 2:
                del blob[at:]
            else:
                blob[at:at] = rng.choice([b"[", b"{", b"1e400", b'"', b"\\", b"\xff", b"-", b"9" * 20])
            if not blob:
                break
    return bytes(blob)


def run_case(path: Path, out_dir: Path) -> str:
    """``read`` / ``partial`` (read, but convert refused it) / ``clean_error`` / ``other:<Type>``."""
    results = []
    for step in ("read", "inspect", "convert"):
        try:
            if step == "read":
                load_state_dict_for_comfy(path)
            elif step == "inspect":
                with open_checkpoint(path) as ckpt:
                    summarize(ckpt)
            else:
                out = out_dir / "out.safetensors"
                convert_checkpoint(path, out, load_preset("default"), QuantizeConfig(outlier_method="hadamard"),
                                   progress=False)
                load_state_dict_for_comfy(out)
                out.unlink()
            results.append("ok")
        except CheckpointError:
            results.append("error")
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz counts
            return f"other:{step}:{type(exc).__name__}"
        leftovers = list(out_dir.iterdir())
        if leftovers:
            return f"other:{step}:left {leftovers[0].name}"
    if results == ["ok"] * 3:
        return "read"
    return "partial" if results[0] == "ok" else "clean_error"


def fuzz(n: int, folder: Path, seed: int = SEED) -> Counter:
    rng = random.Random(seed)
    out_dir = folder / "out"
    out_dir.mkdir(exist_ok=True)
    counts: Counter = Counter()
    examples: dict[str, int] = {}
    path = folder / "m.safetensors"
    for i in range(n):
        path.write_bytes(mutant(rng))
        outcome = run_case(path, out_dir)
        counts[outcome] += 1
        examples.setdefault(outcome, i)
    counts.update({f"first case of {k}": v for k, v in examples.items() if k.startswith("other")})
    return counts


def test_mutation_fuzz_only_clean_errors_or_reads(tmp_path, capsys):
    n = int(os.environ.get("COMFY_INT8_FUZZ_CASES", "2000"))
    faulthandler.dump_traceback_later(600, exit=True, file=sys.__stderr__)  # a hang fails the run with every thread's stack
    try:
        counts = fuzz(n, tmp_path)
    finally:
        faulthandler.cancel_dump_traceback_later()
    with capsys.disabled():
        print(f"\nfuzz ({n} mutants, seed {SEED}): {dict(sorted(counts.items()))}")
    assert not [k for k in counts if k.startswith("other")], counts
    assert counts["read"] + counts["partial"] > n // 20 and counts["clean_error"] > n // 4  # the mix is meaningful
