"""Per-token int8 activation quantization in one Triton kernel, with optional smoothing and a fused block
Hadamard rotation.

Numerics follow :func:`int8.quantize.quantize_per_token` applied after :func:`int8.backends.base.prepare_activation`:
the smoothed and the rotated activations are rounded to the input dtype (as the torch path does), the scale is
``max(absmax * fp32(1/127), 1e-12)`` (how torch divides by a scalar on CUDA), and ``q = rint(x / scale)`` with an
IEEE division and round-half-to-even, like ``torch.round``. Only the fp32 summation order inside the rotation
differs from the torch path.

The rotation uses the Kronecker structure of the regular Hadamard matrix (``H_{4^k} = H4 (x) ... (x) H4``): every
64-column block is multiplied by ``H64`` on the tensor cores (``tl.dot`` of ``[BLOCK_M, 64] x [64, 64]``), then
each ``H4`` level above 64 is a butterfly over 4 sub-blocks: with ``H4[i, k] = -1`` exactly when ``i + k == 3``,
``y_k = 0.5 * sum_i z_i - z_{3-k}``. Each block stays a separate tile in the dot's register layout, so the
butterflies are elementwise adds, with no reshapes or shuffles.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..hadamard import build_hadamard, check_group_size
from .fast_launch import CompiledLauncher
from .host import cdiv, next_power_of_2, sm_count

__all__ = ["quantize_per_token_triton"]

# Triton's CPU interpreter (TRITON_INTERPRET=1, used to debug these kernels without a GPU) has no libdevice;
# there, rounding uses the fp32 magic-number trick, which also rounds half to even for |v| < 2**22.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round_half_even(v, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return (v + 12582912.0) - 12582912.0
    return libdevice.rint(v)


@triton.jit
def _quantize(y, scale, INTERPRETED: tl.constexpr):
    """``rint(y / scale)`` with the IEEE quotient, clamped to int8. The quotient uses the row's reciprocal:
    ``q = y * r`` is within an ulp of ``y / s``, the residual ``y - s * q`` is exact in an fma, and
    ``q + residual * r`` rounds to the correctly rounded quotient (Markstein's theorem, r = RN(1/s)). Three fp32
    ops per element instead of a full ``div.rn`` keep the kernel memory-bound."""
    s = scale[:, None]
    return _quantize_by(y, s, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), INTERPRETED)


@triton.jit
def _quantize_by(y, s, r, INTERPRETED: tl.constexpr):
    """:func:`_quantize` with the scale ``s`` and its reciprocal ``r = RN(1/s)`` already shaped to broadcast."""
    q = y * r
    q = tl.fma(tl.fma(-q, s, y), r, q)
    q = _round_half_even(q, INTERPRETED)
    return tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)


@triton.jit
def _load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH: tl.constexpr):
    """x[rows, cols], smoothed (rounded to x's dtype, like the torch path); zero outside the matrix."""
    col_mask = cols < K
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    if HAS_SMOOTH:
        s = tl.load(smooth_ptr + cols, mask=col_mask, other=0.0)
        x = (x.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH: tl.constexpr):
    """One 64-column block times H64 on the tensor cores: fp32 ``[BLOCK_M, 64]``."""
    x = _load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, col0 + tl.arange(0, 64), K, HAS_SMOOTH)
    if x.dtype == tl.float32:
        return tl.dot(x, h, input_precision="ieee")
    return tl.dot(x, h.to(x.dtype))


@triton.jit
def _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH: tl.constexpr,
            GROUP: tl.constexpr):
    """Four 64-column blocks from col0, each times H64; with GROUP >= 256 also the H4 butterfly over them
    (``y_k = 0.5 * sum_i z_i - z_{3-k}``, since ``H4[i, k] = -1`` exactly when ``i + k == 3``)."""
    z0 = _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH)
    z1 = _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 64, K, HAS_SMOOTH)
    z2 = _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 128, K, HAS_SMOOTH)
    z3 = _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 192, K, HAS_SMOOTH)
    if GROUP >= 256:
        t = 0.5 * (z0 + z1 + z2 + z3)
        return t - z3, t - z2, t - z1, t - z0
    return z0, z1, z2, z3


@triton.jit
def _amax4(amax, y0, y1, y2, y3, DT: tl.constexpr):
    # Round the rotated values to x's dtype first, as the torch path (rotate_activation) does.
    m01 = tl.maximum(tl.abs(y0.to(DT).to(tl.float32)), tl.abs(y1.to(DT).to(tl.float32)))
    m23 = tl.maximum(tl.abs(y2.to(DT).to(tl.float32)), tl.abs(y3.to(DT).to(tl.float32)))
    return tl.maximum(amax, tl.max(tl.maximum(m01, m23), axis=1))


