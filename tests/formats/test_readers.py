"""Every supported format decodes to the engine's layout, with the numbers the file's own runtime would use."""

import json

import pytest
import safetensors.torch as st
import torch

from comfy_int8_w8a8.int8.formats import CheckpointError, load_state_dict_for_comfy, open_checkpoint
from comfy_int8_w8a8.int8.hadamard import build_hadamard, rotate_activation, rotate_weight
from comfy_int8_w8a8.int8.linear import Int8Linear
from comfy_int8_w8a8.int8.quantize import int8_linear_reference, quantization_error_bound, quantize_per_channel
from comfy_int8_w8a8.int8.weights import parse_comfy_quant

N, K = 32, 256


def _save(tmp_path, tensors, metadata=None, name="m.safetensors"):
    path = tmp_path / name
    st.save_file(tensors, str(path), metadata=metadata)
    return path


def _cq(conf: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)


def _layer(sd, prefix="blk.lin."):
    layer = Int8Linear(K, N, bias=prefix + "bias" in sd, smooth=prefix + "input_smooth" in sd)
    layer.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    return layer


def test_comfy_int8_per_layer_scalar_scale_expands_to_rows(tmp_path):
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    path = _save(tmp_path, {"blk.lin.weight": q, "blk.lin.weight_scale": torch.tensor(0.01),
                            "blk.lin.comfy_quant": _cq({"format": "int8_tensorwise"})})
    sd, meta = load_state_dict_for_comfy(path)
    assert meta["int8_source_format"] == "comfy_int8"
    assert torch.equal(sd["blk.lin.weight"], q)
    assert sd["blk.lin.weight_scale"].shape == (N, 1) and torch.all(sd["blk.lin.weight_scale"] == 0.01)
    assert parse_comfy_quant(sd["blk.lin.comfy_quant"], "blk.lin") == {"format": "int8_tensorwise"}


def test_comfy_int8_header_metadata_with_convrot_and_prefix(tmp_path):
    w = torch.randn(N, K)
    q, s = quantize_per_channel(rotate_weight(w, 64))
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {
        "model.diffusion_model.blk.lin": {"format": "int8_tensorwise", "convrot": True, "convrot_groupsize": 64}}})}
    tensors = {"model.diffusion_model.blk.lin.weight": q, "model.diffusion_model.blk.lin.weight_scale": s}
    tensors.update({f"model.diffusion_model.pad{i}.weight": torch.zeros(2, 2) for i in range(6)})
    tensors["first_stage_model.x"] = torch.zeros(1)
    sd, out_meta = load_state_dict_for_comfy(_save(tmp_path, tensors, meta))
    assert "_quantization_metadata" not in out_meta and "first_stage_model.x" not in sd
    assert _layer(sd).hadamard_group == 64 and torch.equal(sd["blk.lin.weight"], q)


def test_int8_weight_without_scale_names_the_layer(tmp_path):
    path = _save(tmp_path, {"double_blocks.3.img_attn.qkv.weight": torch.zeros(N, K, dtype=torch.int8),
                            "double_blocks.3.img_attn.qkv.comfy_quant": _cq({"format": "int8_tensorwise"})})
    with pytest.raises(CheckpointError, match=r"double_blocks\.3\.img_attn\.qkv.*no .*weight_scale"):
        load_state_dict_for_comfy(path)


