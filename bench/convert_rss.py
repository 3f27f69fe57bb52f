"""Peak RSS of ``comfy-int8 convert`` on a large synthetic Flux-shaped checkpoint.

Writes a bf16 checkpoint with ComfyUI Flux key names (streamed, so generating it needs no RAM either), runs the
converter in a subprocess, reads the child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), prints
it next to the budget (largest tensor + 1 GiB), and deletes both files. Usage::

    python -m comfy_int8_w8a8.bench.convert_rss [--gib 4.2] [--hidden 3072] [--dir /tmp] [--keep]

Exit code 0 when the peak is within budget, 1 when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..int8.formats.safetensors_io import SafetensorsStreamWriter, TensorSpec

MLP_RATIO = 4
HEAD_DIM = 128


def flux_specs(hidden: int, depth: int, depth_single: int, dtype: torch.dtype = torch.bfloat16,
               in_channels: int = 64, context: int = 4096, vec: int = 768, guidance: bool = True) -> list[TensorSpec]:
    """The tensors of a ComfyUI-layout Flux (``comfy/ldm/flux/model.py`` names) of the given size."""
    h, mlp = hidden, hidden * MLP_RATIO
    out: list[TensorSpec] = []

    def lin(name: str, n: int, k: int, bias: bool = True) -> None:
        out.append(TensorSpec(f"{name}.weight", dtype, (n, k)))
        if bias:
            out.append(TensorSpec(f"{name}.bias", dtype, (n,)))

    lin("img_in", h, in_channels)
    lin("time_in.in_layer", h, 256)
    lin("time_in.out_layer", h, h)
    lin("vector_in.in_layer", h, vec)
    lin("vector_in.out_layer", h, h)
    if guidance:
        lin("guidance_in.in_layer", h, 256)
        lin("guidance_in.out_layer", h, h)
    lin("txt_in", h, context)
    for i in range(depth):
        for side in ("img", "txt"):
            p = f"double_blocks.{i}.{side}"
            lin(f"{p}_mod.lin", 6 * h, h)
            lin(f"{p}_attn.qkv", 3 * h, h)
            out.append(TensorSpec(f"{p}_attn.norm.query_norm.scale", dtype, (HEAD_DIM,)))
            out.append(TensorSpec(f"{p}_attn.norm.key_norm.scale", dtype, (HEAD_DIM,)))
            lin(f"{p}_attn.proj", h, h)
            lin(f"{p}_mlp.0", mlp, h)
            lin(f"{p}_mlp.2", h, mlp)
    for i in range(depth_single):
        p = f"single_blocks.{i}"
        lin(f"{p}.linear1", 3 * h + mlp, h)
        lin(f"{p}.linear2", h, h + mlp)
        out.append(TensorSpec(f"{p}.norm.query_norm.scale", dtype, (HEAD_DIM,)))
        out.append(TensorSpec(f"{p}.norm.key_norm.scale", dtype, (HEAD_DIM,)))
        lin(f"{p}.modulation.lin", 3 * h, h)
    lin("final_layer.linear", in_channels, h)
    lin("final_layer.adaLN_modulation.1", 2 * h, h)
    return out


def write_synthetic(path: str | Path, specs: list[TensorSpec], seed: int = 0, force: bool = False) -> int:
    """Write random tensors (weights ~ N(0, 1/K), like an initialised model) for ``specs``; returns the file size."""
    gen = torch.Generator().manual_seed(seed)
    with SafetensorsStreamWriter(path, specs, {"source": "comfy_int8_w8a8 synthetic flux"}, force=force) as w:
        for s in specs:
            fan_in = s.shape[-1] if len(s.shape) == 2 else 1
            t = torch.randn(s.shape, generator=gen, dtype=torch.float32).mul_(fan_in ** -0.5)
            w.write(s.name, t.to(s.dtype))
            del t
        w.commit()
        return w.total_bytes


def depth_for(gib: float, hidden: int) -> int:
    """Double blocks needed for about ``gib`` GiB of bf16 weights."""
    per_block = 2 * 2 * (6 + 3 + 1 + 2 * MLP_RATIO) * hidden * hidden
    return max(1, round(gib * 2**30 / per_block))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.2, help="size of the synthetic checkpoint (default 4.2)")
    ap.add_argument("--hidden", type=int, default=3072, help="Flux hidden size (default 3072, Flux-dev's)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the two files go (needs ~1.5x --gib free)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON to this file")
    args = ap.parse_args(argv)
    try:
        import resource  # POSIX only; imported here so flux_specs/write_synthetic (used by tests) import anywhere
    except ImportError:
        print("error: bench convert_rss needs the POSIX 'resource' module (Linux or macOS) to read the child's "
              "peak RSS.", file=sys.stderr)
        return 1
    depth = depth_for(args.gib, args.hidden)
    specs = flux_specs(args.hidden, depth, depth_single=1)
    largest = max(s.nbytes for s in specs)
    need = sum(s.nbytes for s in specs) * 1.6
    free = shutil.disk_usage(args.dir).free
    if free < need:
        print(f"error: {args.dir} has {free / 2**30:.1f} GiB free, needs {need / 2**30:.1f}; use --dir.", file=sys.stderr)
        return 1
    src = Path(args.dir) / f"flux_synth_{os.getpid()}.safetensors"
    dst = Path(args.dir) / f"flux_synth_{os.getpid()}_int8.safetensors"
    try:
        t0 = time.perf_counter()
        size = write_synthetic(src, specs)
        print(f"synthetic checkpoint: {size / 2**30:.2f} GiB, {depth} double + 1 single blocks, hidden {args.hidden}, "
              f"largest tensor {largest / 2**20:.0f} MiB (written in {time.perf_counter() - t0:.0f} s)")
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "comfy_int8_w8a8.cli", "convert", str(src), str(dst), "--device", "cpu",
               "--quiet", "--preset", "flux"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        print(proc.stdout.strip())
        if proc.returncode != 0:
            print(proc.stderr.strip(), file=sys.stderr)
            return 1
        budget = largest + 2**30
        print(f"converter: {wall:.0f} s wall, peak RSS {peak / 2**30:.3f} GiB; budget largest tensor + 1 GiB = "
              f"{budget / 2**30:.3f} GiB -> {'OK' if peak <= budget else 'OVER BUDGET'}")
        if args.out:
            args.out.write_text(json.dumps({
                "checkpoint_bytes": size, "largest_tensor_bytes": largest, "peak_rss_bytes": peak,
                "budget_bytes": budget, "within_budget": peak <= budget, "convert_wall_s": round(wall, 1),
                "hidden": args.hidden, "double_blocks": depth, "single_blocks": 1, "torch": torch.__version__,
                "cpu_count": os.cpu_count()}, indent=1))
        return 0 if peak <= budget else 1
    finally:
        if not args.keep:
            for p in (src, dst):
                p.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
