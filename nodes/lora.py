"""LoRA on int8 layers: ComfyUI bakes the patch into the weight, and we requantize it per output channel.

ComfyUI's ModelPatcher applies a LoRA to a weight by ``convert_weight`` (our layer dequantizes: int8 * scale,
un-rotated when a Hadamard rotation is folded in), ``comfy.lora.calculate_weight`` (adds the patch in float), then
``set_weight`` (we requantize). Why bake rather than run the LoRA as a separate low-rank 16-bit path:
- the sampling step keeps exactly one int8 GEMM per layer (no extra kernels, nothing new for torch.compile);
- every patch type ComfyUI knows (LoRA, LoCon, LoHa, LoKr, full diffs) works through its own ``calculate_weight``;
- the originals stay in ModelPatcher's backup, so a strength change restores them and re-bakes in place,
  without reading the checkpoint again.
The cost is a second rounding: against the 16-bit merged weight ``W + dW`` the error is at most half a step of
the original scale (the int8 weight we start from) plus half a step of the new scale, per element.
ComfyUI's own int8 requantization rounds stochastically; we round to nearest, which halves the worst case and is
deterministic.
"""

from __future__ import annotations

import torch

from ..int8.quantize import quantize_rotated_per_channel

__all__ = ["requantize_per_channel", "requantize_streamed", "bake_error_bound"]


def requantize_per_channel(
    weight: torch.Tensor, hadamard_group: int = 0, name: str = "<layer>"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a patched float weight ``[N, K]`` back to ``(int8 [N, K], fp32 scale [N, 1])``.

    ``hadamard_group`` > 0 folds the block Hadamard rotation in first (the layer rotates its input online), the
    same transform the layer's original weight carries. Raises ``NonFiniteWeightError`` naming ``name`` when
    the patch produced NaN/Inf (a broken LoRA file).
    """
    return quantize_rotated_per_channel(weight.float(), hadamard_group, name)


def requantize_streamed(weight: torch.Tensor, hadamard_group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`requantize_per_channel` for a layer ComfyUI streams with its patches (a LoRA on a partially loaded
    model), which runs on every call: the rotation in float32 on the weight's device, and no NaN/Inf check (it
    would wait for the GPU in every call; a broken patch gives NaN outputs, as in ComfyUI's own 16-bit path).
    The result can differ from the float64 fold by one int8 step where a value sits on a rounding tie."""
    return quantize_rotated_per_channel(weight.float(), hadamard_group, rotate_dtype=torch.float32,
                                        check_finite=False)


def bake_error_bound(old_scale: torch.Tensor, new_scale: torch.Tensor) -> torch.Tensor:
    """Per-row worst case of ``|dequant(requant(deq(Wq) + dW)) - (W + dW)|``: half a step of each scale, ``[N, 1]``."""
    return old_scale.double() / 2 + new_scale.double() / 2
