"""The ``triton`` backend: fused per-token activation quant (+ optional smoothing / Hadamard rotation) and an
int8 tensor-core GEMM with the dequant and bias in its epilogue. Kernels live in ``int8/kernels/``."""

from __future__ import annotations

import sys

import torch

from ..compat import triton_unavailable_reason
from ..config import Int8Config
from . import custom_ops
from .base import Backend, Int8Weights


class TritonBackend(Backend):
    name = "triton"
    priority = 20
    description = "Fused Triton kernels: per-token quant kernel + int8 GEMM with dequant and bias in the epilogue."

    def unavailable_reason(self, device: torch.device) -> str | None:
        # Not CUDA, no Triton, a GPU below sm_75, or a Triton below compat.MIN_TRITON (auto then takes torch_int_mm).
        return triton_unavailable_reason(device)

    def prepare_device_state(self, w: Int8Weights, config: Int8Config) -> None:
        from . import triton_dispatch

        super().prepare_device_state(w, config)
        triton_dispatch.prepare_device_state(w, config)

    def plan_rows(self, config: Int8Config) -> int:
        # Every eager call: the few-rows paths are one launch, the tiled W8A8 path two (quant kernel, GEMM), and at
        # a few hundred rows its Python (~100 us: routing, allocations, TMA descriptors) is the layer's cost too.
        return sys.maxsize

    def eager_plan(self, x: torch.Tensor, w: Int8Weights, config: Int8Config) -> tuple[object | None, torch.Tensor | None]:
        from ..launch.eager_plan import build_plan

        return build_plan(lambda x2: self.linear(x2, w, config), x, w)

    def w8a8_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        return custom_ops.triton_w8a8(x, w)

    def weight_only_linear(self, x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
        return custom_ops.triton_w8a16(x, w)