@triton.jit
def _store4(q_ptr, stride_qm, rows, row_mask, col0, K, y0, y1, y2, y3, scale, DT: tl.constexpr,
            INTERPRETED: tl.constexpr):
    base = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + col0 + tl.arange(0, 64)[None, :]
    mask = row_mask[:, None]
    # Column masks only bite for GROUP = 64 with K % 256 != 0 (a chunk's last 64-blocks lie past K).
    tl.store(base, _quantize(y0.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 < K))
    tl.store(base + 64, _quantize(y1.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 64 < K))
    tl.store(base + 128, _quantize(y2.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 128 < K))
    tl.store(base + 192, _quantize(y3.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 192 < K))


@triton.jit
def _rotated_quant_kernel(
    x_ptr, smooth_ptr, h64_ptr, q_ptr, scale_ptr, part_ptr, M, K, stride_xm, stride_qm, n_chunks,
    GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, BLOCK_M: tl.constexpr, NCHUNK_P2: tl.constexpr,
    QUANT: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """Rotation path, launched twice over a (row block, column chunk) grid; a chunk is 256 columns (1024 for
    GROUP = 1024). QUANT = False: rotate the chunk and store its per-row absmax in ``part [M, n_chunks]``.
    QUANT = True: reduce those partial maxima to the row scale, rotate the chunk again and quantize it
    (recomputing the rotation costs less than writing the rotated activation out and reading it back).
    Splitting the columns over programs keeps thousands of loads in flight; one program per row block that
    walked all of K twice left the kernel latency-bound (+47% layer time at K = 12288).
    Every block is a [BLOCK_M, 64] tile in the dot's register layout, so the butterflies are elementwise."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    chunk = tl.program_id(1)
    DT: tl.constexpr = x_ptr.dtype.element_ty
    h = tl.load(h64_ptr + tl.arange(0, 64)[:, None] * 64 + tl.arange(0, 64)[None, :])
    part_ptrs = part_ptr + rows.to(tl.int64) * n_chunks
    if QUANT:
        chunks = tl.arange(0, NCHUNK_P2)
        part = tl.load(part_ptrs[:, None] + chunks[None, :], mask=row_mask[:, None] & (chunks < n_chunks)[None, :],
                       other=0.0)
        # x * (1/127), not x / 127: torch divides by a Python scalar through its fp32 reciprocal, and we match it.
        scale = tl.maximum(tl.max(part, axis=1) * (1.0 / 127.0), 1e-12)
        if chunk == 0:
            tl.store(scale_ptr + rows, scale, mask=row_mask)
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    if GROUP <= 256:
        col0 = chunk * 256
        y0, y1, y2, y3 = _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH, GROUP)
        if QUANT:
            _store4(q_ptr, stride_qm, rows, row_mask, col0, K, y0, y1, y2, y3, scale, DT, INTERPRETED)
        else:
            amax = _amax4(amax, y0, y1, y2, y3, DT)
    else:
        col0 = chunk * 1024
        a0, a1, a2, a3 = _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH, GROUP)
        b0, b1, b2, b3 = _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 256, K, HAS_SMOOTH, GROUP)
        c0, c1, c2, c3 = _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 512, K, HAS_SMOOTH, GROUP)
        d0, d1, d2, d3 = _rot256(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0 + 768, K, HAS_SMOOTH, GROUP)
        t0, t1, t2, t3 = 0.5 * (a0 + b0 + c0 + d0), 0.5 * (a1 + b1 + c1 + d1), 0.5 * (a2 + b2 + c2 + d2), \
            0.5 * (a3 + b3 + c3 + d3)
        if QUANT:
            _store4(q_ptr, stride_qm, rows, row_mask, col0, K, t0 - d0, t1 - d1, t2 - d2, t3 - d3, scale, DT,
                    INTERPRETED)
            _store4(q_ptr, stride_qm, rows, row_mask, col0 + 256, K, t0 - c0, t1 - c1, t2 - c2, t3 - c3, scale, DT,
                    INTERPRETED)
            _store4(q_ptr, stride_qm, rows, row_mask, col0 + 512, K, t0 - b0, t1 - b1, t2 - b2, t3 - b3, scale, DT,
                    INTERPRETED)
            _store4(q_ptr, stride_qm, rows, row_mask, col0 + 768, K, t0 - a0, t1 - a1, t2 - a2, t3 - a3, scale, DT,
                    INTERPRETED)
        else:
            amax = _amax4(amax, t0 - d0, t1 - d1, t2 - d2, t3 - d3, DT)
            amax = _amax4(amax, t0 - c0, t1 - c1, t2 - c2, t3 - c3, DT)
            amax = _amax4(amax, t0 - b0, t1 - b1, t2 - b2, t3 - b3, DT)
            amax = _amax4(amax, t0 - a0, t1 - a1, t2 - a2, t3 - a3, DT)
    if not QUANT:
        tl.store(part_ptrs + chunk, amax, mask=row_mask)


@triton.jit
def _rot_row_tile(x_ptr, smooth_ptr, h, row_off, g, g_mask, SUB: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """Sub-block SUB (0..3) of every 256-column group of one row, times H64: fp32 ``[G_P2, 64]``. The groups of a
    row are the dot's M dimension, so one row alone fills a tensor-core tile."""
    cols = g[:, None] * 256 + SUB * 64 + tl.arange(0, 64)[None, :]
    x = tl.load(x_ptr + row_off + cols, mask=g_mask[:, None], other=0.0)
    if HAS_SMOOTH:
        s = tl.load(smooth_ptr + cols, mask=g_mask[:, None], other=0.0)
        x = (x.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
    if x.dtype == tl.float32:
        return tl.dot(x, h, input_precision="ieee")
    return tl.dot(x, h.to(x.dtype))


@triton.jit
def _rot_row_store(q_ptr, row_off, g, g_mask, SUB: tl.constexpr, y, s, r, DT: tl.constexpr,
                   INTERPRETED: tl.constexpr):
    cols = g[:, None] * 256 + SUB * 64 + tl.arange(0, 64)[None, :]
    tl.store(q_ptr + row_off + cols, _quantize_by(y.to(DT).to(tl.float32), s, r, INTERPRETED),
             mask=g_mask[:, None])


@triton.jit
def _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g, g_mask, GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """The groups ``g`` of one row, rotated: four ``[len(g), 64]`` sub-block tiles."""
    z0 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 0, HAS_SMOOTH)
    z1 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 1, HAS_SMOOTH)
    z2 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 2, HAS_SMOOTH)
    z3 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 3, HAS_SMOOTH)
    if GROUP >= 256:  # H4 butterfly over the four sub-blocks (see _rot256)
        t = 0.5 * (z0 + z1 + z2 + z3)
        z0, z1, z2, z3 = t - z3, t - z2, t - z1, t - z0
    return z0, z1, z2, z3


