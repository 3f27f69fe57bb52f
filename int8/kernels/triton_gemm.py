"""The int8 tensor-core GEMM with the whole W8A8 dequant in its epilogue.

``C[m, n] = cast(acc[m, n] * x_scale[m] * w_scale[n] (+ bias[n]))`` where ``acc = A_q @ B_q^T`` is exact in int32.
A is the per-token-quantized activation ``[M, K]``, B the int8 weight ``[N, K]`` row-major: both K-major, which is
the operand layout Hopper's int8 ``wgmma`` requires (and Ampere's ``mma.sync`` reads without a transpose).
The epilogue computes in fp32 in the same order as the torch reference (``acc * xs * ws + bias``) and casts once.

Two kernels: a TMA + persistent one for Hopper (tensor descriptors need 16-byte aligned rows, i.e. K % 16 == 0)
and a pointer-based one for everything else (Ampere/Ada, odd K). Both are autotuned per (M bucket, N, K), timing
each config at the clocks it sustains under load (:mod:`tuning`): M is bucketed to a power of two so a sampler's
changing token count does not re-tune on every call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import gemm_choice
from .fast_launch import CompiledLauncher
from .host import alignment_bits, capability, cdiv, descriptor, device_index, next_power_of_2, sm_count
from .tuning import sustained_bench
from .workspace import SplitKWorkspace

__all__ = ["TMA_CONFIGS", "int8_gemm_dequant", "m_bucket", "hopper_tma_ok", "reserve_tail_workspace"]


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two, clamped to [16, 16384]."""
    return min(max(next_power_of_2(m), 16), 16384)


def _prune_by_m(configs, named_args, **kwargs):  # noqa: ANN001 - triton autotune hook signature
    # Tiles much taller than the problem waste the tensor cores; keep the ones that fit the M bucket.
    m = named_args["M"]
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, next_power_of_2(m))]
    return fitting or configs


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
_POINTER_CONFIGS_HOPPER = [
    _cfg(128, 256, 128, 8, 3), _cfg(256, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 4), _cfg(64, 128, 128, 4, 4),
    _cfg(64, 64, 128, 4, 4),
]
_POINTER_CONFIGS_AMPERE = [
    _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]


def _pointer_configs() -> list[triton.Config]:
    if not torch.cuda.is_available():
        return _POINTER_CONFIGS_AMPERE
    return _POINTER_CONFIGS_HOPPER if capability(torch.cuda.current_device())[0] >= 9 else _POINTER_CONFIGS_AMPERE


@triton.autotune(configs=_pointer_configs(), key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m},
                 do_bench=sustained_bench)
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


def _tma_cfg(bm: int, bn: int, bk: int, warps: int, stages: int, subtile: bool = True, tma_store: bool = True,
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
    _tma_cfg(128, 256, 128, 8, 4), _tma_cfg(128, 256, 128, 8, 4, split_tail=False), _tma_cfg(256, 128, 128, 8, 3),
    _tma_cfg(256, 128, 128, 8, 4), _tma_cfg(128, 128, 128, 4, 3, persistent=False),
    _tma_cfg(128, 128, 128, 8, 3, persistent=False),
    _tma_cfg(256, 128, 128, 8, 3, persistent=False), _tma_cfg(128, 256, 128, 8, 3, tma_store=False),
    _tma_cfg(128, 256, 128, 8, 3, subtile=False, tma_store=False),
    _tma_cfg(64, 128, 128, 4, 4, subtile=False), _tma_cfg(64, 64, 128, 4, 5, subtile=False),
    # 512 rows (Flux's text stream): 64x128 one tile per program, 39.8 vs 47.7 us at 512x12288->3072 and 11.7 vs
    # 13.9 us at 512x3072->3072 against the previous picks (docs/results/gemm_sweep_m512_h100_s4.json)
    _tma_cfg(64, 128, 128, 4, 4, subtile=False, persistent=False),
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


@triton.autotune(configs=TMA_CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m},
                 do_bench=sustained_bench)  # configs ranked at the clocks they sustain (see tuning.py)
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


_tma_launch = CompiledLauncher(_int8_gemm_tma_kernel.fn)
_tuned: dict[tuple, triton.Config] = {}  # autotuner's pick per (M bucket, N, K, dtypes, bias, TMA store)
_split_workspace = SplitKWorkspace(torch.int32)  # int32 partial tiles of the split tail
_LARGEST_TILE = max(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in TMA_CONFIGS)  # elements


