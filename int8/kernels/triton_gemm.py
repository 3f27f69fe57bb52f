"""The int8 tensor-core GEMM with the whole W8A8 dequant in its epilogue.

``C[m, n] = cast(acc[m, n] * x_scale[m] * w_scale[n] (+ bias[n]))`` where ``acc = A_q @ B_q^T`` is exact in int32.
A is the per-token-quantized activation ``[M, K]``, B the int8 weight ``[N, K]`` row-major: both K-major, which is
the operand layout Hopper's int8 ``wgmma`` requires (and Ampere's ``mma.sync`` reads without a transpose).
The epilogue computes in fp32 in the same order as the torch reference (``acc * xs * ws + bias``) and casts once.

Two kernels: a TMA + persistent one for Hopper (tensor descriptors need 16-byte aligned rows, i.e. K % 16 == 0)
and a pointer-based one for everything else (Ampere/Ada, odd K). Both are autotuned per (M bucket, N, K):
M is bucketed to a power of two so a sampler's changing token count does not re-tune on every call.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .fast_launch import CompiledLauncher

__all__ = ["int8_gemm_dequant", "m_bucket", "hopper_tma_ok"]


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two, clamped to [16, 16384]."""
    return min(max(triton.next_power_of_2(m), 16), 16384)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _prune_by_m(configs, named_args, **kwargs):  # noqa: ANN001 - triton autotune hook signature
    # Tiles much taller than the problem waste the tensor cores; keep the ones that fit the M bucket.
    m = named_args["M"]
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(m))]
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
    return _POINTER_CONFIGS_HOPPER if _capability(torch.cuda.current_device())[0] >= 9 else _POINTER_CONFIGS_AMPERE


@triton.autotune(configs=_pointer_configs(), key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m})
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
             persistent: bool = True, group_m: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "EPILOGUE_SUBTILE": subtile,
                          "USE_TMA_STORE": tma_store, "PERSISTENT": persistent, "FLATTEN": False,
                          "WARP_SPECIALIZE": False},
                         num_warps=warps, num_stages=stages, pre_hook=_set_block_shapes)


# The fastest variants of an H100 sweep (docs/results/kernels_h100.md): at Flux/Wan shapes a 128x256 tile with
# 4 stages and a TMA store, 256x128 (persistent or one tile per program), or 128x256 with 3 stages and pointer
# stores won; flattened loops, automatic warp specialization, BLOCK_K 64/256 and 128x128 tiles were slower, and
# 2-CTA clusters failed to compile (Triton 3.6).
_TMA_CONFIGS = [
    _tma_cfg(128, 256, 128, 8, 4), _tma_cfg(256, 128, 128, 8, 3), _tma_cfg(256, 128, 128, 8, 3, persistent=False),
    _tma_cfg(128, 256, 128, 8, 3, tma_store=False), _tma_cfg(128, 256, 128, 8, 3, subtile=False, tma_store=False),
    _tma_cfg(64, 128, 128, 4, 4, subtile=False), _tma_cfg(64, 64, 128, 4, 5, subtile=False),
]


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


