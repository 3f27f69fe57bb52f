"""Checkpoint readers and writers (safetensors only; never unpickles).

Reader API for the loader node::

    ckpt = open_checkpoint(path)                 # header checked; CheckpointError names the file and the fix
    ckpt.format, ckpt.metadata, ckpt.keys(), ckpt.info(key), ckpt.tensor(key)
    sd, meta = load_state_dict_for_comfy(ckpt)   # bare keys; int8 layers in Int8Linear / ComfyUI-native layout
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..weights import INT8_FORMAT
from .checkpoint import Checkpoint, open_checkpoint
from .detect import FORMATS, FP8_FORMATS
from .errors import CheckpointError
from .readers import FP8_DEQUANT_DTYPE, dequantize_fp8_layer, is_fp8_layer, is_int8_layer, read_int8_layer

__all__ = [
    "Checkpoint", "CheckpointError", "FORMATS", "open_checkpoint", "load_state_dict_for_comfy",
    "read_int8_layer", "read_layer", "scaled_fp8_dtype", "SOURCE_FORMAT_KEY", "FP8_DEQUANT_DTYPE",
]

# Added to the returned metadata: which format the tensors came from (the loader logs it).
SOURCE_FORMAT_KEY = "int8_source_format"
# Per-layer keys that only describe fp8 activations/markers; dynamic per-token int8 needs none of them.
_DROPPED_SUFFIXES = ("scale_input", "input_scale", "comfy_quant")


def scaled_fp8_dtype(ckpt: Checkpoint) -> torch.dtype | None:
    """The fp8 dtype named by a legacy ``scaled_fp8`` marker (ComfyUI: a float32 marker means e4m3fn)."""
    if "scaled_fp8" not in ckpt:
        return None
    dtype = ckpt.info("scaled_fp8").dtype
    return torch.float8_e4m3fn if dtype == torch.float32 else dtype


def _check_supported(ckpt: Checkpoint, layer: str, conf: dict | None) -> None:
    fmt = (conf or {}).get("format")
    if conf is not None and fmt != INT8_FORMAT and fmt not in FP8_FORMATS:
        raise CheckpointError(ckpt.path, f"layer '{layer}' uses quantization format {fmt!r}, which this pack cannot "
                              "read (it reads int8_tensorwise and float8).",
                              "Use the 16-bit or fp8 release of the model, or ComfyUI's own loader for this file.")


def read_layer(ckpt: Checkpoint, layer: str, parts: dict[str, str]) -> tuple[str, object]:
    """Decode one layer: ``("int8", Int8Weights)``, ``("fp8", float weight)`` or ``("float", None)`` (read as is)."""
    conf = ckpt.quant_configs.get(layer)
    _check_supported(ckpt, layer, conf)
    infos = {suffix: ckpt.info(key) for suffix, key in parts.items()}
    if is_int8_layer(infos, conf):
        tensors = {s: ckpt.tensor(k) for s, k in parts.items() if s not in _DROPPED_SUFFIXES}
        return "int8", read_int8_layer(ckpt.path, layer, tensors, conf)
    if "weight" in parts and is_fp8_layer(infos, conf):
        tensors = {s: ckpt.tensor(k) for s, k in parts.items() if s in ("weight", "weight_scale", "scale_weight")}
        return "fp8", dequantize_fp8_layer(ckpt.path, layer, tensors, conf, scaled_fp8_dtype(ckpt))
    return "float", None


def load_state_dict_for_comfy(source: str | Path | Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a whole checkpoint into a state dict the loader can hand to ComfyUI.

    Keys are bare (``model.diffusion_model.`` stripped the way ComfyUI does). Int8 layers come in the
    ``Int8Linear`` / ComfyUI-native layout (``weight`` int8, ``weight_scale`` fp32 [N, 1], ``comfy_quant``,
    ``bias``, ``input_smooth`` for HadaNorm files); fp8 layers are dequantized to bf16 (the loader re-quantizes
    them to int8); float tensors are returned as stored. Returns ``(state_dict, metadata)`` where metadata is the
    header's ``__metadata__`` (without ``_quantization_metadata``, already applied) plus ``int8_source_format``.
    Opened from a path, tensors stored as they are in the file are views of a private mapping of it: nothing is
    read until a layer touches it, and nothing is copied into fresh memory first.
    """
    ckpt = source if isinstance(source, Checkpoint) else open_checkpoint(source, mapped=True)
    try:
        sd: dict[str, torch.Tensor] = {}
        consumed: set[str] = {"scaled_fp8"}
        for layer, parts in ckpt.layers().items():
            kind, value = read_layer(ckpt, layer, parts)
            if kind == "int8":
                sd.update(value.state_dict(layer + "."))
                consumed.update(parts.values())
            elif kind == "fp8":
                sd[layer + ".weight"] = value
                consumed.update(k for s, k in parts.items() if s != "bias")
        for key in ckpt.keys():
            if key not in consumed and key not in sd:
                sd[key] = ckpt.tensor(key)
        meta = {k: v for k, v in ckpt.metadata.items() if k != "_quantization_metadata"}
        meta[SOURCE_FORMAT_KEY] = ckpt.format
        return sd, meta
    finally:
        if ckpt is not source:
            ckpt.close()

