"""The loader node's inputs and errors, without ComfyUI (the file list is stubbed)."""

from __future__ import annotations

import pytest

from comfy_int8_w8a8.int8.backends.registry import backend_names
from comfy_int8_w8a8.int8.config import OUTLIER_METHODS, SMALL_BATCH_FALLBACKS
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig
from comfy_int8_w8a8.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, loader_node
from comfy_int8_w8a8.nodes.errors import ModelFileNotFoundError, QuantizationFailureError, UnsupportedWeightDtypeError
from comfy_int8_w8a8.presets import preset_names

FILES = ["flux1-dev.safetensors", "sub/wan.safetensors"]


@pytest.fixture(autouse=True)
def _files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_node, "_diffusion_model_files", lambda: list(FILES))


def test_loader_registers_under_its_id_and_display_name() -> None:
    assert "OTUNetLoaderW8A8" in NODE_CLASS_MAPPINGS
    assert NODE_DISPLAY_NAME_MAPPINGS["OTUNetLoaderW8A8"] == "Load Diffusion Model INT8 (W8A8)"
    assert loader_node.OTUNetLoaderW8A8.RETURN_TYPES == ("MODEL",)


def test_loader_inputs_have_exact_names_choices_and_defaults() -> None:
    required = loader_node.OTUNetLoaderW8A8.INPUT_TYPES()["required"]
    assert list(required) == ["unet_name", "weight_dtype", "model_type", "on_the_fly_quantization", "outlier_method",
                              "small_batch_fallback", "runtime_backend", "prepack_int8_weights"]
    assert required["unet_name"][0] == FILES
    assert required["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert required["model_type"][0] == ["auto", *preset_names()]
    assert required["outlier_method"][0] == list(OUTLIER_METHODS)
    assert required["small_batch_fallback"][0] == list(SMALL_BATCH_FALLBACKS)
    assert required["runtime_backend"][0] == backend_names()
    assert required["on_the_fly_quantization"][0] == "BOOLEAN" and required["prepack_int8_weights"][0] == "BOOLEAN"
    defaults = {name: spec[1].get("default") for name, spec in required.items()}
    assert defaults == {"unet_name": None, "weight_dtype": "default", "model_type": "auto",
                        "on_the_fly_quantization": True, "outlier_method": QuantizeConfig().outlier_method,
                        "small_batch_fallback": "always", "runtime_backend": "auto", "prepack_int8_weights": False}


def test_every_loader_input_has_a_tooltip() -> None:
    for name, spec in loader_node.OTUNetLoaderW8A8.INPUT_TYPES()["required"].items():
        assert len(spec[1]["tooltip"]) > 20, name


def test_loader_options_accept_the_widget_values_and_build_the_runtime_config() -> None:
    widgets = {name: spec[1].get("default") for name, spec in
               loader_node.OTUNetLoaderW8A8.INPUT_TYPES()["required"].items() if name != "unet_name"}
    options = loader_node.LoaderOptions(**widgets)
    cfg = options.int8_config()
    assert (cfg.runtime_backend, cfg.small_batch_fallback) == ("auto", "always")
    assert options.prepack_int8_weights is False
    assert hash(options) == hash(loader_node.LoaderOptions(**widgets))  # replayable by cached_patcher_init


def test_prepack_widget_is_the_weight_cache_not_the_engine_prepack() -> None:
    options = loader_node.LoaderOptions(prepack_int8_weights=True)
    assert options.int8_config() == loader_node.LoaderOptions().int8_config()  # a load-time cache, not a runtime knob
    tooltip = next(s.tooltip for s in loader_node.loader_inputs() if s.name == "prepack_int8_weights")
    assert "INT8_W8A8_CACHE_DIR" in tooltip


def test_model_file_not_found_names_the_file_and_folders() -> None:
    err = ModelFileNotFoundError("flux.safetensors", ["/models/diffusion_models", "/extra/unet"])
    text = str(err)
    assert "Model file not found: 'flux.safetensors'" in text
    assert "/models/diffusion_models" in text and "/extra/unet" in text
    assert isinstance(err, FileNotFoundError)


def test_unsupported_weight_dtype_names_choice_device_and_alternative() -> None:
    text = str(UnsupportedWeightDtypeError("fp8_e4m3fn_fast", "cuda:0 NVIDIA A100", "needs sm_89"))
    assert "Unsupported weight dtype 'fp8_e4m3fn_fast' on cuda:0 NVIDIA A100: needs sm_89" in text
    assert "'default'" in text and "'fp8_e4m3fn'" in text


@pytest.mark.parametrize("method", ["hadamard", "none"])
def test_quantization_failure_names_layer_file_and_setting(method: str) -> None:
    text = str(QuantizationFailureError("double_blocks.3.img_mlp.0", "/m/flux.safetensors", "NaN weights", method))
    assert "Quantization failure in layer 'double_blocks.3.img_mlp.0' of '/m/flux.safetensors': NaN weights" in text
    assert "on_the_fly_quantization to false" in text
    assert ("outlier_method to 'none'" in text) == (method != "none")
