"""Per-token int8 activation quantization in one Triton kernel, with optional smoothing; the rotated variant (the
``hadamard`` outlier method) lives in :mod:`triton_quant_rotated`; the launchers in :mod:`int8.launch.quant`.

Numerics follow :func:`int8.quantize.quantize_per_token` applied after :func:`int8.backends.base.prepare_activation`:
the smoothed and the rotated activations are rounded to the input dtype (as the torch path does), the scale is
``max(absmax * fp32(1/127), 1e-12)`` (how torch divides by a scalar on CUDA), and ``q = rint(x / scale)`` with an
IEEE division and round-half-to-even, like ``torch.round`` (see :mod:`triton_quant_common`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..compat import gdc_functions
from .triton_quant_common import load_tile, quantize_rn

__all__ = ["quantize_rows"]

_, gdc_launch_dependents = gdc_functions()  # Triton's, or a no-op where it has none (then TRIGGER is never set)


@triton.jit
def quantize_rows(x_ptr, smooth_ptr, q_ptr, scale_ptr, rows, row_mask, K, stride_xm, stride_qm,
                  CHUNK: tl.constexpr, HAS_SMOOTH: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
                  INTERPRETED: tl.constexpr):
    """Quantize x[rows] per row into q[rows] and scale[rows]: the whole row in registers when it fits (one read,
    SINGLE_CHUNK), else two passes over CHUNK columns. Also the quant phase of the fused few-rows kernel
    (:mod:`triton_fused_w8a8`): one body, so both give the same bits."""
    if SINGLE_CHUNK:
        cols = tl.arange(0, CHUNK)
        y = load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
        amax = tl.max(tl.abs(y), axis=1)
    else:
        amax = tl.zeros(rows.shape, dtype=tl.float32)
        for kc in range(0, tl.cdiv(K, CHUNK)):
            cols = kc * CHUNK + tl.arange(0, CHUNK)
            y = load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
    # x * (1/127), not x / 127: torch divides by a Python scalar through its fp32 reciprocal, and we match it.
    scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
    tl.store(scale_ptr + rows, scale, mask=row_mask)
    if SINGLE_CHUNK:
        cols = tl.arange(0, CHUNK)
        q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
        tl.store(q_ptrs, quantize_rn(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])
    else:
        for kc in range(0, tl.cdiv(K, CHUNK)):
            cols = kc * CHUNK + tl.arange(0, CHUNK)
            y = load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
            q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
            tl.store(q_ptrs, quantize_rn(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])


@triton.jit
def _quant_per_token_kernel(
    x_ptr, smooth_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_qm,
    CHUNK: tl.constexpr, HAS_SMOOTH: tl.constexpr, BLOCK_M: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
    INTERPRETED: tl.constexpr, TRIGGER: tl.constexpr,
):
    """No rotation: BLOCK_M rows per program (:func:`quantize_rows`).
    TRIGGER (sm_90+): let a kernel launched with programmatic dependent launch after this one (the few-rows GEMM)
    start now; it waits for this kernel's results itself (``gdc_wait``)."""
    if TRIGGER:
        gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    quantize_rows(x_ptr, smooth_ptr, q_ptr, scale_ptr, rows, rows < M, K, stride_xm, stride_qm, CHUNK, HAS_SMOOTH,
                  SINGLE_CHUNK, INTERPRETED)
