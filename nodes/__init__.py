"""ComfyUI nodes of the pack. Thin: read widgets, build a config, call the engine.

The node modules import ComfyUI inside their functions, so this package imports without ComfyUI.
"""

from .compile_node import NODE_CLASS_MAPPINGS as _COMPILE_NODES
from .compile_node import NODE_DISPLAY_NAME_MAPPINGS as _COMPILE_NAMES
from .loader_node import NODE_CLASS_MAPPINGS as _LOADER_NODES
from .loader_node import NODE_DISPLAY_NAME_MAPPINGS as _LOADER_NAMES

NODE_CLASS_MAPPINGS: dict[str, type] = {**_LOADER_NODES, **_COMPILE_NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {**_LOADER_NAMES, **_COMPILE_NAMES}
