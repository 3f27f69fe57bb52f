"""Eager launch plans: a few-rows call of a layer replayed as fixed, prepared kernel launches.

An uncompiled model runs each small layer from Python, and at a few rows that Python is the layer's cost: on an
H100 host a bf16 ``F.linear`` call costs 20-30 us of CPU and our layer ~33 us (one launch) to ~50 us (two), of
which each Triton launch is 5-8 us and each allocation 4-6 us (docs/results/host_probe_h100_s6.json). A plan is
built by running the layer's normal path once while :func:`capture_launches` records its launches (that call's
result is returned); later calls with the same rows, dtype, row stride and input alignment allocate the output
(and one scratch buffer for the quantized activations) and replay the launches with the new pointers: no routing,
config lookup, key building or argument binding per call.

A plan is only built for the plain routes: the W8A16 small-batch path without smoothing or rotation, and the
few-rows W8A8 path (quant kernel + split-K GEMM) without rotation. Anything else keeps the normal path.
"""

from __future__ import annotations

import torch

from ..backends.base import Int8Weights
from ..config import Int8Config
from . import triton_w8a8
from .fast_launch import PreparedLaunch, capture_launches
from .triton_quant import quantize_per_token_triton
from .triton_w8a16 import w8a16_linear

__all__ = ["EagerPlan", "build_plan"]

_ALIGN = 16  # the scratch buffer's scale block starts 16-byte aligned, like a fresh allocation


class EagerPlan:
    """Replays one or two prepared launches: [W8A16] or [activation quant, split-K W8A8 GEMM]."""

    __slots__ = ("_launches", "_out_shape", "_dtype", "_device", "_scratch_bytes", "_scale_offset", "_guards")

    def __init__(self, launches: list[PreparedLaunch], out_shape: tuple[int, int], dtype: torch.dtype,
                 device: torch.device, w: Int8Weights, scratch: tuple[int, int] = (0, 0)) -> None:
        self._launches, self._out_shape, self._dtype, self._device = launches, out_shape, dtype, device
        self._scratch_bytes, self._scale_offset = scratch
        # The launches hold the layer's tensors as raw pointers: a tensor whose storage is swapped in place
        # (``t.data = ...``) would leave them dangling, so each call checks the pointers first.
        tensors = (w.weight, w.weight_scale, w.bias, w.smooth)
        self._guards = tuple((t, t.data_ptr()) for t in tensors if t is not None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """The layer's output for ``x`` (same ``plan_key`` as the recorded call), or None if the layer's
        tensors moved since the plan was built (the caller then takes the normal path and drops the plan)."""
        for t, ptr in self._guards:
            if t.data_ptr() != ptr:
                return None
        out = torch.empty(self._out_shape, dtype=self._dtype, device=self._device)
        if self._scratch_bytes:
            q = torch.empty(self._scratch_bytes, dtype=torch.int8, device=self._device).data_ptr()
            scale = q + self._scale_offset
            quant, gemm = self._launches
            quant(x.data_ptr(), q, scale)
            gemm(q, scale, out.data_ptr())
        else:
            self._launches[0](x.data_ptr(), out.data_ptr())
        return out


def _plannable(x: torch.Tensor, w: Int8Weights) -> bool:
    """The plain routes whose only per-call tensors are the input, the output and the quantized activations."""
    if w.hadamard_group or x.dim() != 2 or x.stride(1) != 1 or x.shape[0] == 0:
        return False
    if not (w.weight.stride(1) == 1 and w.weight_scale.is_contiguous()):
        return False
    return w.bias is None or (w.bias.device == x.device and w.bias.is_contiguous())


def build_plan(x: torch.Tensor, w: Int8Weights, config: Int8Config) -> tuple[EagerPlan | None, torch.Tensor | None]:
    """Run the call ``x`` -> layer once while recording it: ``(plan or None, output or None)``.

    The output is None when no plan applies and nothing ran (the caller takes the normal path).
    """
    if not _plannable(x, w):
        return None, None
    m, k = x.shape
    n = w.out_features
    if config.uses_small_batch_path(m, w.weight.numel()):
        if x.dtype not in (torch.float16, torch.bfloat16) or w.smooth is not None:
            return None, None
        with capture_launches() as launches:
            y = w8a16_linear(x, w.weight, w.weight_scale, w.bias)
        if len(launches) != 1 or launches[0] is None:
            return None, y
        return EagerPlan([launches[0].bind(x, y)], (m, n), x.dtype, x.device, w), y
    if not triton_w8a8.takes_split_k(x, w):
        return None, None
    with capture_launches() as launches:
        xq, xs = quantize_per_token_triton(x, w.smooth, 0)
        y = triton_w8a8.gemm_quantized(xq, xs, w, x.dtype)
    if len(launches) != 2 or None in launches:
        return None, y
    scale_offset = -(-m * k // _ALIGN) * _ALIGN
    quant, gemm = launches[0].bind(x, xq, xs), launches[1].bind(xq, xs, y)
    return EagerPlan([quant, gemm], (m, n), x.dtype, x.device, w, (scale_offset + 4 * m, scale_offset)), y
