"""The small-batch path: int8 weight, 16-bit activation (W8A16), dequant scale and bias in the epilogue.

At a few rows a linear layer is memory-bound: its time is the weight read. This kernel reads the int8 weight
(half the bytes of a bf16 weight), converts each tile to the activation dtype in registers (|q| <= 127 is exact
in fp16 and bf16), multiplies on the tensor cores with fp32 accumulation, and applies ``w_scale[n]`` and bias
once per output.

Enough programs must stream the weight at once to saturate HBM: a 3072x3072 layer has only 48 tiles of 64
columns for 132 SMs, and at 64 rows every program also re-reads all of x from L2. So the K loop is split over
SPLIT_K programs per tile (serial split-K): each writes its fp32 partial tile to a workspace, and the last to
arrive (a per-tile counter) sums the partials in a fixed order (deterministic), applies the epilogue and re-arms
the counter to 0 for the next launch. One launch, no memset, CUDA-graph safe. The counters are shared per
device, so two of these kernels must not run concurrently on different streams.

The config comes from a small table (no autotuner) and launches go through :class:`CompiledLauncher`: at these
sizes the GPU time is ~10 us and Triton's generic launch path would cost several times that on the CPU.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .fast_launch import CompiledLauncher
from .host import alignment_bits, cdiv, device_index, sm_count
from .triton_gemv import use_gemv, w8a16_gemv
from .workspace import SplitKWorkspace

__all__ = ["w8a16_linear", "w8a16_config", "reserve_workspace"]


@triton.jit
def _w8a16_kernel(
    x_ptr, w_ptr, c_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_wn, stride_cm,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_tiles = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)  # K tiles per split
    k_begin = pid_k * k_tiles * BLOCK_K
    offs_k = k_begin + tl.arange(0, BLOCK_K)
    rows_x = offs_m % M  # wrapped rows are computed and masked at the store
    rows_w = offs_n % N
    x_ptrs = x_ptr + rows_x.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + rows_w.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, k_tiles):
        k_mask = offs_k[None, :] < K - kt * BLOCK_K
        x = tl.load(x_ptrs, mask=k_mask, other=0.0)
        w = tl.load(w_ptrs, mask=k_mask, other=0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    m_mask = offs_m < M
    n_mask = offs_n < N
    if SPLIT_K > 1:
        tile = pid_m * tl.num_programs(0) + pid_n
        tile_elems: tl.constexpr = BLOCK_M * BLOCK_N
        offs_t = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ptr = part_ptr + tile.to(tl.int64) * (SPLIT_K * tile_elems)
        tl.store(tile_ptr + pid_k * tile_elems + offs_t, acc, cache_modifier=".cg")
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.load(tile_ptr + offs_t, cache_modifier=".cg")
            for s in tl.static_range(1, SPLIT_K):
                acc += tl.load(tile_ptr + s * tile_elems + offs_t, cache_modifier=".cg")
            y = acc * tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
            if HAS_BIAS:
                y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
            tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")  # re-arm for the next launch
    else:
        y = acc * tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


_launch = CompiledLauncher(_w8a16_kernel)


@functools.cache
def w8a16_config(m: int, n: int, k: int, num_sms: int) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for an ``[m, k] x [n, k]^T`` call.

    From an H100 sweep (CUDA-graph GPU time, docs/results/kernels_h100.md): wide 128-column tiles at 1-4 rows,
    32 columns up to 32 rows (less of x re-read per weight byte), 64 beyond; BLOCK_K 128; K split (up to 4) until
    the programs reach twice the SM count (up to 32 rows) or the SM count (more rows, where x re-reads cost more).
    """
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 128 if m <= 4 else (32 if m <= 32 else 64)
    block_k = 128
    tiles = cdiv(n, block_n) * cdiv(m, block_m)
    target = 2 * num_sms if m <= 32 else num_sms
    k_tiles = cdiv(k, block_k)
    split = 1
    while tiles * split < target and k_tiles >= 4 * split and split < 4:
        split *= 2
    return block_m, block_n, block_k, split, 4, 4


_workspace = SplitKWorkspace(torch.float32)  # fp32 partial tiles


def _workspace_size(m: int, n: int, block_m: int, block_n: int, split: int) -> tuple[int, int]:
    """(partial elements, counters) a launch with this tiling needs; (0, 0) without split-K."""
    tiles = cdiv(n, block_n) * cdiv(m, block_m)
    return (tiles * split * block_m * block_n, tiles) if split > 1 else (0, 0)


def reserve_workspace(device: torch.device, n: int, k: int, max_rows: int) -> None:
    """Grow the split-K workspace to what any call with 1..``max_rows`` rows on an ``[n, k]`` weight needs."""
    sms = sm_count(device_index(device))
    part, tiles = 0, 0
    for m in range(1, max_rows + 1):
        block_m, block_n, _, split, _, _ = w8a16_config(m, n, k, sms)
        need_part, need_tiles = _workspace_size(m, n, block_m, block_n, split)
        part, tiles = max(part, need_part), max(tiles, need_tiles)
    if part:
        _workspace.get(device, part, tiles)


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 config: tuple[int, int, int, int, int, int] | None = None) -> torch.Tensor:
    """``(x [M,K] fp16/bf16 @ weight [N,K] int8 ^T) * w_scale[N] (+ bias)`` in x's dtype, fp32 accumulation.

    One or two rows on a wide layer take the GEMV (:mod:`triton_gemv`); ``config`` overrides the table and
    always runs the tile kernel (benchmarks); see :func:`w8a16_config`.
    """
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"w8a16_linear takes fp16/bf16 activations, got {x.dtype}.")
    if not w_scale.is_contiguous():
        w_scale = w_scale.reshape(-1).contiguous()
    m, k = x.shape
    n = weight.shape[0]
    c = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return c
    dev = x.device.index
    sms = sm_count(dev)
    if config is None and use_gemv(m, n, sms):
        return w8a16_gemv(x, weight, w_scale, bias, c)
    block_m, block_n, block_k, split, warps, stages = config or w8a16_config(m, n, k, sms)
    grid = (cdiv(n, block_n), cdiv(m, block_m), split)
    ws = w_scale  # [N] or [N, 1] contiguous: the kernel reads ws[n] either way
    bias_arg = bias if bias is not None else ws
    part, count = _workspace.get(x.device, *_workspace_size(m, n, block_m, block_n, split)) if split > 1 else (ws, ws)
    sx, sw = x.stride(0), weight.stride(0)
    # Everything the JIT specializes on (see fast_launch): dtypes, ints that are 1 or multiples of 16, aligned pointers.
    aligned = alignment_bits(x, weight, ws, bias_arg, part, count, c)
    key = (x.dtype, bias.dtype if bias is not None else None, m == 1, m % 16 == 0, n, k, sx == 1, sx % 16 == 0,
           sw % 16 == 0, aligned, block_m, block_n, block_k, split, warps, stages)
    _launch(key, dev, grid, (x, weight, c, ws, bias_arg, part, count, m, n, k, sx, sw, c.stride(0), bias is not None,
                             block_m, block_n, block_k, split), warps, stages)
    return c