def test_unsupported_comfy_quant_format_is_refused(tmp_path):
    path = _save(tmp_path, {"blk.lin.weight": torch.zeros(N, K // 2, dtype=torch.uint8),
                            "blk.lin.comfy_quant": _cq({"format": "nvfp4"})})
    assert open_checkpoint(path).format == "comfy_nvfp4"
    with pytest.raises(CheckpointError, match="nvfp4"):
        load_state_dict_for_comfy(path)


def _fast_file(tmp_path, h=None, sigma=None):
    """An INT8-Fast layer: W' = (W * sigma) @ H^T per group (their rotate_weight), quantized per row."""
    w = torch.randn(N, K, dtype=torch.float64)
    w_t = w * sigma.double() if sigma is not None else w
    if h is not None:
        g = h.shape[0]
        w_t = (w_t.reshape(N, K // g, g) @ h.double().t()).reshape(N, K)
    q, s = quantize_per_channel(w_t)
    t = {"blk.lin.weight": q, "blk.lin.weight_scale": s, "blk.lin.bias": torch.randn(N)}
    if h is not None:
        t["blk.lin.quarot_hadamard"] = h.float()
    if sigma is not None:
        t["blk.lin.hadanorm_sigma"] = sigma.float()
    return _save(tmp_path, t), w, q, s, t["blk.lin.bias"]


def _fast_forward(x, q, s, bias, h=None, sigma=None):
    """What INT8-Fast computes (its activation transform, then per-token W8A8)."""
    xt = x / sigma if sigma is not None else x
    if h is not None:
        g = h.shape[0]
        xt = (xt.reshape(-1, K // g, g) @ h.double()).reshape(x.shape)
    return int8_linear_reference(xt, q, s, bias)


def test_int8_fast_regular_hadamard_maps_exactly(tmp_path):
    h = build_hadamard(256, dtype=torch.float64)
    path, w, q, s, bias = _fast_file(tmp_path, h=h)
    assert open_checkpoint(path).format == "int8_fast"
    sd, _ = load_state_dict_for_comfy(path)
    layer = _layer(sd)
    assert layer.hadamard_group == 256 and torch.equal(layer.weight, q) and torch.equal(layer.weight_scale, s)
    x = torch.randn(5, K, dtype=torch.float64)
    ours = int8_linear_reference(rotate_activation(x, 256), layer.weight, layer.weight_scale, layer.bias)
    assert torch.allclose(ours, _fast_forward(x, q, s, bias, h=h), rtol=0, atol=1e-9)


def test_int8_fast_hadanorm_becomes_input_smooth(tmp_path):
    h = build_hadamard(64, dtype=torch.float64)
    sigma = torch.rand(K, dtype=torch.float64) + 0.5
    path, w, q, s, bias = _fast_file(tmp_path, h=h, sigma=sigma)
    sd, _ = load_state_dict_for_comfy(path)
    layer = _layer(sd)
    assert layer.hadamard_group == 64 and torch.allclose(layer.input_smooth.double(), 1 / sigma, rtol=1e-6)
    x = torch.randn(5, K, dtype=torch.float64)
    ours = int8_linear_reference(rotate_activation(x * layer.input_smooth.double(), 64), layer.weight,
                                 layer.weight_scale, layer.bias)
    ref = _fast_forward(x, q, s, bias, h=h, sigma=sigma)
    # only the fp32 storage of 1/sigma differs: a few fp32 ulps of each product, far below one int8 step
    assert torch.allclose(ours, ref, rtol=0, atol=float(quantization_error_bound(x, w, s, torch.float32).max()) * 1e-3)


def test_int8_fast_nonregular_hadamard_is_requantized_within_bound(tmp_path, caplog):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < 128:  # Sylvester's construction (QuaRot's): not the kernels' regular matrix
        h = torch.kron(h, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))
    h = h / 128 ** 0.5
    path, w, q, s, bias = _fast_file(tmp_path, h=h)
    sd, _ = load_state_dict_for_comfy(path)
    layer = _layer(sd)
    assert layer.hadamard_group == 64 and "re-quantized" in caplog.text
    x = torch.randn(7, K, dtype=torch.float64)
    ours = int8_linear_reference(rotate_activation(x, 64), layer.weight, layer.weight_scale, layer.bias)
    exact = x @ w.t() + bias.double()
    # two quantizations: the file's weight rounding, then ours (both bounded by the per-layer bound)
    bound = quantization_error_bound(x, w, s, torch.float32) + quantization_error_bound(
        rotate_activation(x, 64), rotate_weight(w, 64), layer.weight_scale, torch.float32)
    assert torch.all((ours - exact).abs() <= bound * 1.01 + 1e-9)


@pytest.mark.parametrize("style", ["legacy", "comfy_quant", "plain"])
def test_fp8_layers_are_dequantized(tmp_path, style):
    w8 = torch.randn(N, K).to(torch.float8_e4m3fn)
    scale = torch.tensor(0.02)
    t = {"blk.lin.weight": w8, "blk.lin.bias": torch.randn(N)}
    if style == "legacy":
        t.update({"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn), "blk.lin.scale_weight": scale,
                  "blk.lin.scale_input": torch.tensor(1.0)})
    elif style == "comfy_quant":
        t.update({"blk.lin.weight": w8.view(torch.uint8), "blk.lin.weight_scale": scale,
                  "blk.lin.comfy_quant": _cq({"format": "float8_e4m3fn"})})
    path = _save(tmp_path, t)
    assert open_checkpoint(path).format == {"legacy": "fp8_scaled", "comfy_quant": "comfy_fp8", "plain": "fp8"}[style]
    sd, _ = load_state_dict_for_comfy(path)
    expect = w8.float() * (scale if style != "plain" else 1.0)
    assert set(sd) == {"blk.lin.weight", "blk.lin.bias"}
    assert torch.equal(sd["blk.lin.weight"], expect.to(torch.bfloat16))


def test_float_checkpoint_passes_through_and_detects_layout(tmp_path):
    t = {"x_embedder.weight": torch.randn(4, 4, dtype=torch.float16),
         "transformer_blocks.0.attn.to_q.weight": torch.randn(4, 4, dtype=torch.float16)}
    path = _save(tmp_path, t)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "fp16" and ckpt.layout == "diffusers"
    sd, _ = load_state_dict_for_comfy(ckpt)
    assert all(torch.equal(sd[k], v) for k, v in t.items())
