"""The ``torch_int_mm`` backend: per-token quant in torch, ``torch._int_mm`` (cuBLAS / CPU), dequant in torch."""

from __future__ import annotations

import torch

from ..quantize import quantize_per_token
from . import custom_ops
from .base import Backend, Int8Weights, cuda_int8_unavailable_reason, prepare_activation


class TorchIntMMBackend(Backend):
    name = "torch_int_mm"
    priority = 10
    description = "torch._int_mm (cuBLAS int8 GEMM on CUDA, oneDNN/ATen on CPU) with per-token quant and dequant in torch."

    def unavailable_reason(self, device: torch.device) -> str | None:
        if not hasattr(torch, "_int_mm"):
            return f"torch {torch.__version__} has no torch._int_mm (needs torch >= 2.2)"
        if device.type == "cuda":
            return cuda_int8_unavailable_reason(device)
        if device.type == "cpu":
            return None
        return f"device type '{device.type}' has no int8 matmul in torch"

    def auto_eligible(self, device: torch.device) -> bool:
        # On CPUs torch._int_mm measured 30x slower than an fp32 GEMM of the same shape (320x1024x256, 2 cores),
        # so `auto` runs the exact fp32-chunked reference there; the int8 kernel stays available by name.
        return device.type == "cuda"

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        x = prepare_activation(x, w)
        xq, xs = quantize_per_token(x)
        acc = custom_ops.int_mm(xq, w.weight)  # a custom op under torch.compile: no graph break
        y = acc.float() * xs * w.weight_scale.reshape(1, -1)
        if w.bias is not None:
            y = y + w.bias.float()
        return y.to(x.dtype)
