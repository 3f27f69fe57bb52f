"""The one record of a quantized Linear's tensors, and the few facts of ComfyUI's native int8 format.

Every layer of the pack (``Int8Linear``, the ComfyUI ops Linear, a layer decoded from a file) is an
:class:`Int8Weights`; the backends read it, the readers produce it, the writers save it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .hadamard import rotate_weight

__all__ = ["INT8_FORMAT", "Int8Weights", "per_channel_scale", "comfy_quant_bytes", "parse_comfy_quant"]

INT8_FORMAT = "int8_tensorwise"  # ComfyUI's comfy_quant "format" of an int8 layer (per-tensor or per-channel scale)


@dataclass
class Int8Weights:
    """The tensors of one quantized Linear.

    weight: int8 ``[N, K]`` row-major (already rotated/smoothed if the layer uses that);
    weight_scale: fp32 ``[N, 1]`` (per output channel; per-tensor files are expanded by :func:`per_channel_scale`);
    bias: ``[N]`` in any float dtype, or None;
    hadamard_group: 0, or the block size of the online Walsh-Hadamard rotation of the input;
    smooth: fp32 ``[K]`` multiplier applied to the input before rotation/quantization (saved as ``input_smooth``),
    or None; exact: False when a reader had to re-quantize the file's numbers (a foreign rotation), for its warning.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None = None
    hadamard_group: int = 0
    smooth: torch.Tensor | None = None
    exact: bool = True

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def stock_compatible(self) -> bool:
        """Stock ComfyUI can run this layer (it has no ``input_smooth``)."""
        return self.smooth is None

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """ComfyUI's native keys under ``prefix`` (e.g. ``"double_blocks.0.img_attn.qkv."``)."""
        sd = {prefix + "weight": self.weight, prefix + "weight_scale": self.weight_scale,
              prefix + "comfy_quant": comfy_quant_bytes(self.hadamard_group)}
        if self.bias is not None:
            sd[prefix + "bias"] = self.bias
        if self.smooth is not None:
            sd[prefix + "input_smooth"] = self.smooth
        return sd

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``W`` with ``x @ W.T`` == this layer's exact (un-quantized-activation) product."""
        w = self.weight.double() * self.weight_scale.double()
        if self.hadamard_group:
            w = rotate_weight(w, self.hadamard_group)  # H is symmetric and orthogonal: rotating again undoes it
        if self.smooth is not None:
            w = w * self.smooth.double().reshape(1, -1)
        return w.to(dtype)


def per_channel_scale(scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """A per-tensor (one element) or per-channel scale as fp32 ``[N, 1]``, contiguous: per-tensor files (ComfyUI's
    default) become per-channel with the same numbers, so every layer takes one kernel path and LoRA requantizes
    per channel. Raises ``ValueError`` for any other element count."""
    if scale.numel() == 1:
        return scale.float().reshape(1, 1).expand(out_features, 1).contiguous()
    if scale.numel() == out_features:
        return scale.float().reshape(out_features, 1).contiguous()
    raise ValueError(f"weight_scale has {scale.numel()} elements; expected 1 or one per output row ({out_features}).")


def comfy_quant_bytes(hadamard_group: int) -> torch.Tensor:
    """The per-layer ``comfy_quant`` entry of ComfyUI's native int8 format (a uint8 tensor of UTF-8 JSON)."""
    meta: dict[str, object] = {"format": INT8_FORMAT}
    if hadamard_group:
        meta["convrot"] = True
        meta["convrot_groupsize"] = int(hadamard_group)
    return torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)


def parse_comfy_quant(tensor: torch.Tensor, layer: str) -> dict:
    """Decode a ``comfy_quant`` tensor; raise ``ValueError`` naming ``layer`` if it is not int8 JSON we know."""
    try:
        meta = json.loads(bytes(tensor.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"Layer '{layer}': its comfy_quant entry is not valid UTF-8 JSON ({type(exc).__name__}).") from exc
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != INT8_FORMAT:
        # Name the type, not the value: a hostile value can be huge or nested too deep for repr.
        shown = repr(fmt)[:60] if isinstance(fmt, str | None) else f"a JSON {type(fmt).__name__}"
        raise ValueError(f"Layer '{layer}': comfy_quant format {shown} is not {INT8_FORMAT}.")
    return meta
