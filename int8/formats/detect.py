"""Which checkpoint format a file is, from its keys, dtypes and per-layer quantization configs (no tensor data)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch

from ..weights import INT8_FORMAT
from .safetensors_io import TensorInfo

__all__ = ["FORMATS", "FP8_DTYPES", "FP8_FORMATS", "detect_format", "float_format_name"]

FORMATS = {
    "bf16": "16-bit bfloat16 weights (quantized on load)",
    "fp16": "16-bit float16 weights (quantized on load)",
    "fp32": "32-bit float weights (quantized on load)",
    "fp8": "plain float8 weights without scales (dequantized, then quantized to int8 on load)",
    "fp8_scaled": "ComfyUI legacy scaled fp8 (scaled_fp8 marker + scale_weight; dequantized, then quantized to int8)",
    "comfy_fp8": "ComfyUI comfy_quant float8 layers (dequantized, then quantized to int8)",
    "comfy_int8": "ComfyUI native int8_tensorwise (comfy_quant + weight_scale; read as is)",
    "int8_fast": "ComfyUI-INT8-Fast int8 weight + weight_scale (optional quarot_hadamard / hadanorm_sigma)",
    "unknown": "no 2-D weights found",
}

FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

_FLOAT_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def float_format_name(infos: Mapping[str, TensorInfo]) -> str:
    """``bf16``/``fp16``/``fp32`` for the float dtype holding most weight bytes, ``unknown`` without weights."""
    by_bytes: Counter[torch.dtype] = Counter()
    for key, info in infos.items():
        if key.endswith(".weight") and len(info.shape) >= 2 and info.dtype in _FLOAT_NAMES:
            by_bytes[info.dtype] += info.nbytes
    return _FLOAT_NAMES[by_bytes.most_common(1)[0][0]] if by_bytes else "unknown"


def detect_format(infos: Mapping[str, TensorInfo], quant_configs: Mapping[str, dict]) -> str:
    """The format name (a key of :data:`FORMATS`, or ``comfy_<format>`` for a comfy_quant format we cannot read).

    ``infos``: bare key -> header entry; ``quant_configs``: layer -> its comfy_quant JSON (from the per-layer
    tensors or the header's ``_quantization_metadata``). Int8 wins over fp8 over float, because a file that
    holds any int8 layer needs the int8 reader.
    """
    formats = Counter(str(c.get("format")) for c in quant_configs.values())
    int8_weights = [k for k, i in infos.items() if k.endswith(".weight") and i.dtype == torch.int8]
    fast_markers = any(k.endswith((".quarot_hadamard", ".hadanorm_sigma")) for k in infos)
    if fast_markers or (int8_weights and not formats):
        return "int8_fast"
    if formats.get(INT8_FORMAT):
        return "comfy_int8"
    unknown = [f for f in formats if f != INT8_FORMAT and f not in FP8_FORMATS]
    if unknown:
        return f"comfy_{sorted(unknown)[0]}"
    if formats:
        return "comfy_fp8"
    if "scaled_fp8" in infos:
        return "fp8_scaled"
    if any(k.endswith(".weight") and i.dtype in FP8_DTYPES for k, i in infos.items()):
        return "fp8"
    return float_format_name(infos)
