"""Host side of the int8 GEMM with the dequant in its epilogue (device code: :mod:`int8.kernels.triton_gemm`):
the autotuners around both kernels, the TMA kernel's direct launches and split-tail workspace, and the choice of
kernel per call.

Both kernels are autotuned per (M bucket, N, K), timing each config at the clocks it sustains under load
(:mod:`tuning`): M is bucketed to a power of two so a sampler's changing token count does not re-tune on every
call. Each pick is kept on disk (:mod:`tuning_cache`: ``tma_config``, ``pointer_config``), so a new process launches
a known shape without tuning it again. The TMA kernel and the Gluon one run only on sm_90 (Hopper's wgmma;
Blackwell takes the pointer kernel).
"""

from __future__ import annotations

import torch
import triton

from .. import compat
from ..kernels import triton_gemm as kernels
from ..kernels.triton_gemm import POINTER_CONFIGS_AMPERE, POINTER_CONFIGS_HOPPER, TMA_CONFIGS
from . import gemm_choice, tuning_cache
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

def _pointer_configs() -> list[triton.Config]:
    if not torch.cuda.is_available():
        return POINTER_CONFIGS_AMPERE
    return POINTER_CONFIGS_HOPPER if capability(torch.cuda.current_device())[0] >= 9 else POINTER_CONFIGS_AMPERE


_int8_gemm_kernel = triton.autotune(
    configs=_pointer_configs(), key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m},
    do_bench=sustained_bench)(kernels._int8_gemm_kernel)
_int8_gemm_tma_kernel = triton.autotune(
    configs=TMA_CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m},
    do_bench=sustained_bench)(kernels._int8_gemm_tma_kernel)  # configs ranked at the clocks they sustain
_tma_launch = CompiledLauncher(kernels._int8_gemm_tma_kernel)
_pointer_launch = kernels._int8_gemm_kernel  # launched with the autotuner's pick, past its per-call bookkeeping
_tuned: dict[tuple, triton.Config] = {}  # autotuner's pick per (M bucket, N, K, dtypes, bias, TMA store)
_pointer_tuned: dict[tuple, triton.Config] = {}  # the pointer autotuner's pick per its own key (see _launch_pointer)
_tma_on_disk = tuning_cache.Table("tma_config", TMA_CONFIGS)
_pointer_on_disk = tuning_cache.Table("pointer_config", _int8_gemm_kernel.configs)
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
    if capability(idx)[0] == 9:  # the TMA kernel is sm_90 only
        _tail_workspace(device, sm_count(idx))


def _grid_size(tiles: int, num_sms: int, kw: dict) -> int:
    if not kw["PERSISTENT"]:
        return tiles
    return num_sms if kw["SPLIT_TAIL"] else min(num_sms, tiles)  # a split tail may put several programs on a tile


def _launch_tma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor,
                bias_arg: torch.Tensor, has_bias: bool, config: triton.Config | None = None) -> None:
    """First call per shape key: the config an earlier process picked (:mod:`tuning_cache`), else the autotuner's
    pick (then stored). Later calls: descriptors built for that config and a direct launch of the compiled kernel
    (the autotuner and JIT binding cost ~100 us of CPU per call). ``config`` (tests, benchmarks) skips both."""
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
        cfg = _tma_on_disk.get(tune_key, dev)
        if cfg is not tuning_cache.MISS:
            _tuned[tune_key] = cfg
    if cfg is tuning_cache.MISS:
        TensorDescriptor = compat.tensor_descriptor_class()  # noqa: N806 - the class itself

        # block shapes are set per config by _set_block_shapes; these placeholders only build the descriptors
        a_desc = TensorDescriptor.from_tensor(a, [64, 128])
        b_desc = TensorDescriptor.from_tensor(b, [64, 128])
        c_desc = TensorDescriptor.from_tensor(c, [64, 64]) if tma_store else None

        def grid(meta: dict) -> tuple[int]:
            return (_grid_size(cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]), num_sms, meta),)

        _int8_gemm_tma_kernel[grid](a_desc, b_desc, c_desc, c, xs, ws, bias_arg, part, count, m, n, k, c.stride(0),
                                    bucket, HAS_BIAS=has_bias, CAN_TMA_STORE=tma_store, NUM_SMS=num_sms)
        _tuned[tune_key] = _int8_gemm_tma_kernel.best_config
        _tma_on_disk.put(tune_key, _int8_gemm_tma_kernel.best_config, dev)
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
    """True when the TMA kernel can run: sm_90 exactly (wgmma; Blackwell has tcgen05 instead), 16-byte aligned
    rows, and a Triton with host tensor descriptors (:func:`compat.host_tma`, off with ``INT8_W8A8_NO_TMA``)."""
    if capability(device_index(a.device))[0] != 9:
        return False
    if a.shape[1] % 16 or a.stride(0) % 16 or b.stride(0) % 16 or a.data_ptr() % 16 or b.data_ptr() % 16:
        return False
    return compat.host_tma()


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

    _launch_pointer(a, b, c, xs, ws, bias_arg, bias is not None)
    return c


def _launch_pointer(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor,
                    bias_arg: torch.Tensor, has_bias: bool) -> None:
    """The pointer kernel with the config picked for the call's key: an earlier process's (:mod:`tuning_cache`),
    else its autotuner's, on the first call (then stored). The key is the autotuner's own (its key arguments, then
    every tensor argument's dtype; not HAS_BIAS), so the same calls share a pick as when the autotuner ran each one."""
    m, k = a.shape
    n = b.shape[0]
    bucket = m_bucket(m)
    args = (a, b, c, xs, ws, bias_arg, m, n, k, a.stride(0), b.stride(0), c.stride(0), bucket)
    tune_key = (bucket, n, k, a.dtype, b.dtype, c.dtype, xs.dtype, ws.dtype, bias_arg.dtype)
    cfg = _pointer_tuned.get(tune_key)
    if cfg is None:
        dev = device_index(a.device)
        cfg = _pointer_on_disk.get(tune_key, dev)
        if cfg is tuning_cache.MISS:
            def grid_ptr(meta: dict) -> tuple[int]:
                return (cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"]),)

            _int8_gemm_kernel[grid_ptr](*args, HAS_BIAS=has_bias)
            _pointer_tuned[tune_key] = _int8_gemm_kernel.best_config
            _pointer_on_disk.put(tune_key, _int8_gemm_kernel.best_config, dev)
            return
        _pointer_tuned[tune_key] = cfg
    kw = cfg.kwargs
    # what the autotuner passes for its pick (the pointer configs have no pre-hook)
    _pointer_launch[(cdiv(m, kw["BLOCK_M"]) * cdiv(n, kw["BLOCK_N"]),)](*args, HAS_BIAS=has_bias, **cfg.all_kwargs())
