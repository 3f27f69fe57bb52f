"""quantize_model / quantize_linear_weight / should_quantize, and the tiny Flux end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from comfy_int8_w8a8.int8.config import Int8Config
from comfy_int8_w8a8.int8.hadamard import rotate_weight
from comfy_int8_w8a8.int8.linear import Int8Linear
from comfy_int8_w8a8.int8.quantize import quantization_error_bound
from comfy_int8_w8a8.int8.quantize_model import (
    QuantizeConfig,
    hadamard_group_for,
    quantize_linear_weight,
    quantize_model,
    should_quantize,
)
from comfy_int8_w8a8.models import build_tiny_flux
from comfy_int8_w8a8.presets import load_preset

REFERENCE = Int8Config(runtime_backend="reference")


class Block(nn.Module):
    def __init__(self, k: int = 256) -> None:
        super().__init__()
        self.attn = nn.Linear(k, k)
        self.ffn = nn.Sequential(nn.Linear(k, 2 * k), nn.GELU(), nn.Linear(2 * k, k, bias=False))
        self.odd = nn.Linear(320, 128)  # K=320: 256 does not divide it, 64 does
        self.tiny = nn.Linear(16, 16)


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(256, 256)
        self.blocks = nn.ModuleList([Block(), Block()])


def test_should_quantize_reasons():
    preset = load_preset("flux")
    assert should_quantize("double_blocks.0.img_attn.qkv", (9216, 3072), preset) is None
    assert should_quantize("model.diffusion_model.img_in", (3072, 64), preset).startswith("preset 'flux': patch")
    assert "not 2-D" in should_quantize("double_blocks.0.img_attn.qkv", (9216, 3072, 1), preset)
    assert "multiples of 8" in should_quantize("double_blocks.0.img_attn.qkv", (9216, 3070), preset)
    assert "too small" in should_quantize("double_blocks.0.img_attn.qkv", (64, 64), preset)
    assert should_quantize("double_blocks.0.img_attn.qkv", (64, 64), preset, min_elements=0) is None


@pytest.mark.parametrize(("k", "group", "expected"), [(3072, 256, 256), (320, 256, 64), (1280, 256, 256),
                                                      (100, 256, 0), (4096, 1024, 1024), (2560, 1024, 256),
                                                      (3072, 64, 64)])
def test_hadamard_group_for(k, group, expected):
    assert hadamard_group_for(k, group) == expected


def test_quantize_config_validates():
    with pytest.raises(ValueError, match="outlier_method"):
        QuantizeConfig(outlier_method="rotate")
    with pytest.raises(ValueError, match="power of 4"):
        QuantizeConfig(hadamard_group=128)
    with pytest.raises(ValueError, match="smooth_alpha"):
        QuantizeConfig(smooth_alpha=-0.1)


@pytest.mark.parametrize("method", ["none", "hadamard", "smooth"])
def test_quantize_linear_weight_native_layout(method):
    w, b = torch.randn(96, 512), torch.randn(96)
    out = quantize_linear_weight("blocks.0.ffn.0", w, b, QuantizeConfig(outlier_method=method))
    expected = {"weight", "weight_scale", "bias", "comfy_quant"} | ({"input_smooth"} if method == "smooth" else set())
    assert set(out) == expected
    assert out["weight"].dtype == torch.int8 and out["weight"].shape == (96, 512)
    assert out["weight_scale"].dtype == torch.float32 and out["weight_scale"].shape == (96, 1)
    meta = json.loads(bytes(out["comfy_quant"].tolist()).decode())
    assert meta["format"] == "int8_tensorwise"
    assert meta.get("convrot", False) == (method == "hadamard")
    if method == "hadamard":
        assert meta["convrot_groupsize"] == 256
        # The stored weight is the rotated weight, to within half a quantization step per element.
        deq = out["weight"].double() * out["weight_scale"].double()
        err = (deq - rotate_weight(w, 256)).abs()
        assert (err <= out["weight_scale"].double() / 2 + 1e-9).all()


def test_quantize_linear_weight_uses_calibration_stats():
    w = torch.randn(64, 256)
    stats = torch.ones(256)
    stats[5] = 100.0
    calibrated = quantize_linear_weight("l", w, None, QuantizeConfig(outlier_method="smooth"), act_stats=stats)
    blind = quantize_linear_weight("l", w, None, QuantizeConfig(outlier_method="smooth"))
    ratio = calibrated["input_smooth"] / blind["input_smooth"]
    # Only channel 5's activation range differs from the flat prior, so only its multiplier moves (by a lot).
    others = torch.cat((ratio[:5], ratio[6:]))
    assert ratio[5] < others.min() / 5
    torch.testing.assert_close(others / others[0], torch.ones_like(others), rtol=1e-5, atol=0)


def test_quantize_linear_weight_rejects_meta_and_nonfinite():
    with pytest.raises(ValueError, match="meta device"):
        quantize_linear_weight("x", torch.empty(64, 64, device="meta"), None, QuantizeConfig())
    w = torch.randn(64, 256)
    w[3, 4] = float("nan")
    with pytest.raises(ValueError, match="'blocks.1.attn'"):
        quantize_linear_weight("blocks.1.attn", w, None, QuantizeConfig())


def test_quantize_model_replaces_eligible_layers_and_reports():
    model = TinyModel()
    calls = []
    report = quantize_model(model, load_preset("default"), QuantizeConfig(runtime=REFERENCE),
                            progress=lambda done, total: calls.append((done, total)))
    assert sorted(report.quantized) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in ("attn", "ffn.0", "ffn.2", "odd"))
    assert set(report.kept) == {"stem", "blocks.0.tiny", "blocks.1.tiny"}
    assert "outside the transformer block lists" in report.kept["stem"]
    assert "too small" in report.kept["blocks.0.tiny"]
    assert calls == [(i, 11) for i in range(1, 12)]
    assert all(isinstance(model.get_submodule(n), Int8Linear) for n in report.quantized)
    assert isinstance(model.stem, nn.Linear)
    assert model.blocks[0].odd.hadamard_group == 64 and model.blocks[0].attn.hadamard_group == 256
    assert report.notes == {f"blocks.{i}.odd": "Hadamard group 256 does not divide K: used group 64" for i in range(2)}
    assert report.bytes_after < report.bytes_before
    text = str(report)
    assert "Quantized 8 of 11 Linears" in text and "kept 2 in high precision: too small" in text


def test_quantize_model_output_within_the_quantization_bound():
    model = TinyModel()
    layer = copy.deepcopy(model.blocks[0].attn)
    quantize_model(model, load_preset("default"), QuantizeConfig(outlier_method="none", runtime=REFERENCE))
    x = torch.randn(40, 256)
    q = model.blocks[0].attn
    with torch.no_grad():
        exact = x.double() @ layer.weight.double().t() + layer.bias.double()
        err = (q(x).double() - exact).abs()
    assert (err <= quantization_error_bound(x, layer.weight, q.weight_scale, torch.float32)).all()


class OpsLinear(nn.Linear):
    """Stands in for ComfyUI's ops Linear classes: an nn.Linear subclass with patch-function lists."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_function, self.bias_function = [], []


