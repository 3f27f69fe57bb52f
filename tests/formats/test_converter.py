"""Round trip: a converted Flux-shaped checkpoint loads to the same int8 weights and outputs as quantizing the
original on the fly; the converter never touches its input and refuses what a stock host would run wrong."""

import hashlib

import pytest
import safetensors.torch as st
import torch
import torch.nn as nn

from comfy_int8_w8a8.bench.convert_rss import flux_specs, write_synthetic
from comfy_int8_w8a8.int8.formats import CheckpointError, load_state_dict_for_comfy, open_checkpoint
from comfy_int8_w8a8.int8.formats.converter import convert_checkpoint
from comfy_int8_w8a8.int8.linear import Int8Linear
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_model
from comfy_int8_w8a8.presets import load_preset

HIDDEN = 256


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux") / "flux_bf16.safetensors"
    write_synthetic(path, flux_specs(HIDDEN, depth=2, depth_single=2, in_channels=64, context=512, vec=256))
    return path


def _module_from(sd: dict[str, torch.Tensor]) -> nn.Module:
    """A module tree with an nn.Linear at every 2-D ``.weight`` (names as in the file), loaded from ``sd``."""
    root = nn.Module()
    for key, w in sd.items():
        if not key.endswith(".weight") or w.dim() != 2:
            continue
        layer = key[: -len(".weight")]
        lin = nn.Linear(w.shape[1], w.shape[0], bias=layer + ".bias" in sd, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if lin.bias is not None:
                lin.bias.copy_(sd[layer + ".bias"])
        parent = root
        parts = layer.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(parts[-1], lin)
    return root


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["hadamard", "none"])
def test_round_trip_matches_on_the_fly_quantization(flux_file, tmp_path, method):
    preset, config = load_preset("flux"), QuantizeConfig(outlier_method=method)
    before, mtime = _sha(flux_file), flux_file.stat().st_mtime_ns
    out = tmp_path / "flux_int8.safetensors"
    report = convert_checkpoint(flux_file, out, preset, config, progress=False)
    assert _sha(flux_file) == before and flux_file.stat().st_mtime_ns == mtime  # IN untouched
    assert report.counts["quantize"] > 0 and report.source_sha256 == before

    on_the_fly = _module_from(st.load_file(str(flux_file)))
    qreport = quantize_model(on_the_fly, preset, config)
    sd, meta = load_state_dict_for_comfy(out)
    assert meta["comfy_int8_w8a8.source_sha256"] == before and meta["comfy_int8_w8a8.outlier_method"] == method
    assert sorted(qreport.quantized) == sorted(k[: -len(".comfy_quant")] for k in sd if k.endswith(".comfy_quant"))
    gen = torch.Generator().manual_seed(1)
    for name in qreport.quantized:
        ref = on_the_fly.get_submodule(name)
        loaded = Int8Linear(ref.in_features, ref.out_features, bias=ref.bias is not None, bias_dtype=torch.bfloat16)
        loaded.load_state_dict({k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")})
        assert torch.equal(loaded.weight, ref.weight) and torch.equal(loaded.weight_scale, ref.weight_scale)
        assert loaded.hadamard_group == ref.hadamard_group and torch.equal(loaded.bias, ref.bias)
        x = torch.randn(3, 40, ref.in_features, generator=gen, dtype=torch.bfloat16)
        assert torch.equal(loaded(x), ref(x))
    for name, reason in qreport.kept.items():  # kept layers are stored exactly as in the source
        assert torch.equal(sd[name + ".weight"], on_the_fly.get_submodule(name).weight), reason


def test_converter_refuses_existing_output_same_file_and_smooth(flux_file, tmp_path):
    preset = load_preset("flux")
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(flux_file, out, preset, QuantizeConfig(), progress=False)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="is the input file"):
        convert_checkpoint(flux_file, flux_file, preset, QuantizeConfig(), progress=False, force=True)
    with pytest.raises(CheckpointError, match="input_smooth|stock ComfyUI cannot apply"):
        convert_checkpoint(flux_file, tmp_path / "s.safetensors", preset, QuantizeConfig(outlier_method="smooth"),
                           progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


def test_converting_an_int8_file_copies_stock_layers_exactly(flux_file, tmp_path):
    preset, config = load_preset("flux"), QuantizeConfig()
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    convert_checkpoint(flux_file, first, preset, config, progress=False)
    report = convert_checkpoint(first, second, preset, config, progress=False)
    assert report.source_format == "comfy_int8" and report.counts.get("copy_int8", 0) > 0
    a, b = st.load_file(str(first)), st.load_file(str(second))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert open_checkpoint(second).format == "comfy_int8"


def test_diffusers_layout_is_refused_with_a_fix(tmp_path):
    path = tmp_path / "d.safetensors"
    st.save_file({"x_embedder.weight": torch.randn(64, 64), "transformer_blocks.0.attn.to_q.weight":
                  torch.randn(64, 64)}, str(path))
    with pytest.raises(CheckpointError, match="diffusers.*ModelSave"):
        convert_checkpoint(path, tmp_path / "o.safetensors", load_preset("flux"), QuantizeConfig(), progress=False)


@pytest.mark.parametrize("method", ["hadamard", "none"])
def test_quantize_rows_in_blocks_equals_one_call(method):
    from comfy_int8_w8a8.int8.formats.converter import quantize_rows

    w = torch.randn(1000, 512, dtype=torch.bfloat16)
    config = QuantizeConfig(outlier_method=method)
    whole = quantize_rows("l", w, config, "cpu", chunk_bytes=1 << 30)
    blocks = quantize_rows("l", w, config, "cpu", chunk_bytes=8 * 512 * 97)  # 97 rows per block
    assert all(torch.equal(whole[k], blocks[k]) for k in ("weight", "weight_scale", "comfy_quant"))
