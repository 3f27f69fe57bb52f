"""INT8 W8A8 for diffusion models in ComfyUI.

Dropped into ``custom_nodes/`` this folder is the package ComfyUI imports; installed with pip it is
``comfy_int8_w8a8``. Importing it needs no ComfyUI: the node modules import ComfyUI inside their functions.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
