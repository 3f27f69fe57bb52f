"""The ``triton`` backend: fused per-token activation quant (+ optional smoothing / Hadamard rotation) and an
int8 tensor-core GEMM with the dequant and bias in its epilogue. Kernels live in ``int8/kernels/``."""

from __future__ import annotations

import importlib.util
import sys

import torch

from ..config import Int8Config
from ..kernels import custom_ops
from .base import Backend, Int8Weights, cuda_int8_unavailable_reason
from .registry import register_backend


@register_backend
class TritonBackend(Backend):
    name = "triton"
    priority = 20
    description = "Fused Triton kernels: per-token quant kernel + int8 GEMM with dequant and bias in the epilogue."

    def unavailable_reason(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"Triton kernels run on CUDA GPUs only, the layer is on {device.type}"
        if importlib.util.find_spec("triton") is None:
            return "the 'triton' package is not installed (pip install triton; on Windows: triton-windows)"
        return cuda_int8_unavailable_reason(device)

    def prepack(self, weight: torch.Tensor) -> object | None:
        from ..kernels import triton_w8a8

        return triton_w8a8.prepack_weight(weight)

    def prepare_device_state(self, w: Int8Weights, config: Int8Config) -> None:
        from ..kernels import triton_w8a8

        super().prepare_device_state(w, config)
        triton_w8a8.prepare_device_state(w, config)

    def plan_rows(self, config: Int8Config) -> int:
        # Every eager call: the few-rows paths are one launch, the tiled W8A8 path two (quant kernel, GEMM), and at
        # a few hundred rows its Python (~100 us: routing, allocations, TMA descriptors) is the layer's cost too.
        return sys.maxsize

    def eager_plan(self, x: torch.Tensor, w: Int8Weights, config: Int8Config) -> tuple[object | None, torch.Tensor | None]:
        from ..kernels.eager_plan import build_plan

        return build_plan(self, x, w, config)

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        return custom_ops.triton_w8a8(x, w)

    def weight_only_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        return custom_ops.triton_w8a16(x, w)
