"""Each family preset on the real layer names of ComfyUI's model classes (listed in comfyui_layer_names.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch.nn as nn

from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_model
from comfy_int8_w8a8.presets import Preset, load_preset, preset_names, strip_model_prefix

FIXTURE = json.loads((Path(__file__).parent / "comfyui_layer_names.json").read_text())

# fixture model -> (preset, patterns of the Linears the preset keeps in high precision; N = any block index)
EXPECTED_KEPT: dict[str, tuple[str, set[str]]] = {
    "flux": ("flux", {
        "img_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer",
        "guidance_in.in_layer", "guidance_in.out_layer", "txt_in",
        "final_layer.linear",
        "final_layer.adaLN_modulation.1",
    }),
    "flux2": ("flux2", {
        "img_in", "time_in.in_layer", "time_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer", "txt_in",
        "double_stream_modulation_img.lin", "double_stream_modulation_txt.lin", "single_stream_modulation.lin",
        "final_layer.linear", "final_layer.adaLN_modulation.1",
    }),
    "chroma": ("chroma", {
        "img_in", "txt_in", "distilled_guidance_layer.in_proj", "distilled_guidance_layer.layers.N.in_layer",
        "distilled_guidance_layer.layers.N.out_layer", "distilled_guidance_layer.out_proj", "final_layer.linear",
    }),
    "wan_t2v": ("wan", {
        "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
        "head.head",
    }),
    "wan_i2v": ("wan", {
        "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
        "head.head", "img_emb.proj.1", "img_emb.proj.3",
    }),
    "wan_vace": ("wan", {
        "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
        "head.head",
    }),
    "ltxv": ("ltxv", {
        "patchify_proj", "adaln_single.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_2",
        "adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2", "proj_out",
    }),
    "ltxav": ("ltxv", {
        "patchify_proj", "audio_patchify_proj", "proj_out", "audio_proj_out",
        *(f"{p}adaln_single.{s}" for p in ("", "audio_", "av_ca_video_scale_shift_", "av_ca_a2v_gate_",
                                           "av_ca_audio_scale_shift_", "av_ca_v2a_gate_")
          for s in ("emb.timestep_embedder.linear_1", "emb.timestep_embedder.linear_2", "linear")),
        *(f"{p}caption_projection.linear_{i}" for p in ("", "audio_") for i in (1, 2)),
        *(f"{p}_embeddings_connector.transformer_1d_blocks.N.{s}" for p in ("audio", "video")
          for s in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")),
    }),
    "qwen_image": ("qwen_image", {
        "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2", "img_in",
        "txt_in", "norm_out.linear", "proj_out",
    }),
    "hunyuan_video": ("hunyuan_video", {
        "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer", "vector_in.out_layer", "guidance_in.in_layer",
        "guidance_in.out_layer", "txt_in.input_embedder", "txt_in.t_embedder.in_layer", "txt_in.t_embedder.out_layer",
        "txt_in.c_embedder.in_layer", "txt_in.c_embedder.out_layer",
        *(f"txt_in.individual_token_refiner.blocks.N.{s}" for s in
          ("adaLN_modulation.1", "self_attn.qkv", "self_attn.proj", "mlp.0", "mlp.2")),

        "final_layer.linear", "final_layer.adaLN_modulation.1",
    }),
    "sd3": ("sd3", {
        "t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.mlp.0", "y_embedder.mlp.2", "context_embedder",

        "final_layer.linear", "final_layer.adaLN_modulation.1",
    }),
    "lumina2": ("lumina2", {
        "x_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1",
        "final_layer.linear", "final_layer.adaLN_modulation.1",
    }),
    "z_image": ("lumina2", {
        "x_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1",
        "final_layer.linear", "final_layer.adaLN_modulation.1",
    }),
    "hidream": ("hidream", {
        "t_embedder.timestep_embedder.linear_1", "t_embedder.timestep_embedder.linear_2",
        "p_embedder.pooled_embedder.linear_1", "p_embedder.pooled_embedder.linear_2", "x_embedder.proj",

        "final_layer.linear", "final_layer.adaLN_modulation.1", "caption_projection.N.linear",
    }),
    "sdxl": ("sd_unet", {
        "time_embed.0", "time_embed.2", "label_emb.N.0", "label_emb.N.2", "input_blocks.N.N.emb_layers.1",
        "input_blocks.N.N.proj_in", "input_blocks.N.N.proj_out", "middle_block.N.emb_layers.1",
        "middle_block.N.proj_in", "middle_block.N.proj_out", "output_blocks.N.N.emb_layers.1",
        "output_blocks.N.N.proj_in", "output_blocks.N.N.proj_out",
    }),
    "sd15": ("sd_unet", {
        "time_embed.0", "time_embed.2", "input_blocks.N.N.emb_layers.1", "middle_block.N.emb_layers.1",
        "output_blocks.N.N.emb_layers.1",
    }),
}


_BLOCK_LISTS = {
    "double_blocks", "single_blocks", "blocks", "vace_blocks", "transformer_blocks", "joint_blocks", "layers",
    "noise_refiner", "context_refiner", "double_stream_blocks", "single_stream_blocks", "input_blocks",
    "middle_block", "output_blocks", "experts", "caption_projection", "label_emb", "transformer_1d_blocks",
}


def pattern_of(name: str) -> str:
    """Block indices -> N (``double_blocks.3.img_mlp.0`` -> ``double_blocks.N.img_mlp.0``); Sequential indices stay.
    The UNet's ``input_blocks.4.1`` has two block indices."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit() and i > 0:
            prev = parts[i - 1]
            if prev in _BLOCK_LISTS or (prev == "N" and i > 1 and parts[i - 2].endswith("blocks")):
                parts[i] = "N"
    return ".".join(parts)


