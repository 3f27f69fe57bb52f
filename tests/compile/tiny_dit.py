"""A tiny DiT-shaped model for the compile tests: an owner with ``diffusion_model`` (like ComfyUI's BaseModel),
blocks in a ``blocks`` ModuleList, Int8Linear layers inside the blocks, 16-bit embedder and final layer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear

HIDDEN = 64
CHANNELS = 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        self.up = nn.Linear(HIDDEN, 2 * HIDDEN)
        self.down = nn.Linear(2 * HIDDEN, HIDDEN)

    def quantize(self) -> None:
        cfg = Int8Config(runtime_backend="torch_int_mm", small_batch_fallback="never")
        self.up = Int8Linear.from_linear(self.up, cfg, name="up")
        self.down = Int8Linear.from_linear(self.down, cfg, name="down")

    def forward(self, x: torch.Tensor, vec: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        out = x + self.down(F.gelu(self.up(self.norm(x) * (1 + vec))))
        # A Python flag read from the options, as ComfyUI patches do: dynamo guards on its value.
        if transformer_options.get("negate", False):
            out = -out
        return out


class PositionEmbedding(nn.Module):
    """Parameter-free position math, like Flux's ``pe_embedder``: the compile leaves such modules eager."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device, dtype=torch.float64).reshape(1, -1, 1)
        freqs = 10000.0 ** -torch.linspace(0, 1, HIDDEN, dtype=torch.float64, device=x.device)
        return torch.sin(pos * freqs).to(x.dtype)


class TinyDiT(nn.Module):
    def __init__(self, depth: int = 2, quantize: bool = True) -> None:
        super().__init__()
        self.img_in = nn.Linear(CHANNELS, HIDDEN)
        self.pe_embedder = PositionEmbedding()
        self.time_in = nn.Linear(1, HIDDEN)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.final_layer = nn.Linear(HIDDEN, CHANNELS)
        if quantize:
            for block in self.blocks:
                block.quantize()

    def forward(self, x: torch.Tensor, t: torch.Tensor, transformer_options: dict | None = None) -> torch.Tensor:
        options = transformer_options or {}
        h = self.img_in(x) + self.pe_embedder(x)
        vec = self.time_in(t.reshape(-1, 1, 1).to(x.dtype))
        for block in self.blocks:
            h = block(h, vec, options)
        return self.final_layer(h)


class Owner(nn.Module):
    """Stands in for ComfyUI's BaseModel: owns ``diffusion_model``; ``apply_model`` is what the wrapper wraps."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, transformer_options: dict | None = None) -> torch.Tensor:
        return self.diffusion_model(x, t, transformer_options=transformer_options)


class Executor:
    """The part of ComfyUI's WrapperExecutor a wrapper uses: ``class_obj`` and calling the next step."""

    def __init__(self, owner: Owner) -> None:
        self.class_obj = owner

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return self.class_obj.apply_model(*args, **kwargs)


def call_through(wrapper, owner: Owner, *args, **kwargs) -> torch.Tensor:  # noqa: ANN001
    """One sampling call: ComfyUI runs ``wrapper(executor, ...)`` around ``apply_model``."""
    return wrapper(Executor(owner), *args, **kwargs)
