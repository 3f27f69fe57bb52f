"""SmoothQuant: migrate activation outliers into the weight with a per-input-channel scale.

With ``s[j] = max|X_j|**alpha / max|W_:,j|**(1 - alpha)`` the layer computes ``(x / s) @ (W * s).T``, which equals
``x @ W.T`` exactly in real arithmetic, while the int8 activation range is no longer set by a few huge channels
(Xiao et al., SmoothQuant, arXiv 2211.10438). ``Int8Linear.from_linear(..., smooth=s)`` folds ``s`` into the weight
and stores ``1 / s`` as the input multiplier.

The activation statistics come from a calibration pass (:class:`ActivationAbsMax` / :func:`collect_activation_absmax`:
forward hooks that record the per-channel absmax of each Linear's input over a few calls). Without calibration,
:func:`smooth_factors_from_weight` takes every activation channel to have the same range, which leaves
``s[j] ∝ max|W_:,j|**-(1 - alpha)`` (normalized to a geometric mean of 1): it evens out the weight's input columns
but knows nothing of activation outliers, so it cannot fix them. Calibrate, or use the Hadamard rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "ActivationAbsMax",
    "collect_activation_absmax",
    "smooth_factors",
    "smooth_factors_from_weight",
]

# Channels that never fired (absmax 0) or all-zero weight columns would give s = 0 or inf; clamp both statistics
# to a tiny positive floor relative to their own maximum so that s stays finite and such channels stay inert.
_REL_FLOOR = 1e-5
# s is clamped to this range: beyond it the fold into the weight moves more range than either side can hold.
_S_MIN, _S_MAX = 1e-4, 1e4


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}.")


def _floored(v: torch.Tensor) -> torch.Tensor:
    v = v.double().abs()
    return v.clamp(min=max(float(v.max()) * _REL_FLOOR, 1e-30))


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s [K]`` (fp32) from calibrated activation absmax ``[K]`` and the weight ``[N, K]``.

    ``alpha`` in [0, 1]: 0 leaves the activations alone, 1 moves all of their range into the weight.
    Raises ``ValueError`` on a shape mismatch or an alpha out of range.
    """
    _check_alpha(alpha)
    if weight.dim() != 2 or act_absmax.shape != (weight.shape[1],):
        raise ValueError(
            f"smooth_factors: activation statistics of shape {tuple(act_absmax.shape)} do not match a weight of "
            f"shape {tuple(weight.shape)} (expected [{weight.shape[-1]}])."
        )
    if not torch.isfinite(act_absmax).all():
        raise ValueError("smooth_factors: the activation statistics hold NaN/Inf; recalibrate with finite inputs.")
    w_col = _floored(weight.detach().abs().amax(dim=0))
    x_col = _floored(act_absmax.detach())
    s = x_col.pow(alpha) / w_col.pow(1.0 - alpha)
    return s.clamp(_S_MIN, _S_MAX).float()


def smooth_factors_from_weight(weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s [K]`` without calibration: equal activation ranges assumed, ``s ∝ max|W_:,j|**-(1-alpha)``, geometric
    mean 1. Evens out the weight's input columns only (see the module docstring)."""
    _check_alpha(alpha)
    if weight.dim() != 2:
        raise ValueError(f"smooth_factors_from_weight: expected a 2-D weight, got shape {tuple(weight.shape)}.")
    w_col = _floored(weight.detach().abs().amax(dim=0))
    s = w_col.pow(-(1.0 - alpha))
    s = s / torch.exp(torch.log(s).mean())
    return s.clamp(_S_MIN, _S_MAX).float()


class ActivationAbsMax:
    """Context manager recording the per-input-channel absmax of every selected Linear's input.

    ``with ActivationAbsMax(model) as rec: model(...); model(...)`` then ``rec.stats`` maps each Linear's qualified
    name to an fp32 CPU tensor ``[in_features]``. ``select(name, module)`` limits which Linears are watched.
    """

    def __init__(self, module: nn.Module, select: Callable[[str, nn.Module], bool] | None = None) -> None:
        self.module = module
        self.select = select or (lambda name, m: True)
        self.stats: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[..., None]:
        def record(mod: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            amax = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
            prev = self.stats.get(name)
            self.stats[name] = amax if prev is None else torch.maximum(prev, amax)

        return record

    def __enter__(self) -> ActivationAbsMax:
        for name, mod in self.module.named_modules():
            if isinstance(mod, nn.Linear) and self.select(name, mod):
                self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def collect_activation_absmax(
    module: nn.Module,
    batches: Iterable[tuple | dict],
    select: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``module(*batch)`` (or ``module(**batch)`` for a dict) for each calibration batch under ``no_grad`` and
    return each Linear's per-input-channel absmax (see :class:`ActivationAbsMax`)."""
    with torch.no_grad(), ActivationAbsMax(module, select) as recorder:
        for batch in batches:
            if isinstance(batch, dict):
                module(**batch)
            else:
                module(*batch)
    return recorder.stats
