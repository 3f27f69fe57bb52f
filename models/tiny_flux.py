"""A small Flux-architecture DiT in plain torch, with ComfyUI's parameter names, for tests and the demo.

Every parameter name equals a key of ComfyUI's ``comfy.ldm.flux.model.Flux`` state dict (QK-norm weights use the
original ``.scale`` suffix, which ComfyUI renames to ``.weight`` at load), so a file saved from
``TinyFlux.state_dict()`` is detected by ComfyUI as Flux (dev when ``guidance_in`` is present). ComfyUI reads
``heads = hidden / 128`` from the file, so ``hidden`` must be a multiple of 128.

:func:`build_tiny_flux` fills random weights and injects the activation outliers published for DiTs: a few input
channels of the block Linears 10-100x larger than the rest (residual-stream channels, modulation scales,
attention-value channels and MLP hidden units), so int8 activation quantization meets the same problem as on a
real Flux.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TinyFlux", "build_tiny_flux", "timestep_embedding"]

AXES_DIM = (16, 56, 56)  # Flux.1's RoPE split of a 128-wide head: (index, row, column)
THETA = 10000
PATCH = 2


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000, time_factor: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t`` in [0, 1] (scaled by 1000, like Flux)."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta**scale)
    out = torch.einsum("...n,d->...nd", pos.double(), omega)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def _apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    x_ = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.scale.to(x.dtype))


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.norm, self.proj = nn.Linear(dim, 3 * dim), QKNorm(dim // heads), nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.norm.query_norm(q).to(v), self.norm.key_norm(k).to(v), v


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.chunks = 6 if double else 3
        self.lin = nn.Linear(dim, self.chunks * dim)

    def forward(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return list(self.lin(F.silu(vec))[:, None, :].chunk(self.chunks, dim=-1))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    q, k = _apply_rope(q, pe), _apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.img_mod, self.txt_mod = Modulation(dim, True), Modulation(dim, True)
        self.img_attn, self.txt_attn = SelfAttention(dim, heads), SelfAttention(dim, heads)
        self.img_mlp, self.txt_mlp = _mlp(dim, mlp_hidden), _mlp(dim, mlp_hidden)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.split(_ln(img) * (1 + i_scale1) + i_shift1)
        tq, tk, tv = self.txt_attn.split(_ln(txt) * (1 + t_scale1) + t_shift1)
        attn = _attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe)
        t_attn, i_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_attn.proj(i_attn)
        img = img + i_gate2 * self.img_mlp(_ln(img) * (1 + i_scale2) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(t_attn)
        txt = txt + t_gate2 * self.txt_mlp(_ln(txt) * (1 + t_scale2) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.dim, self.heads, self.mlp_hidden = dim, heads, mlp_hidden
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.modulation = Modulation(dim, False)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(_ln(x) * (1 + scale) + shift), [3 * self.dim, self.mlp_hidden], dim=-1)
        q, k, v = qkv.view(x.shape[0], x.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.norm.query_norm(q).to(v), self.norm.key_norm(k).to(v)
        out = self.linear2(torch.cat((_attention(q, k, v, pe), F.gelu(mlp, approximate="tanh")), 2))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(_ln(x) * (1 + scale) + shift)


class TinyFlux(nn.Module):
    """Flux.1 architecture (double + single stream blocks, RoPE, adaLN) with ComfyUI's parameter names.

    ``forward(x [B, C, H, W] latent, timesteps [B] in [0, 1], context [B, L, context_in_dim], y [B, vec_in_dim],
    guidance [B])`` returns the predicted velocity ``[B, C, H, W]``, like ComfyUI's ``Flux.forward``.
    """

    def __init__(self, in_channels: int = 16, hidden: int = 256, depth: int = 2, depth_single: int = 2,
                 context_in_dim: int = 4096, vec_in_dim: int = 768, mlp_ratio: float = 4.0,
                 guidance_embed: bool = True) -> None:
        super().__init__()
        if hidden % sum(AXES_DIM):
            raise ValueError(f"hidden must be a multiple of {sum(AXES_DIM)} (ComfyUI reads heads = hidden / 128), got {hidden}.")
        self.in_channels, self.hidden = in_channels, hidden
        heads, mlp_hidden = hidden // sum(AXES_DIM), int(hidden * mlp_ratio)
        self.img_in = nn.Linear(in_channels * PATCH * PATCH, hidden)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden)
        self.guidance_in = MLPEmbedder(256, hidden) if guidance_embed else None
        self.txt_in = nn.Linear(context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden, heads, mlp_hidden) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden, heads, mlp_hidden) for _ in range(depth_single))
        self.final_layer = LastLayer(hidden, PATCH * PATCH * in_channels)

    def _positions(self, b: int, h: int, w: int, txt_len: int, device: torch.device) -> torch.Tensor:
        img_ids = torch.zeros(h, w, 3, device=device)
        img_ids[..., 1] = torch.arange(h, device=device, dtype=torch.float32)[:, None]
        img_ids[..., 2] = torch.arange(w, device=device, dtype=torch.float32)[None, :]
        ids = torch.cat((torch.zeros(txt_len, 3, device=device), img_ids.reshape(h * w, 3)), 0)
        pe = torch.cat([_rope(ids[..., i], AXES_DIM[i], THETA) for i in range(3)], dim=-3)
        return pe.unsqueeze(0).unsqueeze(0).expand(b, 1, *pe.shape)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h0, w0 = x.shape
        x = F.pad(x, (0, (-w0) % PATCH, 0, (-h0) % PATCH), mode="circular")
        h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
        img = x.reshape(b, c, h, PATCH, w, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * PATCH * PATCH)
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps).to(img.dtype))
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(img.dtype))
        if y is None:
            y = torch.zeros(b, self.vector_in.in_layer.in_features, device=x.device, dtype=img.dtype)
        vec = vec + self.vector_in(y.to(img.dtype))
        txt = self.txt_in(context.to(img.dtype))
        pe = self._positions(b, h, w, txt.shape[1], x.device)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec, pe)
        img = self.final_layer(img[:, txt.shape[1]:], vec)
        out = img.reshape(b, h, w, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * PATCH, w * PATCH)
        return out[:, :, :h0, :w0]


def _outlier_factors(n: int, gen: torch.Generator, low: float = 10.0, high: float = 100.0) -> torch.Tensor:
    """``n`` factors log-uniform in [low, high]: the 10-100x channel outliers reported for DiT activations."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low))).float()


