"""Key layouts: the ``model.diffusion_model.`` prefix of full checkpoints, and diffusers-style names.

Mirrors ComfyUI (``comfy/model_detection.py`` ``unet_prefix_from_state_dict`` and ``comfy.sd``
``load_diffusion_model_state_dict``) without importing it: the prefix most keys share (more than 5 keys) is
stripped and the other keys (VAE, text encoders of an all-in-one file) dropped; if no candidate wins, ``model.``
is tried, and when stripping it would leave nothing the keys are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["UNET_PREFIXES", "diffusion_model_prefix", "strip_prefix", "key_layout", "layer_of", "QUANT_SUFFIXES"]

UNET_PREFIXES = ("model.diffusion_model.", "model.model.", "net.")
_FALLBACK_PREFIX = "model."

# Per-layer tensors that belong to a layer's weight (quantization side data), as in ComfyUI's files.
QUANT_SUFFIXES = ("weight", "weight_scale", "weight_scale_2", "input_scale", "scale_weight", "scale_input",
                  "comfy_quant", "quarot_hadamard", "hadanorm_sigma", "input_smooth", "bias")


def diffusion_model_prefix(keys: Iterable[str]) -> str:
    """The prefix ComfyUI strips to find the diffusion model's keys ("" when the keys are already bare)."""
    keys = list(keys)
    if any(k.startswith("detector.") for k in keys) and any(k.startswith("tracker.") for k in keys):
        return ""
    counts = dict.fromkeys(UNET_PREFIXES, 0)
    for k in keys:
        for c in UNET_PREFIXES:
            if k.startswith(c):
                counts[c] += 1
                break
    top = max(counts, key=counts.get)
    prefix = top if counts[top] > 5 else _FALLBACK_PREFIX
    return prefix if any(k.startswith(prefix) for k in keys) else ""


def strip_prefix(keys: Iterable[str]) -> dict[str, str]:
    """Map each kept original key to its bare name (keys outside the diffusion model are left out)."""
    keys = list(keys)
    prefix = diffusion_model_prefix(keys)
    if not prefix:
        return {k: k for k in keys}
    return {k: k[len(prefix):] for k in keys if k.startswith(prefix)}


def key_layout(bare_keys: Iterable[str]) -> str:
    """``"diffusers"`` for diffusers-named transformers ComfyUI converts at load (Flux, SD3, AuraFlow, PixArt),
    else ``"comfy"``. Same signals as ComfyUI's ``convert_diffusers_mmdit``."""
    keys = set(bare_keys)
    if "x_embedder.weight" in keys and any(k.startswith("transformer_blocks.") for k in keys):
        return "diffusers"
    if "joint_transformer_blocks.0.attn.add_k_proj.weight" in keys:
        return "diffusers"
    if "transformer_blocks.0.attn.add_q_proj.weight" in keys and "pos_embed.proj.weight" in keys:
        return "diffusers"
    if "adaln_single.emb.timestep_embedder.linear_1.bias" in keys and "pos_embed.proj.bias" in keys:
        return "diffusers"
    return "comfy"


def layer_of(key: str) -> tuple[str, str]:
    """Split ``"a.b.weight_scale"`` into ``("a.b", "weight_scale")``; a key without a dot is its own layer."""
    layer, _, suffix = key.rpartition(".")
    return layer, suffix
