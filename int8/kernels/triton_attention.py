"""Generic Triton int8 attention (Ampere, Ada, and Hopper until a wgmma version exists): the Q/K quant pre-pass and a
FlashAttention-style kernel with an int8 ``Q . K^T`` and a 16-bit, fp8 or int8 ``P . V``. The scheme and its float64
reference are :mod:`int8.attention_reference`; the launcher is :mod:`int8.launch.attention`.

Layouts: the pre-pass reads ``x (B, H, L, D)`` through (batch, head, row) strides with a contiguous last dim and
writes contiguous int8 ``(B*H, L, D)`` plus one fp32 scale per row ``(B*H, L)`` (per-block scales are repeated on
each row of the block, so one attention kernel serves both granularities: a scale vector per tile costs a
``BLOCK`` load where a scalar would cost one, next to the ``BLOCK * D`` bytes of the tile).
"""

# No ``from __future__ import annotations`` here: Triton 3.0/3.1's interpreter takes a kernel parameter as constexpr
# only when its annotation is the object, not the string "tl.constexpr" (tests/int8/test_interpreted_kernels.py
# patches that for the other kernel modules; this one needs no patch).
import triton
import triton.language as tl

from .triton_quant_common import quantize_rn

__all__ = ["_attn_quant_kernel", "_attn_v_quant_kernel", "_int8_attention_kernel"]