def _pick(dim: int, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(dim, generator=gen)[:n]


@torch.no_grad()
def _inject_outliers(model: TinyFlux, gen: torch.Generator, n: int) -> None:
    d = model.hidden
    # 1. Residual-stream channels (persist through LayerNorm into qkv / mlp.0 / linear1 inputs).
    resid = _pick(d, n, gen)
    f = _outlier_factors(n, gen)
    for lin in (model.img_in, model.txt_in):
        lin.weight[resid] *= f[:, None]
        lin.bias[resid] *= f
    for block in model.double_blocks:
        # 2. Modulation scales: (1 + scale) of a few channels 10-100x (a bias on the scale chunks).
        for mod in (block.img_mod, block.txt_mod):
            for chunk in (1, 4):  # scale1, scale2
                ch = _pick(d, n, gen)
                mod.lin.bias[chunk * d + ch] = _outlier_factors(n, gen)
        # 3. Attention-value channels (outliers in the proj input) and 4. MLP hidden units (down-projection input).
        for attn, mlp in ((block.img_attn, block.img_mlp), (block.txt_attn, block.txt_mlp)):
            v_rows = 2 * d + _pick(d, n, gen)
            attn.qkv.weight[v_rows] *= _outlier_factors(n, gen)[:, None]
            hid = _pick(mlp[0].out_features, n, gen)
            mlp[0].weight[hid] *= _outlier_factors(n, gen)[:, None]
    for block in model.single_blocks:
        ch = _pick(d, n, gen)
        block.modulation.lin.bias[d + ch] = _outlier_factors(n, gen)
        rows = torch.cat((2 * d + _pick(d, n, gen), 3 * d + _pick(block.mlp_hidden, n, gen)))
        block.linear1.weight[rows] *= _outlier_factors(2 * n, gen)[:, None]


def build_tiny_flux(hidden: int = 256, depth: int = 2, depth_single: int = 2, seed: int = 0,
                    context_in_dim: int = 4096, vec_in_dim: int = 768, outliers_per_site: int = 4,
                    guidance_embed: bool = True) -> TinyFlux:
    """A :class:`TinyFlux` in fp32 with random weights (std 1/sqrt(fan_in), biases std 0.02, norm scales 1) and
    ``outliers_per_site`` outlier channels at each of the sites above (0 for a plain Gaussian model).
    Deterministic for a given ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = TinyFlux(hidden=hidden, depth=depth, depth_single=depth_single, context_in_dim=context_in_dim,
                     vec_in_dim=vec_in_dim, guidance_embed=guidance_embed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
    if outliers_per_site:
        _inject_outliers(model, gen, outliers_per_site)
    return model.eval()
