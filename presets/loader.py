"""Exclusion presets: which Linears of a model family stay in 16-bit, read from one TOML file per family.

A preset file holds ``name``, ``description``, ``block_lists`` (attribute names of the transformer block lists),
``detect`` (the state-dict keys that identify the family, see :mod:`.detect`) and ``[[exclude]]`` tables, each
``pattern`` (a regular expression searched in the layer's qualified name) with a one-line ``reason``.
``keep_outside_blocks = true`` appends one more exclusion: every Linear that is not inside a block list.
Layer names are matched without the ``model.diffusion_model.`` / ``diffusion_model.`` prefix.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib arrived in 3.11; tomli is the same parser
    try:
        import tomli as tomllib
    except ModuleNotFoundError as exc:
        raise ImportError("Reading the exclusion presets on Python 3.10 needs 'tomli': pip install tomli") from exc

__all__ = ["Preset", "DetectRule", "preset_names", "load_preset", "strip_model_prefix", "DEFAULT_PRESET"]

DEFAULT_PRESET = "default"
_MODEL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
OUTSIDE_BLOCKS_REASON = "outside the transformer block lists (embedder, adapter or output head): little compute, fragile"


def strip_model_prefix(name: str) -> str:
    """``model.diffusion_model.double_blocks.0.x`` -> ``double_blocks.0.x`` (names without a prefix pass through)."""
    for prefix in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@dataclass(frozen=True)
class DetectRule:
    """The family is detected when every group of ``requires`` has at least one key present and no key of
    ``absent`` is present. Rules of a higher ``priority`` are tried first (ComfyUI's own detection order)."""

    requires: tuple[tuple[str, ...], ...] = ()
    absent: tuple[str, ...] = ()
    priority: int = 0

    def matches(self, keys: frozenset[str]) -> bool:
        if not self.requires:
            return False
        return all(any(k in keys for k in group) for group in self.requires) and not any(k in keys for k in self.absent)


@dataclass(frozen=True)
class Preset:
    """One family's exclusion list. ``exclusions``: ``(regex, reason)`` pairs, first match wins."""

    name: str
    description: str
    block_lists: tuple[str, ...]
    exclusions: tuple[tuple[str, str], ...]
    detect: DetectRule = field(default_factory=DetectRule, compare=False)

    def __post_init__(self) -> None:
        for pattern, _ in self.exclusions:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"Preset '{self.name}': exclusion pattern {pattern!r} is not a valid regex ({exc}).") from exc

    def exclusion_reason(self, layer_name: str) -> str | None:
        """The reason ``layer_name`` stays in high precision under this preset, or None if it may be quantized."""
        name = strip_model_prefix(layer_name)
        for pattern, reason in self.exclusions:
            if re.search(pattern, name):
                return reason
        return None


def _outside_blocks_pattern(block_lists: tuple[str, ...]) -> str:
    alternatives = "|".join(re.escape(b) for b in block_lists)
    return rf"^(?!(?:{alternatives})\.\d+\.)"


def _parse(text: str, source: str) -> Preset:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"Preset file {source} is not valid TOML: {exc}") from exc
    try:
        block_lists = tuple(data["block_lists"])
        exclusions = [(str(e["pattern"]), str(e["reason"])) for e in data.get("exclude", [])]
        if data.get("keep_outside_blocks", False):
            exclusions.append((_outside_blocks_pattern(block_lists), OUTSIDE_BLOCKS_REASON))
        det = data.get("detect", {})
        detect = DetectRule(
            requires=tuple(tuple(group) for group in det.get("requires", ())),
            absent=tuple(det.get("absent", ())),
            priority=int(det.get("priority", 0)),
        )
        return Preset(str(data["name"]), str(data["description"]), block_lists, tuple(exclusions), detect)
    except KeyError as exc:
        raise ValueError(f"Preset file {source} lacks the required field {exc}.") from exc


@functools.cache
def _all_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            preset = _parse(entry.read_text(encoding="utf-8"), entry.name)
            if preset.name != entry.name[: -len(".toml")]:
                raise ValueError(f"Preset file {entry.name} declares name '{preset.name}'; rename one to match.")
            presets[preset.name] = preset
    if DEFAULT_PRESET not in presets:
        raise RuntimeError(f"The '{DEFAULT_PRESET}' preset file is missing from the package; reinstall it.")
    return presets


def preset_names() -> list[str]:
    """Every family preset shipped with the package, sorted, ``default`` included (``auto`` is not a preset)."""
    return sorted(_all_presets())


def load_preset(name: str) -> Preset:
    """The preset called ``name``. Raises ``ValueError`` listing the choices when there is none."""
    presets = _all_presets()
    if name not in presets:
        raise ValueError(f"Unknown preset '{name}'. Choose one of: auto, {', '.join(sorted(presets))}.")
    return presets[name]
