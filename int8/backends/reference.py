"""The ``reference`` backend: dequantize and run F.linear. Runs anywhere; the numerics every fast path matches."""

from __future__ import annotations

import torch

from ..quantize import dequantize, quantize_per_token
from .base import Backend, Int8Weights, prepare_activation
from .registry import register_backend


@register_backend
class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    description = "Quantize activations per token, dequantize both operands and multiply in fp32 (any device)."

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        x = prepare_activation(x, w)
        xq, xs = quantize_per_token(x)
        # float64 holds every int8 x int8 sum exactly (|acc| < 127*127*K << 2**53), like the int32 GEMMs of
        # the fast backends; fp32 would round once K > 1040.
        acc = xq.double() @ w.weight.double().t()
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
