"""Host side of the W8A16 GEMV for one or two rows on wide layers (device code: :mod:`int8.kernels.triton_gemv`):
when it runs, its fixed launch shape, and the launch."""

from __future__ import annotations

import torch

from ..kernels.triton_gemv import _gemv_kernel
from .fast_launch import CompiledLauncher
from .host import alignment_bits, cdiv

__all__ = ["use_gemv", "w8a16_gemv"]

_BLOCK_N = 32
_BLOCK_K = 256
_WARPS = 4
_STAGES = 4
MAX_ROWS = 2


def use_gemv(m: int, n: int, sm_count: int) -> bool:
    """Whether an ``[m, K] x [n, K]^T`` call takes the GEMV: at most two rows, and enough 32-channel programs for
    two per SM."""
    return 1 <= m <= MAX_ROWS and cdiv(n, _BLOCK_N) >= 2 * sm_count


_launch = CompiledLauncher(_gemv_kernel)


def w8a16_gemv(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               c: torch.Tensor) -> torch.Tensor:
    """``c = (x [M<=2, K] @ weight [N, K]^T) * w_scale[N] (+ bias)``, fp32 accumulation; ``w_scale`` contiguous with
    N elements, ``x`` and ``weight`` with unit column stride, ``c`` a fresh ``[M, N]`` tensor in x's dtype."""
    m, k = x.shape
    n = weight.shape[0]
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"w8a16_gemv takes 1 or 2 rows, got {m}.")
    bias_arg = bias if bias is not None else w_scale
    sx, sw = x.stride(0), weight.stride(0)
    # Everything the JIT specializes on (see fast_launch): dtypes, ints that are 1 or multiples of 16, aligned pointers.
    aligned = alignment_bits(x, weight, w_scale, bias_arg, c)
    key = (x.dtype, bias.dtype if bias is not None else None, m, n, k, sx == 1, sx % 16 == 0, sw % 16 == 0, aligned)
    grid = (cdiv(n, _BLOCK_N), 1, 1)
    _launch(key, x.device.index, grid, (x, weight, c, w_scale, bias_arg, n, k, sx, sw, c.stride(0), bias is not None,
                                        m, _BLOCK_N, _BLOCK_K, _STAGES), _WARPS, 3)
    return c
