"""The Hopper int8 attention with warp specialization, written in Gluon (Triton's explicit-layout dialect).

Same scheme and numerics as :mod:`triton_attention`'s kernel (int8 ``Q . K^T`` with per-row scales, online softmax
in fp32 and base 2, ``P . V`` in V's 16-bit dtype, in e4m3 or in int8): the same int8 Q/K and scales from its
pre-pass, the same V (int8 V with its scales per key block of this kernel's BLOCK_N). Why a second kernel: the
generic kernel's one instruction stream issues every load and waits on every tensor-core op, and reached 290-390
TFLOPS on an H100 where SDPA reaches 570-640 (docs/results/attention_h100.json). Here a 1-warp partition only
issues TMA loads (the Q tile once, then K and V key blocks into a ring of shared-memory stages) while the default
partition's two warpgroups run the wgmma chain and the softmax.

Per stage ``s``: ``k_ready`` / ``v_ready`` barriers (TMA bytes landed) and ``kv_empty`` (the block's ``P . V``
retired, so the stage may be overwritten). Tiles are rows of 2-D views: the int8 Q and K ``(B*H*L, D)``; V
``(rows, cols)`` with the key ``l`` of (batch ``b``, kv head ``g``) at row ``b * V_ROWS_B + g * V_ROWS_H + l``,
columns from ``g * V_COL_H`` (a contiguous ``(B, Hkv, L, D)`` V, or ComfyUI's ``(B, L, Hkv*D)``); fp8 and int8 V
come transposed, ``(B*Hkv*D, L')`` (:func:`int8.launch.attention._fp8_values`, padding zeroed), so the e4m3 wgmma gets
the K-major operand it requires. Rows past a head's end belong to the next head (or are zero-filled by TMA past the
tensor); their keys are masked to -inf in the last block, and their query rows are not stored.

Only sm_90 (wgmma). Launched by :mod:`int8.launch.gluon_attention`; importable only where
:func:`int8.compat.gluon_api` finds Gluon (ImportError else).
"""

from __future__ import annotations

from ..compat import gluon_api

_api = gluon_api()
if _api is None:
    raise ImportError("this Triton has no Gluon with the Hopper API the warp-specialized attention uses")
gluon, gl = _api.gluon, _api.gl
mbarrier, tma, warpgroup_mma = _api.mbarrier, _api.tma, _api.warpgroup_mma

__all__ = ["WORKER_REGS"]

WORKER_REGS = 40  # the TMA partition's registers per thread (it holds only scalars)
FP8_MAX = gl.constexpr(448.0)  # e4m3's largest finite value: P in [0, 1] is scaled onto the format's range


@gluon.constexpr_function
def _acc_layout(num_warps, n, k):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, k])


