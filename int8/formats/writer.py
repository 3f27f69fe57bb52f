"""What our int8 files carry beyond ComfyUI's native layout, and how a layer's output tensors are planned.

Our files are ComfyUI-native ``int8_tensorwise``: per layer ``weight`` int8 [N, K], ``weight_scale`` fp32 [N, 1]
and a ``comfy_quant`` uint8 JSON entry (with ``convrot`` when a Hadamard rotation was folded in), so a stock
ComfyUI without this pack loads them. Everything else (pack version, preset, outlier method, source file and its
sha256) goes in the safetensors ``__metadata__`` under ``comfy_int8_w8a8.*`` keys, which ComfyUI ignores.

``smooth`` is refused for files: SmoothQuant needs the per-channel ``input_smooth`` multiplier applied to the
activations, which stock ComfyUI does not know; it would load the weights, silently skip the multiplier and
produce wrong images. Files use ``hadamard`` (ComfyUI's own ``convrot``) or ``none``; ``smooth`` stays available
when quantizing on load, where this pack runs every layer.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata

import torch

from .safetensors_io import TensorSpec

__all__ = ["META_PREFIX", "COMFY_QUANT_FIELD_BYTES", "HASH_PLACEHOLDER", "pack_version", "padded_comfy_quant",
           "int8_layer_specs", "STOCK_INCOMPATIBLE_METHODS", "build_metadata"]

META_PREFIX = "comfy_int8_w8a8."
# A comfy_quant entry is written padded with spaces to a fixed size, so the header (written before any layer is
# quantized) does not depend on which rotation each layer ends up with. JSON parsers ignore trailing whitespace,
# ComfyUI's ``json.loads(t.numpy().tobytes())`` included.
COMFY_QUANT_FIELD_BYTES = 128
# The source hash is computed while converting, so the header is written with this placeholder and patched after.
HASH_PLACEHOLDER = "0" * 64
STOCK_INCOMPATIBLE_METHODS = {"smooth": "stock ComfyUI cannot apply SmoothQuant's input_smooth multiplier"}


def pack_version() -> str:
    try:
        return importlib_metadata.version("comfyui-int8-w8a8")
    except importlib_metadata.PackageNotFoundError:
        return "unknown (not installed)"


def padded_comfy_quant(comfy_quant: torch.Tensor, layer: str) -> torch.Tensor:
    """``comfy_quant`` bytes padded with spaces to :data:`COMFY_QUANT_FIELD_BYTES` (checked to be JSON)."""
    raw = bytes(comfy_quant.to(torch.uint8).tolist())
    json.loads(raw.decode("utf-8"))  # a malformed entry is a bug upstream; fail here, not in the user's ComfyUI
    if len(raw) > COMFY_QUANT_FIELD_BYTES:
        raise ValueError(f"Layer '{layer}': comfy_quant is {len(raw)} bytes, more than {COMFY_QUANT_FIELD_BYTES}.")
    return torch.tensor(list(raw.ljust(COMFY_QUANT_FIELD_BYTES, b" ")), dtype=torch.uint8)


def int8_layer_specs(layer: str, n: int, k: int, bias: tuple[torch.dtype, tuple[int, ...]] | None) -> list[TensorSpec]:
    """The tensors one quantized layer writes, in order: weight, weight_scale, comfy_quant, bias."""
    specs = [TensorSpec(f"{layer}.weight", torch.int8, (n, k)),
             TensorSpec(f"{layer}.weight_scale", torch.float32, (n, 1)),
             TensorSpec(f"{layer}.comfy_quant", torch.uint8, (COMFY_QUANT_FIELD_BYTES,))]
    if bias is not None:
        specs.append(TensorSpec(f"{layer}.bias", bias[0], bias[1]))
    return specs


def build_metadata(source_metadata: dict[str, str], *, preset: str, outlier_method: str, source_file: str,
                   source_format: str) -> dict[str, str]:
    """The output header's ``__metadata__``: the source's entries (ComfyUI reads some, e.g. LTX-2's ``config``)
    minus ``_quantization_metadata`` (it would override our per-layer comfy_quant), plus ours."""
    meta = {k: v for k, v in source_metadata.items() if k != "_quantization_metadata" and not k.startswith(META_PREFIX)}
    meta.update({
        META_PREFIX + "version": pack_version(),
        META_PREFIX + "format": "int8_tensorwise (ComfyUI native; per-row weight_scale)",
        META_PREFIX + "preset": preset,
        META_PREFIX + "outlier_method": outlier_method,
        META_PREFIX + "source_file": source_file,
        META_PREFIX + "source_format": source_format,
        META_PREFIX + "source_sha256": HASH_PLACEHOLDER,
    })
    return meta