def fake_tree(names: list[str]) -> nn.Module:
    """A module tree with a small nn.Linear (32 -> 16) at each qualified name."""
    root = nn.Module()
    for name in names:
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.Linear(32, 16))
    return root


def test_every_preset_file_is_covered_by_a_model_fixture():
    covered = {preset for preset, _ in EXPECTED_KEPT.values()}
    assert covered | {"default"} == set(preset_names())


@pytest.mark.parametrize("model", sorted(EXPECTED_KEPT))
def test_preset_on_real_layer_names_keeps_expected_layers(model):
    preset_name, expected = EXPECTED_KEPT[model]
    preset = load_preset(preset_name)
    names = list(FIXTURE[model]["linears"])
    tree = fake_tree(names)
    report = quantize_model(tree, preset, QuantizeConfig(outlier_method="none", min_weight_elements=0))
    kept = {pattern_of(n) for n in report.kept}
    assert kept == expected
    assert all(reason.startswith(f"preset '{preset_name}'") for reason in report.kept.values())
    assert len(report.quantized) + len(report.kept) == len(names)
    # Every quantized layer sits inside one of the preset's block lists (the compile node compiles those).
    assert all(n.split(".")[0] in preset.block_lists for n in report.quantized)


@pytest.mark.parametrize("model", sorted(EXPECTED_KEPT))
def test_preset_ignores_comfyui_model_prefix(model):
    preset = load_preset(EXPECTED_KEPT[model][0])
    for name in FIXTURE[model]["linears"]:
        assert preset.exclusion_reason("model.diffusion_model." + name) == preset.exclusion_reason(name)
        assert preset.exclusion_reason("diffusion_model." + name) == preset.exclusion_reason(name)


def test_default_preset_keeps_everything_outside_blocks_and_modulation():
    preset = load_preset("default")
    names = list(FIXTURE["flux"]["linears"]) + list(FIXTURE["wan_t2v"]["linears"])
    quantized = {pattern_of(n) for n in names if preset.exclusion_reason(n) is None}
    assert quantized == {
        "double_blocks.N.img_attn.qkv", "double_blocks.N.img_attn.proj", "double_blocks.N.img_mlp.0",
        "double_blocks.N.img_mlp.2", "double_blocks.N.txt_attn.qkv", "double_blocks.N.txt_attn.proj",
        "double_blocks.N.txt_mlp.0", "double_blocks.N.txt_mlp.2", "single_blocks.N.linear1", "single_blocks.N.linear2",
        "blocks.N.self_attn.q", "blocks.N.self_attn.k", "blocks.N.self_attn.v", "blocks.N.self_attn.o",
        "blocks.N.cross_attn.q", "blocks.N.cross_attn.k", "blocks.N.cross_attn.v", "blocks.N.cross_attn.o",
        "blocks.N.ffn.0", "blocks.N.ffn.2",
    }


def test_every_exclusion_has_a_reason_and_every_preset_a_block_list():
    for name in preset_names():
        preset = load_preset(name)
        assert preset.block_lists, name
        assert preset.description, name
        for pattern, reason in preset.exclusions:
            assert reason.strip() and "\n" not in reason, (name, pattern)


def test_load_preset_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="Choose one of: auto, chroma, default, flux"):
        load_preset("flux3")


def test_preset_rejects_invalid_regex():
    with pytest.raises(ValueError, match="not a valid regex"):
        Preset("bad", "bad", ("blocks",), (("(", "unbalanced"),))


def test_strip_model_prefix():
    assert strip_model_prefix("model.diffusion_model.blocks.0.ffn.0") == "blocks.0.ffn.0"
    assert strip_model_prefix("blocks.0.ffn.0") == "blocks.0.ffn.0"


def test_quantize_model_logs_nothing_unexpected(caplog):
    # The report is logged once at INFO, never as a warning.
    with caplog.at_level(logging.INFO):
        quantize_model(fake_tree(list(FIXTURE["flux"]["linears"])), load_preset("flux"),
                       QuantizeConfig(outlier_method="none", min_weight_elements=0))
    assert [r.levelno for r in caplog.records if r.name.endswith("quantize_model")] == [logging.INFO]
