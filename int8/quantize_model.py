"""Whole-model quantization: replace the eligible Linears of a module by :class:`~.linear.Int8Linear`, layer by layer.

Which Linears are eligible: every ``nn.Linear`` (ComfyUI's ``ops.*.Linear`` classes subclass it) that the family
preset does not exclude and that can profit (2-D, K and N multiples of 8, not tiny). Each one is quantized on the
chosen device and put back where it lived, so a 12B model never needs a second full copy in memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .config import OUTLIER_METHODS, Int8Config
from .hadamard import HADAMARD_GROUP_SIZES, check_group_size
from .linear import Int8Linear
from .quantize import quantize_linear
from .smooth import smooth_factors, smooth_factors_from_weight
from .weights import Int8Weights

if TYPE_CHECKING:
    from ..presets.loader import Preset

__all__ = [
    "MIN_WEIGHT_ELEMENTS",
    "build_int8_linear",
    "QuantizeConfig",
    "QuantizeReport",
    "hadamard_group_for",
    "quantize_linear_weight",
    "quantize_model",
    "should_quantize",
]

log = logging.getLogger(__name__)

# Below this many weights (128 x 128) an int8 GEMM saves no time and the 16-bit copy costs at most 32 KB.
MIN_WEIGHT_ELEMENTS = 128 * 128
# cuBLAS int8 GEMMs (torch._int_mm) need K and N to be multiples of 8 on CUDA.
_GEMM_ALIGN = 8


@dataclass(frozen=True)
class QuantizeConfig:
    """How weights are quantized.

    outlier_method: ``hadamard`` (block Walsh-Hadamard rotation of the input, ComfyUI's ``convrot``), ``smooth``
        (SmoothQuant scale migration; calibrated when activation statistics are given) or ``none``.
        ``hadamard`` is the default: on outlier-channel inputs it cut the W8A8 error 4.6-9.4x (calibrated smooth:
        3.4-5.8x), on Gaussian ones it cost < 0.02 dB (docs/results/fidelity.md); it needs no calibration, and
        the files it writes are ComfyUI's own ``convrot`` format.
    hadamard_group: rotation block size (64, 256 or 1024); a layer whose K it does not divide uses the largest
        smaller size that does, else no rotation (the report lists those layers).
    smooth_alpha: SmoothQuant migration strength in [0, 1].
    runtime: the :class:`Int8Config` the new layers run with.
    min_weight_elements: layers with fewer weights stay in high precision.
    """

    outlier_method: str = "hadamard"
    hadamard_group: int = 256
    smooth_alpha: float = 0.5
    runtime: Int8Config = field(default_factory=Int8Config)
    min_weight_elements: int = MIN_WEIGHT_ELEMENTS

    def __post_init__(self) -> None:
        if self.outlier_method not in OUTLIER_METHODS:
            raise ValueError(
                f"outlier_method must be one of {', '.join(OUTLIER_METHODS)}, got '{self.outlier_method}'."
            )
        check_group_size(self.hadamard_group)
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}.")


def should_quantize(
    name: str, weight_shape: Sequence[int], preset: Preset, min_elements: int = MIN_WEIGHT_ELEMENTS
) -> str | None:
    """None when the layer ``name`` with a weight of ``weight_shape`` should be quantized; else why it stays in
    high precision (a preset exclusion, not 2-D, misaligned for int8 GEMMs, or too small to profit)."""
    reason = preset.exclusion_reason(name)
    if reason is not None:
        return f"preset '{preset.name}': {reason}"
    shape = tuple(int(d) for d in weight_shape)
    if len(shape) != 2:
        return f"weight is not 2-D (shape {shape}): not a Linear"
    n, k = shape
    if n % _GEMM_ALIGN or k % _GEMM_ALIGN:
        return f"in/out features {k}/{n} are not multiples of {_GEMM_ALIGN}, which int8 GEMMs need"
    if n * k < min_elements:
        return f"too small ({n}x{k} < {min_elements} weights): int8 saves nothing here"
    return None


def hadamard_group_for(in_features: int, group: int) -> int:
    """The rotation block size used for a layer with ``in_features``: ``group`` if it divides K, else the largest
    smaller supported size that does, else 0 (no rotation)."""
    for size in sorted((s for s in HADAMARD_GROUP_SIZES if s <= group), reverse=True):
        if in_features % size == 0:
            return size
    return 0


def _smooth_for(weight: torch.Tensor, config: QuantizeConfig, act_stats: torch.Tensor | None) -> torch.Tensor | None:
    if config.outlier_method != "smooth":
        return None
    if act_stats is not None:
        return smooth_factors(act_stats.to(weight.device), weight, config.smooth_alpha)
    return smooth_factors_from_weight(weight, config.smooth_alpha)


def quantize_weights(name: str, weight: torch.Tensor, bias: torch.Tensor | None, config: QuantizeConfig,
                     act_stats: torch.Tensor | None = None) -> Int8Weights:
    """One layer's int8 tensors under ``config`` (rotation group fallback, smoothing factors from ``act_stats`` or
    from the weight). Raises ``ValueError`` naming ``name`` for a weight it cannot quantize."""
    if weight.dim() != 2:
        raise ValueError(f"Layer '{name}': expected a 2-D weight [out, in], got shape {tuple(weight.shape)}.")
    if weight.device.type == "meta":
        raise ValueError(f"Layer '{name}': its weight is on the meta device (not loaded); load the weights first.")
    group = hadamard_group_for(weight.shape[1], config.hadamard_group) if config.outlier_method == "hadamard" else 0
    with torch.no_grad():
        return quantize_linear(weight, bias, group, _smooth_for(weight, config, act_stats), name)


def build_int8_linear(name: str, weight: torch.Tensor, bias: torch.Tensor | None, config: QuantizeConfig,
                      act_stats: torch.Tensor | None = None) -> Int8Linear:
    """The :class:`Int8Linear` for one weight under ``config`` (see :func:`quantize_weights`)."""
    return Int8Linear.from_weights(quantize_weights(name, weight, bias, config, act_stats), config.runtime)


def quantize_linear_weight(
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: QuantizeConfig,
    act_stats: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One layer's ComfyUI-native int8 tensors, keyed without the layer prefix: ``weight`` int8 ``[N, K]``,
    ``weight_scale`` fp32 ``[N, 1]``, ``comfy_quant`` (uint8 JSON, with ``convrot`` when rotated), ``bias`` if
    given, ``input_smooth`` fp32 ``[K]`` for ``smooth`` only. ``act_stats``: calibrated per-channel absmax ``[K]``.
    Computed on ``weight``'s device. Raises ``ValueError`` naming ``name`` for a weight that cannot be quantized."""
    return quantize_weights(name, weight, bias, config, act_stats).state_dict()


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` did. ``kept`` and ``notes`` map layer names to reasons; bytes cover every
    parameter and buffer of the module."""

    preset: str
    outlier_method: str
    quantized: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        total = len(self.quantized) + len(self.kept)
        lines = [
            f"Quantized {len(self.quantized)} of {total} Linears to int8 W8A8 (outlier method '{self.outlier_method}', "
            f"preset '{self.preset}'); weights {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB."
        ]
        for reason, count in Counter(self.kept.values()).most_common():
            lines.append(f"  kept {count} in high precision: {reason}")
        for reason, count in Counter(self.notes.values()).most_common():
            lines.append(f"  note on {count} layer(s): {reason}")
        return "\n".join(lines)


def _module_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + [b for b in module.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _unbaked_patches(linear: nn.Module) -> bool:
    # ComfyUI's ops Linears carry LoRA patches as weight_function/bias_function lists applied at cast time;
    # quantizing the raw weight would drop them silently.
    return bool(getattr(linear, "weight_function", None)) or bool(getattr(linear, "bias_function", None))


def _layer_notes(name: str, linear: nn.Linear, config: QuantizeConfig, act_stats: dict | None) -> str | None:
    k = linear.weight.shape[1]
    if config.outlier_method == "hadamard":
        group = hadamard_group_for(k, config.hadamard_group)
        if group == 0:
            return f"K={k} has no Hadamard block size dividing it: quantized without rotation"
        if group != config.hadamard_group:
            return f"Hadamard group {config.hadamard_group} does not divide K: used group {group}"
    if config.outlier_method == "smooth" and (act_stats is None or name not in act_stats):
        return "no calibration statistics: smoothed from weight statistics only"
    return None


def quantize_model(
    module: nn.Module,
    preset: Preset,
    config: QuantizeConfig,
    progress: Callable[[int, int], None] | None = None,
    act_stats: dict[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> QuantizeReport:
    """Replace every eligible Linear of ``module`` in place by an :class:`Int8Linear`; return the report.

    Each layer is quantized on ``device`` (default: where its weight lives) and the int8 layer is put back on the
    weight's original device. ``act_stats`` maps Linear names (as in ``module.named_modules()``) to calibrated
    per-input-channel absmax for ``smooth``. ``progress(done, total)`` is called after each Linear.
    """
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    report = QuantizeReport(preset=preset.name, outlier_method=config.outlier_method,
                            bytes_before=_module_bytes(module))
    for done, (name, linear) in enumerate(linears, start=1):
        reason = should_quantize(name, linear.weight.shape, preset, config.min_weight_elements)
        if reason is None and _unbaked_patches(linear):
            reason = "has unbaked LoRA/patch functions (weight_function/bias_function); bake them first"
        if reason is not None:
            report.kept[name] = reason
        else:
            home = linear.weight.device
            work = torch.device(device) if device is not None else home
            bias = linear.bias.detach().to(work) if linear.bias is not None else None
            stats = act_stats.get(name) if act_stats else None
            with torch.no_grad():
                q = build_int8_linear(name, linear.weight.detach().to(work), bias, config, stats).to(home)
            note = _layer_notes(name, linear, config, act_stats)
            if note:
                report.notes[name] = note
            _set_submodule(module, name, q)
            report.quantized.append(name)
        if progress is not None:
            progress(done, len(linears))
    report.bytes_after = _module_bytes(module)
    log.info("%s", report)
    return report
