"""Eager launch plans in the ComfyUI ops class's int8 Linear (GPU, ComfyUI importable in-process, e.g. on
PYTHONPATH): replays equal the normal path, follow replaced weights, and never keep a weight alive."""

from __future__ import annotations

import gc
import importlib.util
import weakref

import pytest
import torch

from comfy_int8_w8a8.int8.config import Int8Config
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_linear_weight
from comfy_int8_w8a8.nodes.load_plan import Int8LoadPlan

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None
    or importlib.util.find_spec("comfy") is None,
    reason="needs a CUDA GPU with Triton and ComfyUI importable (put a ComfyUI checkout on PYTHONPATH)",
)


def _layer(k: int, n: int) -> torch.nn.Module:
    from comfy_int8_w8a8.nodes.comfy_ops import make_int8_ops

    plan = Int8LoadPlan(
        file="test", int8_config=Int8Config(runtime_backend="triton"), on_the_fly=True, decide=lambda layer, w: None,
        quantize=lambda layer, w, b: quantize_linear_weight(layer, w, b, QuantizeConfig(outlier_method="none")))
    layer = make_int8_ops(plan).Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    layer.load_state_dict({"weight": torch.randn(n, k, device="cuda").bfloat16() / k**0.5,
                           "bias": torch.randn(n, device="cuda").bfloat16()})
    assert layer.is_int8
    return layer


def _normal(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from comfy_int8_w8a8.int8 import layer as runtime_module

    # The plan path steps aside: no plans, and no replays straight from forward.
    saved, runtime_module.plans_apply = runtime_module.plans_apply, lambda x, max_rows: False
    replays, layer._runtime.replays = layer._runtime.replays, {}
    try:
        return layer(x)
    finally:
        runtime_module.plans_apply, layer._runtime.replays = saved, replays


@pytest.mark.parametrize("m,k,n", [(1, 3072, 18432), (7, 1024, 640), (48, 3072, 1536)])
def test_replays_equal_the_normal_path(m, k, n):
    layer = _layer(k, n)
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(2, m, k, device="cuda", dtype=torch.bfloat16)[1]
        assert torch.equal(layer(x), _normal(layer, x))
    plans = layer._runtime._state[x.device].plans
    assert len(plans) == 1 and next(iter(plans.values())) is not None
    assert len(layer._runtime.replays) == 1  # the later calls replayed straight from forward


def test_replaced_weight_gets_new_plans_and_the_old_one_is_not_kept_alive():
    layer = _layer(1024, 640)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    before = layer(x)
    layer(x)
    old = weakref.ref(layer.weight._qdata)
    flipped = layer.weight.dequantize().flip(0).contiguous()
    layer.set_weight(flipped)  # what a LoRA bake does: a new weight object
    gc.collect()
    assert old() is None  # the recorded plan held the old int8 weight only weakly
    got = layer(x)
    assert torch.equal(got, _normal(layer, x)) and not torch.equal(got, before)
    assert torch.equal(layer(x), got)
