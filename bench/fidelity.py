"""``comfy-int8 bench fidelity``: per-layer SQNR of W8A8 for each outlier method on Flux-like shapes.

Runs on the CPU (reference backend) or a GPU (whatever backend ``auto`` picks there). Prints a Markdown table and
writes ``fidelity.json`` and ``fidelity.md`` into ``--out`` (default ``docs/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ..int8.fidelity import (
    ACTIVATION_KINDS,
    FIDELITY_METHODS,
    FLUX_SHAPES,
    format_table,
    rows_as_dicts,
    run_fidelity,
    summarize,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for fidelity.json / fidelity.md")
    parser.add_argument("--tokens", type=int, default=256, help="rows M of the activations (default 256)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="activation dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here; run with --device cpu.")
        return 1
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    start = time.perf_counter()
    rows = run_fidelity(FLUX_SHAPES, ACTIVATION_KINDS, FIDELITY_METHODS, m=args.tokens, device=device,
                        dtype=getattr(torch, dtype_name), seed=args.seed)
    seconds = time.perf_counter() - start
    table = format_table(rows)
    summary = summarize(rows)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {"device": device_name, "torch": torch.__version__, "tokens": args.tokens, "dtype": dtype_name,
            "seed": args.seed, "seconds": round(seconds, 1)}
    print(table)
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows_as_dicts(rows)},
                                                       indent=1) + "\n")
    (args.out / "fidelity.md").write_text(render_markdown(table, summary, meta))
    print(f"Wrote {args.out / 'fidelity.json'} and {args.out / 'fidelity.md'} ({seconds:.0f} s).")
    return 0


def render_markdown(table: str, summary: dict, meta: dict) -> str:
    """The Markdown report: conditions, the SQNR table and the two acceptance numbers per shape."""
    ratios = summary["outlier_error_ratio_none_over_hadamard"]
    lines = [
        "# W8A8 fidelity per outlier method",
        "",
        f"SQNR in dB (relative error) of one Linear against the float64 product; {meta['tokens']} tokens, "
        f"{meta['dtype']} activations, device {meta['device']}, torch {meta['torch']}. Weights N(0, 1/K). "
        "Methods: `none`; `hadamard` (group 256); `smooth` = SmoothQuant alpha 0.5 calibrated on another draw of the "
        "same distribution; `smooth_w` = SmoothQuant from weight statistics only; `bf16` = a bf16 matmul, for scale. "
        "Activations: `outliers` = 8 channels x10..x100; `every97x30` = the input of KERNEL_NOTES' H100 runs; "
        "`post_gelu` = GELU output with 8 outlier units. Produced by `comfy-int8 bench fidelity`.",
        "",
        table,
        "",
        "Error ratio none / hadamard on outlier inputs (acceptance: >= 3):",
        "",
    ]
    for kind, per_shape in ratios.items():
        lines.append(f"- {kind}: " + ", ".join(f"{shape} {r:.1f}x" for shape, r in per_shape.items()))
    lines += ["", "SQNR that hadamard loses on Gaussian inputs (acceptance: <= 0.5 dB; negative = gain): "
              + ", ".join(f"{shape} {db:+.2f} dB" for shape, db in summary["gaussian_sqnr_cost_db_hadamard"].items()),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfy-int8 bench fidelity", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
