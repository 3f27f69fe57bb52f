"""Per-token int8 quantization after a block Hadamard rotation (the ``hadamard`` outlier method), fused.

The rotation uses the Kronecker structure of the regular Hadamard matrix (``H_{4^k} = H4 (x) ... (x) H4``): every
64-column block is multiplied by ``H64`` on the tensor cores (``tl.dot`` of ``[rows, 64] x [64, 64]``), then
each ``H4`` level above 64 is a butterfly over 4 sub-blocks: with ``H4[i, k] = -1`` exactly when ``i + k == 3``,
``y_k = 0.5 * sum_i z_i - z_{3-k}``. Each block stays a separate tile in the dot's register layout, so the
butterflies are elementwise adds, with no reshapes or shuffles.

Launched by :mod:`int8.launch.quant`. Numerics as :mod:`triton_quant` (the rotated values are rounded to x's dtype like the torch path); only the fp32
summation order inside the rotation differs from :func:`int8.hadamard.rotate_activation`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_quant_common import load_tile, quantize_by, quantize_rn

__all__ = ["ROT_BLOCK_M", "ROT_WARPS", "ROT_ROW_MAX_K"]

# Chunked rotation kernel (K beyond the one-pass kernel, GROUP = 1024): rows per program and warps.
ROT_BLOCK_M = 16
ROT_WARPS = 4
# One-pass kernel: the largest K it keeps in registers (64 groups of 256).
ROT_ROW_MAX_K = 64 * 256


@triton.jit
def _load_h64(h64_ptr):
    """H64 ``[64, 64]`` (row-major, in x's dtype), loaded once per program."""
    return tl.load(h64_ptr + tl.arange(0, 64)[:, None] * 64 + tl.arange(0, 64)[None, :])


@triton.jit
def _rot64(x_ptr, smooth_ptr, h, rows, row_mask, stride_xm, col0, K, HAS_SMOOTH: tl.constexpr):
    """One 64-column block times H64 on the tensor cores: fp32 ``[BLOCK_M, 64]``."""
    x = load_tile(x_ptr, smooth_ptr, rows, row_mask, stride_xm, col0 + tl.arange(0, 64), K, HAS_SMOOTH)
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
    tl.store(base, quantize_rn(y0.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 < K))
    tl.store(base + 64, quantize_rn(y1.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 64 < K))
    tl.store(base + 128, quantize_rn(y2.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 128 < K))
    tl.store(base + 192, quantize_rn(y3.to(DT).to(tl.float32), scale, INTERPRETED), mask=mask & (col0 + 192 < K))


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
    h = _load_h64(h64_ptr)
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
def _row_groups(n_groups, G_A: tl.constexpr, G_B: tl.constexpr):
    """The one-pass kernels' group indices of a row (the dots' M dimension) and their masks of groups that exist:
    ``G_A`` from 0, then ``G_B`` after them (with ``G_B`` = 0: the first ones again, for code that never uses them)."""
    g_a = tl.arange(0, G_A)
    if G_B > 0:
        g_b = G_A + tl.arange(0, G_B)
    else:
        g_b = g_a
    return g_a, g_a < n_groups, g_b, g_b < n_groups


@triton.jit
def _row_scale(scale_ptr, row, amax):
    """One row's scale, ``absmax * (1/127)`` floored at 1e-12 (stored), and its correctly rounded reciprocal."""
    scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
    tl.store(scale_ptr + row, scale)
    return scale, tl.math.div_rn(tl.full([], 1.0, tl.float32), scale)


@triton.jit
def _rot_row_cols(g, SUB: tl.constexpr, G_COLS: tl.constexpr):
    """Columns of sub-block SUB (64 wide) of the ``G_COLS``-column groups ``g``: ``[len(g), 64]``."""
    return g[:, None] * G_COLS + SUB * 64 + tl.arange(0, 64)[None, :]


@triton.jit
def _rot_row_tile(x_ptr, smooth_ptr, h, row_off, g, g_mask, SUB: tl.constexpr, HAS_SMOOTH: tl.constexpr,
                  G_COLS: tl.constexpr):
    """Sub-block SUB of every ``G_COLS``-column group of one row, times H64: fp32 ``[G_P2, 64]``. The groups of a
    row are the dot's M dimension, so one row alone fills a tensor-core tile."""
    cols = _rot_row_cols(g, SUB, G_COLS)
    x = tl.load(x_ptr + row_off + cols, mask=g_mask[:, None], other=0.0)
    if HAS_SMOOTH:
        s = tl.load(smooth_ptr + cols, mask=g_mask[:, None], other=0.0)
        x = (x.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
    if x.dtype == tl.float32:
        return tl.dot(x, h, input_precision="ieee")
    return tl.dot(x, h.to(x.dtype))


@triton.jit
def _rot_row_store(q_ptr, row_off, g, g_mask, SUB: tl.constexpr, y, s, r, DT: tl.constexpr,
                   INTERPRETED: tl.constexpr, G_COLS: tl.constexpr):
    cols = _rot_row_cols(g, SUB, G_COLS)
    tl.store(q_ptr + row_off + cols, quantize_by(y.to(DT).to(tl.float32), s, r, INTERPRETED),
             mask=g_mask[:, None])


@triton.jit
def _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g, g_mask, GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """The groups ``g`` of one row, rotated: four ``[len(g), 64]`` sub-block tiles."""
    z0 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 0, HAS_SMOOTH, 256)
    z1 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 1, HAS_SMOOTH, 256)
    z2 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 2, HAS_SMOOTH, 256)
    z3 = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g, g_mask, 3, HAS_SMOOTH, 256)
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
    _rot_row_store(q_ptr, q_off, g, g_mask, 0, z0, scale, r, DT, INTERPRETED, 256)
    _rot_row_store(q_ptr, q_off, g, g_mask, 1, z1, scale, r, DT, INTERPRETED, 256)
    _rot_row_store(q_ptr, q_off, g, g_mask, 2, z2, scale, r, DT, INTERPRETED, 256)
    _rot_row_store(q_ptr, q_off, g, g_mask, 3, z3, scale, r, DT, INTERPRETED, 256)


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
    h = _load_h64(h64_ptr)
    g_a, mask_a, g_b, mask_b = _row_groups(K // 256, G_A, G_B)
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
        scale, r = _row_scale(scale_ptr, row, amax)
        q_off = row.to(tl.int64) * stride_qm
        _rot_row_store4(q_ptr, q_off, g_a, mask_a, a0, a1, a2, a3, scale, r, DT, INTERPRETED)
        if G_B > 0:
            _rot_row_store4(q_ptr, q_off, g_b, mask_b, b0, b1, b2, b3, scale, r, DT, INTERPRETED)


@triton.jit
def _rot_blocks64_absmax(z, DT: tl.constexpr):
    return tl.max(tl.max(tl.abs(z.to(DT).to(tl.float32)), axis=1), axis=0)


@triton.jit
def _rotated_blocks64_quant_kernel(
    x_ptr, smooth_ptr, h64_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_qm,
    HAS_SMOOTH: tl.constexpr, G_A: tl.constexpr, G_B: tl.constexpr, INTERPRETED: tl.constexpr,
):
    """:func:`_rotated_row_quant_kernel` for 64-column groups when ``K % 256 != 0`` (SD3.5-large's K = 2432 = 38 x 64):
    a row's K / 64 blocks are the dot's M dimension (``G_A`` + ``G_B`` of them, as there), one ``[blocks, 64] x
    H64`` tile per row and no butterfly. x is read once; the chunked kernel this replaces reads it twice."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    h = _load_h64(h64_ptr)
    g_a, mask_a, g_b, mask_b = _row_groups(K // 64, G_A, G_B)
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    for it in range(0, tl.cdiv(M - pid, n_prog)):
        row = pid + it * n_prog
        x_off = row.to(tl.int64) * stride_xm
        a = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g_a, mask_a, 0, HAS_SMOOTH, 64)
        amax = _rot_blocks64_absmax(a, DT)
        if G_B > 0:
            b = _rot_row_tile(x_ptr, smooth_ptr, h, x_off, g_b, mask_b, 0, HAS_SMOOTH, 64)
            amax = tl.maximum(amax, _rot_blocks64_absmax(b, DT))
        scale, r = _row_scale(scale_ptr, row, amax)
        q_off = row.to(tl.int64) * stride_qm
        _rot_row_store(q_ptr, q_off, g_a, mask_a, 0, a, scale, r, DT, INTERPRETED, 64)
        if G_B > 0:
            _rot_row_store(q_ptr, q_off, g_b, mask_b, 0, b, scale, r, DT, INTERPRETED, 64)


@triton.jit
def _rot_row_store_rotated(o_ptr, row_off, g, g_mask, SUB: tl.constexpr, y, DT: tl.constexpr):
    cols = _rot_row_cols(g, SUB, 256)
    tl.store(o_ptr + row_off + cols, y.to(DT), mask=g_mask[:, None])


@triton.jit
def _rot_row_store_rotated4(o_ptr, row_off, g, g_mask, z0, z1, z2, z3, DT: tl.constexpr):
    _rot_row_store_rotated(o_ptr, row_off, g, g_mask, 0, z0, DT)
    _rot_row_store_rotated(o_ptr, row_off, g, g_mask, 1, z1, DT)
    _rot_row_store_rotated(o_ptr, row_off, g, g_mask, 2, z2, DT)
    _rot_row_store_rotated(o_ptr, row_off, g, g_mask, 3, z3, DT)


@triton.jit
def _rotated_row_kernel(
    x_ptr, smooth_ptr, h64_ptr, o_ptr, M, K, stride_xm, stride_om,
    GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, G_A: tl.constexpr, G_B: tl.constexpr,
):
    """The rotation alone, ``(x * smooth) @ blockdiag(H)`` rounded to x's dtype, for the few-rows W8A16 path, which
    multiplies 16-bit activations: one launch where the torch form (cast to fp32, batched matmul, cast back) is
    three, and a launch an eager plan can replay. Same walk and layout as :func:`_rotated_row_quant_kernel` (its
    constraints: ``K % 256 == 0``, ``K <= 64 * 256``), storing the rotated row instead of quantizing it."""
    DT: tl.constexpr = x_ptr.dtype.element_ty
    h = _load_h64(h64_ptr)
    g_a, mask_a, g_b, mask_b = _row_groups(K // 256, G_A, G_B)
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    for it in range(0, tl.cdiv(M - pid, n_prog)):
        row = pid + it * n_prog
        x_off = row.to(tl.int64) * stride_xm
        o_off = row.to(tl.int64) * stride_om
        a0, a1, a2, a3 = _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g_a, mask_a, GROUP, HAS_SMOOTH)
        _rot_row_store_rotated4(o_ptr, o_off, g_a, mask_a, a0, a1, a2, a3, DT)
        if G_B > 0:
            b0, b1, b2, b3 = _rot_row_groups(x_ptr, smooth_ptr, h, x_off, g_b, mask_b, GROUP, HAS_SMOOTH)
            _rot_row_store_rotated4(o_ptr, o_off, g_b, mask_b, b0, b1, b2, b3, DT)
