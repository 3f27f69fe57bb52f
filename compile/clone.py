"""Clone the ModelPatcher for compiling, with dynamic VRAM turned off where the host can do that."""

from __future__ import annotations

import inspect
import logging

from ..int8.log_once import log_once

__all__ = ["NO_DISABLE_DYNAMIC_MESSAGE", "DisableDynamicUnsupportedError", "clone_supports_disable_dynamic",
           "clone_for_compile"]

log = logging.getLogger("comfy_int8_w8a8")

NO_DISABLE_DYNAMIC_MESSAGE = "INT8 Lazy Torch Compile: this ComfyUI version does not support disable_dynamic clone."
_FIX = ("Update ComfyUI (v0.15.1 or newer has ModelPatcher.clone(disable_dynamic=...)), or turn "
        "disable_dynamic_vram off on the INT8 Lazy Torch Compile node.")


class DisableDynamicUnsupportedError(RuntimeError):
    """The patcher uses dynamic VRAM and the host cannot clone it without (compiling it would not be safe)."""


def clone_supports_disable_dynamic(patcher: object) -> bool:
    """Whether ``patcher.clone`` takes ``disable_dynamic`` (feature detection, no version sniffing)."""
    try:
        params = inspect.signature(patcher.clone).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented clone has no inspectable signature
        return False
    return "disable_dynamic" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def clone_for_compile(patcher: object, disable_dynamic_vram: bool) -> object:
    """``patcher.clone(disable_dynamic=True)`` when asked and supported, else ``patcher.clone()``.

    On a host whose ``clone`` lacks the argument: if the patcher itself is dynamic (``is_dynamic()`` true) this
    raises :class:`DisableDynamicUnsupportedError`, because compiling a model whose weights the dynamic-VRAM
    loader moves in and out behind dynamo's back recompiles or breaks mid-run, and the user asked for it off.
    If the patcher is not dynamic (hosts before dynamic VRAM existed) there is nothing to turn off: it warns once
    and continues with a plain clone, so the node still works on older ComfyUI.
    """
    if not disable_dynamic_vram:
        return patcher.clone()
    if clone_supports_disable_dynamic(patcher):
        return patcher.clone(disable_dynamic=True)
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        raise DisableDynamicUnsupportedError(f"{NO_DISABLE_DYNAMIC_MESSAGE} {_FIX}")
    log_once(log, logging.WARNING, f"{NO_DISABLE_DYNAMIC_MESSAGE} This model does not use dynamic VRAM, so compiling "
             f"goes on with a plain clone. {_FIX}")
    return patcher.clone()
