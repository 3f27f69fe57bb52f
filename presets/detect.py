"""Pick the preset of a checkpoint from its state-dict keys, with the signals ComfyUI's model detection reads."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .loader import DEFAULT_PRESET, Preset, load_preset, preset_names

__all__ = ["AUTO", "detect_family", "resolve_preset", "normalize_keys"]

log = logging.getLogger(__name__)

AUTO = "auto"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def normalize_keys(keys: Iterable[str]) -> frozenset[str]:
    """The diffusion-model keys without their prefix: a full checkpoint's ``model.diffusion_model.*`` keys (other
    keys, e.g. the VAE's, are dropped), or every key of a bare diffusion-model file."""
    keys = list(keys)
    for prefix in _PREFIXES:
        inner = frozenset(k[len(prefix):] for k in keys if k.startswith(prefix))
        if inner:
            return inner
    return frozenset(keys)


def detect_family(keys: Iterable[str]) -> str | None:
    """The preset name whose detection rule matches ``keys`` (highest priority first), or None if none does."""
    normalized = normalize_keys(keys)
    presets = [load_preset(name) for name in preset_names()]
    for preset in sorted(presets, key=lambda p: -p.detect.priority):
        if preset.detect.matches(normalized):
            return preset.name
    return None


def resolve_preset(name: str, keys: Iterable[str]) -> tuple[Preset, str]:
    """Resolve the ``model_type`` choice: a preset name, or ``auto`` (detect from ``keys``).

    Returns ``(preset, message)``, the message saying which preset was chosen and why. An undetected family gets
    the conservative ``default`` preset and one logged warning naming the ``model_type`` input.
    Raises ``ValueError`` for an unknown name.
    """
    if name != AUTO:
        preset = load_preset(name)
        return preset, f"Using preset '{preset.name}' ({preset.description}), chosen by model_type."
    family = detect_family(keys)
    if family is not None:
        preset = load_preset(family)
        return preset, f"Detected model family '{family}' from the checkpoint keys: using preset '{family}' ({preset.description})."
    preset = load_preset(DEFAULT_PRESET)
    choices = ", ".join(n for n in preset_names() if n != DEFAULT_PRESET)
    message = (
        f"Could not detect the model family from the checkpoint keys: using the conservative '{DEFAULT_PRESET}' preset "
        f"(only Linears inside transformer block lists are quantized). If you know the family, set the model_type "
        f"input to one of: {choices}."
    )
    log.warning(message)
    return preset, message
