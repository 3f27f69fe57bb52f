"""Find the transformer blocks of a diffusion model, by the block-list attribute names the presets declare."""

from __future__ import annotations

import functools
import logging

import torch.nn as nn

__all__ = ["block_list_names", "find_blocks", "find_glue_modules", "get_submodule", "set_submodule"]

log = logging.getLogger("comfy_int8_w8a8")

# Used only when the preset table cannot be read (it is the union of the presets' block lists when written).
KNOWN_BLOCK_LISTS = (
    "double_blocks", "single_blocks", "blocks", "transformer_blocks", "layers", "joint_blocks",
    "double_stream_blocks", "single_stream_blocks", "noise_refiner", "context_refiner", "vace_blocks",
)


@functools.cache
def block_list_names() -> tuple[str, ...]:
    """The union of every preset's ``block_lists``, in first-seen order (falls back to ``KNOWN_BLOCK_LISTS``)."""
    try:
        from ..presets import load_preset, preset_names
    except ImportError as exc:
        log.debug("INT8 Lazy Torch Compile: preset table not available (%s); using the built-in block lists.", exc)
        return KNOWN_BLOCK_LISTS
    names: list[str] = []
    for preset in preset_names():
        for attr in load_preset(preset).block_lists:
            if attr not in names:
                names.append(attr)
    return tuple(names) or KNOWN_BLOCK_LISTS


def find_blocks(model: nn.Module, prefix: str = "", names: tuple[str, ...] | None = None) -> list[str]:
    """Dotted paths (``prefix`` + ``double_blocks.0`` ...) of every block in ``model``'s recognised block lists.

    A block list is a direct child ``nn.ModuleList`` (or ``nn.Sequential``) named in ``names``; an empty list
    means the model has none of them.
    """
    found = []
    for attr in names if names is not None else block_list_names():
        container = getattr(model, attr, None)
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            found.extend(f"{prefix}{attr}.{index}" for index in range(len(container)))
    return found


def find_glue_modules(model: nn.Module, prefix: str = "", names: tuple[str, ...] | None = None) -> list[str]:
    """Dotted paths of ``model``'s direct children outside its block lists that hold weights: the embedders and the
    final layer that run before and after the blocks (``img_in``, ``time_in``, ``final_layer`` in Flux).

    Containers (``ModuleList``/``ModuleDict``) are skipped: they are never called. So are children without
    parameters or buffers, which are pure position math: inductor fused Flux's ``pe_embedder`` (float64 pow, cos
    and sin per element) into one kernel that took 1.76 ms of every step on an H100 (a profiled Flux-dev-sized
    step, session 4), where eager PyTorch computes the 64 frequencies once and runs a few small kernels.
    """
    lists = set(names if names is not None else block_list_names())
    return [f"{prefix}{name}" for name, child in model.named_children()
            if name not in lists and not isinstance(child, (nn.ModuleList, nn.ModuleDict)) and _holds_state(child)]


def _holds_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.0`` for ``path`` ``"a.b.0"`` (ModuleList children are attributes named by their index)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the module at ``path`` (the inverse of :func:`get_submodule`)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_submodule(root, parent_path) if parent_path else root
    setattr(parent, name, module)
