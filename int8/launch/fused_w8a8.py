"""Host side of the one-launch few-rows W8A8 kernel (device code and its protocol:
:mod:`int8.kernels.triton_fused_w8a8`): the per-device scratch of quantized rows and counters, and the launch."""

from __future__ import annotations

import torch

from ..kernels.triton_fused_w8a8 import _fused_kernel
from ..kernels.triton_quant_common import INTERPRETED
from .fast_launch import CompiledLauncher
from .host import alignment_bits, cdiv, next_power_of_2
from .quant import smooth_operand
from .splitk import W8A8_MAX_ROWS, SplitKConfig, workspace_for
from .workspace import SplitKWorkspace

__all__ = ["fused_w8a8_linear", "reserve_scratch", "scratch_bytes"]

# Quant columns held in registers per pass: a whole row up to 16384 (one read), like the plain kernel. 4096-column
# passes were 1.5-2.6 us slower at K = 12288 (docs/results/fused_variants_h100_s6.json).
_CHUNK = 16384

_launch = CompiledLauncher(_fused_kernel)
# Quantized rows (int8, then the fp32 scales) and the two counters (zeroed, re-armed by the kernel).
_scratch = SplitKWorkspace(torch.int8)


def _scale_offset(m: int, k: int) -> int:
    return cdiv(m * k, 16) * 16  # the scales start 16-byte aligned, like a fresh allocation


def scratch_bytes(m: int, k: int) -> int:
    """Scratch a call with ``m`` rows of ``k`` columns uses: the int8 rows, then ``m`` fp32 scales."""
    return _scale_offset(m, k) + 4 * m


def reserve_scratch(device: torch.device, k: int) -> None:
    """Grow the scratch now (before any CUDA graph records a call) for every few-rows call with ``k`` columns."""
    _scratch.get(device, scratch_bytes(W8A8_MAX_ROWS, k), 2)


def fused_w8a8_linear(x: torch.Tensor, smooth: torch.Tensor | None, weight: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None, config: SplitKConfig) -> torch.Tensor:
    """Whole W8A8 linear of ``x [M, K]`` (fp16/bf16/fp32, unit column stride, M <= 64) in one launch; ``[M, N]`` in
    x's dtype. ``smooth``: ``[K]`` input multiplier or None; ``w_scale`` contiguous fp32; ``config`` the split-K
    tiling (:func:`triton_splitk.w8a8_config`)."""
    m, k = x.shape
    n = weight.shape[0]
    c = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return c
    block_m, block_n, block_k, split, warps, stages = config
    scratch, sync = _scratch.get(x.device, scratch_bytes(m, k), 2)
    off = _scale_offset(m, k)
    xs = scratch[off:off + 4 * m].view(torch.float32)
    part, count = workspace_for(True, x.device, m, n, config, w_scale)
    smooth_arg = smooth_operand(smooth, x)
    bias_arg = bias if bias is not None else w_scale
    chunk = min(next_power_of_2(k), _CHUNK)
    grid = (m + cdiv(n, block_n) * cdiv(m, block_m) * split, 1, 1)
    sx, sw = x.stride(0), weight.stride(0)
    args = (x, smooth_arg, scratch, xs, weight, c, w_scale, bias_arg, part, count, sync, m, n, k, sx, sw, c.stride(0),
            chunk, smooth is not None, k <= chunk, INTERPRETED, bias is not None, block_m, block_n, block_k, split)
    # Everything the JIT specializes on (see fast_launch): dtypes, ints that are 1 or multiples of 16, aligned pointers.
    key = (x.dtype, smooth_arg.dtype, bias.dtype if bias is not None else None, m == 1, m % 16 == 0, n, k, sx == 1,
           sx % 16 == 0, sw % 16 == 0, alignment_bits(*args[:11]), config, chunk)
    _launch(key, x.device.index, grid, args, warps, stages)
    return c
