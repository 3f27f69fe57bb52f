"""The models of the end-to-end benchmark: ComfyUI's own Flux class with random weights, and its variants.

Every variant shares the 16-bit weights it does not convert with the bf16 reference (a deep copy whose memo maps
the Linear parameters to themselves), so only the converted Linears take new memory: the 12B reference and one
variant fit on an 80 GB GPU together.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["FLUX_DEV", "TINY_FLUX", "import_comfy", "build_flux", "flux_inputs", "to_fp8_fast", "to_comfy_int8",
           "to_ours", "to_ours_loader_ops", "int8_backend_names"]

# comfy/ldm/flux/model.py Flux(**FLUX_DEV): FLUX.1-dev's shapes, 11.9 B parameters.
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
# Same structure, small enough for a CPU smoke test of the benchmark itself.
TINY_FLUX = dict(FLUX_DEV, vec_in_dim=64, context_in_dim=128, hidden_size=256, num_heads=2, depth=1,
                 depth_single_blocks=1)
OUTLIER_CHANNELS = 8  # residual-stream channels made ~20x larger, like the salient channels of real DiTs
OUTLIER_GAIN = 20.0


def import_comfy() -> None:
    """Import ComfyUI's model code; on a machine without CUDA tell ComfyUI first (it probes the GPU at import)."""
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ldm.flux.model  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.ops  # noqa: F401


@torch.no_grad()
def _fill_random(model: nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in) (activations stay O(1) through 57 blocks), norm scales 1, biases small."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype)
                    / math.sqrt(p.shape[1]))
        elif "norm" in name or name.endswith("scale"):
            p.fill_(1.0)
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype))
    # Salient outlier channels: the same few residual-stream channels come out large from both input projections,
    # so every block's pre-norm activations carry them into the int8 Linears.
    channels = torch.randperm(model.hidden_size, generator=gen, device=gen.device)[:OUTLIER_CHANNELS]
    for proj in (model.img_in, model.txt_in):
        proj.weight[channels] *= OUTLIER_GAIN