def test_quantize_model_takes_comfyui_style_linears_but_not_unbaked_patches():
    root = nn.Module()
    root.blocks = nn.ModuleList([nn.Module()])
    root.blocks[0].a, root.blocks[0].b = OpsLinear(256, 256), OpsLinear(256, 256)
    root.blocks[0].b.weight_function.append(lambda w: w)
    report = quantize_model(root, load_preset("default"), QuantizeConfig(runtime=REFERENCE))
    assert report.quantized == ["blocks.0.a"]
    assert "unbaked LoRA" in report.kept["blocks.0.b"]


def test_quantize_model_smooth_without_stats_notes_it():
    model = TinyModel()
    stats = {"blocks.0.attn": torch.ones(256)}
    report = quantize_model(model, load_preset("default"), QuantizeConfig(outlier_method="smooth", runtime=REFERENCE),
                            act_stats=stats)
    assert "blocks.0.attn" not in report.notes
    assert report.notes["blocks.1.attn"] == "no calibration statistics: smoothed from weight statistics only"
    assert model.blocks[0].attn.input_smooth is not None


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _tiny_flux_inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, 16, 16, generator=gen), torch.tensor([0.6]), torch.randn(1, 32, 4096, generator=gen),
            torch.randn(1, 768, generator=gen), torch.tensor([3.5]))


def test_tiny_flux_hadamard_output_cosine_to_16bit_model():
    model = build_tiny_flux(seed=0)
    inputs = _tiny_flux_inputs()
    with torch.no_grad():
        reference = model(*inputs)
    results = {}
    for method in ("hadamard", "none"):
        quantized = copy.deepcopy(model)
        report = quantize_model(quantized, load_preset("flux"), QuantizeConfig(outlier_method=method, runtime=REFERENCE))
        assert len(report.quantized) == 26  # 2 x (8 + 2 modulation) double-block + 2 x (2 + 1) single-block Linears
        with torch.no_grad():
            results[method] = _cosine(quantized(*inputs), reference)
    assert results["hadamard"] >= 0.999
    # The outlier channels built into the model are what hadamard fixes: without it the error is much larger.
    assert 1 - results["none"] > 3 * (1 - results["hadamard"])
