"""Write tiny random Flux and Wan diffusion-model checkpoints that ComfyUI's model detection recognises.

Run as a script with ComfyUI importable (``PYTHONPATH=$COMFYUI_PATH``): ``python tiny_models.py OUT_DIR``. The tests
run it in a subprocess so the test process itself never imports ComfyUI's top-level modules. The models are built
from ComfyUI's own classes (so every key the detection reads is there), hidden size 128 (one 128-wide head),
2 double + 2 single Flux blocks / 2 Wan blocks, context width 1024 (what ``LotusConditioning`` emits, a
conditioning node that needs no text encoder). Saved in bf16, about 2-4 MB each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

FLUX_FILE = "tiny_flux_bf16.safetensors"
WAN_FILE = "tiny_wan_bf16.safetensors"


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
                     freq_dim=256, text_dim=1024, out_dim=16, num_heads=1, num_layers=2, operations=torch.nn)
    return _randomize(model, 2)


def main(out_dir: str) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tiny_flux(), str(out / FLUX_FILE))
    save_file(tiny_wan(), str(out / WAN_FILE))


if __name__ == "__main__":
    main(sys.argv[1])