def build_flux(config: dict, device: torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> nn.Module:
    """ComfyUI's Flux with ``disable_weight_init`` ops (plain bf16 Linears), random weights, eval mode."""
    import comfy.ldm.flux.model
    import comfy.ops

    model = comfy.ldm.flux.model.Flux(**config, operations=comfy.ops.disable_weight_init, device=device, dtype=dtype)
    _fill_random(model, seed)
    return model.eval().requires_grad_(False)


def flux_inputs(config: dict, image_size: int, txt_tokens: int, device: torch.device, seed: int = 1) -> dict:
    """Noise latents ``[1, 16, size/8, size/8]`` and random conditioning of Flux-dev's shapes (bf16)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    side = image_size // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device).to(torch.bfloat16)

    return {"noise": randn(1, config["in_channels"], side, side), "context": randn(1, txt_tokens, config["context_in_dim"]),
            "y": randn(1, config["vec_in_dim"]), "guidance": torch.full((1,), 3.5, device=device)}


def _shared_copy(ref: nn.Module) -> nn.Module:
    """A deep copy of ``ref`` that shares (does not copy) the parameters of its Linears."""
    memo = {id(p): p for m in ref.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return copy.deepcopy(ref, memo)


def _replace_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module | None]) -> int:
    """Replace each Linear for which ``make(name, linear)`` returns a module; returns how many were replaced."""
    count = 0
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        new = make(name, linear)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            count += 1
    return count


@torch.no_grad()
def to_fp8_fast(ref: nn.Module) -> tuple[nn.Module, int]:
    """ComfyUI's ``fp8_e4m3fn_fast``: every Linear weight stored in float8_e4m3fn, run by ``comfy.ops.fp8_ops``
    (fp8 ``_scaled_mm`` with unit scales where the shapes allow, a cast to bf16 elsewhere)."""
    import comfy.ops

    def make(name: str, linear: nn.Linear) -> nn.Module:
        layer = comfy.ops.fp8_ops.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                         device=linear.weight.device, dtype=torch.float8_e4m3fn)
        layer.weight = nn.Parameter(linear.weight.to(torch.float8_e4m3fn), requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    model = _shared_copy(ref)
    return model, _replace_linears(model, make)


@torch.no_grad()
def to_comfy_int8(ref: nn.Module, preset_name: str = "flux") -> tuple[nn.Module, int]:
    """ComfyUI's native ``int8_tensorwise`` layers (``comfy.ops.mixed_precision_ops``), loaded from a state dict
    with per-tensor int8 weights, for the Linears our preset quantizes (the same set as ours)."""
    import comfy.ops

    from ..int8.quantize import quantize_per_tensor
    from ..int8.quantize_model import should_quantize
    from ..int8.weights import comfy_quant_bytes
    from ..presets import load_preset

    preset = load_preset(preset_name)
    ops = comfy.ops.mixed_precision_ops({}, torch.bfloat16)
    meta = comfy_quant_bytes(0)

    def make(name: str, linear: nn.Linear) -> nn.Module | None:
        if should_quantize(name, linear.weight.shape, preset) is not None:
            return None
        layer = ops.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                           device=linear.weight.device)
        q, scale = quantize_per_tensor(linear.weight, name)
        sd = {"weight": q, "weight_scale": scale.reshape(()), "comfy_quant": meta.clone()}
        if linear.bias is not None:
            sd["bias"] = linear.bias.detach().clone()
        layer.load_state_dict(sd, strict=False)
        return layer

    model = _shared_copy(ref)
    return model, _replace_linears(model, make)


@torch.no_grad()
def to_ours(ref: nn.Module, outlier_method: str = "none", preset_name: str = "flux",
            runtime_backend: str = "auto") -> tuple[nn.Module, int]:
    """Our Int8Linear W8A8 layers via ``quantize_model`` with the family preset (``none`` or ``hadamard``)."""
    from ..int8.config import Int8Config
    from ..int8.quantize_model import QuantizeConfig, quantize_model
    from ..presets import load_preset

    model = _shared_copy(ref)
    config = QuantizeConfig(outlier_method=outlier_method, runtime=Int8Config(runtime_backend=runtime_backend))
    report = quantize_model(model, load_preset(preset_name), config)
    return model, len(report.quantized)


@torch.no_grad()
def to_ours_loader_ops(ref: nn.Module, config: dict, outlier_method: str = "hadamard",
                       runtime_backend: str = "auto") -> tuple[nn.Module, int]:
    """What the loader node builds: ComfyUI's Flux with the node's ops class, loading the bf16 reference's state
    dict (quantized on the fly per layer by the node's plan; int8 kept as ComfyUI QuantizedTensors)."""
    import comfy.ldm.flux.model

    from ..nodes.comfy_ops import make_int8_ops
    from ..nodes.loader_node import LoaderOptions, build_load_plan

    device = next(ref.parameters()).device
    sd = {"diffusion_model." + k: v for k, v in ref.state_dict().items()}
    options = LoaderOptions(model_type="flux", outlier_method=outlier_method, runtime_backend=runtime_backend)
    plan = build_load_plan("e2e random Flux", sd, options, None, False, device)
    plan.backend_for(device)
    model = comfy.ldm.flux.model.Flux(**config, operations=make_int8_ops(plan), device=device, dtype=torch.bfloat16)
    holder = nn.Module()
    holder.diffusion_model = model  # the BaseModel prefix, so layer names are the ones the loader sees
    holder.load_state_dict(sd, strict=False)
    del sd
    return model.eval().requires_grad_(False), plan.report.quantized_at_load


def int8_backend_names(model: nn.Module) -> list[str]:
    """The backends our Int8Linear layers resolved on their device (what actually ran)."""
    names = set()
    for module in model.modules():
        backend_for = getattr(module, "backend_for", None)
        if callable(backend_for) and isinstance(getattr(module, "weight", None), torch.Tensor):
            names.add(backend_for(module.weight.device).name)
    return sorted(names)
