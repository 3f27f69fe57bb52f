"""Lazy torch.compile support for int8 models in ComfyUI."""
