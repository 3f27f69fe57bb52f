"""Per-family exclusion presets (data files, one TOML per family) and the ``auto`` family detection."""

from .detect import AUTO, detect_family, normalize_keys, resolve_preset
from .loader import DEFAULT_PRESET, DetectRule, Preset, load_preset, preset_names, strip_model_prefix

__all__ = [
    "AUTO",
    "DEFAULT_PRESET",
    "DetectRule",
    "Preset",
    "detect_family",
    "load_preset",
    "normalize_keys",
    "preset_names",
    "resolve_preset",
    "strip_model_prefix",
]
