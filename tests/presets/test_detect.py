"""``auto``: the family preset from state-dict keys, for every family's real keys (comfyui_layer_names.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from comfy_int8_w8a8.presets import DEFAULT_PRESET, detect_family, load_preset, normalize_keys, resolve_preset

FIXTURE = json.loads((Path(__file__).parent / "comfyui_layer_names.json").read_text())

FAMILY_OF = {
    "flux": "flux", "flux2": "flux2", "chroma": "chroma", "wan_t2v": "wan", "wan_i2v": "wan", "wan_vace": "wan",
    "ltxv": "ltxv", "ltxav": "ltxv", "qwen_image": "qwen_image", "hunyuan_video": "hunyuan_video", "sd3": "sd3",
    "lumina2": "lumina2", "z_image": "lumina2", "hidream": "hidream", "sdxl": "sd_unet", "sd15": "sd_unet",
}


def keys_of(model: str) -> list[str]:
    return FIXTURE[model]["keys"]


@pytest.mark.parametrize("model", sorted(FAMILY_OF))
def test_detect_family_from_real_keys(model):
    assert detect_family(keys_of(model)) == FAMILY_OF[model]


@pytest.mark.parametrize("model", sorted(FAMILY_OF))
def test_detect_family_in_full_checkpoint_with_prefix(model):
    keys = ["model.diffusion_model." + k for k in keys_of(model)]
    keys += ["first_stage_model.encoder.conv_in.weight", "cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    assert detect_family(keys) == FAMILY_OF[model]


@pytest.mark.parametrize("model", ["flux", "chroma"])
def test_detect_with_original_scale_norm_names(model):
    # Black Forest Labs' and Chroma's own files name RMSNorm weights '.scale'; ComfyUI renames them at load.
    keys = [k.replace("norm.weight", "norm.scale").replace(".norms.0.weight", ".norms.0.scale") for k in keys_of(model)]
    assert detect_family(keys) == model


def test_detect_flux_schnell_without_guidance():
    keys = [k for k in keys_of("flux") if not k.startswith("guidance_in.")]
    assert detect_family(keys) == "flux"


def test_detect_int8_converted_keys_still_detected():
    # A file we wrote carries weight_scale / comfy_quant next to each weight; detection reads the same keys.
    keys = keys_of("wan_t2v") + [k.replace(".weight", ".weight_scale") for k in keys_of("wan_t2v") if k.endswith(".weight")]
    assert detect_family(keys) == "wan"


def test_detect_unknown_returns_none():
    assert detect_family(["encoder.layers.0.weight", "decoder.proj.weight"]) is None
    assert detect_family([]) is None


def test_normalize_keys_strips_prefix_and_drops_other_models():
    keys = ["model.diffusion_model.img_in.weight", "first_stage_model.x.weight"]
    assert normalize_keys(keys) == frozenset({"img_in.weight"})
    assert normalize_keys(["img_in.weight"]) == frozenset({"img_in.weight"})


def test_resolve_auto_names_detected_family():
    preset, message = resolve_preset("auto", keys_of("qwen_image"))
    assert preset.name == "qwen_image"
    assert "qwen_image" in message and "Detected" in message


def test_resolve_auto_unknown_falls_back_to_default_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        preset, message = resolve_preset("auto", ["mystery.layers.0.weight"])
    assert preset.name == DEFAULT_PRESET
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "model_type" in warnings[0].getMessage() and "flux" in warnings[0].getMessage()
    assert message == warnings[0].getMessage()


def test_resolve_explicit_name_ignores_keys():
    preset, message = resolve_preset("wan", keys_of("flux"))
    assert preset == load_preset("wan")
    assert "model_type" in message


def test_resolve_unknown_name_raises_with_choices():
    with pytest.raises(ValueError, match="auto, chroma"):
        resolve_preset("flux9", [])
