"""The ComfyUI ops class's eager replay (``Int8Ops.Linear.forward`` through ``Int8LayerRuntime.replay``): a few-rows call whose input layout was seen
before replays its launch plan straight from ``forward``. Checked here with a stand-in plan on the reference
backend, in-process on the CPU against the real ComfyUI from COMFYUI_PATH (the real kernels' plans are GPU-tested
in tests/nodes/test_comfy_ops_eager_plan.py): the replay follows ComfyUI's state (replaced weights, cast/offload
modes, interrupts) exactly as the normal path does, and keeps no weight alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from comfy_int8_w8a8.int8.backends.reference import ReferenceBackend
from comfy_int8_w8a8.int8.config import Int8Config
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_linear_weight
from comfy_int8_w8a8.int8.weights import Int8Weights


@pytest.fixture(scope="module")
def comfy(comfy_cpu):
    import comfy.ops  # noqa: F401 - the ops classes ours derive from

    return comfy_cpu


class _Plan:
    """Stands in for an EagerPlan: counts replays and computes the normal path's result for the new input, holding
    the layer's tensors weakly like the real plans (None once one is gone)."""

    def __init__(self, backend, w: Int8Weights, config: Int8Config) -> None:  # noqa: ANN001
        self.backend, self.config, self.calls = backend, config, 0
        self.refs = [weakref.ref(t) for t in (w.weight, w.weight_scale, w.bias)]

    def __call__(self, x: torch.Tensor, out_shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        self.calls += 1
        tensors = [ref() for ref in self.refs]
        if any(t is None for t in tensors):
            return None
        y = self.backend.linear(x.reshape(-1, x.shape[-1]), Int8Weights(*tensors), self.config)
        return y if out_shape is None else y.reshape(out_shape)


@pytest.fixture
def layer(comfy, monkeypatch):  # noqa: ANN001, ANN201
    from comfy_int8_w8a8.nodes.comfy_ops import make_int8_ops
    from comfy_int8_w8a8.nodes.load_plan import Int8LoadPlan

    built: list[_Plan] = []

    def eager_plan(self, x, w, config):  # noqa: ANN001, ANN202
        built.append(_Plan(self, w, config))
        return built[-1], self.linear(x, w, config)

    monkeypatch.setattr(ReferenceBackend, "plan_rows", lambda self, config: 8)
    monkeypatch.setattr(ReferenceBackend, "eager_plan", eager_plan)
    plan = Int8LoadPlan(
        file="test", int8_config=Int8Config(runtime_backend="reference"), on_the_fly=True,
        decide=lambda name, w: None,
        quantize=lambda name, w, b: quantize_linear_weight(name, w, b, QuantizeConfig(outlier_method="none")))
    lin = make_int8_ops(plan).Linear(64, 32, bias=True, dtype=torch.bfloat16)
    lin.load_state_dict({"weight": torch.randn(32, 64).bfloat16() / 8, "bias": torch.randn(32).bfloat16()})
    assert lin.is_int8
    lin.built = built
    return lin


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, 64).bfloat16()


def test_second_call_replays_from_forward_with_the_same_result(layer):
    x = _x(2, 3)
    first = layer(x)  # records the plan
    assert len(layer.built) == 1 and layer.built[0].calls == 0 and len(layer._runtime.replays) == 1
    again = layer(x)
    assert layer.built[0].calls == 1 and torch.equal(again, first) and again.shape == (2, 3, 32)
    layer(_x(2, 3))  # other values, same layout: replayed
    assert layer.built[0].calls == 2


def test_replaced_weight_is_not_replayed_and_not_kept_alive(layer):
    x = _x(4)
    layer(x)
    layer(x)
    old = weakref.ref(layer.weight._qdata)
    layer.set_weight(torch.zeros(32, 64))  # what a LoRA bake does: a new weight object
    gc.collect()
    assert old() is None
    assert torch.equal(layer(x), layer.bias.expand(4, 32))  # zero weight: bias only
    assert layer.built[0].calls == 1 and len(layer.built) == 2  # a new plan for the new weight


def test_cast_and_offload_modes_take_comfyuis_path(layer, monkeypatch):
    x = _x(4)
    layer(x)
    layer(x)
    calls = []
    real = layer._run
    monkeypatch.setattr(layer, "_run", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layer.comfy_cast_weights = True  # ComfyUI moves (and patches) the weight per call: not a resident replay
    layer(x)
    assert layer.built[0].calls == 1 and calls == [1] and layer._runtime.replays == {}


def test_replay_honours_a_processing_interrupt(layer, comfy, monkeypatch):
    x = _x(4)
    layer(x)
    layer(x)

    def interrupted() -> None:
        raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", interrupted)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        layer(x)
