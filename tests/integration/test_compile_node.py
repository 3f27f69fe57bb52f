"""The INT8 Lazy Torch Compile node inside the real ComfyUI: wrappers, sampler, clone.

Needs ComfyUI importable: run with ``COMFYUI_PATH=/opt/ComfyUI .venv-integration/bin/python -m pytest
tests/integration/test_compile_node.py`` (a venv holding ComfyUI's requirements); skipped otherwise.
"""

import inspect
import logging
import os
import sys
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "/opt/ComfyUI")
SKIP_REASON = ("ComfyUI is not importable: set COMFYUI_PATH to a ComfyUI checkout and run with a Python that has its "
               "requirements: `bash .ci/integration_env.sh`, then COMFYUI_PATH=/opt/ComfyUI .venv-integration/bin/python "
               "-m pytest tests/integration/test_compile_node.py)")


def _import_comfy():
    if COMFYUI_PATH not in sys.path:
        sys.path.insert(0, COMFYUI_PATH)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before comfy.model_management probes for a GPU
        import comfy.model_patcher
        import comfy.sample
        import comfy.sd
    except ImportError:
        return None
    return comfy


comfy = _import_comfy()
pytestmark = pytest.mark.skipif(comfy is None, reason=SKIP_REASON)
sys.path.insert(0, str(Path(__file__).parent))
from flux_harness import import_pack, sample_tiny_flux, tiny_flux_patcher  # noqa: E402 - after the path


@pytest.fixture(scope="module")
def node_module():
    """The pack imported as ``comfy_int8_w8a8`` (a link in a temp dir when the venv has no install of it)."""
    import_pack()
    from comfy_int8_w8a8.nodes import compile_node

    return compile_node


def _node_inputs(**overrides):
    inputs = {"backend": "inductor", "fullgraph": False, "mode": "default", "dynamic": "true",
              "compile_transformer_blocks_only": True, "dynamo_cache_size_limit": 640, "use_guard_filter": True,
              "disable_dynamic_vram": True, "log_compile": False}
    inputs.update(overrides)
    return inputs


def test_node_registers_with_a_tooltip_on_every_input(node_module):
    from comfy_int8_w8a8.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert NODE_DISPLAY_NAME_MAPPINGS["INT8LazyTorchCompile"] == "INT8 Lazy Torch Compile"
    required = NODE_CLASS_MAPPINGS["INT8LazyTorchCompile"].INPUT_TYPES()["required"]
    assert set(required) == {"model", *_node_inputs()}
    assert all(spec[1].get("tooltip") for spec in required.values())
    assert required["dynamo_cache_size_limit"][1] == {**required["dynamo_cache_size_limit"][1], "default": 640,
                                                      "min": 0, "max": 2048}


def test_node_compiles_at_first_sampling_call_blocks_only_without_recompiles(node_module):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    patcher = tiny_flux_patcher()
    eager = sample_tiny_flux(patcher, steps=3)
    (compiled_patcher,) = node_module.INT8LazyTorchCompile().compile(patcher, **_node_inputs())
    [compiler] = compiled_patcher.get_wrappers("apply_model", node_module.WRAPPER_KEY)
    assert compiler.compiled_paths == [] and counters["stats"]["unique_graphs"] == 0  # nothing compiled yet
    out = sample_tiny_flux(compiled_patcher, steps=3)
    blocks = ["diffusion_model.double_blocks.0", "diffusion_model.single_blocks.0"]
    glue = sorted(f"diffusion_model.{name}" for name in ("img_in", "time_in", "vector_in", "txt_in", "final_layer"))
    assert compiler.compiled_paths[:2] == blocks and set(glue) <= set(compiler.compiled_paths[2:])
    assert "diffusion_model.pe_embedder" not in compiler.compiled_paths  # parameter-free position math stays eager
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2 and not compiler.fallback.failed
    again = sample_tiny_flux(compiled_patcher, steps=3)  # a second run at the same resolution: no new graph, no rebuild
    assert counters["stats"]["unique_graphs"] == graphs and compiler.builds == 1
    # fp32 rounding bound for reordered sums: gamma_n = n*u per reduction of length n (n <= 512 here), through
    # the 2 blocks' ~8 chained reductions and 3 sampler steps.
    bound = 3 * 8 * 512 * torch.finfo(torch.float32).eps * eager.abs().max()
    assert (out - eager).abs().max() <= bound and torch.equal(out, again)
    assert type(patcher.model.diffusion_model.double_blocks[0]).__name__ == "DoubleStreamBlock"  # restored


def test_node_clones_with_disable_dynamic_on_this_host(node_module, monkeypatch):
    from comfy.model_patcher import ModelPatcher

    assert "disable_dynamic" in inspect.signature(ModelPatcher.clone).parameters
    seen = []
    original = ModelPatcher.clone

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("disable_dynamic"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelPatcher, "clone", spy)
    node_module.INT8LazyTorchCompile().compile(tiny_flux_patcher(), **_node_inputs())
    assert seen == [True]


def test_node_on_host_without_disable_dynamic_warns_with_the_fix(node_module, monkeypatch, caplog):
    from comfy.model_patcher import ModelPatcher

    from comfy_int8_w8a8.compile import NO_DISABLE_DYNAMIC_MESSAGE

    original = ModelPatcher.clone

    def old_clone(self):  # the signature of ComfyUI before v0.15.1
        return original(self)

    monkeypatch.setattr(ModelPatcher, "clone", old_clone)
    with caplog.at_level(logging.WARNING, logger="comfy_int8_w8a8"):
        (patched,) = node_module.INT8LazyTorchCompile().compile(tiny_flux_patcher(), **_node_inputs())
    messages = [r.getMessage() for r in caplog.records if NO_DISABLE_DYNAMIC_MESSAGE in r.getMessage()]
    assert messages and "Update ComfyUI" in messages[0]
    assert patched.get_wrappers("apply_model", node_module.WRAPPER_KEY)
