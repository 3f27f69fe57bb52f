"""The runtime of one quantized Linear, shared by every caller: ``Int8Linear`` and the ComfyUI ops Linear.

It owns what a layer decides per call and caches between calls:
- the backend per device (:class:`BackendChoice`, shared by all layers of one load, so ``auto`` resolves once);
- the per-device state of the layer's current tensors: the eager launch plans, and the persistent per-device buffers the backend fills once (``prepare_device_state``);
- replays straight from ``forward``: an eager call whose input layout (``replay_key``) was seen before runs its
  recorded plan with almost no Python (at 1-64 rows the layer's cost is CPU time, and so is bf16 ``F.linear``'s).

Every cache holds the layer's tensors weakly and checks them by identity: the owner (an ``nn.Module``, or ComfyUI,
which replaces, offloads and patches weights) decides what lives; a replaced tensor simply misses the cache.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from .backends.base import Backend
from .backends.registry import resolve_backend
from .compat import eager_plans
from .config import Int8Config
from .launch.eager_plan import planned_call, plans_apply, replay_key, replayable
from .launch.host import is_capturing
from .weights import Int8Weights

__all__ = ["BackendChoice", "Int8LayerRuntime"]


class BackendChoice:
    """The backend of one ``runtime_backend`` setting per device, resolved once (``auto`` logs its choice once), and
    the rows up to which eager calls may replay a launch plan on it. One is shared by every layer of a load."""

    def __init__(self, config: Int8Config) -> None:
        self.config = config
        self._backends: dict[torch.device, Backend] = {}
        self._plan_rows: dict[str, int] = {}

    def backend_for(self, device: torch.device) -> Backend:
        backend = self._backends.get(device)
        if backend is None:
            backend = self._backends[device] = resolve_backend(self.config.runtime_backend, device)
        return backend

    def plan_rows(self, backend: Backend) -> int:
        """Eager calls with at most this many rows may go through a launch plan on ``backend`` (0: never)."""
        rows = self._plan_rows.get(backend.name)
        if rows is None:
            rows = backend.plan_rows(self.config) if eager_plans() else 0
            self._plan_rows[backend.name] = rows
        return rows

    @property
    def chosen(self) -> str | None:
        """The name of a backend resolved so far (for ``repr``), or None."""
        return next(iter(self._backends.values())).name if self._backends else None


def _ref(t: torch.Tensor | None) -> weakref.ref | None:
    return None if t is None else weakref.ref(t)


def _deref(ref: weakref.ref | None) -> torch.Tensor | None:
    return None if ref is None else ref()


@dataclass
class _DeviceState:
    """What one device's calls reuse while the layer's tensors stay the same objects (held weakly)."""

    refs: tuple  # weakrefs to weight, weight_scale, bias, smooth (None for an absent one)
    hadamard_group: int
    backend: Backend
    plan_rows: int
    plans: dict = field(default_factory=dict)  # plan_key -> eager plan (see eager_plan.planned_call)

    def matches(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                smooth: torch.Tensor | None, hadamard_group: int) -> bool:
        r = self.refs
        return (r[0]() is weight and r[1]() is scale and _deref(r[2]) is bias and _deref(r[3]) is smooth
                and self.hadamard_group == hadamard_group)


class Int8LayerRuntime:
    """Computes one quantized Linear: ``y = runtime(x, weight, scale, bias, hadamard_group, smooth)``.

    ``x`` is ``[..., K]`` fp16/bf16/fp32 (the caller checks shape and dtype); the tensors are the layer's current
    ones (see :class:`~.weights.Int8Weights`). ``cache=False`` marks tensors that live for this call only (ComfyUI
    moved an offloaded weight to the GPU): nothing is cached for them. ``replays`` is non-empty once a call could be
    replayed: callers test it before :meth:`replay`, which keeps the fast path's cost at one dict lookup.
    """

    __slots__ = ("choice", "out_features", "_state", "replays")

    def __init__(self, choice: BackendChoice, out_features: int) -> None:
        self.choice = choice
        self.out_features = out_features
        self._state: dict[torch.device, _DeviceState] = {}
        # replay_key(x) -> (plan, weakrefs to weight, scale, bias, smooth it was built on, output shape)
        self.replays: dict[tuple, tuple] = {}

    @property
    def config(self) -> Int8Config:
        return self.choice.config

    def reset(self) -> None:
        """Forget every cache (the tensors moved, or were reloaded in place with new settings)."""
        self._state.clear()
        self.replays.clear()

    def replay(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
               smooth: torch.Tensor | None) -> torch.Tensor | None:
        """An eager call with an input layout seen before on these same tensors: the recorded plan run on ``x``;
        None (the caller takes the normal path) otherwise. Not for traced code: callers check ``is_compiling``."""
        hit = self.replays.get(replay_key(x))
        if hit is None or is_capturing():
            return None
        plan, w_ref, s_ref, b_ref, m_ref, out_shape = hit
        if (w_ref() is weight and s_ref() is scale and (b_ref() if b_ref is not None else None) is bias
                and (m_ref() if m_ref is not None else None) is smooth):
            y = plan(x, out_shape)
            if y is not None:
                return y
        self.replays.clear()  # tensors replaced, moved or freed: the normal path rebuilds what it needs
        return None

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 hadamard_group: int, smooth: torch.Tensor | None, cache: bool = True) -> torch.Tensor:
        k = weight.shape[1]
        x2 = x if x.dim() == 2 else x.reshape(-1, k)  # (a reshape call costs ~2 us)
        if torch.compiler.is_compiling() or not cache:
            # Traced once into the compiled graph (no Python per call there), or tensors of this call only.
            backend = self.choice.backend_for(x.device)
            y = backend.linear(x2, Int8Weights(weight, scale, bias, hadamard_group, smooth), self.config)
        else:
            y = self._eager(x, x2, weight, scale, bias, hadamard_group, smooth)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _eager(self, x: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
               bias: torch.Tensor | None, hadamard_group: int, smooth: torch.Tensor | None) -> torch.Tensor:
        state = self._state_for(x.device, weight, scale, bias, hadamard_group, smooth)
        w = Int8Weights(weight, scale, bias, hadamard_group, smooth)
        if plans_apply(x2, state.plan_rows):
            y = planned_call(state.plans, x2, state.backend.eager_plan, w, self.config)
            if y is not None:
                plan = replayable(state.plans, x, x2)
                if plan is not None:
                    self.replays[replay_key(x)] = (plan, *state.refs, (*x.shape[:-1], self.out_features))
                return y
        return state.backend.linear(x2, w, self.config)

    def _state_for(self, device: torch.device, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                   hadamard_group: int, smooth: torch.Tensor | None) -> _DeviceState:
        state = self._state.get(device)
        if state is not None and state.matches(weight, scale, bias, smooth, hadamard_group):
            return state
        self.replays.clear()
        backend = self.choice.backend_for(device)
        state = _DeviceState((weakref.ref(weight), weakref.ref(scale), _ref(bias), _ref(smooth)), hadamard_group,
                             backend, self.choice.plan_rows(backend))
        backend.prepare_device_state(Int8Weights(weight, scale, bias, hadamard_group, smooth), self.config)
        self._state[device] = state
        return state

    def prepare(self, device: torch.device, weights: Int8Weights | None) -> Backend:
        """The backend for ``device``, with the persistent per-device buffers of ``weights`` (the layer's resident
        tensors, if on ``device``) allocated now: the lazy compile calls this before tracing, because a buffer first
        allocated inside a CUDA-graph warm-up would land in the graph's pool."""
        if weights is not None and weights.weight.device == device:
            w = weights
            return self._state_for(device, w.weight, w.weight_scale, w.bias, w.hadamard_group, w.smooth).backend
        return self.choice.backend_for(device)
