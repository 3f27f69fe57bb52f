"""Per-token activation-quant kernel alone (plain and Hadamard-256), and the whole W8A8 layer vs bf16, on one GPU.

Quant kernel: GPU time from CUDA-graph replay (many calls per graph, CUDA events around the replays) and eager
time (back-to-back calls: the Python launch cost shows when it exceeds the GPU time); GB/s counts the bytes the
kernel must move (x read once, int8 q and the fp32 scales written). Several input copies rotate the working set
past the 50 MB L2. ``--old FILE`` times a second copy of ``int8/launch/quant.py`` (say, the last
commit's) side by side; ``--sweep`` times launch-shape variants of the current kernels.

Run: ``python -m comfy_int8_w8a8.bench.quant_kernel --out quant.json [--old old_triton_quant.py] [--sweep]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from .timing import eager_time_ms, graph_time_ms

MS = [512, 1536, 4096, 4608, 32760]
KS = [3072, 5120, 12288, 15360]
LAYERS = [("Flux-1024 qkv", 4608, 3072, 9216), ("Flux-1024 mlp_up", 4608, 3072, 12288),
          ("Flux-1024 mlp_down", 4608, 12288, 3072)]
# Launch-shape variants for --sweep: plain (CHUNK, BLOCK_M, warps); one-pass rotation (programs/SM, warps, stages).
PLAIN_SWEEP = {
    3072: [(4096, 1, 4), (4096, 2, 4), (4096, 4, 8)],
    5120: [(8192, 1, 4), (8192, 2, 8)],
    12288: [(16384, 1, 4), (16384, 1, 8), (16384, 1, 16)],
    15360: [(16384, 1, 4), (16384, 1, 8), (16384, 1, 16)],
}
ROT_SWEEP = [(12, 4, 3), (8, 4, 3), (4, 4, 3), (16, 4, 3), (8, 8, 3), (4, 8, 3), (12, 4, 2), (8, 4, 2), (6, 8, 2)]
SWEEP_MS = [4608, 32760]
L2_BYTES = 50e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--old", type=Path, default=None, help="another int8/launch/quant.py to time side by side")
    parser.add_argument("--sweep", action="store_true", help="also time launch-shape variants")
    parser.add_argument("--ms", type=int, nargs="*", default=MS, help="row counts")
    parser.add_argument("--ks", type=int, nargs="*", default=KS, help="column counts")


def _load_module(path: Path) -> ModuleType:
    # Loaded inside the launch package so its relative imports (..hadamard, ..kernels, .fast_launch) resolve.
    spec = importlib.util.spec_from_file_location("comfy_int8_w8a8.int8.launch._bench_old_quant", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copies(m: int, k: int) -> list[torch.Tensor]:
    n = max(1, min(32, math.ceil(3 * L2_BYTES / (m * k * 2))))
    xs = []
    for _ in range(n):
        x = torch.randn(m, k, device="cuda") * 2
        x[:, ::97] *= 30
        xs.append(x.bfloat16())
    return xs


def _time(fns: list[Callable[[], object]], m: int, k: int) -> dict:
    gpu_ms = graph_time_ms(fns, calls_per_graph=max(len(fns), 20), replays=10, repeats=3)
    eager_ms = eager_time_ms(fns, target_ms=15.0, repeats=3)
    moved = m * k * 2 + m * k + m * 4
    return {"gpu_us": round(gpu_ms * 1e3, 2), "eager_us": round(eager_ms * 1e3, 2),
            "gpu_GBps": round(moved / (gpu_ms * 1e-3) / 1e9, 1)}


def _guarded(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as exc:  # a variant that fails to compile is reported, the others still run
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _quant_rows(quant: Callable, xs: list[torch.Tensor], m: int, k: int, group: int, config: object = None) -> dict:
    kw = {"config": config} if config is not None else {}
    return _guarded(lambda: _time([lambda x=x: quant(x, None, group, **kw) for x in xs], m, k))


def _cpu_launch_us(quant: Callable, group: int) -> float:
    x = torch.randn(64, 3072, device="cuda", dtype=torch.bfloat16)
    for _ in range(20):
        quant(x, None, group)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(300):
        quant(x, None, group)
    cpu = (time.perf_counter() - t) / 300
    torch.cuda.synchronize()
    return round(cpu * 1e6, 2)


def _layer_row(name: str, m: int, k: int, n: int, quants: dict[str, Callable]) -> dict:
    from ..int8 import quantize_per_channel, rotate_weight
    from ..int8.launch.gemm import int8_gemm_dequant

    x = torch.randn(m, k, device="cuda") * 2
    x[:, ::97] *= 30
    x = x.bfloat16()
    w = torch.randn(n, k, device="cuda") / k**0.5
    weights = {0: quantize_per_channel(w), 256: quantize_per_channel(rotate_weight(w, 256))}
    wb = w.bfloat16()
    row = {"layer": name, "M": m, "K": k, "N": n, "bf16_us": eager_time_ms([lambda: F.linear(x, wb)]) * 1e3}
    xq, xs = quants["new"](x)
    wq, ws = weights[0]
    row["gemm_us"] = eager_time_ms([lambda: int8_gemm_dequant(xq, xs, wq, ws, None, x.dtype)]) * 1e3
    for tag, quant in quants.items():
        for g, (wqq, wss) in weights.items():
            def layer(quant: Callable = quant, g: int = g, wqq: torch.Tensor = wqq,
                      wss: torch.Tensor = wss) -> torch.Tensor:
                a, s = quant(x, None, g)
                return int8_gemm_dequant(a, s, wqq, wss, None, x.dtype)
            t = eager_time_ms([layer]) * 1e3
            row[f"{tag}_h{g}_us"] = t
            row[f"{tag}_h{g}_x_bf16"] = row["bf16_us"] / t
    return {key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}


def run(args: argparse.Namespace) -> int:
    from ..int8.launch import quant as triton_quant

    old = _load_module(args.old) if args.old else None
    quant_new = triton_quant.quantize_per_token_triton
    quant_old = old.quantize_per_token_triton if old else None
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "quant": [], "sweep": [], "layers": []}
    import triton
    result["triton"] = triton.__version__
    result["cpu_launch_us_M64_K3072"] = {"new_plain": _cpu_launch_us(quant_new, 0),
                                          "new_h256": _cpu_launch_us(quant_new, 256)}
    if quant_old:
        result["cpu_launch_us_M64_K3072"].update(old_plain=_cpu_launch_us(quant_old, 0),
                                                  old_h256=_cpu_launch_us(quant_old, 256))
    print("CPU us per call (M=64, K=3072):", result["cpu_launch_us_M64_K3072"], flush=True)
    quants = {"new": quant_new, **({"old": quant_old} if quant_old else {})}
    result["layers"] = [_guarded(lambda layer=layer: _layer_row(*layer, quants)) for layer in LAYERS]
    for row in result["layers"]:
        print(json.dumps(row), flush=True)
    for k in args.ks:
        for m in args.ms:
            xs = _copies(m, k)
            row = {"M": m, "K": k}
            for g in (0, 256):
                row[f"new_h{g}"] = _quant_rows(quant_new, xs, m, k, g)
                if quant_old:
                    row[f"old_h{g}"] = _quant_rows(quant_old, xs, m, k, g)
            result["quant"].append(row)
            print(json.dumps(row), flush=True)
            if args.sweep and m in SWEEP_MS:
                for cfg in PLAIN_SWEEP.get(k, []):
                    r = {"M": m, "K": k, "kind": "plain", "config": cfg, **_quant_rows(quant_new, xs, m, k, 0, cfg)}
                    result["sweep"].append(r)
                    print(json.dumps(r), flush=True)
                for cfg in ROT_SWEEP:
                    r = {"M": m, "K": k, "kind": "h256", "config": cfg, **_quant_rows(quant_new, xs, m, k, 256, cfg)}
                    result["sweep"].append(r)
                    print(json.dumps(r), flush=True)
            del xs
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
