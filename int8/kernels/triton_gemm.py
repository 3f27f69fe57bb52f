"""Device code of the int8 tensor-core GEMM with the whole W8A8 dequant in its epilogue (launched by
:mod:`int8.launch.gemm`).

``C[m, n] = cast(acc[m, n] * x_scale[m] * w_scale[n] (+ bias[n]))`` where ``acc = A_q @ B_q^T`` is exact in int32.
A is the per-token-quantized activation ``[M, K]``, B the int8 weight ``[N, K]`` row-major: both K-major, which is
the operand layout Hopper's int8 ``wgmma`` requires (and Ampere's ``mma.sync`` reads without a transpose).
The epilogue computes in fp32 in the same order as the torch reference (``acc * xs * ws + bias``) and casts once.

Two kernels: a TMA + persistent one for Hopper (tensor descriptors need 16-byte aligned rows, i.e. K % 16 == 0)
and a pointer-based one for everything else (Ampere/Ada, odd K), with their config tables. The launcher autotunes
both per (M bucket, N, K), timing each config at the clocks it sustains under load.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["POINTER_CONFIGS_HOPPER", "POINTER_CONFIGS_AMPERE", "TMA_CONFIGS", "tma_cfg"]


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8, **extra) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m}, num_warps=warps,
                         num_stages=stages, **extra)


@triton.jit
def _epilogue(acc, c_ptr, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, HAS_BIAS: tl.constexpr):
    m_mask = offs_m < M
    n_mask = offs_n < N
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    ws = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row-tiles sweep the N tiles together, so their B tiles are reused from L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % num_pid_in_group) % group_size_m
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# --------------------------------------------------------------------------------------------------- pointer kernel
POINTER_CONFIGS_HOPPER = [
    _cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 4), _cfg(64, 128, 128, 4, 4),
    _cfg(64, 64, 128, 4, 4),
]
POINTER_CONFIGS_AMPERE = [
    _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]



@triton.jit
def _int8_gemm_kernel(
    a_ptr, b_ptr, c_ptr, xs_ptr, ws_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm, M_BUCKET,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Wrap out-of-range rows onto valid ones (their results are masked at the store) so loads need no row mask.
    rows_a = offs_m % M
    rows_b = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows_a.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + rows_b.to(tl.int64)[:, None] * stride_bn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k[None, :] < K - kt * BLOCK_K
        a = tl.load(a_ptrs, mask=k_mask, other=0)
        b = tl.load(b_ptrs, mask=k_mask, other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    _epilogue(acc, c_ptr, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, HAS_BIAS)


# ------------------------------------------------------------------------------------------ TMA persistent (Hopper)
def _set_block_shapes(nargs: dict) -> None:
    nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["b_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
    if nargs.get("c_desc") is not None and nargs["USE_TMA_STORE"]:
        nargs["c_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"] // (2 if nargs["EPILOGUE_SUBTILE"] else 1)]


def tma_cfg(bm: int, bn: int, bk: int, warps: int, stages: int, subtile: bool = True, tma_store: bool = True,
             persistent: bool = True, split_tail: bool = True, group_m: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "EPILOGUE_SUBTILE": subtile,
                          "USE_TMA_STORE": tma_store, "PERSISTENT": persistent,
                          "SPLIT_TAIL": split_tail and persistent},
                         num_warps=warps, num_stages=stages, pre_hook=_set_block_shapes)


# The fastest variants of an H100 sweep (docs/results/kernels_h100.md): at Flux/Wan shapes a 128x256 tile with
# 4 stages and a TMA store, 256x128 (persistent or one tile per program), or 128x256 with 3 stages and pointer
# stores won; flattened loops, automatic warp specialization, BLOCK_K 64/256 and 128x128 tiles were slower, and
# 2-CTA clusters failed to compile (Triton 3.6). Persistent configs split the last partial wave's K (SPLIT_TAIL).
# At K = 3072 a 128x128 tile, one per program, 3 stages (two programs fit on an SM, so one's epilogue overlaps the
# other's main loop) beat the autotuner's previous picks by 2-6% (docs/results/gemm_sweep_k3072_h100_s4.json:
# 4096x3072->9216 209.6 -> 196.8 us, 4608x3072->21504 523.2 -> 512.3); at K >= 12288 it lost, so both stay.
TMA_CONFIGS = [
    tma_cfg(128, 256, 128, 8, 4), tma_cfg(128, 256, 128, 8, 4, split_tail=False), tma_cfg(256, 128, 128, 8, 3),
    tma_cfg(256, 128, 128, 8, 4), tma_cfg(128, 128, 128, 4, 3, persistent=False),
    tma_cfg(128, 128, 128, 8, 3, persistent=False),
    tma_cfg(256, 128, 128, 8, 3, persistent=False), tma_cfg(128, 256, 128, 8, 3, tma_store=False),
    tma_cfg(128, 256, 128, 8, 3, subtile=False, tma_store=False),
    tma_cfg(64, 128, 128, 4, 4, subtile=False), tma_cfg(64, 64, 128, 4, 5, subtile=False),
    # 512 rows (Flux's text stream): 64x128 one tile per program, 39.8 vs 47.7 us at 512x12288->3072 and 11.7 vs
    # 13.9 us at 512x3072->3072 against the previous picks (docs/results/gemm_sweep_m512_h100_s4.json)
    tma_cfg(64, 128, 128, 4, 4, subtile=False, persistent=False),
]
MAX_TAIL_SPLITS = tl.constexpr(4)  # a split tile costs a partial write and a reduce; past 4 ways that outweighs it
MIN_SPLIT_K_TILES = tl.constexpr(4)  # K tiles per split, so the software pipeline still fills


@triton.jit
def _store_c(c_desc, c_ptr, y, xs_ptr, ws_ptr, bias_ptr, off_m, off_n, M, N, stride_cm, HAS_BIAS: tl.constexpr,
             TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dequant (fp32: acc * xs * ws + bias) and store the [BLOCK_M, BLOCK_N] piece of C at (off_m, off_n)."""
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    xs = tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)
    ws = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    y = y.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if TMA_STORE:
        c_desc.store([off_m, off_n], y.to(c_ptr.dtype.element_ty))  # TMA clips rows/columns past M/N
    else:
        c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _tile_acc(a_desc, b_desc, off_m, off_n, kt_lo, kt_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """int32 ``A[off_m:, K tiles kt_lo..kt_hi] @ B[off_n:, same]^T`` (TMA zero-fills rows/columns past the edges)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(kt_lo, kt_hi):
        a = a_desc.load([off_m, kt * BLOCK_K])
        b = b_desc.load([off_n, kt * BLOCK_K])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def _finish_tile(acc, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, off_m, off_n, M, N, stride_cm, HAS_BIAS: tl.constexpr,
                 TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 EPILOGUE_SUBTILE: tl.constexpr):
    if EPILOGUE_SUBTILE:
        # Two half-width stores: half the epilogue's live fp32 registers, so they don't spill at 128x256.
        acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        _store_c(c_desc, c_ptr, acc0, xs_ptr, ws_ptr, bias_ptr, off_m, off_n, M, N, stride_cm, HAS_BIAS, TMA_STORE,
                 BLOCK_M, BLOCK_N // 2)
        _store_c(c_desc, c_ptr, acc1, xs_ptr, ws_ptr, bias_ptr, off_m, off_n + BLOCK_N // 2, M, N, stride_cm,
                 HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N // 2)
    else:
        _store_c(c_desc, c_ptr, acc, xs_ptr, ws_ptr, bias_ptr, off_m, off_n, M, N, stride_cm, HAS_BIAS, TMA_STORE,
                 BLOCK_M, BLOCK_N)


@triton.jit
def _reduce_and_finish(part_tile, splits, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, off_m, off_n, M, N, stride_cm,
                       HAS_BIAS: tl.constexpr, TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       EPILOGUE_SUBTILE: tl.constexpr):
    """Sum a split tile's partials (slot order: exact int32, deterministic) and run the epilogue, half a tile at a
    time when the epilogue is subtiled (a whole 128x256 int32 tile plus the next partial would not fit in
    registers)."""
    PIECES: tl.constexpr = 2 if EPILOGUE_SUBTILE else 1
    WIDTH: tl.constexpr = BLOCK_N // PIECES
    tile_elems: tl.constexpr = BLOCK_M * BLOCK_N
    for piece in tl.static_range(PIECES):
        offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + (piece * WIDTH + tl.arange(0, WIDTH))[None, :]
        total = tl.load(part_tile + offs, cache_modifier=".cg")
        for s in range(1, splits):
            total += tl.load(part_tile + s * tile_elems + offs, cache_modifier=".cg")
        _store_c(c_desc, c_ptr, total, xs_ptr, ws_ptr, bias_ptr, off_m, off_n + piece * WIDTH, M, N, stride_cm,
                 HAS_BIAS, TMA_STORE, BLOCK_M, WIDTH)


@triton.jit
def _int8_gemm_tma_kernel(
    a_desc, b_desc, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, stride_cm, M_BUCKET,
    HAS_BIAS: tl.constexpr, CAN_TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
    USE_TMA_STORE: tl.constexpr, PERSISTENT: tl.constexpr, SPLIT_TAIL: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    TMA_STORE: tl.constexpr = CAN_TMA_STORE and USE_TMA_STORE
    pid = tl.program_id(0)
    # Persistent: NUM_SMS programs stride over the tiles; otherwise one program per tile (the loop runs once).
    if PERSISTENT:
        step = NUM_SMS
    else:
        step = num_tiles
    # Split tail (stream-K's idea, simplified): when the tiles leave a last wave only partly filled (432 tiles on
    # 132 SMs: a fourth wave at 27%), the whole waves run as usual and each leftover tile's K loop is split over
    # ``splits`` programs, so the last wave takes ~1/splits of a tile's time instead of a whole one.
    dp_tiles = num_tiles
    splits = 1
    if SPLIT_TAIL:
        rem = num_tiles % NUM_SMS
        if rem > 0:
            splits = tl.minimum(tl.minimum(NUM_SMS // rem, k_tiles // MIN_SPLIT_K_TILES), MAX_TAIL_SPLITS)
            if splits > 1:
                dp_tiles = num_tiles - rem
    for tile_id in range(pid, dp_tiles, step):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        acc = _tile_acc(a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, 0, k_tiles, BLOCK_M, BLOCK_N, BLOCK_K)
        _finish_tile(acc, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, pid_m * BLOCK_M, pid_n * BLOCK_N, M, N, stride_cm,
                     HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N, EPILOGUE_SUBTILE)
    if SPLIT_TAIL:
        if pid < (num_tiles - dp_tiles) * splits:  # one unit per program: tail tiles * splits <= NUM_SMS
            tail = pid // splits
            part = pid % splits
            pid_m, pid_n = _tile_coords(dp_tiles + tail, num_pid_m, num_pid_n, GROUP_M)
            per = tl.cdiv(k_tiles, splits)
            acc = _tile_acc(a_desc, b_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, part * per,
                            tl.minimum(part * per + per, k_tiles), BLOCK_M, BLOCK_N, BLOCK_K)
            # Each split writes its int32 partial; the last to arrive sums them (same protocol as triton_w8a16).
            tile_elems: tl.constexpr = BLOCK_M * BLOCK_N
            offs_t = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            part_tile = part_ptr + (tail * splits).to(tl.int64) * tile_elems
            tl.store(part_tile + part * tile_elems + offs_t, acc, cache_modifier=".cg")
            tl.debug_barrier()  # every thread's partial is written before the counter says so
            arrived = tl.atomic_add(count_ptr + tail, 1, sem="acq_rel", scope="gpu")
            if arrived == splits - 1:
                _reduce_and_finish(part_tile, splits, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, pid_m * BLOCK_M,
                                   pid_n * BLOCK_N, M, N, stride_cm, HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N,
                                   EPILOGUE_SUBTILE)
                tl.atomic_xchg(count_ptr + tail, 0, sem="relaxed", scope="gpu")  # re-arm for the next launch

