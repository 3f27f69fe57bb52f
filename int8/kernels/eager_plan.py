"""Eager launch plans: a few-rows call of a layer replayed as one prepared kernel launch.

An uncompiled model runs each small layer from Python, and at a few rows that Python is the layer's cost: on an
H100 host a bf16 ``F.linear`` call costs 20-30 us of CPU, our layer's routing, config lookup, launch-key building
and argument binding ~20 us, each Triton launch 5-8 us and each allocation 4-6 us
(docs/results/host_probe_h100_s6.json). A plan is built by running the layer's normal path once while
:func:`capture_launches` records it (that call's result is returned); later calls with the same ``plan_key``
allocate the output and replay the launch with the new input and output pointers, nothing else.

Only a call that is exactly one launch reading the input tensor itself and writing the returned tensor gets a
plan: the W8A16 small-batch kernels and the fused few-rows W8A8 kernel. Anything that runs torch ops around the
kernel (smoothing or rotation in the small-batch path, a copy of a strided input, fp32 matmuls) or two kernels
(rotated W8A8) fails that check and keeps the normal path.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..backends.base import Backend, Int8Weights, plan_key
from ..config import Int8Config
from .fast_launch import PreparedLaunch, capture_launches
from .host import is_capturing

__all__ = ["EagerPlan", "build_plan", "plans_apply", "planned_call"]

_NO_PLAN_YET = object()


class EagerPlan:
    """Allocates the output and replays one prepared launch on it."""

    __slots__ = ("_launch", "_out_shape", "_guards")

    def __init__(self, launch: PreparedLaunch, out: torch.Tensor, tensors: list[torch.Tensor]) -> None:
        self._launch, self._out_shape = launch.two_pointer_call(), tuple(out.shape)
        # The launch holds the layer's tensors as raw pointers without keeping them alive (their owner does, and
        # may free or move them: ComfyUI offloads weights). Each call checks every one still exists at its
        # recorded address (a freed tensor, or one whose storage was swapped by ``t.data = ...``, fails).
        self._guards = tuple((weakref.ref(t), t.data_ptr()) for t in tensors)

    def __call__(self, x: torch.Tensor, out_shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The layer's output for ``x`` (same ``plan_key`` as the recorded call, or a contiguous-rows view of such an
        ``x`` with more leading dims, then with ``out_shape``: the output's leading dims), or None if the layer's
        tensors moved since the plan was built (the caller then takes the normal path and drops the plan)."""
        for ref, ptr in self._guards:
            t = ref()
            if t is None or t.data_ptr() != ptr:
                return None
        # Output dtype and device are x's (build_plan checks): new_empty skips torch.empty's argument parsing.
        out = x.new_empty(out_shape or self._out_shape)
        self._launch(x.data_ptr(), out.data_ptr())
        return out


def _fixed_inputs_ok(x: torch.Tensor, w: Int8Weights) -> bool:
    """The layer tensors a launch may bake in: a bias the kernels would otherwise copy per call (another device,
    strided) would be baked as that copy, so such layers keep the normal path."""
    if w.weight.stride(1) != 1 or not w.weight_scale.is_contiguous():
        return False
    return w.bias is None or (w.bias.device == x.device and w.bias.is_contiguous())


def build_plan(backend: Backend, x: torch.Tensor, w: Int8Weights,
               config: Int8Config) -> tuple[EagerPlan | None, torch.Tensor]:
    """Run ``backend.linear(x, w, config)`` once while recording it: ``(plan or None, output)``."""
    if not _fixed_inputs_ok(x, w):
        return None, backend.linear(x, w, config)
    with capture_launches() as launches:
        y = backend.linear(x, w, config)
    if len(launches) != 1 or launches[0] is None or y.dtype != x.dtype:
        return None, y
    layer_tensors = [t for t in (w.weight, w.weight_scale, w.bias, w.smooth) if t is not None]
    try:
        launch = launches[0].bind(x, y, borrowed=layer_tensors)
    except ValueError:  # the kernel read a transformed copy of x, or wrote something y was computed from
        return None, y
    return EagerPlan(launch, y, layer_tensors), y


def plans_apply(x: torch.Tensor, max_rows: int) -> bool:
    """Whether a call on 2-D ``x`` may go through a plan: eager (plans cut CPU per call; a CUDA graph being recorded
    needs none, and records the faster GPU path instead), and at most ``max_rows`` rows. ``is_compiling()`` comes
    first, so dynamo never sees (and guards on) the row comparison."""
    return not torch.compiler.is_compiling() and x.shape[0] <= max_rows and not is_capturing()


def planned_call(plans: dict, x: torch.Tensor, backend: Backend, weights: Int8Weights | Callable[[], Int8Weights],
                 config: Int8Config) -> torch.Tensor | None:
    """An eager call through ``plans`` (one layer's, keyed by ``plan_key``): replay the plan for ``x``'s key, or
    record it on the first call (that call's output is returned). None where no plan applies, or when the plan
    went stale (it is dropped, and the next call records again): the caller then runs the normal path.
    ``weights``: the layer's tensors, or a function building them (needed only when recording)."""
    key = plan_key(x)
    plan = plans.get(key, _NO_PLAN_YET)
    if plan is None:
        return None
    if plan is _NO_PLAN_YET:
        plans[key], y = backend.eager_plan(x, weights() if callable(weights) else weights, config)
        return y
    y = plan(x)
    if y is None:
        plans.clear()
    return y
