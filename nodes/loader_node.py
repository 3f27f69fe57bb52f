"""The "Load Diffusion Model INT8 (W8A8)" node: read the widgets, build a load plan, let ComfyUI load the model.

The inputs are data (:func:`loader_inputs`), turned into a V3 schema where the host has ``comfy_api.latest`` and
into ``INPUT_TYPES`` otherwise (both register through ``NODE_CLASS_MAPPINGS``). ComfyUI is imported inside
functions, so importing this module needs no ComfyUI.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..int8.backends.registry import backend_names
from ..int8.config import OUTLIER_METHODS, SMALL_BATCH_FALLBACKS, Int8Config
from .errors import ModelFileNotFoundError, UnsupportedWeightDtypeError
from .load_plan import Int8LoadPlan
from .weight_cache import (
    CachedWeights,
    CacheKey,
    CacheLimits,
    CacheRecorder,
    cache_file,
    make_key,
    read_cache,
    write_cache,
)

__all__ = [
    "NODE_ID", "DISPLAY_NAME", "InputSpec", "LoaderOptions", "loader_inputs", "load_int8_diffusion_model",
    "load_state_dict_as_int8",
    "OTUNetLoaderW8A8",
]

log = logging.getLogger("comfy_int8_w8a8")

NODE_ID = "OTUNetLoaderW8A8"
DISPLAY_NAME = "Load Diffusion Model INT8 (W8A8)"
CATEGORY = "advanced/loaders"
DESCRIPTION = ("Load a diffusion model (Flux, Wan, LTX, Qwen-Image, ...) with int8 weights and int8 activations "
               "(W8A8): 16-bit files are quantized while loading, pre-quantized int8 files load as they are.")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
_FP8_DTYPES = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


@dataclass(frozen=True)
class InputSpec:
    """One widget: ``kind`` is ``COMBO`` (``choices``) or ``BOOLEAN``."""

    name: str
    kind: str
    tooltip: str
    choices: tuple[str, ...] = ()
    default: object = None
    advanced: bool = False


@dataclass(frozen=True)
class LoaderOptions:
    """The widget values of one load (hashable: ComfyUI replays the load from it for ``clone(disable_dynamic=True)``)."""

    weight_dtype: str = "default"
    model_type: str = "auto"
    on_the_fly_quantization: bool = True
    outlier_method: str = "hadamard"  # QuantizeConfig's default, chosen from the fidelity measurements
    small_batch_fallback: str = "always"
    runtime_backend: str = "auto"
    prepack_int8_weights: bool = False

    def int8_config(self) -> Int8Config:
        # prepack_int8_weights is the loader's on-disk weight cache (nodes/weight_cache.py), not a runtime setting.
        return Int8Config(runtime_backend=self.runtime_backend, small_batch_fallback=self.small_batch_fallback)


def _diffusion_model_files() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("diffusion_models")


def _model_type_choices() -> tuple[str, ...]:
    from ..presets import preset_names

    return ("auto", *preset_names())


def loader_inputs() -> list[InputSpec]:
    """The node's inputs, in order; every choice list comes from a registry, not typed here."""
    defaults = LoaderOptions()
    cfg = Int8Config()
    return [
        InputSpec("unet_name", "COMBO", "The diffusion model file (models/diffusion_models): 16-bit, fp8, or "
                  "int8 (ComfyUI native or INT8-Fast).", tuple(_diffusion_model_files())),
        InputSpec("weight_dtype", "COMBO", "Storage of the layers kept in high precision (embedders, modulation, "
                  "final layer), as in the stock Load Diffusion Model node. The int8 layers are unaffected.",
                  WEIGHT_DTYPES, defaults.weight_dtype, advanced=True),
        InputSpec("model_type", "COMBO", "Which layers stay in high precision: 'auto' detects the model family "
                  "from the checkpoint keys; or name the family preset.", _model_type_choices(), defaults.model_type),
        InputSpec("on_the_fly_quantization", "BOOLEAN", "Quantize 16-bit / fp8 layers to int8 while loading. Off: "
                  "only layers already int8 in the file run in int8, the rest load as 16-bit.", (),
                  defaults.on_the_fly_quantization),
        InputSpec("outlier_method", "COMBO", "Outlier handling when quantizing at load: hadamard rotates each group "
                  "of input channels (ComfyUI convrot), smooth migrates activation outliers into the weights, none "
                  "quantizes as is. Pre-quantized files keep theirs.", tuple(OUTLIER_METHODS), defaults.outlier_method),
        InputSpec("small_batch_fallback", "COMBO", "Calls with few rows (<= "
                  f"{cfg.small_batch_rows} tokens) run a 16-bit matmul on the dequantized weight, where int8 is "
                  "slower: always, only in small layers, or never.", tuple(SMALL_BATCH_FALLBACKS),
                  cfg.small_batch_fallback, advanced=True),
        InputSpec("runtime_backend", "COMBO", "The int8 kernels: auto picks the fastest that runs on this device "
                  "(and warns once if there are no int8 tensor cores); a named backend that cannot run is an error.",
                  tuple(backend_names()), cfg.runtime_backend, advanced=True),
        InputSpec("prepack_int8_weights", "BOOLEAN", "Cache the quantized weights on disk: the first load of a 16-bit "
                  "or fp8 file writes them (about the size of an int8 file) to user/int8_w8a8_cache (or "
                  "INT8_W8A8_CACHE_DIR), later loads read them instead of quantizing again. Rebuilt when the file, "
                  "outlier_method, model_type or pack version changes; the oldest are evicted (4 files / 64 GiB, "
                  "INT8_W8A8_CACHE_MAX_FILES / _MAX_GB). No effect on int8 files.", (), False,
                  advanced=True),
    ]


