"""ComfyUI nodes of the pack. Thin: read widgets, build a config, call the engine.

The node modules import ComfyUI inside their functions, so this package imports without ComfyUI.
"""

import importlib.util
import logging

from .attention_node import NODE_CLASS_MAPPINGS as _ATTENTION_NODES
from .attention_node import NODE_DISPLAY_NAME_MAPPINGS as _ATTENTION_NAMES
from .compile_node import NODE_CLASS_MAPPINGS as _COMPILE_NODES
from .compile_node import NODE_DISPLAY_NAME_MAPPINGS as _COMPILE_NAMES
from .loader_node import DISPLAY_NAME, NODE_ID, OTUNetLoaderW8A8

log = logging.getLogger("comfy_int8_w8a8")


def _loader_node_class() -> type:
    """The loader in ComfyUI's V3 schema where the host has ``comfy_api.latest``, else the V1 class."""
    if importlib.util.find_spec("comfy_api") is None:
        return OTUNetLoaderW8A8
    try:
        from .v3 import build_v3_node
    except ImportError as exc:  # an older host: comfy_api without .latest
        log.debug("INT8 W8A8: V3 node API unavailable (%s); registering the V1 node.", exc)
        return OTUNetLoaderW8A8
    return build_v3_node()


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: _loader_node_class(), **_COMPILE_NODES,
                                          **_ATTENTION_NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME, **_COMPILE_NAMES, **_ATTENTION_NAMES}
