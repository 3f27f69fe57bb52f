"""The loader and compile nodes as the real ComfyUI server shows them, and the errors users see."""

from __future__ import annotations

import pytest

from comfy_int8_w8a8.int8.backends.registry import backend_names
from comfy_int8_w8a8.int8.config import OUTLIER_METHODS, SMALL_BATCH_FALLBACKS
from comfy_int8_w8a8.presets import preset_names

pytestmark = pytest.mark.integration

LOADER_DEFAULTS = {
    "weight_dtype": "default", "model_type": "auto", "on_the_fly_quantization": True, "outlier_method": "hadamard",
    "small_batch_fallback": "always", "runtime_backend": "auto", "prepack_int8_weights": False,
}
COMPILE_DEFAULTS = {
    "backend": "inductor", "fullgraph": False, "mode": "default", "dynamic": "true",
    "compile_transformer_blocks_only": True, "dynamo_cache_size_limit": 640, "use_guard_filter": True,
    "disable_dynamic_vram": True, "log_compile": False,
}


def _widgets(info: dict) -> dict[str, tuple[object, dict]]:
    """name -> (choices list or type name, options) for V1 and V3 nodes alike (V3 combos say "COMBO" + options)."""
    out = {}
    for name, spec in info["input"]["required"].items():
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        out[name] = (opts["options"] if kind == "COMBO" else kind, opts)
    return out


def test_loader_node_object_info_lists_exact_inputs(comfy) -> None:
    info = comfy.get("/object_info/OTUNetLoaderW8A8")["OTUNetLoaderW8A8"]
    assert info["display_name"] == "Load Diffusion Model INT8 (W8A8)"
    assert info["output"] == ["MODEL"]
    widgets = _widgets(info)
    assert list(widgets) == ["unet_name", *LOADER_DEFAULTS]
    files = comfy.files
    assert set(widgets["unet_name"][0]) >= {files["flux"]["bf16"], files["flux"]["int8"], files["wan"]["bf16"]}
    assert widgets["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert widgets["model_type"][0] == ["auto", *preset_names()]
    assert widgets["outlier_method"][0] == list(OUTLIER_METHODS)
    assert widgets["small_batch_fallback"][0] == list(SMALL_BATCH_FALLBACKS)
    assert widgets["runtime_backend"][0] == backend_names()
    assert widgets["on_the_fly_quantization"][0] == "BOOLEAN" and widgets["prepack_int8_weights"][0] == "BOOLEAN"
    for name, default in LOADER_DEFAULTS.items():
        assert widgets[name][1].get("default") == default, name
    assert all(opts.get("tooltip") for _, opts in widgets.values())


def test_compile_node_object_info_lists_exact_inputs(comfy) -> None:
    info = comfy.get("/object_info/INT8LazyTorchCompile")["INT8LazyTorchCompile"]
    assert info["display_name"] == "INT8 Lazy Torch Compile"
    assert info["output"] == ["MODEL"]
    widgets = _widgets(info)
    assert list(widgets) == ["model", *COMPILE_DEFAULTS]
    assert widgets["backend"][0] == ["inductor", "cudagraphs"]
    assert widgets["mode"][0] == ["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"]
    assert widgets["dynamic"][0] == ["auto", "true", "false"]
    assert widgets["dynamo_cache_size_limit"][1]["min"] == 0 and widgets["dynamo_cache_size_limit"][1]["max"] == 2048
    for name, default in COMPILE_DEFAULTS.items():
        assert widgets[name][1].get("default") == default, name
    assert all(opts.get("tooltip") for _, opts in widgets.values())


def _loader_only(comfy, **widgets: object) -> dict:
    loader = {"unet_name": comfy.files["flux"]["bf16"], **LOADER_DEFAULTS, **widgets}
    return {"1": {"class_type": "OTUNetLoaderW8A8", "inputs": loader},
            "2": {"class_type": "ModelSamplingFlux",
                  "inputs": {"model": ["1", 0], "max_shift": 1.15, "base_shift": 0.5, "width": 64, "height": 64}},
            "3": {"class_type": "LotusConditioning", "inputs": {}},
            "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                  "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0], "negative": ["3", 0],
                  "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "err"}}}


def test_fp8_fast_on_cpu_fails_with_unsupported_weight_dtype(comfy) -> None:
    error = comfy.run_error(_loader_only(comfy, weight_dtype="fp8_e4m3fn_fast"))
    assert "Unsupported weight dtype 'fp8_e4m3fn_fast'" in error["exception_message"]
    assert "fp8_e4m3fn" in error["exception_message"] and "cpu" in error["exception_message"].lower()


def test_explicit_backend_that_cannot_run_fails_naming_it(comfy) -> None:
    error = comfy.run_error(_loader_only(comfy, runtime_backend="triton"))
    assert "runtime_backend 'triton' cannot run on cpu" in error["exception_message"]
    assert "auto" in error["exception_message"]