@triton.autotune(configs=_TMA_CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m})
@triton.jit
def _int8_gemm_tma_kernel(
    a_desc, b_desc, c_desc, c_ptr, xs_ptr, ws_ptr, bias_ptr, M, N, K, stride_cm, M_BUCKET,
    HAS_BIAS: tl.constexpr, CAN_TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
    USE_TMA_STORE: tl.constexpr, PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    TMA_STORE: tl.constexpr = CAN_TMA_STORE and USE_TMA_STORE
    # Persistent: NUM_SMS programs stride over the tiles; otherwise one program per tile (the loop runs once).
    if PERSISTENT:
        step = NUM_SMS
    else:
        step = num_tiles
    # The epilogue recomputes its tile from its own counter, so a flattened loop need not carry pid_m/pid_n.
    tile_id_c = tl.program_id(0) - step
    for tile_id in tl.range(tl.program_id(0), num_tiles, step, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kt in range(k_tiles):
            a = a_desc.load([pid_m * BLOCK_M, kt * BLOCK_K])  # TMA zero-fills out-of-bounds rows and columns
            b = b_desc.load([pid_n * BLOCK_N, kt * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
        tile_id_c += step
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        if EPILOGUE_SUBTILE:
            # Two half-width stores: half the epilogue's live fp32 registers, so they don't spill at 128x256.
            acc0, acc1 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            _store_c(c_desc, c_ptr, acc0, xs_ptr, ws_ptr, bias_ptr, off_m, pid_n * BLOCK_N, M, N, stride_cm,
                     HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N // 2)
            _store_c(c_desc, c_ptr, acc1, xs_ptr, ws_ptr, bias_ptr, off_m, pid_n * BLOCK_N + BLOCK_N // 2, M, N,
                     stride_cm, HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N // 2)
        else:
            _store_c(c_desc, c_ptr, acc, xs_ptr, ws_ptr, bias_ptr, off_m, pid_n * BLOCK_N, M, N, stride_cm,
                     HAS_BIAS, TMA_STORE, BLOCK_M, BLOCK_N)


_tma_launch = CompiledLauncher(_int8_gemm_tma_kernel.fn)
_tuned: dict[tuple, triton.Config] = {}  # autotuner's pick per (M bucket, N, K, dtypes, bias, TMA store)


def _launch_tma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor,
                bias_arg: torch.Tensor, has_bias: bool) -> None:
    """First call per shape key: the autotuner picks the config. Later calls: descriptors built for that config
    and a direct launch of the compiled kernel (the autotuner and JIT binding cost ~100 us of CPU per call)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = a.shape
    n = b.shape[0]
    dev = a.device.index if a.device.index is not None else torch.cuda.current_device()
    num_sms = _sm_count(dev)
    tma_store = n % 8 == 0 and c.data_ptr() % 16 == 0  # a TMA store needs 16-byte aligned rows of C
    bucket = m_bucket(m)
    tune_key = (bucket, n, k, c.dtype, bias_arg.dtype, has_bias, tma_store)
    cfg = _tuned.get(tune_key)
    if cfg is None:
        # block shapes are set per config by _set_block_shapes; these placeholders only build the descriptors
        a_desc = TensorDescriptor.from_tensor(a, [64, 128])
        b_desc = TensorDescriptor.from_tensor(b, [64, 128])
        c_desc = TensorDescriptor.from_tensor(c, [64, 64]) if tma_store else None

        def grid(meta: dict) -> tuple[int]:
            tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
            return (min(num_sms, tiles) if meta["PERSISTENT"] else tiles,)

        _int8_gemm_tma_kernel[grid](a_desc, b_desc, c_desc, c, xs, ws, bias_arg, m, n, k, c.stride(0), bucket,
                                    HAS_BIAS=has_bias, CAN_TMA_STORE=tma_store, NUM_SMS=num_sms)
        _tuned[tune_key] = _int8_gemm_tma_kernel.best_config
        return
    kw = cfg.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(b, [bn, bk])
    c_desc = TensorDescriptor.from_tensor(c, [bm, bn // 2 if kw["EPILOGUE_SUBTILE"] else bn]) if tma_store else None
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    grid = (min(num_sms, tiles) if kw["PERSISTENT"] else tiles, 1, 1)
    # Specialization facts (see fast_launch): M is 1 / a multiple of 16; N, K and the bucket are in tune_key.
    key = (tune_key, m == 1, m % 16 == 0, xs.data_ptr() % 16 == 0, ws.data_ptr() % 16 == 0,
           bias_arg.data_ptr() % 16 == 0, c.data_ptr() % 16 == 0)
    _tma_launch(key, dev, grid, (a_desc, b_desc, c_desc, c, xs, ws, bias_arg, m, n, k, c.stride(0), bucket, has_bias,
                                 tma_store, bm, bn, bk, kw["GROUP_M"], num_sms, kw["EPILOGUE_SUBTILE"],
                                 kw["USE_TMA_STORE"], kw["PERSISTENT"], kw["FLATTEN"], kw["WARP_SPECIALIZE"]),
                cfg.num_warps, cfg.num_stages)


def hopper_tma_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the TMA kernel can run: sm_90+, Triton with host tensor descriptors, 16-byte aligned rows."""
    if _capability(a.device.index if a.device.index is not None else torch.cuda.current_device())[0] < 9:
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
    out_dtype: torch.dtype, use_tma: bool | None = None,
) -> torch.Tensor:
    """``(a [M,K] int8 @ b [N,K]^T) * x_scale[M] * w_scale[N] (+ bias[N])`` as ``out_dtype`` ``[M, N]``.

    Both int8 operands row-major; scales fp32 (any shape with M / N elements). ``use_tma`` None picks the
    Hopper TMA kernel where it can run.
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
        _launch_tma(a, b, c, xs, ws, bias_arg, bias is not None)
        return c

    def grid_ptr(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _int8_gemm_kernel[grid_ptr](a, b, c, xs, ws, bias_arg, m, n, k, a.stride(0), b.stride(0), c.stride(0),
                                m_bucket(m), HAS_BIAS=bias is not None)
    return c
