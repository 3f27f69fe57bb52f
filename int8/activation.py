"""The activations a fused int8 layer input may carry: their codes (a custom op's int argument) and the torch
reference of the input ``cat([a, act(b)], -1)`` the fused quant kernel reads without materialising."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "cat_act_reference"]

# activation code -> F.gelu's ``approximate`` argument; code 0 is the identity
ACTIVATIONS: dict[int, str | None] = {0: None, 1: "tanh", 2: "none"}


def cat_act_reference(a: torch.Tensor | None, b: torch.Tensor, act: int) -> torch.Tensor:
    """``cat([a, gelu(b)], -1)`` as 2-D ``[rows, KA + KB]`` in b's dtype (``a`` may be None): what the unfused
    graph stores as the int8 layer's 16-bit input."""
    if act not in ACTIVATIONS:
        raise ValueError(f"Unknown activation code {act}; known: {sorted(ACTIVATIONS)}.")
    approximate = ACTIVATIONS[act]
    y = b if approximate is None else F.gelu(b, approximate=approximate)
    y = y.reshape(-1, b.shape[-1])
    return y if a is None else torch.cat([a.reshape(-1, a.shape[-1]), y], dim=-1)
