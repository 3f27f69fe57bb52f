"""In-process helpers for the node tests that drive a tiny Flux through ComfyUI's own loader and sampler on the CPU.

Nothing here imports ComfyUI or the pack at import time: the test module has made ComfyUI importable first.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def import_pack() -> None:
    """Make the pack importable as ``comfy_int8_w8a8`` (a link in a temp dir when the venv has no install of it)."""
    try:
        import comfy_int8_w8a8  # noqa: F401
    except ImportError:
        root = Path(tempfile.mkdtemp())
        (root / "comfy_int8_w8a8").symlink_to(Path(__file__).resolve().parents[2])
        sys.path.insert(0, str(root))


def tiny_flux_patcher():  # noqa: ANN201 - a ComfyUI ModelPatcher
    """A tiny Flux-dev (one head of 128; HOST_NOTES: detected as Flux-dev), through ComfyUI's loader, float32."""
    import comfy.ldm.flux.model
    import comfy.sd

    torch.manual_seed(0)
    net = comfy.ldm.flux.model.Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768,
                                    context_in_dim=1024, hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1,
                                    depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                                    qkv_bias=True, guidance_embed=True, txt_ids_dims=[], operations=torch.nn)
    return comfy.sd.load_diffusion_model_state_dict(net.state_dict(), model_options={"dtype": torch.float32})


def sample_tiny_flux(patcher, steps: int) -> torch.Tensor:  # noqa: ANN001
    """``steps`` Euler steps of ``comfy.sample.sample`` on an 8x8 latent with fixed noise and conditioning."""
    import comfy.sample

    gen = torch.Generator().manual_seed(1)
    latent = torch.zeros(1, 16, 8, 8)
    noise = torch.randn(latent.shape, generator=gen)
    cond = [[torch.randn(1, 8, 1024, generator=gen), {"pooled_output": torch.randn(1, 768, generator=gen),
                                                      "guidance": 3.5}]]
    negative = [[torch.zeros(1, 8, 1024), {"pooled_output": torch.zeros(1, 768)}]]
    return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", cond, negative, latent, seed=1,
                               disable_pbar=True)
