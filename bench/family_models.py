"""Build a family's model with ComfyUI's own classes, fill it with random weights that carry salient outlier
channels, write it as a bf16 file with ComfyUI's key names, and build the conditioning its sampler needs without
any text encoder. Used by ``bench/families.py`` and ``tests/integration/test_families.py``; ComfyUI is imported
inside the functions (it must be importable, with ``comfy.cli_args.args.cpu`` set on a machine without CUDA)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from .family_table import Family

__all__ = ["model_config_for", "build_model", "fill_random", "save_bf16", "save_lora", "conditioning", "tiny_sizes",
           "OUTLIER_CHANNELS", "OUTLIER_GAIN", "LORA_RANK"]

OUTLIER_CHANNELS = 8  # residual-stream channels made ~20x larger, like the salient channels of real DiTs
OUTLIER_GAIN = 20.0
LORA_RANK = 32  # what LoRA trainers for these models commonly use
# Parameters that are not weights of a matmul: modulation tables, learned tokens, positional tables.
_SMALL_TABLES = ("modulation", "scale_shift_table", "pad_token", "pos_embed", "emb_pos")


def _match_config(family: Family, unet_config: dict) -> dict:
    """``unet_config`` with the published values of the sizes detection hard-codes, so ComfyUI matches the model
    class it picks for the published file (Z-Image is told apart from Lumina 2 by ``dim`` 3840, for one)."""
    return {**unet_config, **{k: family.config[k] for k in family.tiny_needs_sizes if k in family.config}}


def model_config_for(family: Family, tiny: bool):  # noqa: ANN201 - a comfy.supported_models_base.BASE
    """ComfyUI's model config (``comfy.supported_models``) of the family, sized as asked."""
    import comfy.model_detection

    config = family.unet_config(tiny)
    model_config = comfy.model_detection.model_config_from_unet_config(_match_config(family, config))
    if model_config is None:
        raise RuntimeError(f"ComfyUI has no model config for family '{family.name}' ({config.get('image_model')}).")
    model_config.unet_config.update(config)
    return model_config


