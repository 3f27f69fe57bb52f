"""Write tiny random Flux and Wan diffusion-model checkpoints that ComfyUI's model detection recognises.

Run as a script with ComfyUI importable (``PYTHONPATH=$COMFYUI_PATH``): ``python tiny_models.py MODELS_DIR``. The
tests run it in a subprocess so the test process itself never imports ComfyUI's top-level modules. Per family it
writes the 16-bit file, a pre-quantized int8 file (ComfyUI-native layout, what our converter writes), a weight-only
"fake-quant" fp32 file (each int8 layer's dequantized weight: the reference for the weight rounding alone) and a
LoRA, then ``manifest.json`` naming them. The models are built
from ComfyUI's own classes (so every key the detection reads is there), hidden size 128 (one 128-wide head),
2 double + 2 single Flux blocks / 2 Wan blocks, context width 1024 (Flux) and 4096 (Wan: ComfyUI's detection
fixes it), fed by the harness's text-encoder stub node. Saved in bf16, about 2-4 MB each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfy_int8_w8a8.int8.hadamard import rotate_weight
from comfy_int8_w8a8.int8.quantize import dequantize
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_linear_weight, should_quantize
from comfy_int8_w8a8.presets.detect import resolve_preset

LORA_RANK = 4


def _randomize(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    # ComfyUI zero-initialises some output layers; random weights everywhere make every layer matter.
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in model.state_dict().items():
        if t.dim() >= 2:
            fan_in = t[0].numel()
            sd[name] = (torch.randn(t.shape, generator=gen) / fan_in ** 0.5).to(torch.bfloat16)
        elif name.endswith("bias"):
            sd[name] = (torch.randn(t.shape, generator=gen) * 0.02).to(torch.bfloat16)
        else:
            sd[name] = (1.0 + 0.1 * torch.randn(t.shape, generator=gen)).to(torch.bfloat16)
    return sd


def tiny_flux() -> dict[str, torch.Tensor]:
    from comfy.ldm.flux.model import Flux

    model = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=1024,
                 hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56],
                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False, txt_ids_dims=[],
                 operations=torch.nn)
    return _randomize(model, 1)


def tiny_wan() -> dict[str, torch.Tensor]:
    from comfy.ldm.wan.model import WanModel

    model = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=256,
                     freq_dim=256, text_dim=4096, out_dim=16, num_heads=1, num_layers=2, operations=torch.nn)
    return _randomize(model, 2)


def quantized_variants(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """``(pre-quantized, fake-quant fp32, int8 layer names)`` with the loader's defaults (auto preset, hadamard)."""
    preset, _ = resolve_preset("auto", sd.keys())
    config = QuantizeConfig()
    int8, fake, layers = dict(sd), {k: v.float() for k, v in sd.items()}, []
    for key, weight in sd.items():
        layer = key[: -len(".weight")]
        if not key.endswith(".weight") or weight.dim() != 2 or should_quantize(layer, weight.shape, preset) is not None:
            continue
        tensors = quantize_linear_weight(layer, weight.float(), sd.get(layer + ".bias"), config)
        int8.update({f"{layer}.{k}": v for k, v in tensors.items()})
        w = dequantize(tensors["weight"], tensors["weight_scale"], torch.float64)
        meta = json.loads(bytes(tensors["comfy_quant"].tolist()).decode())
        if meta.get("convrot"):
            w = rotate_weight(w, int(meta["convrot_groupsize"]))  # H is its own inverse: un-rotates
        fake[key] = w.float()
        layers.append(layer)
    return int8, fake, layers


def lora_for(sd: dict[str, torch.Tensor], layers: list[str], seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on the int8 layers of block 0, big enough to change the output clearly (|dW| ~ |W| / 2)."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for layer in [name for name in layers if ".0." in name]:
        n, k = sd[layer + ".weight"].shape
        scale = sd[layer + ".weight"].float().std().item()
        lora[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(n, LORA_RANK, generator=gen) * scale
        lora[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(LORA_RANK, k, generator=gen) / LORA_RANK ** 0.5
        lora[f"diffusion_model.{layer}.alpha"] = torch.tensor(float(LORA_RANK))
    return lora


def main(models_dir: str) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    out = Path(models_dir)
    loras = out.parent / "loras"
    out.mkdir(parents=True, exist_ok=True)
    loras.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for family, build, seed in (("flux", tiny_flux, 1), ("wan", tiny_wan, 2)):
        sd = build()
        int8, fake, layers = quantized_variants(sd)
        names = {"bf16": f"tiny_{family}_bf16.safetensors", "int8": f"tiny_{family}_int8.safetensors",
                 "fakequant": f"tiny_{family}_fakequant_fp32.safetensors", "lora": f"tiny_{family}_lora.safetensors"}
        save_file(sd, str(out / names["bf16"]))
        save_file({k: v.contiguous() for k, v in int8.items()}, str(out / names["int8"]))
        save_file(fake, str(out / names["fakequant"]))
        save_file(lora_for(sd, layers, seed), str(loras / names["lora"]))
        manifest[family] = {**names, "int8_layers": layers}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
