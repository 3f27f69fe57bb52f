"""Per-token int8 activation quantization in one Triton kernel, with optional smoothing; the rotated variant (the
``hadamard`` outlier method) lives in :mod:`triton_quant_rotated`.

Numerics follow :func:`int8.quantize.quantize_per_token` applied after :func:`int8.backends.base.prepare_activation`:
the smoothed and the rotated activations are rounded to the input dtype (as the torch path does), the scale is
``max(absmax * fp32(1/127), 1e-12)`` (how torch divides by a scalar on CUDA), and ``q = rint(x / scale)`` with an
IEEE division and round-half-to-even, like ``torch.round`` (see :mod:`triton_quant_common`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from ..hadamard import check_group_size
from .fast_launch import CompiledLauncher, note_temporary
from .host import alignment_bits, cdiv, next_power_of_2
from .triton_quant_common import INTERPRETED, can_trigger_dependents, load_tile, quantize_rn, smooth_operand
from .triton_quant_rotated import launch_rotated

__all__ = ["quantize_per_token_triton", "quantize_rows"]


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


_plain_launch = CompiledLauncher(_quant_per_token_kernel)


def _plain_launch_shape(k: int, m: int) -> tuple[int, int, int]:
    """(CHUNK, BLOCK_M, num_warps) for the plain kernel. A row up to 16384 columns is held in registers (x read
    once); a longer one is walked twice in 8192-column chunks, one row per program so it stays in L2 between them.
    About 64 elements per thread was fastest in an H100 sweep (docs/results/kernels_h100.md): more warps per
    program lost up to 20% at K = 5120 and 12288. A few rows (<= 64) get one row per program and 8 elements per
    thread: the kernel is pure latency there, and the GEMM waits for its last program
    (docs/results/few_rows_tune_h100_s5.json: 64x3072 with the GEMM, 10.53 us against 10.84)."""
    chunk = min(next_power_of_2(k), 16384)
    if k > chunk:
        return 8192, 1, 8
    if m <= 64:
        return chunk, 1, max(4, min(16, chunk // 512))
    block_m = max(1, 8192 // chunk)
    return chunk, block_m, max(4, min(16, chunk * block_m // 2048))


def _launch_plain(x: torch.Tensor, smooth_arg: torch.Tensor, has_smooth: bool, q: torch.Tensor,
                  scale: torch.Tensor, config: tuple[int, int, int] | None) -> None:
    m, k = x.shape
    chunk, block_m, warps = config or _plain_launch_shape(k, m)
    sx = x.stride(0)
    runtime = (x, smooth_arg, q, scale, m, k, sx, k)  # q is a fresh contiguous [m, k]
    constexprs = (chunk, has_smooth, block_m, k <= chunk, INTERPRETED, can_trigger_dependents(x.device.index))
    # What the JIT specializes on (see fast_launch), spelled out for this signature: the generic spec_key costs
    # microseconds per call, which an eager few-rows layer notices.
    key = (x.dtype, smooth_arg.dtype, alignment_bits(x, smooth_arg, q, scale), m == 1, m % 16 == 0, k, sx == 1,
           sx % 16 == 0, constexprs, warps)
    _plain_launch(key, x.device.index, (cdiv(m, block_m), 1, 1), runtime + constexprs, warps, 3)


def quantize_per_token_triton(
    x: torch.Tensor, smooth: torch.Tensor | None = None, hadamard_group: int = 0,
    config: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [M, K]`` (fp16/bf16/fp32, CUDA) per row after optional smoothing and block rotation.

    ``smooth``: ``[K]`` multiplier (any float dtype; rounded to x's dtype like the torch path).
    ``hadamard_group``: 0, 64, 256 or 1024 (must divide K). Returns ``(q int8 [M, K], scale fp32 [M, 1])``.
    ``config`` overrides the launch shape (benchmarks): ``(CHUNK, BLOCK_M, num_warps)`` for the plain kernel,
    ``(programs per SM, num_warps, num_stages)`` for the one-pass rotation kernel.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_per_token_triton expects a row-major 2-D input, got shape {tuple(x.shape)} "
                         f"with strides {x.stride()}.")
    m, k = x.shape
    if hadamard_group:
        check_group_size(hadamard_group, k)
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    note_temporary(q, scale)  # an eager plan of the layer allocates these per call (they are not its output)
    if m == 0:
        return q, scale
    smooth_arg = smooth_operand(smooth, x)
    if hadamard_group:
        launch_rotated(x, smooth_arg, smooth is not None, hadamard_group, q, scale, config)
    else:
        _launch_plain(x, smooth_arg, smooth is not None, q, scale, config)
    return q, scale
