"""ComfyUI nodes of the pack. Thin: read widgets, build a config, call the engine."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
