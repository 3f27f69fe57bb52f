"""Small built-in models (plain torch, ComfyUI's parameter names) for tests, benchmarks and the demo."""

from .tiny_flux import TinyFlux, build_tiny_flux

__all__ = ["TinyFlux", "build_tiny_flux"]
