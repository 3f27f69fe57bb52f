"""The function the "INT8 Attention" node installs as ComfyUI's ``optimized_attention_override``.

ComfyUI's attention functions (``comfy/ldm/modules/attention.py``, ``wrap_attn``) call
``transformer_options["optimized_attention_override"](func, *args, **kwargs)`` with ``func`` the attention they
would have run (SDPA on most setups) and ``args``/``kwargs`` theirs: ``q, k, v, heads``, then ``mask``,
``attn_precision``, ``skip_reshape``, ``skip_output_reshape`` and extras (``scale``, ``enable_gqa``,
``low_precision_attention``, ``transformer_options``). This module translates such a call into the engine's
``(B, H, L, D)`` call and back, and hands every call the engine does not take to ``func`` (or to an override that
was installed before ours), logging each reason once. It does not import ComfyUI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..int8.backends import attention as engine
from ..int8.log_once import log_once

__all__ = ["AttentionCall", "bind_call", "Int8AttentionOverride"]

log = logging.getLogger("comfy_int8_w8a8")

_POSITIONAL = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


class AttentionCall(NamedTuple):
    """One ComfyUI attention call, with q, k, v as ``(B, H, L, D)`` views (no copies)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    skip_output_reshape: bool
    scale: float | None


def bind_call(args: tuple, kwargs: dict) -> tuple[AttentionCall | None, str | None]:
    """``(call, None)`` for a call the engine may take, else ``(None, reason)``: ComfyUI-level reasons (fp32
    attention asked for, low-precision attention refused, a layout this translation does not know)."""
    if len(args) > len(_POSITIONAL):
        return None, "more positional arguments than ComfyUI's attention signature"
    bound = dict(zip(_POSITIONAL, args))
    bound.update({name: kwargs[name] for name in _POSITIONAL if name in kwargs})
    if not {"q", "k", "v", "heads"} <= bound.keys():
        return None, "q, k, v or heads missing from the call"
    if kwargs.get("low_precision_attention", True) is False:
        return None, "the model asked for full-precision attention here (low_precision_attention=False)"
    if bound.get("attn_precision") == torch.float32:
        return None, "the model asked for float32 attention (attn_precision)"
    q, k, v, heads = bound["q"], bound["k"], bound["v"], bound["heads"]
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None, "q, k or v is not a tensor"
    if bound.get("skip_reshape", False):
        if q.ndim != 4 or k.ndim != 4:
            return None, "skip_reshape with tensors that are not (B, H, L, D)"
    else:
        if q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or q.shape[-1] % heads:
            return None, "tensors that are not (B, L, heads * D)"
        d = q.shape[-1] // heads
        if k.shape[-1] % d or v.shape[-1] != k.shape[-1]:
            return None, "key/value widths that are no multiple of the head size"
        q, k, v = (t.unflatten(-1, (t.shape[-1] // d, d)).transpose(1, 2) for t in (q, k, v))
    if k.shape[1] != q.shape[1] and not kwargs.get("enable_gqa", False):
        return None, "fewer key/value heads than query heads without enable_gqa"
    scale = kwargs.get("scale")
    return AttentionCall(q, k, v, bound.get("mask"), bool(bound.get("skip_output_reshape", False)),
                         None if scale is None else float(scale)), None


class Int8AttentionOverride:
    """Callable installed as ``transformer_options["optimized_attention_override"]``.

    ``previous``: an override that was installed before (another node's); calls this one does not take go to it,
    so the two compose, else to ComfyUI's ``func``.
    """

    def __init__(self, options: engine.AttentionOptions, previous: Callable | None = None) -> None:
        self.options = options
        self.previous = previous

    def _fallback(self, func: Callable, reason: str, args: tuple, kwargs: dict) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # decided at trace time; logging would break the graph
            log_once(log, logging.INFO, f"INT8 Attention: the original attention runs where {reason}.")
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func: Callable, *args: object, **kwargs: object) -> torch.Tensor:
        call, reason = bind_call(args, kwargs)
        if call is not None:
            reason = engine.attention_unsupported_reason(call.q, call.k, call.v, self.options, call.mask)
        if reason is not None:
            return self._fallback(func, reason, args, kwargs)
        if call.skip_output_reshape:
            return engine.int8_attention(call.q, call.k, call.v, self.options, call.scale, out_layout="bhld")
        out = engine.int8_attention(call.q, call.k, call.v, self.options, call.scale, out_layout="blhd")
        return out.flatten(-2)  # (B, Lq, H, D) -> (B, Lq, H * D): a view
