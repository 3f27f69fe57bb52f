"""The loader node in ComfyUI's V3 schema (``comfy_api.latest``), built from the same input specs as the V1 form.

Imported only where the host has ``comfy_api.latest`` (an ImportError here makes the pack register the V1 node).
"""

from __future__ import annotations

from comfy_api.latest import io

from .loader_node import (
    CATEGORY,
    DESCRIPTION,
    DISPLAY_NAME,
    NODE_ID,
    InputSpec,
    LoaderOptions,
    load_int8_diffusion_model,
    loader_inputs,
    resolve_model_path,
)

__all__ = ["build_v3_node"]


def _v3_input(spec: InputSpec) -> io.Input:
    extra = {"advanced": True} if spec.advanced else {}
    if spec.kind == "BOOLEAN":
        return io.Boolean.Input(spec.name, default=spec.default, tooltip=spec.tooltip, **extra)
    return io.Combo.Input(spec.name, options=list(spec.choices), default=spec.default, tooltip=spec.tooltip, **extra)


def build_v3_node() -> type:
    """A fresh V3 node class (its schema lists the model files when ComfyUI asks for it)."""

    class OTUNetLoaderW8A8(io.ComfyNode):
        @classmethod
        def define_schema(cls) -> io.Schema:
            return io.Schema(
                node_id=NODE_ID,
                display_name=DISPLAY_NAME,
                category=CATEGORY,
                description=DESCRIPTION,
                inputs=[_v3_input(spec) for spec in loader_inputs()],
                outputs=[io.Model.Output()],
            )

        @classmethod
        def execute(cls, unet_name: str, **widgets: object) -> io.NodeOutput:
            return io.NodeOutput(load_int8_diffusion_model(resolve_model_path(unet_name), LoaderOptions(**widgets)))

    return OTUNetLoaderW8A8