def input_types_v1() -> dict:
    """``INPUT_TYPES`` for hosts without the V3 API (same names, choices, defaults and tooltips)."""
    required: dict[str, tuple] = {}
    for spec in loader_inputs():
        opts: dict[str, object] = {"tooltip": spec.tooltip}
        if spec.default is not None:
            opts["default"] = spec.default
        if spec.advanced:
            opts["advanced"] = True
        required[spec.name] = (list(spec.choices) if spec.kind == "COMBO" else spec.kind, opts)
    return {"required": required}


def resolve_model_path(unet_name: str) -> str:
    """Full path of ``unet_name`` in the ``diffusion_models`` folders, or :class:`ModelFileNotFoundError`."""
    import folder_paths

    path = folder_paths.get_full_path("diffusion_models", unet_name)
    if path is None:
        raise ModelFileNotFoundError(unet_name, folder_paths.get_folder_paths("diffusion_models"))
    return path


def weight_dtype_model_options(choice: str, load_device: torch.device) -> tuple[dict, torch.dtype | None, bool]:
    """Map ``weight_dtype`` like the stock UNETLoader: ``(model_options, keep_dtype, fp8_fast)``."""
    import comfy.model_management as mm

    if choice not in WEIGHT_DTYPES:
        raise UnsupportedWeightDtypeError(choice, mm.get_torch_device_name(load_device),
                                          f"not one of {', '.join(WEIGHT_DTYPES)}")
    if choice == "default":
        return {}, None, False
    dtype = getattr(torch, _FP8_DTYPES[choice], None)
    if dtype is None:
        raise UnsupportedWeightDtypeError(choice, mm.get_torch_device_name(load_device),
                                          f"this PyTorch {torch.__version__} has no {_FP8_DTYPES[choice]}")
    fast = choice.endswith("_fast")
    if fast and not mm.supports_fp8_compute(load_device):
        raise UnsupportedWeightDtypeError(choice, mm.get_torch_device_name(load_device),
                                          "the _fast variant needs fp8 matrix multiply (NVIDIA sm_89 or newer: "
                                          "RTX 40xx, L40, H100, RTX 50xx)")
    options: dict = {"dtype": dtype}
    if fast:
        options["fp8_optimizations"] = True
    return options, dtype, fast


def load_int8_diffusion_model(path: str, options: LoaderOptions, disable_dynamic: bool = False):  # noqa: ANN201
    """Load ``path`` through ``comfy.sd`` with our ops; returns ComfyUI's ModelPatcher.

    This is also the patcher's ``cached_patcher_init``: ``clone(disable_dynamic=True)`` replays it.
    """
    from ..int8.formats import load_state_dict_for_comfy

    cache = _weight_cache_for(path, options) if options.prepack_int8_weights else None
    cached = read_cache(cache.file, cache.key) if cache is not None else None
    if cached is not None:
        log.info("INT8 W8A8: '%s': int8 weights read from the weight cache '%s'.", path, cache.file)
        patcher = load_state_dict_as_int8(cached.state_dict, cached.metadata, options, source=path,
                                          disable_dynamic=disable_dynamic, cached=cached)
    else:
        sd, metadata = load_state_dict_for_comfy(path)
        recorder = CacheRecorder(sd) if cache is not None else None
        patcher = load_state_dict_as_int8(sd, metadata, options, source=path, disable_dynamic=disable_dynamic,
                                          recorder=recorder)
        del sd  # the 16-bit weights of quantized layers are freed before the cache is written
        if recorder is not None:
            _write_weight_cache(cache, recorder, metadata, patcher, options)
    patcher.cached_patcher_init = (load_int8_diffusion_model, (path, options))
    return patcher


