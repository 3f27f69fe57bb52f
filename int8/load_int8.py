"""Load a ComfyUI-native int8 state dict into a plain torch module (no ComfyUI): swap the Linears whose
weights are int8 for :class:`~.linear.Int8Linear`, then load the whole state dict strictly."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import Int8Config
from .linear import Int8Linear

__all__ = ["load_int8_state_dict"]


def _swap(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def load_int8_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor],
                         config: Int8Config | None = None) -> list[str]:
    """Replace each ``nn.Linear`` whose ``<name>.weight`` in ``state_dict`` is int8 by an ``Int8Linear``, load
    ``state_dict`` (strict: a missing or unexpected key raises, naming it) and return the swapped layer names."""
    swapped = []
    for name, linear in list(module.named_modules()):
        weight = state_dict.get(f"{name}.weight")
        if not isinstance(linear, nn.Linear) or weight is None or weight.dtype != torch.int8:
            continue
        bias = state_dict.get(f"{name}.bias")
        layer = Int8Linear(linear.in_features, linear.out_features, bias is not None, config,
                           smooth=f"{name}.input_smooth" in state_dict, device=linear.weight.device,
                           bias_dtype=bias.dtype if bias is not None else torch.float32)
        _swap(module, name, layer)
        swapped.append(name)
    module.load_state_dict(state_dict, strict=True)
    return swapped
