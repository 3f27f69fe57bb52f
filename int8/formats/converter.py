"""Convert any readable checkpoint into a ComfyUI-native int8 file, one tensor at a time.

Peak memory is about the largest layer (its source tensor, the float copy being quantized and the int8 result),
never the model: the output header is computed from the source header before any tensor is read, then each
layer is read, quantized, written and dropped. The source file is only ever opened for reading; it is hashed
(sha256, for the output's metadata) by a background thread while the conversion runs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...presets import Preset
from ..quantize import NonFiniteWeightError
from ..quantize_model import QuantizeConfig, quantize_linear_weight, should_quantize
from ..weights import INT8_FORMAT
from . import read_layer
from .checkpoint import Checkpoint, open_checkpoint
from .detect import FP8_DTYPES, FP8_FORMATS
from .errors import CheckpointError
from .fileops import open_regular
from .readers import FP8_DEQUANT_DTYPE, regular_hadamard_group
from .safetensors_io import SafetensorsStreamWriter, TensorSpec
from .writer import (
    HASH_PLACEHOLDER,
    STOCK_INCOMPATIBLE_METHODS,
    build_metadata,
    int8_layer_specs,
    padded_comfy_quant,
)

__all__ = ["ConvertReport", "convert_checkpoint", "plan_conversion", "quantize_rows", "Step"]

_DROPPED_KEYS = ("scaled_fp8",)
# float64 working set of one quantization call (see quantize_rows): keeps peak RSS near the largest tensor.
QUANT_CHUNK_BYTES = 64 << 20
_DROPPED_SUFFIXES = ("scale_input", "input_scale", "comfy_quant", "scale_weight", "weight_scale")
# Copied tensors checked for NaN/Inf: weights and biases only; other buffers (masks, tables) may hold inf by design.
_CHECKED_SUFFIXES = ("weight", "bias")


@dataclass
class Step:
    """One unit of work. kind: ``quantize`` (float/fp8 -> int8), ``copy_int8`` (int8 kept exactly),
    ``requantize`` (int8 the stock host cannot run as stored -> float -> int8), ``dequantize`` (fp8 layer kept in
    16-bit), ``copy`` (one tensor as stored)."""

    kind: str
    name: str  # layer name, or the key for ``copy``
    parts: dict[str, str]
    specs: list[TensorSpec]
    reason: str = ""


@dataclass
class ConvertReport:
    source: str
    output: str
    source_format: str
    preset: str
    outlier_method: str
    counts: dict[str, int] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # layer -> why it stays 16-bit
    dropped_keys: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    source_sha256: str = ""


def _float_layer_step(ckpt: Checkpoint, layer: str, parts: dict[str, str], kind: str, preset: Preset,
                      min_elements: int) -> Step:
    winfo = ckpt.info(parts["weight"])
    bias = ckpt.info(parts["bias"]) if "bias" in parts else None
    bias_spec = (bias.dtype, bias.shape) if bias else None
    reason = should_quantize(layer, winfo.shape, preset, min_elements)
    if reason is None:
        n, k = winfo.shape
        return Step("quantize", layer, parts, int8_layer_specs(layer, n, k, bias_spec))
    if kind == "fp8":  # kept layers of an fp8 file become 16-bit: stock ComfyUI would drop the legacy scale
        specs = [TensorSpec(f"{layer}.weight", FP8_DEQUANT_DTYPE, winfo.shape)]
        if bias:
            specs.append(TensorSpec(f"{layer}.bias", bias.dtype, bias.shape))
        return Step("dequantize", layer, parts, specs, reason)
    return Step("copy_layer", layer, parts, [], reason)


def plan_conversion(ckpt: Checkpoint, preset: Preset, config: QuantizeConfig) -> list[Step]:
    """Every output tensor, in source file order, decided from the header (and tiny side tensors)."""
    if ckpt.layout == "diffusers":
        raise CheckpointError(ckpt.path, "uses diffusers-style key names; stock ComfyUI renames those at load and "
                              "would drop int8 scales, so the converter cannot write a stock-loadable file from it.",
                              "Load it in ComfyUI once and save it with the ModelSave node (ComfyUI key names), "
                              "then convert that file; or quantize on load with this pack's loader node.")
    steps: list[tuple[int, Step]] = []
    in_layer: set[str] = set()
    for layer, parts in ckpt.layers().items():
        if "weight" not in parts:
            continue
        order = ckpt.info(parts["weight"]).begin
        kind = _layer_kind(ckpt, layer, parts)
        if kind == "int8":
            shape = ckpt.info(parts["weight"]).shape
            if len(shape) != 2:
                raise CheckpointError(ckpt.path, f"layer '{layer}' is marked int8 but its weight has shape {list(shape)}"
                                      "; an int8 Linear weight is 2-D [out_features, in_features].",
                                      "The file is corrupt: re-download it, or convert the 16-bit original.")
            n, k = shape
            bias = ckpt.info(parts["bias"]) if "bias" in parts else None
            step_kind = "copy_int8" if _int8_stock_exact(ckpt, parts) else "requantize"
            step = Step(step_kind, layer, parts, int8_layer_specs(layer, n, k, (bias.dtype, bias.shape) if bias else None))
        else:
            step = _float_layer_step(ckpt, layer, parts, kind, preset, config.min_weight_elements)
        if step.kind == "copy_layer":  # a kept float layer: its tensors are copied one by one below
            steps.append((order, Step("keep", layer, {}, [], step.reason)))
            continue
        in_layer.update(parts.values())
        steps.append((order, step))
    for key in ckpt.keys():
        if key in in_layer or key in _DROPPED_KEYS or key.rpartition(".")[2] in _DROPPED_SUFFIXES:
            continue
        info = ckpt.info(key)
        steps.append((info.begin, Step("copy", key, {"tensor": key}, [TensorSpec(key, info.dtype, info.shape)])))
    steps.sort(key=lambda s: s[0])
    return [s for _, s in steps]


def _layer_kind(ckpt: Checkpoint, layer: str, parts: dict[str, str]) -> str:
    """``int8``, ``fp8`` or ``float``; raises for comfy_quant formats this pack cannot read."""
    conf = ckpt.quant_configs.get(layer)
    fmt = (conf or {}).get("format")
    if conf is not None and fmt != INT8_FORMAT and fmt not in FP8_FORMATS:
        raise CheckpointError(ckpt.path, f"layer '{layer}' uses quantization format {fmt!r}, which this pack cannot "
                              "read.", "Convert the 16-bit release of the model instead.")
    dtype = ckpt.info(parts["weight"]).dtype
    if fmt == INT8_FORMAT or dtype == torch.int8:
        return "int8"
    return "fp8" if fmt in FP8_FORMATS or dtype in FP8_DTYPES else "float"


def _int8_stock_exact(ckpt: Checkpoint, parts: dict[str, str]) -> bool:
    """The int8 layer's numbers can be written as they are for stock ComfyUI (no HadaNorm multiplier, and a
    rotation, if any, that is ComfyUI's regular convrot Hadamard)."""
    if "hadanorm_sigma" in parts:
        return False
    if "quarot_hadamard" in parts:
        return regular_hadamard_group(ckpt.tensor(parts["quarot_hadamard"])) > 0
    return True


