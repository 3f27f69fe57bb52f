"""The per-load plan the ops class consults, and the LoRA requantization, without ComfyUI."""

from __future__ import annotations

import pytest
import torch

from comfy_int8_w8a8.int8.config import Int8Config
from comfy_int8_w8a8.int8.hadamard import rotate_weight
from comfy_int8_w8a8.int8.quantize import NonFiniteWeightError, dequantize, quantize_per_channel
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_linear_weight
from comfy_int8_w8a8.nodes.errors import QuantizationFailureError
from comfy_int8_w8a8.nodes.load_plan import Int8LoadPlan, LoadReport
from comfy_int8_w8a8.nodes.lora import bake_error_bound, requantize_per_channel, requantize_streamed


def _plan(**kw: object) -> Int8LoadPlan:
    calls = []
    kw.setdefault("quantize",
                  lambda layer, w, b: quantize_linear_weight(layer, w, b, QuantizeConfig(outlier_method="none")))
    plan = Int8LoadPlan(
        file="/m/tiny.safetensors", int8_config=Int8Config(), on_the_fly=True,
        decide=lambda layer, w: None if "blocks" in layer else "outside blocks",
        on_layer_quantized=lambda: calls.append(1), **kw)
    plan.progress_calls = calls
    return plan


def test_plan_quantize_layer_returns_native_int8_tensors_and_feeds_progress() -> None:
    plan = _plan()
    w, b = torch.randn(64, 128), torch.randn(64)
    tensors = plan.quantize_layer("blocks.0.qkv", w, b)
    assert tensors["weight"].dtype == torch.int8 and tensors["weight_scale"].shape == (64, 1)
    q, s = quantize_per_channel(w)
    assert torch.equal(tensors["weight"], q) and torch.equal(tensors["weight_scale"], s)
    assert "comfy_quant" in tensors and torch.equal(tensors["bias"], b)
    assert plan.progress_calls == [1]


def test_plan_quantize_layer_keeps_comfy_quant_metadata_on_the_cpu() -> None:
    # A state dict on another device (the GPU in the e2e benchmark; "meta" here): the int8 tensors follow the
    # weight, the metadata stays on the CPU because ComfyUI's loader parses it with .numpy().
    cpu_result = {"weight": torch.zeros(4, 8, dtype=torch.int8), "weight_scale": torch.ones(4, 1),
                  "comfy_quant": torch.tensor([123, 125], dtype=torch.uint8)}
    plan = _plan(quantize=lambda layer, w, b: dict(cpu_result))
    tensors = plan.quantize_layer("blocks.0.qkv", torch.empty(4, 8, device="meta"), None)
    assert tensors["comfy_quant"].device.type == "cpu"
    assert tensors["weight"].device.type == "meta" and tensors["weight_scale"].device.type == "meta"


def test_plan_quantize_layer_failure_names_layer_file_and_setting() -> None:
    plan = _plan(outlier_method="hadamard")
    w = torch.randn(64, 128)
    w[3, 5] = float("nan")
    with pytest.raises(QuantizationFailureError) as info:
        plan.quantize_layer("blocks.1.mlp", w, None)
    text = str(info.value)
    assert "'blocks.1.mlp'" in text and "/m/tiny.safetensors" in text and "outlier_method to 'none'" in text
    assert isinstance(info.value.__cause__, NonFiniteWeightError)
    assert plan.progress_calls == []


def test_load_report_summary_counts_and_reasons() -> None:
    report = LoadReport(prequantized=2, quantized_at_load=3)
    report.kept["outside blocks"] += 4
    report.kept["on_the_fly_quantization is off"] += 1
    text = report.summary("f.safetensors")
    assert "5 Linear layers in int8 (2 pre-quantized, 3 quantized at load), 5 kept" in text
    assert text.index("4 outside blocks") < text.index("1 on_the_fly_quantization is off")


def test_plan_resolves_backend_once_per_device() -> None:
    plan = _plan()
    first = plan.backend_for(torch.device("cpu"))
    assert plan.backend_for(torch.device("cpu")) is first
    assert first.unavailable_reason(torch.device("cpu")) is None


@pytest.mark.parametrize("group", [0, 64])
def test_lora_bake_requantizes_within_two_half_steps(group: int) -> None:
    w = torch.randn(96, 256, dtype=torch.float64)
    delta = 0.3 * torch.randn(96, 8, dtype=torch.float64) @ torch.randn(8, 256, dtype=torch.float64) / 8
    w_rot = rotate_weight(w, group) if group else w
    q0, s0 = quantize_per_channel(w_rot)
    w_deq = dequantize(q0, s0, torch.float64)
    if group:
        w_deq = rotate_weight(w_deq, group)  # ComfyUI's convert_weight hands over the un-rotated weight
    q1, s1 = requantize_per_channel(w_deq + delta, group)
    baked = dequantize(q1, s1, torch.float64)
    if group:
        baked = rotate_weight(baked, group)
        err = (baked - (w + delta)).norm(dim=1, keepdim=True)  # rotation keeps the per-row L2 norm
        assert (err <= bake_error_bound(s0, s1) * 256 ** 0.5 + 1e-9).all()
    else:
        assert ((baked - (w + delta)).abs() <= bake_error_bound(s0, s1) + 1e-9).all()


@pytest.mark.parametrize("group", [0, 64, 256])
def test_streamed_requantization_matches_the_load_time_one_within_a_tie(group: int) -> None:
    # Per call (float32 rotation) against once at load (float64): the same scales to float32 rounding, and an int8
    # value differs only where the float64 value sits within float32 error of a rounding tie.
    w = torch.randn(96, 512, dtype=torch.bfloat16)
    q_load, s_load = requantize_per_channel(w, group)
    q_call, s_call = requantize_streamed(w, group)
    assert q_call.dtype == torch.int8 and s_call.dtype == torch.float32 and s_call.shape == (96, 1)
    torch.testing.assert_close(s_call, s_load, rtol=1e-6, atol=0)
    diff = (q_call.int() - q_load.int()).abs()
    assert diff.max() <= 1
    if group == 0:  # no rotation: the same float32 arithmetic
        assert torch.equal(q_call, q_load) and torch.equal(s_call, s_load)
    assert (diff > 0).float().mean() < 1e-3


def test_lora_bake_rejects_non_finite_patch_naming_layer() -> None:
    w = torch.randn(8, 64)
    w[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightError, match="double_blocks.0.img_attn.qkv"):
        requantize_per_channel(w, 0, "double_blocks.0.img_attn.qkv")