@triton.jit
def _attn_quant_kernel(x_ptr, mean_ptr, q_ptr, scale_ptr, L, H, stride_xb, stride_xh, stride_xl, mult,
                       BLOCK: tl.constexpr, D: tl.constexpr, PER_TOKEN: tl.constexpr, HAS_MEAN: tl.constexpr,
                       INTERPRETED: tl.constexpr):
    """Quantize BLOCK rows of one (batch, head): ``x - mean`` (fp32; the K mean-smoothing) to int8 with one scale
    per block (or per row, PER_TOKEN), ``absmax * (1/127)`` floored at 1e-12. The stored scale is multiplied by
    ``mult`` (the attention kernel's ``softmax_scale * log2(e)`` for Q, 1 for K), which the int8 values do not see.
    Grid: (cdiv(L, BLOCK), B * H)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    row_mask = rows < L
    src = x_ptr + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    x = tl.load(src + rows.to(tl.int64)[:, None] * stride_xl + cols[None, :], mask=row_mask[:, None],
                other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(mean_ptr + bh.to(tl.int64) * D + cols)
        x = tl.where(row_mask[:, None], x - mean[None, :], 0.0)
    amax = tl.max(tl.abs(x), axis=1)
    if not PER_TOKEN:
        amax = tl.zeros([BLOCK], dtype=tl.float32) + tl.max(amax, axis=0)
    scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
    out = bh.to(tl.int64) * L + rows
    tl.store(q_ptr + out[:, None] * D + cols[None, :], quantize_rn(x, scale, INTERPRETED), mask=row_mask[:, None])
    tl.store(scale_ptr + out, scale * mult, mask=row_mask)


@triton.jit
def _attn_v_quant_kernel(v_ptr, vt_ptr, scale_ptr, L, L_PAD, H, stride_vb, stride_vh, stride_vl,
                         BLOCK_N: tl.constexpr, D: tl.constexpr, INTERPRETED: tl.constexpr):
    """int8 P.V's V operand, one key block of one (batch, kv head) per program: the block read as ``[D, BLOCK_N]``
    (channels x keys; keys past L as 0), one scale per channel ``absmax * (1/127)`` floored at 1e-12, and the
    int8 values written transposed into ``V^T (B*H, D, L_PAD)`` (keys contiguous, the K-major operand), the scales
    into ``(B*H, L_PAD / BLOCK_N, D)``. One read of V instead of the torch ops' five passes over an fp32 copy.
    Grid: (L_PAD / BLOCK_N, B * H)."""
    bh = tl.program_id(1)
    blk = tl.program_id(0)
    b = bh // H
    h = bh % H
    keys = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    chans = tl.arange(0, D)
    src = v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    x = tl.load(src + keys.to(tl.int64)[None, :] * stride_vl + chans[:, None], mask=(keys < L)[None, :],
                other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=1) * (1.0 / 127.0), 1e-12)
    rows = bh.to(tl.int64) * D + chans
    tl.store(vt_ptr + rows[:, None] * L_PAD + keys[None, :], quantize_rn(x, scale, INTERPRETED))
    tl.store(scale_ptr + (bh.to(tl.int64) * (L_PAD // BLOCK_N) + blk) * D + chans, scale)


@triton.jit
def _attend_block(q, qs, acc, l_i, m_i, k_base, ks_base, v_base, vs_base, start, Lk, stride_vl,
                  BLOCK_N: tl.constexpr, D: tl.constexpr, PV_FP8: tl.constexpr, PV_INT8: tl.constexpr,
                  MASKED: tl.constexpr):
    """One key block of the online softmax: returns the updated ``(acc, l_i, m_i)``. MASKED only for the ragged
    last block (keys past Lk load as 0 and score -inf): the full blocks skip the masks, so their loads need no
    predicates and the compiler can pipeline them as plain tiles."""
    cols = start + tl.arange(0, BLOCK_N)
    dcols = tl.arange(0, D)
    k_ptrs = k_base + cols.to(tl.int64)[:, None] * D + dcols[None, :]
    if PV_FP8 or PV_INT8:  # V^T [D, keys], keys contiguous: a K-major operand (see the kernel)
        v_ptrs = v_base + dcols.to(tl.int64)[:, None] * stride_vl + cols[None, :]
    else:
        v_ptrs = v_base + cols.to(tl.int64)[:, None] * stride_vl + dcols[None, :]
    # K as a [BLOCK_N, D] tile, D contiguous, transposed in the dot: the K-major operand int8 wgmma takes from
    # shared memory (a [D, BLOCK_N] load would be the transposed, MN-major layout).
    if MASKED:
        col_mask = cols < Lk
        k = tl.load(k_ptrs, mask=col_mask[:, None], other=0)
        ks = tl.load(ks_base + cols, mask=col_mask, other=0.0)
    else:
        k = tl.load(k_ptrs)
        ks = tl.load(ks_base + cols)
    s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32) * qs[:, None] * ks[None, :]
    if MASKED:
        s = tl.where(col_mask[None, :], s, float("-inf"))
    block_max = tl.max(s, axis=1)
    m_new = tl.maximum(m_i, block_max)
    alpha = tl.math.exp2(m_i - m_new)
    if PV_INT8:
        # P against this block's own max, so every block keeps 127 levels; one exp2 per score as in the other
        # paths: the running-max P is that times exp2(block_max - m_new) <= 1, a factor per row.
        p_block = tl.math.exp2(s - block_max[:, None])
        to_running = tl.math.exp2(block_max - m_new)
        l_i = l_i * alpha + tl.sum(p_block, axis=1) * to_running
        if MASKED:
            vt = tl.load(v_ptrs, mask=col_mask[None, :], other=0)
        else:
            vt = tl.load(v_ptrs)
        vs = tl.load(vs_base + (start // BLOCK_N) * D + dcols)  # this key block's per-channel V scales
        p8 = (p_block * 127.0 + 0.5).to(tl.int8)  # in [0, 127]: truncation of a positive value rounds half up
        pv = tl.dot(p8, tl.trans(vt), out_dtype=tl.int32).to(tl.float32)
        pv = pv * (to_running * (1.0 / 127.0))[:, None] * vs[None, :]
    else:
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if PV_FP8:
            if MASKED:
                vt = tl.load(v_ptrs, mask=col_mask[None, :], other=0.0)
            else:
                vt = tl.load(v_ptrs)
            pv = tl.dot((p * 448.0).to(vt.dtype), tl.trans(vt), out_dtype=tl.float32)
        else:
            if MASKED:
                v = tl.load(v_ptrs, mask=col_mask[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs)
            pv = tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _int8_attention_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, v_ptr, vs_ptr, o_ptr, Lq, Lk, H, GROUP,
                           stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PV_FP8: tl.constexpr,
                           PV_INT8: tl.constexpr):
    """One BLOCK_M tile of query rows of one (batch, head) against every key of its kv head (``h // GROUP``).

    ``s = (q_int8 . k_int8^T)_int32 * q_scale * k_scale`` is the score in log2 units (``q_scale`` carries
    ``softmax_scale * log2(e)``); the online softmax keeps the running row max ``m`` and sum ``l`` in fp32 and
    rescales the fp32 accumulator by ``exp2(m_old - m_new)`` per key block. ``P . V``: P rounded to V's dtype
    (16-bit), or PV_FP8 (sm_89+): ``P * 448`` in float8 e4m3 against V pre-quantized to e4m3 per channel, scaled
    back by ``v_scale / 448`` at the end. The fp8 V comes transposed, ``V^T (D, keys)`` per kv head with row stride
    ``stride_vl``: fp8 wgmma takes only K-major operands, and a ``[keys, D]`` tile could not go to shared memory as
    one (Triton loaded it through registers, outside the software pipeline: fp8 ran 1.4-1.6x slower than 16-bit on
    an H100, docs/results/attention_h100.json). PV_INT8: V^T in int8 the same way with one scale per (key block of
    BLOCK_N, channel), ``vs (B*Hkv, cdiv(Lk, BLOCK_N), D)``, and P per key block against the block's own max
    (:func:`int8.attention_reference.int8_attention_reference`, ``pv="int8"``). The full key blocks run unmasked; a
    last partial block (``Lk % BLOCK_N`` keys) runs masked, its missing keys scoring -inf.
    Grid: (cdiv(Lq, BLOCK_M), B * H)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hkv = H // GROUP
    bh_kv = b * hkv + h // GROUP
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = tl.arange(0, D)
    row_mask = rows < Lq
    q_rows = bh.to(tl.int64) * Lq + rows
    q = tl.load(q_ptr + q_rows[:, None] * D + dcols[None, :], mask=row_mask[:, None], other=0)
    qs = tl.load(qs_ptr + q_rows, mask=row_mask, other=0.0)
    k_base = k_ptr + bh_kv.to(tl.int64) * Lk * D
    ks_base = ks_ptr + bh_kv.to(tl.int64) * Lk
    v_base = v_ptr + b.to(tl.int64) * stride_vb + (h // GROUP).to(tl.int64) * stride_vh
    vs_base = vs_ptr + bh_kv.to(tl.int64) * tl.cdiv(Lk, BLOCK_N) * D  # PV_INT8's per-block V scales

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    full_end = Lk - Lk % BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc, l_i, m_i = _attend_block(q, qs, acc, l_i, m_i, k_base, ks_base, v_base, vs_base, start, Lk,
                                      stride_vl, BLOCK_N, D, PV_FP8, PV_INT8, False)
    if full_end < Lk:
        acc, l_i, m_i = _attend_block(q, qs, acc, l_i, m_i, k_base, ks_base, v_base, vs_base, full_end, Lk,
                                      stride_vl, BLOCK_N, D, PV_FP8, PV_INT8, True)
    if PV_FP8:
        v_scale = tl.load(vs_ptr + bh_kv.to(tl.int64) * D + dcols)
        acc = acc * (v_scale * (1.0 / 448.0))[None, :]
    out = acc / l_i[:, None]
    dst = o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(dst + rows.to(tl.int64)[:, None] * stride_ol + dcols[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_mask[:, None])