def build_model(family: Family, tiny: bool, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> nn.Module:
    """The family's diffusion model (``BaseModel.diffusion_model``) built by ComfyUI's model config with
    ``disable_weight_init`` ops, random weights unless ``device`` is ``meta``, eval mode, no grad."""
    import comfy.ops

    model_config = model_config_for(family, tiny)
    model_config.set_inference_dtype(dtype, None)
    model_config.custom_operations = comfy.ops.disable_weight_init
    model = model_config.get_model({}, "", device=device).diffusion_model
    model = model.eval().requires_grad_(False)
    if torch.device(device).type != "meta":
        fill_random(model, family, seed)
    return model


@torch.no_grad()
def fill_random(model: nn.Module, family: Family, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in) (activations stay O(1) through many blocks), norm scales ~1, biases and modulation
    tables small; then the same few output channels of the family's input projections are scaled by
    ``OUTLIER_GAIN``, so every block's pre-norm activations carry salient channels into the int8 Linears."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)

    # Buffers too: SD3's pos_embed is one, and disable_weight_init leaves every tensor uninitialised (NaN at times).
    tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
    for name, p in tensors:
        if any(t in name for t in _SMALL_TABLES) and not name.endswith(".weight"):
            p.copy_(0.02 * randn(p.shape))
        elif p.dim() >= 2:
            p.copy_(randn(p.shape) / math.sqrt(p[0].numel()))
        elif "norm" in name or name.endswith("scale"):
            p.copy_(1.0 + 0.05 * randn(p.shape))
        else:
            p.copy_(0.02 * randn(p.shape))
    for layer in family.outlier_layers:
        weight = model.get_submodule(layer).weight
        channels = torch.randperm(weight.shape[0], generator=gen, device=device)[:OUTLIER_CHANNELS]
        weight[channels] *= OUTLIER_GAIN


def save_bf16(model: nn.Module, path: Path) -> int:
    """Write the model's state dict (ComfyUI's key names, no prefix: a diffusion-model file) as bf16 safetensors;
    returns the bytes written."""
    from safetensors.torch import save_file

    sd = {k: v.to(torch.bfloat16).contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
          for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path.stat().st_size


def save_lora(model: nn.Module, path: Path, rank: int = LORA_RANK, seed: int = 3) -> int:
    """Write a random rank-``rank`` LoRA on every Linear of ``model`` in the kohya/ComfyUI key format
    (``diffusion_model.<layer>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``), bf16; returns the bytes.
    Its update is ~5% of each weight's norm: it changes the output visibly without wrecking it."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        n, k = module.weight.shape
        w_rms = float(module.weight.detach().float().pow(2).mean().sqrt())
        # an entry of up @ down sums rank products: rms = sqrt(rank) * rms(up) * rms(down) = 0.05 * rms(W)
        # (alpha = rank: ComfyUI scales the product by alpha / rank = 1)
        down = torch.randn(rank, k, generator=gen)
        up = torch.randn(n, rank, generator=gen) * (0.05 * w_rms / rank ** 0.5)
        lora[f"diffusion_model.{name}.lora_up.weight"] = up.to(torch.bfloat16)
        lora[f"diffusion_model.{name}.lora_down.weight"] = down.to(torch.bfloat16)
        lora[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(path))
    return path.stat().st_size


def conditioning(family: Family, tiny: bool, seed: int = 0) -> list:
    """A ``CONDITIONING`` list (what a text-encoder node returns) with random text features of the family's shape:
    ``[[context [1, tokens, width], {pooled_output, guidance, ...}]]``."""
    gen = torch.Generator().manual_seed(seed)
    tokens, width = family.tiny_context if tiny else family.context
    extra: dict = {k: v for k, v in family.extra.items() if k not in ("llama_tokens", "attention_mask")}
    if "attention_mask" in family.extra:  # 1 for real tokens, 0 for padding
        mask = torch.zeros(1, tokens)
        mask[:, : max(1, round(tokens * family.extra["attention_mask"]))] = 1.0
        extra["attention_mask"] = mask
    pooled = family.tiny_pooled if tiny else family.pooled
    if pooled:
        extra["pooled_output"] = torch.randn(1, pooled, generator=gen)
    if "llama_tokens" in family.extra:  # HiDream: Llama-3.1 hidden states of every layer it reads
        cfg = family.unet_config(tiny)
        layers = max(cfg["llama_layers"]) + 1
        llama_tokens = tokens if tiny else family.extra["llama_tokens"]
        extra["conditioning_llama3"] = torch.randn(1, layers, llama_tokens, cfg["caption_channels"][1], generator=gen)
    return [[torch.randn(1, tokens, width, generator=gen), extra]]


@contextlib.contextmanager
def tiny_sizes(family: Family) -> Iterator[list[dict]]:
    """While open, ComfyUI's loader builds a tiny model of ``family`` at its tiny sizes where its detection
    hard-codes them (``family.tiny_needs_sizes``): ComfyUI's own ``detect_unet_config`` reads the file and its
    ``model_config_from_unet_config`` picks the class (given the published values of those keys), then the class
    is sized from the family's tiny config. Yields the list of configs ComfyUI detected, one per load."""
    import comfy.model_detection as md
    import comfy.utils

    original = md.model_config_from_unet
    detected: list[dict] = []

    def sized(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):  # noqa: ANN001, ANN202
        unet_config = md.detect_unet_config(state_dict, unet_key_prefix, metadata=metadata)
        if unet_config is None:
            return None
        detected.append(dict(unet_config))
        model_config = md.model_config_from_unet_config(_match_config(family, unet_config), state_dict,
                                                        unet_key_prefix)
        if model_config is None:
            return None
        tiny = family.unet_config(True)
        model_config.unet_config.update({k: tiny[k] for k in family.tiny_needs_sizes})
        quant_config = comfy.utils.detect_layer_quantization(state_dict, unet_key_prefix)
        if quant_config:
            model_config.quant_config = quant_config
        return model_config

    if not family.tiny_needs_sizes:
        yield detected
        return
    md.model_config_from_unet = sized
    try:
        yield detected
    finally:
        md.model_config_from_unet = original
