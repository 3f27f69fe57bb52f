"""Which Triton kernels run a call of the ``triton`` backend: the W8A8 linear (per-token activation quant, + smoothing,
+ block Hadamard rotation, then the int8 GEMM with dequant and bias in its epilogue: fused, split-K or tiled by the
row count) and the W8A16 small-batch path.

These call the launchers of ``int8/launch/``; ``custom_ops`` wraps them as ``torch.library`` ops so
``torch.compile`` sees one opaque node per layer.
"""

from __future__ import annotations

import torch

from ..config import Int8Config
from ..hadamard import build_hadamard
from ..launch import splitk
from ..launch.fused_w8a8 import fused_w8a8_linear, reserve_scratch
from ..launch.gemm import int8_gemm_dequant, reserve_tail_workspace
from ..launch.host import is_capturing, sm_count, supports_pdl
from ..launch.quant import one_pass_rotation_fits, quantize_per_token_triton, rotate_rows_triton
from ..launch.w8a16 import reserve_workspace, w8a16_linear
from ..quantize import dequantize
from ..weights import Int8Weights
from .base import prepare_activation

__all__ = ["w8a8_linear", "weight_only_linear", "prepare_device_state"]

def _bias_arg(bias: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if bias is None:
        return None
    return bias if bias.device == device and bias.is_contiguous() else bias.to(device).contiguous()


def w8a8_linear(x2d: torch.Tensor, w: Int8Weights, *, fused: bool = True, pdl: bool = True) -> torch.Tensor:
    """``x2d [M, K]`` fp16/bf16/fp32 on CUDA -> ``[M, N]`` in ``x2d.dtype`` (whole W8A8 linear).

    The quant kernel (plain or rotating), then the GEMM: split-K at few rows, which keeps every SM streaming the
    weight, else tiled. Few rows without rotation outside a CUDA-graph capture run both in one kernel
    (:mod:`int8.launch.fused_w8a8`): there the CPU cost of a launch exceeds the fused kernel's extra ~1 us of GPU
    time; in a graph, launches are free. Both give the same bits.
    ``fused=False``: never the one-kernel path; ``pdl=False``: no programmatic dependent launch of the few-rows
    GEMM (where the GPU and Triton have it, :func:`launch.host.supports_pdl`); A/B switches for benchmarks and
    the equality tests."""
    x2d = x2d if x2d.stride(-1) == 1 else x2d.contiguous()
    m, k = x2d.shape
    dev = x2d.device.index
    split_k = splitk.w8a8_config(m, w.weight.shape[0], k, sm_count(dev))
    bias = _bias_arg(w.bias, x2d.device)
    if split_k is not None and not w.hadamard_group and fused and not is_capturing():
        return fused_w8a8_linear(x2d, w.smooth, w.weight, w.weight_scale, bias, split_k)
    xq, xs = quantize_per_token_triton(x2d, w.smooth, w.hadamard_group)
    if split_k is not None:
        # On Hopper the GEMM launches while the quant kernel runs (programmatic dependent launch): at these sizes
        # the launch gap is a sizeable part of the layer. The rotation kernel does not signal early, so no PDL.
        return splitk.split_k_linear(xq, w.weight, xs, w.weight_scale, bias, x2d.dtype, split_k,
                                            pdl=pdl and supports_pdl(dev) and not w.hadamard_group)
    return int8_gemm_dequant(xq, xs, w.weight, w.weight_scale, bias, x2d.dtype)


def _w8a16_activation(x2d: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    """The small-batch path's input after smoothing and rotation. A 16-bit rotated layer whose K the one-pass
    kernel takes rotates in that one launch: the torch form cost a rotated layer at 1-16 rows 4-8x the plain
    layer's eager time and +11-18 us of GPU time on an H100 (docs/results/kernels_grid_h100.json)."""
    if w.hadamard_group and x2d.dtype != torch.float32 and one_pass_rotation_fits(x2d.shape[1], w.hadamard_group):
        return rotate_rows_triton(x2d if x2d.stride(-1) == 1 else x2d.contiguous(), w.smooth, w.hadamard_group)
    return prepare_activation(x2d, w)


def weight_only_linear(x2d: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    """Small-batch path: smoothing/rotation (one Triton launch, or torch), then the W8A16 kernel (fp16/bf16) or a
    dequantized fp32 matmul."""
    x = _w8a16_activation(x2d, w)
    if x.dtype == torch.float32:
        # fp32 activations have no 16-bit tensor-core path worth a kernel; dequantize like the base backend.
        y = x @ dequantize(w.weight, w.weight_scale, torch.float32).t()
        return y + w.bias.float() if w.bias is not None else y
    x = x if x.stride(-1) == 1 else x.contiguous()
    return w8a16_linear(x, w.weight, w.weight_scale, _bias_arg(w.bias, x.device))


def prepare_device_state(w: Int8Weights, config: Int8Config) -> None:
    """Fill the per-device caches the kernels read (see ``Backend.prepare_device_state``): the Hadamard matrices
    of a rotated layer, the split-K workspaces for the largest small-batch and few-rows W8A8 calls this layer can
    get, the fused few-rows kernel's scratch, and the GEMM's split-tail workspace."""
    device = w.weight.device
    if device.type != "cuda":
        return
    reserve_tail_workspace(device)
    if w.hadamard_group:  # (the base backend fills rotate_activation's matrix for the small-batch path)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            build_hadamard(64, device, dtype)  # the rotation kernel's, in the activation's dtype
    if config.uses_small_batch_path(1, w.weight.numel()):
        reserve_workspace(device, w.out_features, w.in_features, config.small_batch_rows)
    splitk.reserve_w8a8(device, w.out_features, w.in_features)
    if not w.hadamard_group:
        reserve_scratch(device, w.in_features)
