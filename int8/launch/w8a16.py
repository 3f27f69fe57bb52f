"""The small-batch path: int8 weight, 16-bit activation (W8A16), dequant scale and bias in the epilogue.

At a few rows a linear layer is memory-bound: its time is the weight read. This path reads the int8 weight (half
the bytes of a bf16 weight) and converts each tile to the activation dtype in registers: one or two rows on a wide
layer take the CUDA-core GEMV (:mod:`gemv`), everything else the split-K tile kernel of
:mod:`splitk`, with its config from a small table (no autotuner).
"""

from __future__ import annotations

import functools

import torch

from . import splitk
from .gemv import use_gemv, w8a16_gemv
from .host import cdiv, device_index, sm_count

__all__ = ["w8a16_linear", "w8a16_config", "reserve_workspace"]


@functools.cache
def w8a16_config(m: int, n: int, k: int, num_sms: int) -> splitk.SplitKConfig:
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


def reserve_workspace(device: torch.device, n: int, k: int, max_rows: int) -> None:
    """Grow the split-K workspace to what any call with 1..``max_rows`` rows on an ``[n, k]`` weight needs."""
    sms = sm_count(device_index(device))
    splitk.reserve(device, False, n, range(1, max_rows + 1), lambda m: w8a16_config(m, n, k, sms))


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 config: splitk.SplitKConfig | None = None) -> torch.Tensor:
    """``(x [M,K] fp16/bf16 @ weight [N,K] int8 ^T) * w_scale[N] (+ bias)`` in x's dtype, fp32 accumulation.

    One or two rows on a wide layer take the GEMV (:mod:`gemv`); ``config`` overrides the table and
    always runs the tile kernel (benchmarks); see :func:`w8a16_config`.
    """
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"w8a16_linear takes fp16/bf16 activations, got {x.dtype}.")
    if not w_scale.is_contiguous():
        w_scale = w_scale.reshape(-1).contiguous()
    m, k = x.shape
    n = weight.shape[0]
    sms = sm_count(x.device.index)
    if config is None and use_gemv(m, n, sms):
        return w8a16_gemv(x, weight, w_scale, bias, torch.empty((m, n), dtype=x.dtype, device=x.device))
    return splitk.split_k_linear(x, weight, None, w_scale, bias, x.dtype, config or w8a16_config(m, n, k, sms))
