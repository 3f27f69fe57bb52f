"""``comfy-int8 demo``: the pack's main job on a built-in model, no download and no ComfyUI needed.

Builds a tiny Flux-architecture transformer (random weights with DiT-like outlier channels), saves it as a 16-bit
safetensors file, converts it to ComfyUI-native int8 files (one per outlier method), loads each back, runs the same
few flow-matching denoising steps with the 16-bit and the int8 model, and prints size, speed and fidelity.
Everything lives in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

METHODS = ("none", "hadamard", "smooth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per model (default 4)")
    parser.add_argument("--methods", default=",".join(METHODS), help="outlier methods to compare, comma-separated")
    parser.add_argument("--size", type=int, default=32, help="latent height/width (default 32: 256 image tokens)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")


@dataclass
class DemoRow:
    model: str
    file_mb: float | None
    weight_mb: float
    weight_ratio: float
    step_ms: float
    cosine: float
    psnr_db: float


def _weight_bytes(module: torch.nn.Module) -> int:
    """Bytes a 16-bit load holds: float tensors counted at 2 bytes (the CPU run computes them in fp32 because
    CPUs have no fast bf16 matmul), int8 weights at 1, fp32 scales at 4."""
    total = 0
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        scale_like = name.endswith(("weight_scale", "input_smooth"))
        size = 2 if t.is_floating_point() and not scale_like else t.element_size()
        total += t.numel() * size
    return total


def _inputs(model, size: int, device: torch.device, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(1234)
    context_dim = model.txt_in.in_features
    return {
        "noise": torch.randn(1, model.in_channels, size, size, generator=gen).to(device, dtype),
        "context": torch.randn(1, 64, context_dim, generator=gen).to(device, dtype),
        "y": torch.randn(1, model.vector_in.in_layer.in_features, generator=gen).to(device, dtype),
    }


@torch.no_grad()
def _sample(model, inputs: dict, steps: int) -> tuple[torch.Tensor, float]:
    """Euler steps of a rectified-flow sampler from sigma 1 to 0 (Flux's); returns the latent and ms per step."""
    x = inputs["noise"].clone()
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    guidance = torch.full((1,), 3.5, device=x.device, dtype=x.dtype)
    model(x, sigmas[:1].to(x.device, x.dtype), inputs["context"], inputs["y"], guidance)  # warm-up
    _sync(x.device)
    start = time.perf_counter()
    for i in range(steps):
        t = sigmas[i : i + 1].to(x.device, x.dtype)
        v = model(x, t, inputs["context"], inputs["y"], guidance)
        x = x + (sigmas[i + 1] - sigmas[i]).item() * v
    _sync(x.device)
    return x.float(), (time.perf_counter() - start) * 1000 / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(out.flatten().double(), ref.flatten().double(), dim=0).item()
    mse = (out.double() - ref.double()).pow(2).mean().item()
    peak = ref.double().abs().max().item()
    return cos, (10 * math.log10(peak * peak / mse) if mse > 0 else float("inf"))


def _int8_model(method: str, src: Path, tmp: Path, build, preset, device, dtype):
    """Convert ``src`` with ``method`` and load the file back; ``smooth`` cannot be written for stock ComfyUI,
    so it is quantized on the fly (as the loader node does) and has no file."""
    from ..int8.formats import load_state_dict_for_comfy
    from ..int8.formats.converter import convert_checkpoint
    from ..int8.load_int8 import load_int8_state_dict
    from ..int8.quantize_model import QuantizeConfig, quantize_model

    model = build().to(device, dtype)
    config = QuantizeConfig(outlier_method=method)
    if method == "smooth":
        quantize_model(model, preset, config)
        return model, None
    out = tmp / f"tiny_flux_int8_{method}.safetensors"
    convert_checkpoint(src, out, preset, config, device=str(device), progress=False)
    sd, _ = load_state_dict_for_comfy(out)
    load_int8_state_dict(model, {k: v.to(device) for k, v in sd.items()})
    return model.to(device), out.stat().st_size


def run_demo(device: torch.device, steps: int, methods: list[str], size: int) -> list[DemoRow]:
    from safetensors.torch import save_file

    from ..models.tiny_flux import build_tiny_flux
    from ..presets import load_preset

    # 16-bit on a GPU; fp32 on a CPU, whose bf16 matmuls are emulated and 10x slower (the file stays bf16).
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def build():
        # Few blocks, but in the proportions of Flux-dev, where the blocks hold 98% of the weights.
        return build_tiny_flux(hidden=256, depth=4, depth_single=8, context_in_dim=1024, seed=0)

    preset = load_preset("flux")
    rows = []
    # logging_redirect_tqdm: the backend's log lines go through tqdm.write, above the bar, not into it.
    with tempfile.TemporaryDirectory(prefix="comfy_int8_demo_") as tmp_name, logging_redirect_tqdm(), \
            tqdm(total=1 + len(methods), desc="demo", unit="model") as bar:
        tmp = Path(tmp_name)
        model16 = build().to(device, dtype)
        src = tmp / "tiny_flux_bf16.safetensors"
        save_file({k: v.to(torch.bfloat16).contiguous().cpu() for k, v in model16.state_dict().items()}, str(src))
        inputs = _inputs(model16, size, device, dtype)
        ref, ms16 = _sample(model16, inputs, steps)
        bytes16 = _weight_bytes(model16)
        rows.append(DemoRow("16-bit" if device.type == "cuda" else "16-bit file, fp32 compute", src.stat().st_size / 2**20, bytes16 / 2**20, 1.0, ms16, 1.0, float("inf")))
        del model16
        bar.update()
        for method in methods:
            model, file_bytes = _int8_model(method, src, tmp, build, preset, device, dtype)
            out, ms = _sample(model, inputs, steps)
            cos, psnr = _compare(out, ref)
            wb = _weight_bytes(model)
            rows.append(DemoRow(f"int8 {method}", file_bytes / 2**20 if file_bytes else None, wb / 2**20,
                                wb / bytes16, ms, cos, psnr))
            del model
            bar.update()
    return rows


def format_table(rows: list[DemoRow]) -> str:
    head = "| model | file MB | weight MB | weights vs bf16 | ms / step | cosine vs bf16 | PSNR dB |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        file_mb = f"{r.file_mb:.2f}" if r.file_mb is not None else "(on the fly)"
        lines.append(f"| {r.model} | {file_mb} | {r.weight_mb:.2f} | {r.weight_ratio:.3f} | {r.step_ms:.1f} | "
                     f"{r.cosine:.5f} | {r.psnr_db:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"Unknown outlier method(s) {unknown}; choose from {', '.join(METHODS)}.")
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = run_demo(device, args.steps, methods, args.size)
    print(f"\nTiny Flux-architecture model (random weights with outlier channels), {args.steps} Euler steps on "
          f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch {torch.__version__}:\n")
    print(format_table(rows))
    print("\nweights = all parameters and buffers held in memory (int8 layers + the layers the flux preset keeps "
          "in 16-bit).\nOn a CPU the int8 path has no tensor cores: the speed column means something on an NVIDIA GPU only.")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
