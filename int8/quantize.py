"""Symmetric int8 quantization primitives and the float64 reference they are tested against.

Conventions (shared with ComfyUI's ``int8_tensorwise`` files):
- weights ``[N, K]`` are quantized per output channel (one fp32 scale per row, shape ``[N, 1]``)
  or per tensor (a scalar scale, to read files that other tools wrote);
- activations ``[M, K]`` are quantized per token (one fp32 scale per row, shape ``[M, 1]``);
- ``q = round(x / scale)`` clamped to ``[-127, 127]`` (the symmetric range: -128 is never used, so
  negating a quantized tensor cannot overflow), ``scale = absmax / 127``.
"""

from __future__ import annotations

import torch

from .hadamard import rotate_weight
from .weights import Int8Weights

__all__ = [
    "INT8_MAX",
    "SCALE_FLOOR",
    "NonFiniteWeightError",
    "quantize_per_channel",
    "quantize_rotated_per_channel",
    "quantize_linear",
    "quantize_per_tensor",
    "quantize_per_token",
    "dequantize",
    "int8_linear_reference",
    "quantization_error_bound",
]

INT8_MAX = 127.0
# An all-zero row gets this scale instead of 0, so dequantization is 0 * SCALE_FLOOR = 0, never 0/0 = NaN.
# It is far below any real weight or activation magnitude / 127 yet a normal fp32 number.
SCALE_FLOOR = 1e-12


class NonFiniteWeightError(ValueError):
    """A weight holds NaN or Inf, so no int8 scale can represent it."""


def _check_finite(w: torch.Tensor, name: str) -> None:
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise NonFiniteWeightError(
            f"Layer '{name}' has {bad} non-finite weight value(s) (NaN or Inf); it cannot be quantized to int8. "
            "The checkpoint is probably corrupt: re-download it, or keep this layer in 16-bit "
            "(add it to the exclusion preset)."
        )


def _round_clamp(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_per_channel(weight: torch.Tensor, name: str = "<weight>",
                         check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a ``[N, K]`` weight with one scale per output channel.

    Returns ``(q int8 [N, K], scale fp32 [N, 1])``. Raises :class:`NonFiniteWeightError` naming ``name``
    when the weight holds NaN or Inf (``check_finite=False`` skips that check, which waits for the GPU).
    """
    if weight.dim() != 2:
        raise ValueError(f"Layer '{name}': expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    if check_finite:
        _check_finite(weight, name)
    w = weight.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp_(min=SCALE_FLOOR)
    return _round_clamp(w / scale), scale


def quantize_rotated_per_channel(
    weight: torch.Tensor, hadamard_group: int = 0, name: str = "<weight>", *,
    rotate_dtype: torch.dtype = torch.float64, check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_per_channel` of ``weight`` with the block Hadamard rotation folded in first when
    ``hadamard_group`` > 0 (the layer then rotates its input online). The rotation runs in ``rotate_dtype``
    (float64 for a fold done once; see :func:`rotate_weight`); ``check_finite`` as in :func:`quantize_per_channel`."""
    if hadamard_group:
        weight = rotate_weight(weight, hadamard_group, rotate_dtype)
    return quantize_per_channel(weight, name, check_finite)


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, hadamard_group: int = 0,
                    smooth: torch.Tensor | None = None, name: str = "<linear>") -> Int8Weights:
    """One Linear's int8 tensors: ``weight`` ``[N, K]`` per channel, with the block Hadamard rotation
    (``hadamard_group``, 0 = off) folded in, and for SmoothQuant (``smooth`` = s, ``[K]``) the weight ``W * s`` with
    the input multiplier ``1 / s`` the layer applies, so it computes ``(x / s) @ (W * s).T``. ``bias`` is kept as
    given. Computed in float64 on ``weight``'s device. Raises :class:`NonFiniteWeightError` naming ``name``."""
    w = weight.detach().double()
    input_smooth = None
    if smooth is not None:
        w = w * smooth.double().reshape(1, -1)
        input_smooth = (1.0 / smooth.double()).float()
    q, scale = quantize_rotated_per_channel(w, hadamard_group, name)
    return Int8Weights(q, scale, None if bias is None else bias.detach(), int(hadamard_group), input_smooth)


def quantize_per_tensor(weight: torch.Tensor, name: str = "<weight>") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight with a single scale. Returns ``(q int8, scale fp32 scalar tensor)``."""
    _check_finite(weight, name)
    w = weight.float()
    scale = (w.abs().amax() / INT8_MAX).clamp_(min=SCALE_FLOOR)
    return _round_clamp(w / scale), scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of activations ``[..., K]``.

    Returns ``(q int8 [..., K], scale fp32 [..., 1])``. An all-zero token gets a positive scale and zeros.
    Computed in fp32 whatever the input dtype, so bf16 inputs round the same way as the fused kernels, on any
    device: the scale is ``absmax * fp32(1/127)``, which is how torch divides by a scalar on CUDA and what the
    kernels compute; on the CPU ``absmax / 127`` is a true division and differs in the last bit for ~5% of rows,
    enough to round an activation on the other side of a tie (one int8 step of the output).
    """
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) * (1.0 / INT8_MAX)).clamp_(min=SCALE_FLOOR)
    return _round_clamp(xf / scale), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` in fp32, cast to ``dtype``. ``scale`` is a scalar or broadcasts against ``q`` (``[N, 1]``)."""
    return (q.float() * scale.float()).to(dtype)


def int8_linear_reference(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The float64 reference of a whole W8A8 linear: per-token quant of ``x``, exact integer GEMM, dequant, bias.

    ``x`` is ``[..., K]`` (already rotated/smoothed if the layer uses that), ``weight_q`` int8 ``[N, K]``,
    ``weight_scale`` scalar or ``[N, 1]``. Returns float64 ``[..., N]``: what every backend must reproduce
    up to its own accumulation order and final cast.
    """
    xq, xs = quantize_per_token(x)
    acc = xq.double() @ weight_q.double().t()  # exact: |acc| < 127*127*K < 2**53
    ws = weight_scale.double().reshape(1, -1) if weight_scale.numel() > 1 else weight_scale.double().reshape(())
    y = acc * xs.double() * ws
    if bias is not None:
        y = y + bias.double()
    return y


def quantization_error_bound(
    x: torch.Tensor, weight: torch.Tensor, weight_q_scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """Per-output worst-case ``|y_w8a8 - y_exact|`` from the quantization steps, ``[..., N]`` in float64.

    With ``x = xq*sx + ex`` (``|ex| <= sx/2``) and ``W = Wq*sw + ew`` (``|ew| <= sw/2``):
    ``|x W^T - xq sx Wq^T sw| <= |x| |ew|^T + |ex| |Wq sw|^T`` summed over K. The output cast to ``out_dtype`` adds
    half an ulp of the result. Tests compare backends against :func:`int8_linear_reference` and the float
    result against this bound, so no tolerance is a hand-picked constant.
    """
    xf = x.double()
    sx = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=SCALE_FLOOR)
    sw = weight_q_scale.double().reshape(-1, 1) if weight_q_scale.numel() > 1 else weight_q_scale.double()
    w_abs = weight.double().abs()
    bound = xf.abs() @ (sw / 2).expand_as(w_abs).t() + (sx / 2) * (w_abs + sw / 2).sum(dim=1)
    eps = torch.finfo(out_dtype).eps if out_dtype.is_floating_point else 0.0
    y_mag = xf.abs() @ w_abs.t()
    return bound + y_mag * eps
