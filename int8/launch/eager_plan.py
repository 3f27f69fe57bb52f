"""Eager launch plans: an eager call of a layer replayed as its prepared kernel launches.

An uncompiled model runs each layer from Python, and at a few rows (or a few hundred on a fast GPU) that Python is
the layer's cost: on an H100 host a bf16 ``F.linear`` call costs 20-30 us of CPU, our layer's routing, config
lookup, launch-key building and argument binding ~20 us, each Triton launch 5-8 us and each allocation 4-6 us
(docs/results/host_probe_h100_s6.json); the two-kernel W8A8 path with TMA descriptors ~100 us
(docs/results/prof_large_h100_s8.json). A plan is built by running the layer's normal path while
:func:`capture_launches` records it (that call's result is returned); later calls with the same ``plan_key``
allocate the output (and the buffers between the kernels) and replay the launches with the new pointers.

What gets a plan: a call whose every kernel is a recorded :class:`CompiledLauncher` launch reading the input
tensor itself and writing the returned tensor, with the buffers between kernels declared per-call
(:func:`note_temporary`). The W8A16 small-batch kernels and the fused few-rows W8A8 kernel are one launch; the tiled
W8A8 path is the quant kernel then the GEMM (TMA descriptors re-encoded per call). Anything that runs torch ops
around the kernels (smoothing or rotation in the small-batch path, a copy of a strided input, fp32 matmuls) fails
that check and keeps the normal path. A first call whose GEMM went through Triton's autotuner (not a recorded
launch) is recorded again on a later call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..weights import Int8Weights
from .fast_launch import PreparedLaunch, capture_launches
from .host import is_capturing

__all__ = ["EagerPlan", "RETRY", "build_plan", "plan_key", "plans_apply", "planned_call", "replay_key", "replayable"]


RETRY = object()  # build_plan: no plan from this call, but a later call may record one
_ATTEMPTS = 3  # recordings per plan key before giving up


def plan_key(x: torch.Tensor) -> tuple:
    """What an eager plan is specialized on besides the layer: rows, dtype, strides, and whether ``x`` is 16-byte
    aligned (its kernels were compiled for that); ``x`` is 2-D."""
    return x.shape[0], x.dtype, x.stride(0), x.stride(1), x.data_ptr() % 16 == 0


class EagerPlan:
    """Allocates the output (and the buffers between kernels) and replays the prepared launches on them."""

    __slots__ = ("_launch", "_launches", "_temporaries", "_out_shape", "_guards")

    def __init__(self, out: torch.Tensor, tensors: list[torch.Tensor], launch: PreparedLaunch | None = None,
                 launches: tuple[Callable[[list[int]], None], ...] = (),
                 temporaries: tuple[tuple[tuple[int, ...], torch.dtype], ...] = ()) -> None:
        """``launch``: one launch bound to (input, output); or ``launches``, replayers over the pointers of
        (input, *temporaries, output), with ``temporaries`` as (shape, dtype) of the buffers between kernels."""
        self._launch = launch.two_pointer_call() if launch is not None else None
        self._launches, self._temporaries, self._out_shape = launches, temporaries, tuple(out.shape)
        # The launches hold the layer's tensors as raw pointers without keeping them alive (their owner does, and
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
        if self._launch is not None:
            self._launch(x.data_ptr(), out.data_ptr())
            return out
        # The buffers between kernels live until the launches are queued; the allocator reuses them in stream order.
        buffers = [x.new_empty(shape, dtype=dtype) for shape, dtype in self._temporaries]
        pointers = [x.data_ptr(), *[b.data_ptr() for b in buffers], out.data_ptr()]
        for replay in self._launches:
            replay(pointers)
        return out


def _fixed_inputs_ok(x: torch.Tensor, w: Int8Weights) -> bool:
    """The layer tensors a launch may bake in: a bias the kernels would otherwise copy per call (another device,
    strided) would be baked as that copy, so such layers keep the normal path."""
    if w.weight.stride(1) != 1 or not w.weight_scale.is_contiguous():
        return False
    return w.bias is None or (w.bias.device == x.device and w.bias.is_contiguous())


def build_plan(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               w: Int8Weights) -> tuple[EagerPlan | object | None, torch.Tensor]:
    """Run the layer's normal path ``run(x)`` (a call on the tensors of ``w``) once while recording it:
    ``(plan, output)``, where plan is an :class:`EagerPlan`, None (never for this key) or :data:`RETRY` (record
    again on a later call)."""
    if not _fixed_inputs_ok(x, w):
        return None, run(x)
    with capture_launches() as recording:
        y = run(x)
    if not recording or None in recording or y.dtype != x.dtype:
        return None, y
    layer_tensors = [t for t in (w.weight, w.weight_scale, w.bias, w.smooth) if t is not None]
    temporaries = recording.temporaries
    if len(recording) == 1 and not temporaries:
        try:
            launch = recording[0].bind(x, y, borrowed=layer_tensors)
        except ValueError:  # the kernel read a transformed copy of x, or wrote something y was computed from
            return None, y
        return EagerPlan(y, layer_tensors, launch=launch), y
    if any(not t.is_contiguous() or t.device != x.device for t in temporaries):
        return None, y
    per_call = [x, *temporaries, y]
    try:
        launches = tuple(launch.replayer(per_call, borrowed=layer_tensors) for launch in recording)
    except ValueError:
        return None, y
    used = set().union(*(launch.per_call_used for launch in launches))
    if len(per_call) - 1 not in used:  # y came from a launch not recorded (a first call's autotuning): later
        return RETRY, y
    if len(used) != len(per_call):  # x itself, or a declared buffer, is read by no recorded kernel
        return None, y
    return EagerPlan(y, layer_tensors, launches=launches,
                     temporaries=tuple((tuple(t.shape), t.dtype) for t in temporaries)), y


def plans_apply(x: torch.Tensor, max_rows: int) -> bool:
    """Whether a call on 2-D ``x`` may go through a plan: eager (plans cut CPU per call; a CUDA graph being recorded
    needs none, and records the faster GPU path instead), and at most ``max_rows`` rows. ``is_compiling()`` comes
    first, so dynamo never sees (and guards on) the row comparison."""
    return not torch.compiler.is_compiling() and x.shape[0] <= max_rows and not is_capturing()


def planned_call(plans: dict, x: torch.Tensor, record: Callable[[torch.Tensor, Int8Weights, object], tuple],
                 weights: Int8Weights | Callable[[], Int8Weights], config: object) -> torch.Tensor | None:
    """An eager call through ``plans`` (one layer's, keyed by ``plan_key``): replay the plan for ``x``'s key, or
    record it (that call's output is returned). None where no plan applies, or when the plan went stale (it is
    dropped, and the next call records again): the caller then runs the normal path.
    ``record(x, weights, config) -> (plan, y)`` runs the call once and builds its plan (a backend's ``eager_plan``);
    ``weights``: the layer's tensors, or a function building them (needed only when recording); ``config``: passed
    through to ``record``."""
    key = plan_key(x)
    plan = plans.get(key, 0)
    if plan is None:
        return None
    if isinstance(plan, int):  # not recorded yet (the number of recordings that asked to be retried)
        built, y = record(x, weights() if callable(weights) else weights, config)
        plans[key] = (plan + 1 if plan + 1 < _ATTEMPTS else None) if built is RETRY else built
        return y
    y = plan(x)
    if y is None:
        plans.clear()
    return y


def replay_key(x: torch.Tensor) -> tuple:
    """What a layer remembers a replay under (see ``Int8Linear.forward``): ``x`` as the layer got it, any leading
    dims, by shape, strides, dtype, device index and 16-byte alignment."""
    return x.shape, x.stride(), x.dtype, x.get_device(), x.data_ptr() % 16 == 0


def replayable(plans: dict, x: torch.Tensor, x2: torch.Tensor) -> EagerPlan | None:
    """The recorded plan of the call that just ran on ``x2`` (``x`` as 2-D), if later calls with ``x``'s
    :func:`replay_key` may replay it straight from the layer's ``forward``: ``x2`` must be ``x`` itself, or the 2-D
    view of a contiguous ``x`` (same address, so same plan and pointer)."""
    plan = plans.get(plan_key(x2))
    if plan is None or isinstance(plan, int) or not (x2 is x or x.is_contiguous()):
        return None
    return plan
