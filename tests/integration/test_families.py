"""Every model family of ``comfy-int8 bench families`` (bench/family_table.py) against the real ComfyUI, on the CPU.

Published size, on the meta device (no memory): ComfyUI's own class built at the table's config is detected back
as exactly that config and model class, ``auto`` picks the family's preset, and the preset quantizes the blocks'
Linears (none falls out for int8 GEMM alignment). Tiny size, in memory: a random bf16 file with ComfyUI's key names
loads through the loader node's own function with default options; ComfyUI picks the family's model class, every
Linear the preset quantizes is int8 (the same set, counted), and one forward at sigma 0.5 through
``comfy.sample.sample`` (reference backend) has cosine >= 0.99 against the stock loader's model of the same file.

The bound: W8A8 with per-token activation and per-channel weight scales after the default Hadamard rotation keeps
each layer's output near 35-40 dB SQNR on these weights (cosine ~0.9999); the tiny models measure 0.9999+ through
their 1-2 blocks. 0.99 leaves room for other seeds and platforms and still fails for a layer that is wrong rather
than rounded (a dropped bias, a mis-laid weight, an ignored attention mask: cosine well under 0.9).
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from comfy_int8_w8a8.bench.family_table import FAMILIES, Family

pytestmark = pytest.mark.integration

COSINE_MIN = 0.99
# Share of the Linear weights the preset quantizes at published size (Flux.2 klein's global modulation and
# HiDream's MoE routers, kept in 16-bit on purpose, are the largest kept parts: 5.0% and 3.2%).
QUANTIZED_SHARE_MIN = 0.94


@pytest.fixture(scope="module")
def comfy(comfy_cpu):
    import comfy.model_detection  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.sd  # noqa: F401

    return comfy_cpu


def _linears(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_published_config_is_detected_and_quantized_by_its_preset(comfy, name: str) -> None:
    from comfy_int8_w8a8.bench.family_models import build_model
    from comfy_int8_w8a8.int8.launch.quant import one_pass_blocks64_fits, one_pass_rotation_fits
    from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, hadamard_group_for, should_quantize
    from comfy_int8_w8a8.presets.detect import resolve_preset

    family: Family = FAMILIES[name]
    model = build_model(family, tiny=False, device="meta")
    sd = model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    assert detected == family.config
    assert type(comfy.model_detection.model_config_from_unet_config(detected, sd, "")).__name__ == family.model_class
    preset, _ = resolve_preset("auto", sd.keys())
    assert preset.name == family.preset
    linears = _linears(model)
    reasons = {n: should_quantize(n, shape, preset) for n, shape in linears.items()}
    not_by_preset = {n: r for n, r in reasons.items() if r is not None and not r.startswith("preset")}
    assert not_by_preset == {}  # e.g. in/out features not multiples of the int8 GEMM alignment
    quantized = sum(linears[n].numel() for n, r in reasons.items() if r is None)
    assert quantized / sum(s.numel() for s in linears.values()) >= QUANTIZED_SHARE_MIN
    # With the default Hadamard group every quantized layer's activation rotates and quantizes in one launch (the
    # two-pass chunked kernel is the slow fallback): K a whole number of 256-column groups or of 64-column blocks.
    group = QuantizeConfig().hadamard_group
    two_pass = {n: linears[n] for n, r in reasons.items() if r is None and not (
        one_pass_rotation_fits(linears[n][1], hadamard_group_for(linears[n][1], group))
        or one_pass_blocks64_fits(linears[n][1], hadamard_group_for(linears[n][1], group)))}
    assert two_pass == {}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_tiny_file_loads_int8_through_the_loader_and_matches_stock(comfy, name: str, tmp_path) -> None:
    from comfy_int8_w8a8.bench import family_models as fm
    from comfy_int8_w8a8.bench.family_sampling import cosine, model_output
    from comfy_int8_w8a8.int8.quantize_model import should_quantize
    from comfy_int8_w8a8.nodes.loader_node import LoaderOptions, load_int8_diffusion_model
    from comfy_int8_w8a8.presets.detect import resolve_preset

    family: Family = FAMILIES[name]
    reference = fm.build_model(family, tiny=True, device="cpu", seed=1)
    path = tmp_path / f"{name}_bf16.safetensors"
    fm.save_bf16(reference, path)
    preset, _ = resolve_preset("auto", reference.state_dict().keys())
    assert preset.name == family.preset
    expected = {n for n, shape in _linears(reference).items() if should_quantize(n, shape, preset) is None}
    with fm.tiny_sizes(family) as detected:
        stock = comfy.sd.load_diffusion_model(str(path))
        ours = load_int8_diffusion_model(str(path), LoaderOptions())
    for patcher in (stock, ours):
        assert type(patcher.model.model_config).__name__ == family.model_class
    if family.tiny_needs_sizes:  # ComfyUI's detection read the tiny file; only the sizes came from the table
        assert [d.get("image_model") for d in detected] == [family.config["image_model"]] * 2
    int8 = {n for n, m in ours.model.diffusion_model.named_modules() if getattr(m, "is_int8", False)}
    assert expected and int8 == expected

    noise = torch.randn(family.tiny_latent, generator=torch.Generator().manual_seed(2))
    positive = fm.conditioning(family, tiny=True, seed=3)
    out, ref = model_output(ours, noise, positive), model_output(stock, noise, positive)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert cosine(out, ref) >= COSINE_MIN


def test_bench_families_tiny_run_writes_the_issue_json_shape(comfy, tmp_path) -> None:
    from comfy_int8_w8a8.bench import families

    parser = argparse.ArgumentParser()
    families.add_arguments(parser)
    out = tmp_path / "families.json"
    args = parser.parse_args(["--tiny", "--families", "wan21_14b_t2v", "--steps", "2", "--out", str(out),
                              "--variants", "bf16", "ours_eager", "native_int8_stock_compile"])
    assert families.run(args) == 0

    result = json.loads(out.read_text())
    assert result["gpu"] == "cpu"
    wan = result["families"]["wan21_14b_t2v"]
    assert wan["resolution"] == "tiny" and wan["reference"] == "bf16"
    assert set(wan["step_ms"]) == {"bf16", "ours_eager", "native_int8_stock_compile"}
    int8 = {v: wan["variants"][v]["int8_layers"] for v in wan["step_ms"]}
    assert int8["bf16"] == 0 and int8["ours_eager"] == int8["native_int8_stock_compile"] > 0
    assert wan["variants"]["bf16"]["cos"] == 1.0 and wan["cos"] >= COSINE_MIN
    assert wan["variants"]["native_int8_stock_compile"]["cos"] >= COSINE_MIN
    assert not list(tmp_path.glob("*.safetensors"))  # the model files are deleted per family


def test_bench_families_keeps_finished_variants_when_cut_off(comfy, tmp_path, cut_off_at) -> None:
    # A device call's time limit kills the run mid-family: the JSON must already hold the variants that finished.
    from comfy_int8_w8a8.bench import families

    parser = argparse.ArgumentParser()
    families.add_arguments(parser)
    out = tmp_path / "families.json"
    args = parser.parse_args(["--tiny", "--families", "flux1_dev", "--steps", "2", "--out", str(out),
                              "--variants", "bf16", "ours_eager", "--isolate", "none"])
    cut_off_at(families, "ours_eager")
    with pytest.raises(KeyboardInterrupt):
        families.run(args)
    flux = json.loads(out.read_text())["families"]["flux1_dev"]
    assert list(flux["variants"]) == ["bf16"] and flux["step_ms"]["bf16"] > 0


def test_bench_families_lora_and_vram_cap_in_worker_processes(comfy, tmp_path) -> None:
    # #23's LoRA and partial-loading runs on a video family: each variant in its own process (the default), the
    # LoRA applied as LoraLoaderModelOnly does, its prediction compared with bf16's with the same LoRA.
    from comfy_int8_w8a8.bench import families

    parser = argparse.ArgumentParser()
    families.add_arguments(parser)
    out = tmp_path / "families.json"
    args = parser.parse_args(["--tiny", "--families", "wan22_5b_ti2v", "--steps", "2", "--out", str(out),
                              "--variants", "bf16", "ours_eager", "--lora", "--vram-cap", "1", "--profile", "1",
                              "--workdir", str(tmp_path / "work")])
    assert families.run(args) == 0

    result = json.loads(out.read_text())
    assert result["isolate"] == "variant" and result["caches"] == "cold"
    wan = result["families"]["wan22_5b_ti2v"]
    for variant in ("bf16", "ours_eager"):
        cell = wan["variants"][variant]
        assert cell["lora_read_s"] >= 0  # a tiny file: rounds to 0.0 s
        for field in ("lora_first_call_s", "lora_step_ms", "lora_restrength_first_call_s", "lora_restrength_step_ms"):
            assert cell[field] > 0, (variant, field)
        assert cell["vram_cap_gib"] == 1 and cell["streamed_layers"] == 0  # no CUDA: nothing to stream
        assert cell["lora_vs_plain_cos"] < 0.9999, variant  # the LoRA changed the prediction
    assert wan["variants"]["bf16"]["lora_cos"] == 1.0
    assert wan["variants"]["ours_eager"]["lora_cos"] >= COSINE_MIN
    assert wan["variants"]["ours_eager"]["int8_layers"] > 0
    # --profile: one more step under torch.profiler per variant, its op table beside the JSON (no GPU: no kernel time)
    for variant in ("bf16", "ours_eager"):
        assert wan["variants"][variant]["gpu_kernel_ms_per_step"] is None
        table = (tmp_path / "families_profiles" / f"wan22_5b_ti2v_{variant}.txt").read_text()
        assert table.startswith(f"wan22_5b_ti2v / {variant}: step_ms") and "Self CPU" in table
    work = tmp_path / "work"
    assert sorted(p.name for p in work.glob("spec_*.result.json")) == [
        "spec_wan22_5b_ti2v_bf16.result.json", "spec_wan22_5b_ti2v_ours_eager.result.json"]
    assert not list(work.glob("*.safetensors")) and not list(work.glob("*.pt"))  # model files and tensors removed
