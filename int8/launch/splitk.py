"""Host side of the few-rows split-K GEMM (device code and the protocol: :mod:`int8.kernels.triton_splitk`): the
W8A8 config table, the per-device workspaces of partial tiles and counters, and the launch."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..kernels.triton_splitk import _split_k_kernel
from .fast_launch import CompiledLauncher
from .host import alignment_bits, cdiv, device_index, sm_count
from .workspace import SplitKWorkspace

__all__ = ["SplitKConfig", "W8A8_MAX_ROWS", "w8a8_config", "split_k_linear", "workspace_size", "workspace_for",
           "reserve", "reserve_w8a8"]

SplitKConfig = tuple[int, int, int, int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages
W8A8_MAX_ROWS = 64  # W8A8 calls with at most this many rows take the split-K kernel instead of the tiled GEMM


@functools.cache
def w8a8_config(m: int, n: int, k: int, num_sms: int) -> SplitKConfig | None:
    """The split-K config of a W8A8 ``[m, k] x [n, k]^T`` call, or None where the tiled GEMM is faster.

    From H100 sweeps (CUDA-graph GPU time; docs/results/probe_h100_s5.json: 4 layer shapes x 1-128 rows, GEMM
    alone; few_rows_tune_h100_s5.json: whole layer with the quant kernel and programmatic launch): 256-deep K
    tiles; 128 columns at 1-4 rows, 32 beyond (each program re-reads its rows of x from L2: narrow tiles keep that
    cheap). Up to 32 rows the K loop is split (up to 4) until the programs reach twice the SM count (four times for
    K >= 8192); beyond 32 rows only for K >= 8192 (twice the SM count): at 64 rows on 3072->3072, 96 programs
    unsplit took 10.53 us for the whole layer against 10.64 split in two (bf16: 10.34).
    """
    if m > W8A8_MAX_ROWS:
        return None
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n, block_k = (128 if m <= 4 else 32), 256
    tiles = cdiv(n, block_n) * cdiv(m, block_m)
    long_k = k >= 8192
    target = 2 * num_sms * (2 if long_k else 1) if m <= 32 else (2 * num_sms if long_k else 0)
    k_tiles = cdiv(k, block_k)
    split = 1
    while tiles * split < target and k_tiles >= 2 * split and split < 4:
        split *= 2
    return block_m, block_n, block_k, split, 4, 3

_launch = CompiledLauncher(_split_k_kernel)
# Partial tiles: fp32 for W8A16, int32 for W8A8 (exact). Separate buffers, so neither path regrows the other's.
_workspaces = {torch.float32: SplitKWorkspace(torch.float32), torch.int32: SplitKWorkspace(torch.int32)}


def workspace_size(m: int, n: int, config: SplitKConfig) -> tuple[int, int]:
    """(partial elements, counters) a launch with this tiling needs; (0, 0) without split-K."""
    block_m, block_n, _, split = config[:4]
    tiles = cdiv(n, block_n) * cdiv(m, block_m)
    return (tiles * split * block_m * block_n, tiles) if split > 1 else (0, 0)


def workspace_for(int8_x: bool, device: torch.device, m: int, n: int, config: SplitKConfig,
                  unused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, counters) of a W8A8 (``int8_x``) or W8A16 launch with this tiling; ``unused`` twice (any valid
    pointer) when it does not split K."""
    if config[3] == 1:
        return unused, unused
    return _workspaces[torch.int32 if int8_x else torch.float32].get(device, *workspace_size(m, n, config))


def reserve(device: torch.device, int8_x: bool, n: int, rows: range,
            config_for: Callable[[int], SplitKConfig | None]) -> None:
    """Grow the W8A8 (``int8_x``) or W8A16 workspace now (before any CUDA graph records a call) to what every call
    with ``m`` in ``rows`` rows on a weight of ``n`` output channels needs; ``config_for(m)`` is that call's config
    (None: it does not take this kernel)."""
    part, tiles = 0, 0
    for m in rows:
        config = config_for(m)
        if config is not None:
            need_part, need_tiles = workspace_size(m, n, config)
            part, tiles = max(part, need_part), max(tiles, need_tiles)
    if part:
        _workspaces[torch.int32 if int8_x else torch.float32].get(device, part, tiles)


def reserve_w8a8(device: torch.device, n: int, k: int) -> None:
    """Reserve the W8A8 workspace for every few-rows call on an ``[n, k]`` weight (see :func:`reserve`)."""
    sms = sm_count(device_index(device))
    reserve(device, True, n, range(1, W8A8_MAX_ROWS + 1), lambda m: w8a8_config(m, n, k, sms))


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, x_scale: torch.Tensor | None, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype, config: SplitKConfig,
                   pdl: bool = False) -> torch.Tensor:
    """``(x [M,K] @ weight [N,K]^T) (* x_scale[M]) * w_scale[N] (+ bias)`` as ``out_dtype`` ``[M, N]``.

    ``x`` int8 with ``x_scale`` (W8A8), or fp16/bf16 with ``x_scale`` None (W8A16); scales fp32 and contiguous
    (any shape with M / N elements); ``x`` and ``weight`` with unit column stride. ``pdl`` (sm_90+): launch with
    programmatic dependent launch, so the launch overlaps the tail of the kernel before it (the activation quant).
    """
    m, k = x.shape
    n = weight.shape[0]
    c = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return c
    int8_x = x_scale is not None
    block_m, block_n, block_k, split, warps, stages = config
    grid = (cdiv(n, block_n), cdiv(m, block_m), split)
    xs = x_scale if int8_x else w_scale  # any valid pointer when unused
    bias_arg = bias if bias is not None else w_scale
    part, count = workspace_for(int8_x, x.device, m, n, config, w_scale)
    sx, sw = x.stride(0), weight.stride(0)
    # Everything the JIT specializes on (see fast_launch): dtypes, ints that are 1 or multiples of 16, aligned pointers.
    key = (x.dtype, out_dtype, bias.dtype if bias is not None else None, m == 1, m % 16 == 0, n, k, sx == 1,
           sx % 16 == 0, sw % 16 == 0, alignment_bits(x, weight, c, xs, w_scale, bias_arg, part, count), config, pdl)
    _launch(key, x.device.index, grid, (x, weight, c, xs, w_scale, bias_arg, part, count, m, n, k, sx, sw, c.stride(0),
                                        bias is not None, int8_x, block_m, block_n, block_k, split, pdl), warps, stages,
            pdl)
    return c
