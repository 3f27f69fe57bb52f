"""Lazy ``torch.compile`` for int8 (and any) diffusion models in ComfyUI.

Nothing here imports ComfyUI at module level: the engine works on any ``nn.Module`` owning a
``diffusion_model`` attribute, and the node (``nodes/compile_node.py``) plugs it into ComfyUI's wrappers.
"""

from .blocks import block_list_names, find_blocks
from .clone import NO_DISABLE_DYNAMIC_MESSAGE, DisableDynamicUnsupportedError, clone_for_compile
from .fallback import FAILED_MESSAGE, CompiledWithFallback, compile_error_types
from .guards import TransformerOptionsGuardFilter
from .lazy import LazyCompiler
from .settings import BACKENDS, DYNAMIC_CHOICES, MODES, CompileSettings, parse_dynamic

__all__ = [
    "BACKENDS", "DYNAMIC_CHOICES", "MODES", "CompileSettings", "parse_dynamic", "LazyCompiler",
    "CompiledWithFallback", "compile_error_types", "FAILED_MESSAGE", "TransformerOptionsGuardFilter",
    "block_list_names", "find_blocks", "clone_for_compile", "NO_DISABLE_DYNAMIC_MESSAGE",
    "DisableDynamicUnsupportedError",
]
