"""The ``reference`` backend: dequantize and run F.linear. Runs anywhere; the numerics every fast path matches."""

from __future__ import annotations

import torch

from ..quantize import dequantize, quantize_per_token
from .base import Backend, Int8Weights, prepare_activation

# A sum of 1024 products of int8 values is below 1024 * 127 * 127 < 2**24, so an fp32 GEMM over a K-chunk of
# this size is exact; chunks are added in float64 (exact too). fp32 GEMMs are 30x faster than torch._int_mm or
# float64 on CPUs.
_EXACT_FP32_K = 1024


def exact_int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] int8 @ b [N, K].T`` computed exactly, returned as float64 ``[M, N]``."""
    k = a.shape[1]
    acc = None
    for start in range(0, k, _EXACT_FP32_K):
        part = (a[:, start : start + _EXACT_FP32_K].float() @ b[:, start : start + _EXACT_FP32_K].float().t()).double()
        acc = part if acc is None else acc + part
    return acc


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    description = "Quantize activations per token and multiply the int8 values exactly with fp32 GEMMs (any device)."

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        x = prepare_activation(x, w)
        xq, xs = quantize_per_token(x)
        acc = exact_int8_matmul(xq, w.weight)
        y = acc.float() * xs * w.weight_scale.reshape(1, -1)
        if w.bias is not None:
            y = y + w.bias.float()
        return y.to(x.dtype)

    def weight_only_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        x = prepare_activation(x, w)
        weight = dequantize(w.weight, w.weight_scale, torch.float32)
        y = x.float() @ weight.t()
        if w.bias is not None:
            y = y + w.bias.float()
        return y.to(x.dtype)
