"""Interop with a stock ComfyUI, both ways, on a tiny Flux ComfyUI detects (hidden 128, one head, 2+2 blocks).

1. A file our converter writes loads through stock ``comfy.sd.load_diffusion_model`` as native int8 layers
   holding exactly our numbers, and every layer's output on the model's real activations matches ours within the
   quantization bound.
2. Files written the way ComfyUI's own int8 quantizer writes them (comfy-kitchen ``TensorWiseINT8Layout``:
   per-tensor scale with header ``_quantization_metadata``; per-row + convrot with per-layer ``comfy_quant``) load
   through our reader with the same int8 numbers and match stock ComfyUI's layer outputs within the same bound.

Runs in-process with ComfyUI imported from COMFYUI_PATH (default /opt/ComfyUI) on the CPU. Enable with
``bash .ci/integration_env.sh`` (builds ``.venv-integration`` with ComfyUI's requirements and this pack) and
``.venv-integration/bin/python -m pytest tests/integration/test_interop.py``.
"""

import json
import os
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from comfy_int8_w8a8.int8.formats import load_state_dict_for_comfy
from comfy_int8_w8a8.int8.formats.converter import convert_checkpoint
from comfy_int8_w8a8.int8.hadamard import rotate_activation
from comfy_int8_w8a8.int8.linear import Int8Linear
from comfy_int8_w8a8.int8.quantize import quantization_error_bound
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig
from comfy_int8_w8a8.presets import load_preset

COMFYUI = Path(os.environ.get("COMFYUI_PATH", "/opt/ComfyUI"))
ENABLE = ("build the integration venv with `bash .ci/integration_env.sh` and run this file with "
          "`.venv-integration/bin/python -m pytest`; set COMFYUI_PATH if ComfyUI is not at /opt/ComfyUI")
GROUP = 64  # hidden 128 and MLP 512: 64 is the largest convrot group that divides both


@pytest.fixture(scope="module")
def comfy(comfy_cpu):
    try:
        import comfy.quant_ops
        import comfy.sd
        from comfy.ldm.flux.model import Flux
    except ImportError as exc:
        pytest.skip(f"comfy is not importable from {COMFYUI} ({exc}): {ENABLE}")
    if not comfy.quant_ops._CK_AVAILABLE:
        pytest.skip("comfy-kitchen is missing, so stock ComfyUI has no int8: pip install comfy-kitchen")
    comfy.Flux = Flux
    return comfy


@pytest.fixture(scope="module")
def flux_float(comfy, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    model = comfy.Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=1024,
                       hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2,
                       axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
                       txt_ids_dims=[], operations=torch.nn)
    gen = torch.Generator().manual_seed(3)
    sd = {}
    for name, t in model.state_dict().items():  # random everywhere: ComfyUI zero-inits some output layers
        scale = t[0].numel() ** -0.5 if t.dim() >= 2 else 0.02
        sd[name] = (torch.randn(t.shape, generator=gen) * scale + (1.0 if name.endswith("scale") else 0.0)).to(
            torch.bfloat16)
    path = tmp_path_factory.mktemp("interop") / "flux_bf16.safetensors"
    st.save_file(sd, str(path))
    return path, sd


def _stock_layers(comfy, path: Path):
    """Load ``path`` with stock ComfyUI in fp32; run it once; return (diffusion model, {linear name: its input})."""
    patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    dm = patcher.model.diffusion_model
    inputs, hooks = {}, []
    for name, mod in dm.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(lambda m, a, o, n=name: inputs.setdefault(n, a[0].detach())))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        dm(torch.randn(1, 16, 16, 16, generator=gen), torch.tensor([0.5]), torch.randn(1, 8, 1024, generator=gen),
           y=torch.randn(1, 768, generator=gen))
    for h in hooks:
        h.remove()
    return dm, inputs