@triton.jit
def _rot_row_absmax(z0, z1, z2, z3, DT: tl.constexpr):
    # Padded groups loaded zeros: they add nothing to the absmax.
    m = tl.maximum(tl.maximum(tl.abs(z0.to(DT).to(tl.float32)), tl.abs(z1.to(DT).to(tl.float32))),
                   tl.maximum(tl.abs(z2.to(DT).to(tl.float32)), tl.abs(z3.to(DT).to(tl.float32))))
    return tl.max(tl.max(m, axis=1), axis=0)


@triton.jit
def _rot_row_store4(q_ptr, q_off, g, g_mask, z0, z1, z2, z3, scale, r, DT: tl.constexpr, INTERPRETED: tl.constexpr):
    _rot_row_store(q_ptr, q_off, g, g_mask, 0, z0, scale, r, DT, INTERPRETED)
    _rot_row_store(q_ptr, q_off, g, g_mask, 1, z1, scale, r, DT, INTERPRETED)
    _rot_row_store(q_ptr, q_off, g, g_mask, 2, z2, scale, r, DT, INTERPRETED)
    _rot_row_store(q_ptr, q_off, g, g_mask, 3, z3, scale, r, DT, INTERPRETED)


@triton.jit
def _rotated_row_quant_kernel(
    x_ptr, smooth_ptr, h64_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_qm,
    GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, G_A: tl.constexpr, G_B: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """Rotation path in one pass when ``K % 256 == 0`` and a rotated row fits in registers (``K <= 64 * 256``):
    each program walks rows (persistent grid, H64 loaded once), keeps the row's rotated sub-block tiles in
    registers, reduces their absmax, then quantizes and stores them: x is read once.

    A row's K / 256 groups are the dots' M dimension, which must be a power of two (>= 16): they are covered by
    ``G_A`` groups plus, if ``G_B`` > 0, ``G_B`` more (48 groups = 32 + 16 rather than 64 with 16 masked: the
    padded rows cost as much as real ones, so at K = 12288 this is a quarter less work per row)."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    h = tl.load(h64_ptr + tl.arange(0, 64)[:, None] * 64 + tl.arange(0, 64)[None, :])
    g_a = tl.arange(0, G_A)
    mask_a = g_a < K // 256
    if G_B > 0:
        g_b = G_A + tl.arange(0, G_B)
        mask_b = g_b < K // 256
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    for it in range(0, tl.cdiv(M - pid, n_prog)):
        row = pid + it * n_prog
        x_off = row.to(tl.int64) * stride_xm
        a0, a1, a2, a3 = _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g_a, mask_a, GROUP, HAS_SMOOTH)
        amax = _rot_row_absmax(a0, a1, a2, a3, DT)
        if G_B > 0:
            b0, b1, b2, b3 = _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g_b, mask_b, GROUP, HAS_SMOOTH)
            amax = tl.maximum(amax, _rot_row_absmax(b0, b1, b2, b3, DT))
        scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
        tl.store(scale_ptr + row, scale)
        r = tl.math.div_rn(tl.full([], 1.0, tl.float32), scale)
        q_off = row.to(tl.int64) * stride_qm
        _rot_row_store4(q_ptr, q_off, g_a, mask_a, a0, a1, a2, a3, scale, r, DT, INTERPRETED)
        if G_B > 0:
            _rot_row_store4(q_ptr, q_off, g_b, mask_b, b0, b1, b2, b3, scale, r, DT, INTERPRETED)


def rot_row_group_split(groups: int) -> tuple[int, int]:
    """``(G_A, G_B)``: power-of-two group counts (each >= 16, the dot's minimum M; ``G_B`` 0 when unused) that
    cover ``groups`` with the least padding."""
    whole = max(16, next_power_of_2(groups))
    g_a = max(16, whole // 2)
    rest = groups - g_a
    if rest <= 0:
        return whole, 0
    g_b = max(16, next_power_of_2(rest))
    return (g_a, g_b) if g_a + g_b < whole else (whole, 0)


@triton.jit
def _quant_per_token_kernel(
    x_ptr, smooth_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_qm,
    CHUNK: tl.constexpr, HAS_SMOOTH: tl.constexpr, BLOCK_M: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """No rotation: a whole row in registers when it fits (one read), else two passes over CHUNK columns."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    if SINGLE_CHUNK:
        cols = tl.arange(0, CHUNK)
        y = _load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
        amax = tl.max(tl.abs(y), axis=1)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for kc in range(0, tl.cdiv(K, CHUNK)):
            cols = kc * CHUNK + tl.arange(0, CHUNK)
            y = _load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
    # x * (1/127), not x / 127: torch divides by a Python scalar through its fp32 reciprocal, and we match it.
    scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
    tl.store(scale_ptr + rows, scale, mask=row_mask)
    if SINGLE_CHUNK:
        cols = tl.arange(0, CHUNK)
        q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
        tl.store(q_ptrs, _quantize(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])
    else:
        for kc in range(0, tl.cdiv(K, CHUNK)):
            cols = kc * CHUNK + tl.arange(0, CHUNK)
            y = _load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, cols, K, HAS_SMOOTH).to(tl.float32)
            q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
            tl.store(q_ptrs, _quantize(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])


def _sm_count(device_index: int | None) -> int:
    return 2 if _INTERPRETED else sm_count(device_index)  # CPU tensors under the interpreter: any small grid


def _spec_key(runtime_args: tuple, constexprs: tuple) -> tuple:
    """What the JIT specializes a compiled kernel on (see fast_launch): per tensor its dtype and 16-byte alignment,
    per integer whether it is 1, a multiple of 16, or beyond int32; constexprs by value."""
    spec = tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else (a == 1, a % 16 == 0, not -2**31 <= a < 2**31) for a in runtime_args)
    return spec, constexprs