class _FileHasher(threading.Thread):
    """sha256 of a file in a background thread (hashlib and file reads release the GIL)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.hexdigest, self.error = path, "", None

    def run(self) -> None:
        h = hashlib.sha256()
        try:
            with open_regular(self.path) as f:
                while chunk := f.read(16 << 20):
                    h.update(chunk)
            self.hexdigest = h.hexdigest()
        except (OSError, CheckpointError) as exc:  # reported by the main thread, which owns the error handling
            self.error = exc


def _write_finite(writer: SafetensorsStreamWriter, name: str, tensor: torch.Tensor, source: str) -> None:
    # The last gate before the disk: a NaN/Inf scale, bias or 16-bit weight makes a layer output NaN in ComfyUI.
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise CheckpointError(source, f"tensor '{name}' holds NaN or Inf; it is not written (the layer would output "
                              "NaN).", "The file is corrupt: re-download it, or re-export it from the tool that made it.")
    writer.write(name, tensor)


def _write_int8(writer: SafetensorsStreamWriter, layer: str, q: dict[str, torch.Tensor], specs: list[TensorSpec],
                source_bias: torch.Tensor | None, source: str) -> None:
    writer.write(f"{layer}.weight", q["weight"])
    _write_finite(writer, f"{layer}.weight_scale", q["weight_scale"].float().reshape(-1, 1), source)
    writer.write(f"{layer}.comfy_quant", padded_comfy_quant(q["comfy_quant"], layer))
    if len(specs) > 3:
        bias = q.get("bias", source_bias)
        _write_finite(writer, f"{layer}.bias", bias.to(specs[3].dtype), source)


def _run_step(ckpt: Checkpoint, step: Step, writer: SafetensorsStreamWriter, config: QuantizeConfig,
              device: str) -> None:
    if step.kind == "copy":
        tensor = ckpt.tensor(step.parts["tensor"])
        if step.name.rpartition(".")[2] in _CHECKED_SUFFIXES:
            _write_finite(writer, step.name, tensor, ckpt.path)
        else:
            writer.write(step.name, tensor)
        return
    if step.kind == "keep":
        return
    bias = ckpt.tensor(step.parts["bias"]) if "bias" in step.parts else None
    if step.kind == "copy_int8":
        _, layer = read_layer(ckpt, step.name, step.parts)
        q = {"weight": layer.weight, "weight_scale": layer.weight_scale,
             "comfy_quant": layer.state_dict()["comfy_quant"]}
        _write_int8(writer, step.name, q, step.specs, layer.bias, ckpt.path)
        return
    kind, value = read_layer(ckpt, step.name, step.parts)
    if kind == "int8":
        weight = value.dequantized_weight(torch.float32)
    elif kind == "fp8":
        weight = value
    else:
        weight = ckpt.tensor(step.parts["weight"])
    if step.kind == "dequantize":
        _write_finite(writer, f"{step.name}.weight", weight.to(FP8_DEQUANT_DTYPE), ckpt.path)
        if bias is not None:
            _write_finite(writer, f"{step.name}.bias", bias, ckpt.path)
        return
    try:
        q = quantize_rows(step.name, weight, config, device)
    except NonFiniteWeightError as exc:  # it names the layer; the file and the way out are added here
        raise CheckpointError(ckpt.path, str(exc)) from exc
    if "input_smooth" in q:
        raise CheckpointError(writer.out_path, f"layer '{step.name}' was quantized with an input_smooth multiplier, "
                              "which stock ComfyUI cannot apply.", "Use --outlier-method hadamard or none.")
    _write_int8(writer, step.name, {k: v.cpu() for k, v in q.items()}, step.specs, bias, ckpt.path)


def quantize_rows(name: str, weight: torch.Tensor, config: QuantizeConfig, device: str,
                  chunk_bytes: int = QUANT_CHUNK_BYTES) -> dict[str, torch.Tensor]:
    """``quantize_linear_weight`` over blocks of output rows, so its float64 work copies (the Hadamard fold runs
    in float64: ~4 copies of 8 bytes per weight) stay near ``chunk_bytes`` instead of 32x the layer's bf16 size.
    Per-row scales and the per-row rotation make every row independent, so the result equals one whole call;
    ``smooth`` (column statistics over all rows) is refused before this is reached. The bias is written from
    the source as is."""
    n, k = weight.shape
    rows = max(1, chunk_bytes // (8 * k))
    if n <= rows:
        return quantize_linear_weight(name, weight.to(device), None, config)
    parts = [quantize_linear_weight(name, weight[i:i + rows].to(device), None, config) for i in range(0, n, rows)]
    return {"weight": torch.cat([p["weight"].cpu() for p in parts]),
            "weight_scale": torch.cat([p["weight_scale"].cpu() for p in parts]), "comfy_quant": parts[0]["comfy_quant"]}


def convert_checkpoint(source: str | Path, output: str | Path, preset: Preset, config: QuantizeConfig, *,
                       device: str = "cpu", force: bool = False,
                       progress: bool = True) -> ConvertReport:
    """Convert ``source`` into a ComfyUI-native int8 file at ``output`` (atomic; see the module docstring).

    ``preset``: which layers stay 16-bit; ``config``: how layers are quantized (as on load, so a converted file
    holds the same numbers the loader would compute). Raises :class:`CheckpointError` for unreadable input, an existing output without
    ``force``, ``output`` being the input, a folder that is not writable or a full disk (nothing left behind).
    """
    outlier_method = config.outlier_method
    if outlier_method in STOCK_INCOMPATIBLE_METHODS:
        raise CheckpointError(output, f"cannot be written with --outlier-method {outlier_method}: "
                              f"{STOCK_INCOMPATIBLE_METHODS[outlier_method]}, so a shared file would load and run wrong.",
                              "Use --outlier-method hadamard (ComfyUI's own convrot) or none; smooth is available when "
                              "quantizing on load with the loader node.")
    if Path(output).exists() and Path(source).exists() and os.path.samefile(source, output):
        raise CheckpointError(output, "is the input file; the converter never modifies its input.",
                              "Choose another output path.")
    start = time.perf_counter()
    with open_checkpoint(source) as ckpt:
        steps = plan_conversion(ckpt, preset, config)
        preset_name = preset.name
        meta = build_metadata(ckpt.metadata, preset=preset_name, outlier_method=outlier_method,
                              source_file=Path(source).name, source_format=ckpt.format)
        report = ConvertReport(str(source), str(output), ckpt.format, preset_name, outlier_method,
                               bytes_in=ckpt.file_size)
        for s in steps:
            report.counts[s.kind] = report.counts.get(s.kind, 0) + 1
            if s.kind in ("keep", "dequantize"):
                report.kept[s.name] = s.reason
        report.dropped_keys = ckpt.outside_keys
        hasher = _FileHasher(ckpt.path)
        hasher.start()
        specs = [spec for s in steps for spec in s.specs]
        with SafetensorsStreamWriter(output, specs, meta, force=force) as writer:
            total = sum(spec.nbytes for spec in specs)
            # Log lines (a warning about a layer) go through tqdm.write, above the bar instead of into it.
            with torch.no_grad(), logging_redirect_tqdm(), \
                    tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
                for s in steps:
                    _run_step(ckpt, s, writer, config, device)
                    bar.update(sum(spec.nbytes for spec in s.specs))
            hasher.join()
            if hasher.error is not None:
                raise CheckpointError(ckpt.path, f"could not be read while hashing ({hasher.error}).",
                                      "Check the file and try again.")
            writer.patch_metadata(HASH_PLACEHOLDER, hasher.hexdigest)
            writer.commit()
            report.bytes_out = writer.total_bytes
    report.source_sha256 = hasher.hexdigest
    report.seconds = time.perf_counter() - start
    return report

