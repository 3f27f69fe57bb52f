"""Device pieces shared by the activation-quantization kernels (:mod:`triton_quant`, :mod:`triton_quant_rotated`):
the rounding and division that match :func:`int8.quantize.quantize_per_token` bit for bit, and the tile load with
optional smoothing. Their host side is :mod:`int8.launch.quant`."""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

__all__ = ["INTERPRETED", "round_half_even", "quantize_rn", "quantize_by", "load_tile"]

# Triton's CPU interpreter (TRITON_INTERPRET=1, used to debug these kernels without a GPU) has no libdevice;
# there, rounding uses the fp32 magic-number trick, which also rounds half to even for |v| < 2**22.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def round_half_even(v, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return (v + 12582912.0) - 12582912.0
    return libdevice.rint(v)


@triton.jit
def quantize_rn(y, scale, INTERPRETED: tl.constexpr):
    """``rint(y / scale)`` with the IEEE quotient, clamped to int8. The quotient uses the row's reciprocal:
    ``q = y * r`` is within an ulp of ``y / s``, the residual ``y - s * q`` is exact in an fma, and
    ``q + residual * r`` rounds to the correctly rounded quotient (Markstein's theorem, r = RN(1/s)). Three fp32
    ops per element instead of a full ``div.rn`` keep the kernel memory-bound."""
    s = scale[:, None]
    return quantize_by(y, s, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), INTERPRETED)


@triton.jit
def quantize_by(y, s, r, INTERPRETED: tl.constexpr):
    """:func:`quantize_rn` with the scale ``s`` and its reciprocal ``r = RN(1/s)`` already shaped to broadcast."""
    q = y * r
    q = tl.fma(tl.fma(-q, s, y), r, q)
    q = round_half_even(q, INTERPRETED)
    return tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)


@triton.jit
def load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH: tl.constexpr):
    """x[rows, cols], smoothed (rounded to x's dtype, like the torch path); zero outside the matrix."""
    col_mask = cols < K
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    if HAS_SMOOTH:
        s = tl.load(smooth_ptr + cols, mask=col_mask, other=0.0)
        x = (x.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
    return x