def _our_layer(sd: dict[str, torch.Tensor], name: str) -> Int8Linear:
    w = sd[name + ".weight"]
    layer = Int8Linear(w.shape[1], w.shape[0], bias=name + ".bias" in sd, bias_dtype=torch.bfloat16)
    layer.load_state_dict({k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")})
    return layer


def _input_for(inputs: dict[str, torch.Tensor], name: str, k: int) -> torch.Tensor:
    """The layer's real activation from the model run, or (for a Linear the blocks call without its hooks
    firing, e.g. through ``.forward``) a seeded Gaussian one."""
    if name in inputs:
        return inputs[name]
    return torch.randn(1, 8, k, generator=torch.Generator().manual_seed(5))


def _assert_layer_matches(name: str, stock_mod, ours: Int8Linear, x: torch.Tensor) -> None:
    with torch.no_grad():
        y_stock, y_ours = stock_mod(x).double(), ours(x).double()
    xr = rotate_activation(x.double(), ours.hadamard_group) if ours.hadamard_group else x.double()
    w = ours.weight.double() * ours.weight_scale.double()
    # Each side is within the W8A8 bound of the exact product with these int8 weights, so they are within 2x.
    bound = 2 * quantization_error_bound(xr.reshape(-1, xr.shape[-1]), w, ours.weight_scale, x.dtype)
    err = (y_stock - y_ours).reshape(bound.shape).abs()
    assert torch.all(err <= bound + 1e-6), f"{name}: max excess {(err - bound).max().item():.3g}"


def test_our_file_loads_in_stock_comfyui_and_matches(comfy, flux_float, tmp_path):
    path, _ = flux_float
    out = tmp_path / "flux_int8.safetensors"
    config = QuantizeConfig(outlier_method="hadamard", hadamard_group=256, min_weight_elements=0)
    report = convert_checkpoint(path, out, load_preset("flux"), config, progress=False)
    assert report.counts["quantize"] >= 8
    ours_sd, _ = load_state_dict_for_comfy(out)
    dm, inputs = _stock_layers(comfy, out)
    quantized = [k[: -len(".comfy_quant")] for k in ours_sd if k.endswith(".comfy_quant")]
    assert quantized
    for name in quantized:
        stock_mod, ours = dm.get_submodule(name), _our_layer(ours_sd, name)
        qt = stock_mod.weight
        assert isinstance(qt, comfy.quant_ops.QuantizedTensor), f"{name} did not load as int8 in stock ComfyUI"
        assert torch.equal(qt._qdata, ours.weight) and ours.hadamard_group in (64, 256)  # largest dividing K
        assert qt._params.convrot and qt._params.convrot_groupsize == ours.hadamard_group
        assert torch.equal(qt._params.scale.reshape(-1, 1), ours.weight_scale)
        _assert_layer_matches(name, stock_mod, ours, _input_for(inputs, name, ours.in_features))


def _comfy_quantized_file(comfy, sd, layers, out: Path, convrot: bool) -> Path:
    """What ComfyUI's int8 quantizer writes: comfy-kitchen TensorWiseINT8Layout weights and scales, and either
    per-layer comfy_quant tensors (convrot) or the header's _quantization_metadata (per-tensor)."""
    qsd, confs = dict(sd), {}
    for layer in layers:
        qt = comfy.quant_ops.QuantizedTensor.from_float(
            sd[layer + ".weight"].float(), "TensorWiseINT8Layout", per_channel=convrot, convrot=convrot,
            convrot_groupsize=GROUP)
        qsd.update(qt.state_dict(layer + ".weight"))  # weight (int8) + weight_scale
        confs[layer] = {"format": "int8_tensorwise", **({"convrot": True, "convrot_groupsize": GROUP} if convrot else {})}
    if convrot:
        for layer, conf in confs.items():
            qsd[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
        meta = None
    else:
        meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": confs})}
    st.save_file({k: v.contiguous() for k, v in qsd.items()}, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("convrot", [False, True])
def test_comfyui_quantized_file_loads_through_ours_and_matches_stock(comfy, flux_float, tmp_path, convrot):
    _, sd = flux_float
    layers = [k[: -len(".weight")] for k, v in sd.items()
              if k.endswith(".weight") and v.dim() == 2 and k.startswith(("double_blocks.", "single_blocks."))]
    path = _comfy_quantized_file(comfy, sd, layers, tmp_path / "comfy_int8.safetensors", convrot)
    ours_sd, meta = load_state_dict_for_comfy(path)
    assert meta["int8_source_format"] == "comfy_int8"
    dm, inputs = _stock_layers(comfy, path)
    for name in layers:
        stock_mod, ours = dm.get_submodule(name), _our_layer(ours_sd, name)
        qt = stock_mod.weight
        assert isinstance(qt, comfy.quant_ops.QuantizedTensor) and torch.equal(qt._qdata, ours.weight)
        assert ours.hadamard_group == (GROUP if convrot else 0)
        assert torch.equal(qt._params.scale.float().reshape(-1, 1).expand_as(ours.weight_scale), ours.weight_scale)
        _assert_layer_matches(name, stock_mod, ours, _input_for(inputs, name, ours.in_features))