def _tail_workspace(device: torch.device, num_sms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for one partial tile (the largest config's) per SM, and a counter per SM."""
    return _split_workspace.get(device, num_sms * _LARGEST_TILE, num_sms)


def reserve_tail_workspace(device: torch.device) -> None:
    """Allocate the TMA kernel's split-tail workspace now (before a CUDA graph is recorded: see
    ``prepare_device_state``); a no-op where that kernel cannot run."""
    if device.type != "cuda":
        return
    idx = device_index(device)
    if capability(idx)[0] >= 9:
        _tail_workspace(device, sm_count(idx))


def _grid_size(tiles: int, num_sms: int, kw: dict) -> int:
    if not kw["PERSISTENT"]:
        return tiles
    return num_sms if kw["SPLIT_TAIL"] else min(num_sms, tiles)  # a split tail may put several programs on a tile


def _launch_tma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor,
                bias_arg: torch.Tensor, has_bias: bool, config: triton.Config | None = None) -> None:
    """First call per shape key: the autotuner picks the config. Later calls: descriptors built for that config
    and a direct launch of the compiled kernel (the autotuner and JIT binding cost ~100 us of CPU per call).
    ``config`` (tests, benchmarks) skips the autotuner."""
    m, k = a.shape
    n = b.shape[0]
    dev = device_index(a.device)
    num_sms = sm_count(dev)
    part, count = _tail_workspace(a.device, num_sms)
    tma_store = n % 8 == 0 and c.data_ptr() % 16 == 0  # a TMA store needs 16-byte aligned rows of C
    bucket = m_bucket(m)
    tune_key = (bucket, n, k, c.dtype, bias_arg.dtype, has_bias, tma_store)
    cfg = config or _tuned.get(tune_key)
    if cfg is None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        # block shapes are set per config by _set_block_shapes; these placeholders only build the descriptors
        a_desc = TensorDescriptor.from_tensor(a, [64, 128])
        b_desc = TensorDescriptor.from_tensor(b, [64, 128])
        c_desc = TensorDescriptor.from_tensor(c, [64, 64]) if tma_store else None

        def grid(meta: dict) -> tuple[int]:
            return (_grid_size(cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), num_sms, meta),)

        _int8_gemm_tma_kernel[grid](a_desc, b_desc, c_desc, c, xs, ws, bias_arg, part, count, m, n, k, c.stride(0),
                                    bucket, HAS_BIAS=has_bias, CAN_TMA_STORE=tma_store, NUM_SMS=num_sms)
        _tuned[tune_key] = _int8_gemm_tma_kernel.best_config
        return
    kw = cfg.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    a_desc = descriptor(a, [bm, bk])
    b_desc = descriptor(b, [bn, bk])
    c_desc = descriptor(c, [bm, bn // 2 if kw["EPILOGUE_SUBTILE"] else bn]) if tma_store else None
    grid = (_grid_size(cdiv(m, bm) * cdiv(n, bn), num_sms, kw), 1, 1)
    # Specialization facts (see fast_launch): M is 1 / a multiple of 16; N, K and the bucket are in tune_key.
    key = (tune_key, m == 1, m % 16 == 0, alignment_bits(xs, ws, bias_arg, c))
    if config is not None:  # the tuned pick is implied by tune_key; an explicit one is not
        key += (tuple(sorted(kw.items())), config.num_warps, config.num_stages)
    _tma_launch(key, dev, grid, (a_desc, b_desc, c_desc, c, xs, ws, bias_arg, part, count, m, n, k, c.stride(0),
                                 bucket, has_bias, tma_store, bm, bn, bk, kw["GROUP_M"], num_sms,
                                 kw["EPILOGUE_SUBTILE"], kw["USE_TMA_STORE"], kw["PERSISTENT"], kw["SPLIT_TAIL"]),
                cfg.num_warps, cfg.num_stages)


def hopper_tma_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the TMA kernel can run: sm_90+, Triton with host tensor descriptors, 16-byte aligned rows."""
    if capability(device_index(a.device))[0] < 9:
        return False
    if a.shape[1] % 16 or a.stride(0) % 16 or b.stride(0) % 16 or a.data_ptr() % 16 or b.data_ptr() % 16:
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401 - Triton >= 3.4
    except ImportError:
        return False
    return True


def int8_gemm_dequant(
    a: torch.Tensor, x_scale: torch.Tensor, b: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
    out_dtype: torch.dtype, use_tma: bool | None = None, tma_config: triton.Config | None = None,
) -> torch.Tensor:
    """``(a [M,K] int8 @ b [N,K]^T) * x_scale[M] * w_scale[N] (+ bias[N])`` as ``out_dtype`` ``[M, N]``.

    Both int8 operands row-major; scales fp32 (any shape with M / N elements). ``use_tma`` None picks the
    Hopper kernels where they can run (the TMA kernel or the Gluon one, :mod:`gemm_choice`); ``tma_config`` (one
    of ``TMA_CONFIGS``) runs the TMA kernel with that config, bypassing its autotuner and the choice.
    """
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.copy_(bias.to(out_dtype).expand(m, n) if bias is not None else torch.zeros_like(c))
    xs = x_scale.reshape(-1)
    ws = w_scale.reshape(-1)
    bias_arg = bias if bias is not None else xs
    if use_tma is None:
        use_tma = hopper_tma_ok(a, b)
    if use_tma:
        if tma_config is not None:  # an explicit TMA config pins the TMA kernel
            _launch_tma(a, b, c, xs, ws, bias_arg, bias is not None, tma_config)
        else:  # the TMA kernel or the warp-specialized Gluon one, whichever timed faster for the shape
            key = (m_bucket(m), n, k, c.dtype, bias_arg.dtype, bias is not None)
            gemm_choice.launch_large(a, b, c, xs, ws, bias_arg, bias is not None, key,
                                     lambda: _launch_tma(a, b, c, xs, ws, bias_arg, bias is not None))
        return c

    def grid_ptr(meta: dict) -> tuple[int]:
        return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]),)

    _int8_gemm_kernel[grid_ptr](a, b, c, xs, ws, bias_arg, m, n, k, a.stride(0), b.stride(0), c.stride(0),
                                m_bucket(m), HAS_BIAS=bias is not None)
    return c