_plain_launch = CompiledLauncher(_quant_per_token_kernel)
_rot_launch = CompiledLauncher(_rotated_quant_kernel)
_rot_row_launch = CompiledLauncher(_rotated_row_quant_kernel)

# Chunked rotation kernel (K beyond the one-pass kernel, GROUP = 1024): rows per program and warps.
_ROT_BLOCK_M = 16
_ROT_WARPS = 4
# One-pass rotation kernel: the largest K it keeps in registers, programs per SM of its persistent grid (H100,
# 4608 rows, docs/results/quant_kernel_h100_s3_programs.json: 12 vs 8 per SM 75.3 vs 77.9 us at K = 12288,
# 25.4 vs 26.5 at 3072, 100.2 vs 99.0 at 15360; 4, 16 and 24 per SM were slower in a sweep).
_ROT_ROW_MAX_K = 64 * 256
_ROT_ROW_PROGRAMS_PER_SM = 12


def _plain_launch_shape(k: int) -> tuple[int, int, int]:
    """(CHUNK, BLOCK_M, num_warps) for the plain kernel. A row up to 16384 columns is held in registers (x read
    once); a longer one is walked twice in 8192-column chunks, one row per program so it stays in L2 between them.
    About 64 elements per thread was fastest in an H100 sweep (docs/results/kernels_h100.md): more warps per
    program lost up to 20% at K = 5120 and 12288."""
    chunk = min(next_power_of_2(k), 16384)
    if k > chunk:
        return 8192, 1, 8
    block_m = max(1, 8192 // chunk)
    return chunk, block_m, max(4, min(16, chunk * block_m // 2048))


def _launch_plain(x: torch.Tensor, smooth_arg: torch.Tensor, has_smooth: bool, q: torch.Tensor,
                  scale: torch.Tensor, config: tuple[int, int, int] | None) -> None:
    m, k = x.shape
    chunk, block_m, warps = config or _plain_launch_shape(k)
    runtime = (x, smooth_arg, q, scale, m, k, x.stride(0), q.stride(0))
    constexprs = (chunk, has_smooth, block_m, k <= chunk, _INTERPRETED)
    _plain_launch(_spec_key(runtime, constexprs + (warps,)), x.device.index, (cdiv(m, block_m), 1, 1),
                  runtime + constexprs, warps, 3)


def _launch_rotated(x: torch.Tensor, smooth_arg: torch.Tensor, has_smooth: bool, group: int, q: torch.Tensor,
                    scale: torch.Tensor, config: tuple[int, int, int] | None) -> None:
    m, k = x.shape
    dev = x.device.index
    # build_hadamard caches per device (no host-to-device copy per call, CUDA-graph safe). In x's dtype: the
    # entries +-1/8 are exact in 16-bit, and half the bytes per load.
    h = build_hadamard(64, x.device, x.dtype)
    if group <= 256 and k % 256 == 0 and k <= _ROT_ROW_MAX_K:
        g_a, g_b = rot_row_group_split(k // 256)
        # Pipelined stages let the next row's loads fly while this row is reduced and stored; the H100 sweep
        # (docs/results/quant_kernel_h100.json) measured 3 stages faster than 2 at every shape (4608x12288: 94 vs 106 us).
        per_sm, warps, stages = config or (_ROT_ROW_PROGRAMS_PER_SM, 4, 3)
        runtime = (x, smooth_arg, h, q, scale, m, k, x.stride(0), q.stride(0))
        constexprs = (group, has_smooth, g_a, g_b, _INTERPRETED)
        grid = (min(m, _sm_count(dev) * per_sm), 1, 1)
        _rot_row_launch(_spec_key(runtime, constexprs + (warps, stages)), dev, grid, runtime + constexprs, warps,
                        stages)
        return
    chunk_cols = 1024 if group >= 1024 else 256
    n_chunks = cdiv(k, chunk_cols)
    part = torch.empty((m, n_chunks), dtype=torch.float32, device=x.device)
    grid = (cdiv(m, _ROT_BLOCK_M), n_chunks, 1)
    for quant in (False, True):
        runtime = (x, smooth_arg, h, q, scale, part, m, k, x.stride(0), q.stride(0), n_chunks)
        constexprs = (group, has_smooth, _ROT_BLOCK_M, next_power_of_2(n_chunks), quant, _INTERPRETED)
        _rot_launch(_spec_key(runtime, constexprs), dev, grid, runtime + constexprs, _ROT_WARPS, 3)


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
    if m == 0:
        return q, scale
    smooth_arg = smooth.to(device=x.device, dtype=x.dtype).contiguous() if smooth is not None else x
    if hadamard_group:
        _launch_rotated(x, smooth_arg, smooth is not None, hadamard_group, q, scale, config)
    else:
        _launch_plain(x, smooth_arg, smooth is not None, q, scale, config)
    return q, scale
