"""Make a block compilable into a CUDA graph: what ``mode="reduce-overhead"`` (and the ``cudagraphs`` backend) needs.

Inductor's CUDA graphs refuse a graph that mutates its inputs ("skipping cudagraphs due to mutated inputs"), and
the DiT blocks of ComfyUI do exactly that (``img += ...``, ``x += ...`` in comfy/ldm/flux/layers.py). The blocks
return the tensors they mutate and their callers only use the returned values, so copying the tensor inputs
*inside* the compiled region keeps the block's meaning and leaves the graph's inputs untouched. After
functionalization the copy fuses into the first op that reads it (``img + y`` reads ``img`` directly), so it
costs no extra kernel where the input was mutated, and at most one copy where an extern kernel reads it.

Without graphs the step of a W8A8 model is bound by the CPU: ~500 kernel launches of a few microseconds of GPU
each (measured on an H100, Flux-dev-sized: 104.5 ms of GPU kernels in a 124-137 ms step, docs/results/e2e_h100.md;
with graphs through this module 106 ms of kernels in a 110.6-112.8 ms step, docs/results/e2e_h100_s2*.json).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["InputCopyingBlock", "OutputCopying", "clone_tensors"]


def clone_tensors(value: object) -> object:
    """``value`` with every tensor in it (through tuples, lists and dicts) replaced by a copy; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: clone_tensors(v) for k, v in value.items()}
    return value


class InputCopyingBlock(nn.Module):
    """Calls ``block`` on copies of its tensor arguments, so a graph compiled from this module never mutates its
    inputs. Keyword ``transformer_options`` is passed through untouched (it holds patches and callbacks, not data).
    This wrapper only ever lives in the compiled stand-in, never in the model's module tree.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - forwards whatever the block takes
        args = tuple(clone_tensors(a) for a in args)
        kwargs = {k: (v if k == "transformer_options" else clone_tensors(v)) for k, v in kwargs.items()}
        return self.block(*args, **kwargs)


class OutputCopying:
    """Calls ``compiled`` and returns copies of the tensors it returned (out of the CUDA graph's memory pool)."""

    def __init__(self, compiled: Callable) -> None:
        self.compiled = compiled

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return clone_tensors(self.compiled(*args, **kwargs))