@gluon.jit
def _producer(q_desc, k_desc, v_desc, smem, q_row, k_row, v_row, v_col, n_blocks, V_T: gl.constexpr):
    q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty = smem
    BN: gl.constexpr = k_desc.block_type.shape[0]
    NB: gl.constexpr = k_bufs.type.shape[0]
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
    for j in range(n_blocks):
        s = j % NB
        # A fresh mbarrier counts as "previous phase complete": the first round's wait (parity 1) passes.
        mbarrier.wait(kv_empty.index(s), ((j // NB) & 1) ^ 1)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [k_row + j * BN, 0], k_ready.index(s), k_bufs.index(s))
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        if V_T:  # V^T (fp8, int8 P.V): the block's keys are columns
            tma.async_copy_global_to_shared(v_desc, [v_row, v_col + j * BN], v_ready.index(s), v_bufs.index(s))
        else:
            tma.async_copy_global_to_shared(v_desc, [v_row + j * BN, v_col], v_ready.index(s), v_bufs.index(s))


@gluon.jit
def _attend_block(j, smem, qs, ks_ptr, vs_ptr, acc, l_i, m_i, Lk, BN: gl.constexpr, PV_FP8: gl.constexpr,
                  PV_INT8: gl.constexpr, MASKED: gl.constexpr):
    """One key block of the online softmax (see triton_attention._attend_block): the updated ``(acc, l_i, m_i)``.
    MASKED only for the ragged last block: its keys past Lk score -inf."""
    q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty = smem
    NB: gl.constexpr = k_bufs.type.shape[0]
    s_layout: gl.constexpr = qs.type.layout.parent
    o_layout: gl.constexpr = acc.type.layout
    BM: gl.constexpr = acc.shape[0]
    s = j % NB
    phase = (j // NB) & 1
    mbarrier.wait(k_ready.index(s), phase)
    scores = warpgroup_mma(q_smem, k_bufs.index(s).permute((1, 0)), gl.zeros([BM, BN], gl.int32, s_layout),
                           use_acc=False)
    cols = j * BN + gl.arange(0, BN, gl.SliceLayout(0, s_layout))
    if MASKED:
        ks = gl.load(ks_ptr + cols, mask=cols < Lk, other=0.0)
    else:
        ks = gl.load(ks_ptr + cols)
    # The score is x * qs (qs > 0 per row): the row max is qs * max(x), and exp2(x * qs - m) is one FMA per element.
    x = scores.to(gl.float32) * ks[None, :]
    if MASKED:
        x = gl.where((cols < Lk)[None, :], x, float("-inf"))
    block_max = gl.max(x, axis=1) * qs
    m_new = gl.maximum(m_i, block_max)
    alpha = gl.exp2(m_i - m_new)
    if PV_INT8:  # P against the block's own max (see triton_attention._attend_block)
        p = gl.exp2(x * qs[:, None] - block_max[:, None])
        to_running = gl.exp2(block_max - m_new)
        l_i = l_i * alpha + gl.sum(p, axis=1) * to_running
    else:
        p = gl.exp2(x * qs[:, None] - m_new[:, None])
        l_i = l_i * alpha + gl.sum(p, axis=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    mbarrier.wait(v_ready.index(s), phase)
    if PV_INT8:
        p_op = gl.convert_layout((p * 127.0 + 0.5).to(gl.int8), gl.DotOperandLayout(0, o_layout, 4))
        pv = warpgroup_mma(p_op, v_bufs.index(s).permute((1, 0)), gl.zeros(acc.shape, gl.int32, o_layout),
                           use_acc=False)
        dcols = gl.arange(0, acc.shape[1], gl.SliceLayout(0, o_layout))
        vs = gl.load(vs_ptr + j * acc.shape[1] + dcols)  # this key block's per-channel V scales
        row = gl.convert_layout(to_running * (1.0 / 127.0), gl.SliceLayout(1, o_layout))
        acc = acc + pv.to(gl.float32) * row[:, None] * vs[None, :]
    elif PV_FP8:
        p_op = gl.convert_layout((p * FP8_MAX).to(gl.float8e4nv), gl.DotOperandLayout(0, o_layout, 4))
        acc = warpgroup_mma(p_op, v_bufs.index(s).permute((1, 0)), acc)
    else:
        p_op = gl.convert_layout(p.to(v_bufs.dtype), gl.DotOperandLayout(0, o_layout, 2))
        acc = warpgroup_mma(p_op, v_bufs.index(s), acc)
    gl.thread_barrier()  # this consumer's warps are done with the stage before one thread frees it (its share)
    mbarrier.arrive(kv_empty.index(s), count=1)
    return acc, l_i, m_new


@gluon.jit
def _consumer(smem, qs_ptr, ks_ptr, vs_ptr, o_ptr, m0, Lq, Lk, o_base, stride_ol, BN: gl.constexpr,
              D: gl.constexpr, PV_FP8: gl.constexpr, PV_INT8: gl.constexpr):
    """The query rows of ``smem[0]`` (the whole Q tile, or this consumer's half) from ``m0`` on: softmax and both
    matmuls for every key block, then the normalized output."""
    q_smem = smem[0]
    q_bar = smem[3]
    BM: gl.constexpr = q_smem.type.shape[0]
    s_layout: gl.constexpr = _acc_layout(gl.num_warps(), BN, 32)
    o_layout: gl.constexpr = _acc_layout(gl.num_warps(), D, 32 if PV_FP8 or PV_INT8 else 16)
    rows = m0 + gl.arange(0, BM, gl.SliceLayout(1, s_layout))
    qs = gl.load(qs_ptr + rows, mask=rows < Lq, other=1.0)  # (rows past Lq: any finite scale; not stored)
    m_i = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BM], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BM, D], gl.float32, o_layout)
    mbarrier.wait(q_bar, 0)
    full_blocks = Lk // BN
    for j in range(full_blocks):
        acc, l_i, m_i = _attend_block(j, smem, qs, ks_ptr, vs_ptr, acc, l_i, m_i, Lk, BN, PV_FP8, PV_INT8, False)
    if full_blocks * BN < Lk:
        acc, l_i, m_i = _attend_block(full_blocks, smem, qs, ks_ptr, vs_ptr, acc, l_i, m_i, Lk, BN, PV_FP8, PV_INT8,
                                      True)
    dcols = gl.arange(0, D, gl.SliceLayout(0, o_layout))
    if PV_FP8:
        acc = acc * (gl.load(vs_ptr + dcols) * (1.0 / FP8_MAX))[None, :]
    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    orows = m0 + gl.arange(0, BM, gl.SliceLayout(1, o_layout))
    ptrs = o_ptr + o_base + orows.to(gl.int64)[:, None] * stride_ol + dcols[None, :]
    gl.store(ptrs, out.to(o_ptr.dtype.element_ty), mask=(orows < Lq)[:, None])


@gluon.jit
def _int8_attention_ws_kernel(q_desc, k_desc, v_desc, qs_ptr, ks_ptr, vs_ptr, o_ptr, Lq, Lk, H, GROUP,
                              V_ROWS_B, V_ROWS_H, V_COL_H, stride_ob, stride_oh, stride_ol,
                              STAGES: gl.constexpr, PV_FP8: gl.constexpr, PV_INT8: gl.constexpr,
                              WORKER_REGS: gl.constexpr, CONSUMERS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    """One BLOCK_M tile of query rows of one (batch, head) against every key of its kv head (``h // GROUP``).
    Grid: (cdiv(Lq, BLOCK_M), B * H); the tile sizes are the descriptors' block shapes.

    CONSUMERS = 1: the default partition (all of num_warps) computes the whole tile. CONSUMERS = 2: it computes the
    tile's first half and a worker partition of as many warps (CONSUMER_REGS registers each) the second, on the same
    K/V stages (each stage is freed when both have arrived). The two then drift apart, so one's softmax can overlap
    the other's tensor-core work, which two warpgroups of one partition, in lock step, cannot."""
    BM: gl.constexpr = q_desc.block_type.shape[0]
    D: gl.constexpr = q_desc.block_type.shape[1]
    BN: gl.constexpr = k_desc.block_type.shape[0]
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    g = h // GROUP
    bh_kv = b * (H // GROUP) + g
    m0 = gl.program_id(0) * BM
    q_smem = gl.allocate_shared_memory(q_desc.dtype, q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=CONSUMERS)
    smem = (q_smem, k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty)
    V_T: gl.constexpr = PV_FP8 or PV_INT8
    if V_T:
        v_row = bh_kv * D
        v_col = 0
    else:
        v_row = b * V_ROWS_B + g * V_ROWS_H
        v_col = g * V_COL_H
    o_base = b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
    qs_base = qs_ptr + bh.to(gl.int64) * Lq
    ks_base = ks_ptr + bh_kv.to(gl.int64) * Lk
    if PV_INT8:  # one scale per (key block, channel)
        vs_base = vs_ptr + bh_kv.to(gl.int64) * gl.cdiv(Lk, BN) * D
    else:
        vs_base = vs_ptr + bh_kv.to(gl.int64) * D
    q_row = bh * Lq + m0
    k_row = bh_kv * Lk
    n_blocks = gl.cdiv(Lk, BN)
    if CONSUMERS == 1:
        gl.warp_specialize(
            [(_consumer, (smem, qs_base, ks_base, vs_base, o_ptr, m0, Lq, Lk, o_base, stride_ol, BN, D, PV_FP8,
                           PV_INT8)),
             (_producer, (q_desc, k_desc, v_desc, smem, q_row, k_row, v_row, v_col, n_blocks, V_T))],
            [1], [WORKER_REGS])
    else:
        gl.static_assert(CONSUMERS == 2, "CONSUMERS must be 1 or 2")
        HALF: gl.constexpr = BM // 2
        first = (q_smem.slice(0, HALF), k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty)
        second = (q_smem.slice(HALF, HALF), k_bufs, v_bufs, q_bar, k_ready, v_ready, kv_empty)
        gl.warp_specialize(
            [(_consumer, (first, qs_base, ks_base, vs_base, o_ptr, m0, Lq, Lk, o_base, stride_ol, BN, D, PV_FP8,
                          PV_INT8)),
             (_producer, (q_desc, k_desc, v_desc, smem, q_row, k_row, v_row, v_col, n_blocks, V_T)),
             (_consumer, (second, qs_base, ks_base, vs_base, o_ptr, m0 + HALF, Lq, Lk, o_base, stride_ol, BN, D,
                          PV_FP8, PV_INT8))],
            [1, gl.num_warps()], [WORKER_REGS, CONSUMER_REGS])