@dataclass(frozen=True)
class _WeightCache:
    file: Path
    key: CacheKey
    limits: CacheLimits


def weight_cache_folder() -> Path:
    """``INT8_W8A8_CACHE_DIR``, else ``<ComfyUI user directory>/int8_w8a8_cache`` (kept across restarts, unlike
    ComfyUI's temp folder, and always writable by ComfyUI, unlike a shared or read-only models folder)."""
    env = os.environ.get("INT8_W8A8_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import folder_paths

    return Path(folder_paths.get_user_directory()) / "int8_w8a8_cache"


def use_comfy_tuning_folder() -> None:
    """Keep the kernels' tuned choices (int8/launch/tuning_cache.py) in ``<ComfyUI user directory>/int8_w8a8_tuning``,
    so a restarted ComfyUI does not tune again; ``INT8_W8A8_TUNING_CACHE`` still takes precedence."""
    import folder_paths

    from ..int8.launch import tuning_cache

    tuning_cache.set_directory(Path(folder_paths.get_user_directory()) / "int8_w8a8_tuning")


def cache_options(options: LoaderOptions, preset_name: str) -> dict[str, object]:
    """The options that change the quantized numbers (the cache key's part besides the file and the pack)."""
    from ..int8.quantize_model import QuantizeConfig

    q = QuantizeConfig(outlier_method=options.outlier_method)
    return {"preset": preset_name, "outlier_method": q.outlier_method, "hadamard_group": q.hadamard_group,
            "smooth_alpha": q.smooth_alpha, "min_weight_elements": q.min_weight_elements}


def _weight_cache_for(path: str, options: LoaderOptions) -> _WeightCache | None:
    """The cache slot of this load, or None when there is nothing to cache (no quantization at load)."""
    from ..int8.formats import CheckpointError, open_checkpoint
    from ..presets.detect import resolve_preset

    if not options.on_the_fly_quantization:
        log.info("INT8 W8A8: prepack_int8_weights has nothing to cache with on_the_fly_quantization off.")
        return None
    limits = CacheLimits.from_env()
    try:
        with open_checkpoint(path) as ckpt:
            fmt, keys = ckpt.format, ckpt.keys()
        preset, _ = resolve_preset(options.model_type, keys)
        key = make_key(path, cache_options(options, preset.name))
    except (CheckpointError, OSError):
        return None  # the load itself reports what is wrong with the file
    if fmt in ("comfy_int8", "int8_fast"):
        log.info("INT8 W8A8: '%s' is already int8; prepack_int8_weights has nothing to cache.", path)
        return None
    return _WeightCache(cache_file(weight_cache_folder(), key), key, limits)


def _write_weight_cache(cache: _WeightCache, recorder: CacheRecorder, metadata: dict, patcher,  # noqa: ANN001
                        options: LoaderOptions) -> None:
    import comfy.model_management as mm
    import comfy.utils

    if recorder.unmatched:
        log.info("INT8 W8A8: weight cache not written: ComfyUI renamed or converted %d layers (e.g. '%s') before "
                 "they were quantized, so the quantized state dict cannot be recorded.", len(recorder.unmatched),
                 recorder.unmatched[0])
        return
    if recorder.quantized == 0:
        return
    facts = {"device": mm.get_torch_device().type}
    if options.weight_dtype == "default":  # the dtype ComfyUI chose from the 16-bit state dict (see _cached_dtype)
        facts["model_dtype"] = str(patcher.model.get_dtype()).removeprefix("torch.")
    bar = comfy.utils.ProgressBar(100)
    write_cache(cache.file, cache.key, recorder.state_dict, metadata, cache.limits, facts=facts,
                on_bytes=lambda done, total: bar.update_absolute(100 * done // max(total, 1)))


def _cached_dtype(cached: CachedWeights, options: LoaderOptions, load_device: torch.device) -> torch.dtype | None:
    """The model dtype ComfyUI picked when the cache was written: it picks from the state dict's dominant weight
    dtype, which is int8 in the cache (so a 16-bit fp16 file would come back as a bf16 model without this)."""
    if options.weight_dtype != "default" or cached.facts.get("device") != load_device.type:
        return None
    dtype = getattr(torch, cached.facts.get("model_dtype", ""), None)
    return dtype if isinstance(dtype, torch.dtype) else None


def load_state_dict_as_int8(sd: dict, metadata: dict | None, options: LoaderOptions, source: str,
                            disable_dynamic: bool = False, recorder: CacheRecorder | None = None,
                            cached: CachedWeights | None = None):  # noqa: ANN201
    """The node's load path for a state dict already in memory (``source`` names it in messages); ``recorder``
    follows the quantization for the weight cache; ``cached``: ``sd`` is a weight-cache hit."""
    import comfy.model_management as mm
    import comfy.sd

    from .comfy_ops import make_int8_ops

    use_comfy_tuning_folder()
    load_device = mm.get_torch_device()
    model_options, keep_dtype, fp8_fast = weight_dtype_model_options(options.weight_dtype, load_device)
    hidden: dict[str, torch.Tensor] = {}
    if cached is not None:
        # ComfyUI must see what it saw when the cache was written: comfy_quant keys would make it load the model
        # as a mixed-precision file (other dtype choices, a manual cast). The ops Linear puts them back per layer.
        hidden = {k[: -len(".comfy_quant")]: sd.pop(k) for k in [k for k in sd if k.endswith(".comfy_quant")]}
        dtype = _cached_dtype(cached, options, load_device)
        if dtype is not None:
            model_options["dtype"] = dtype
    plan = build_load_plan(source, sd, options, keep_dtype, fp8_fast, load_device)
    plan.cached_comfy_quant = hidden
    if recorder is not None:
        plan.on_layer_tensors = recorder.record
    # Resolved now, not at the first forward: an explicit backend that cannot run fails here, and compiled code
    # only looks the backend up.
    plan.backend_for(load_device)
    model_options["custom_operations"] = make_int8_ops(plan)
    kwargs = {"disable_dynamic": disable_dynamic} if _accepts_disable_dynamic() else {}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=model_options, metadata=metadata, **kwargs)
    if patcher is None:
        raise RuntimeError(f"Could not detect the model type of '{source}': ComfyUI knows no diffusion model with "
                           "these keys. Check that it is a diffusion model (not a full checkpoint, LoRA or text encoder).")
    if plan.cached_comfy_quant:
        raise RuntimeError(f"The weight cache of '{source}' holds int8 layers this ComfyUI did not load as Linear "
                           f"layers (e.g. '{next(iter(plan.cached_comfy_quant))}'). Delete the cache folder "
                           f"'{weight_cache_folder()}' or switch prepack_int8_weights off, and report it.")
    summary = plan.report.summary(source)
    if plan.report.quantized_at_load + plan.report.prequantized == 0:
        log.warning(summary + " The model runs in high precision.")
    else:
        log.info(summary)
    return patcher


def build_load_plan(path: str, sd: dict, options: LoaderOptions, keep_dtype: torch.dtype | None, fp8_fast: bool,
                    load_device: torch.device) -> Int8LoadPlan:
    """Resolve the preset, wire the engine's per-layer decision and quantizer, and size the progress bar."""
    import comfy.utils

    from ..int8.quantize_model import QuantizeConfig, quantize_linear_weight, should_quantize
    from ..presets.detect import resolve_preset

    preset, message = resolve_preset(options.model_type, sd.keys())
    log.info("INT8 W8A8: %s", message)
    qconfig = QuantizeConfig(outlier_method=options.outlier_method, runtime=options.int8_config())

    def decide(layer: str, weight: torch.Tensor) -> str | None:
        return should_quantize(layer, weight.shape, preset, qconfig.min_weight_elements)

    def quantize(layer: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
        return quantize_linear_weight(layer, weight, bias, qconfig)

    total = 0
    if options.on_the_fly_quantization:
        total = sum(1 for key, t in sd.items() if key.endswith(".weight") and t.dim() == 2 and t.is_floating_point()
                    and key[: -len("weight")] + "comfy_quant" not in sd and decide(key[: -len(".weight")], t) is None)
    progress = comfy.utils.ProgressBar(total) if total else None
    return Int8LoadPlan(
        file=path, int8_config=options.int8_config(), on_the_fly=options.on_the_fly_quantization,
        decide=decide, quantize=quantize, keep_dtype=keep_dtype, fp8_fast=fp8_fast,
        outlier_method=options.outlier_method,
        quantize_device=load_device if load_device.type == "cuda" else None,
        on_layer_quantized=(lambda: progress.update(1)) if progress is not None else None,
    )


def _accepts_disable_dynamic() -> bool:
    import comfy.sd

    return "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters


class OTUNetLoaderW8A8:
    """V1 form of the node, for hosts without ``comfy_api.latest``."""

    CATEGORY = CATEGORY
    DESCRIPTION = DESCRIPTION
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's API name
        return input_types_v1()

    def load_unet(self, unet_name: str, **widgets: object) -> tuple:
        return (load_int8_diffusion_model(resolve_model_path(unet_name), LoaderOptions(**widgets)),)
