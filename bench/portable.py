"""``python -m comfy_int8_w8a8.bench.portable``: the pack forced onto each non-Hopper path of one GPU.

Each path runs in a fresh process with the pack's own view of the GPU set by ``INT8_W8A8_ARCH`` (Triton still
compiles for the real chip) and the Hopper-only features off (``INT8_W8A8_NO_TMA``, ``_NO_GLUON``, ``_NO_PDL``,
``_NO_DIRECT_LAUNCH``), so the pointer GEMM and the generic configs of that arch run. Per shape: ``Int8Linear``
(default options, triton backend) and the ``torch_int_mm`` backend (cuBLAS ``torch._int_mm`` + dequant in torch)
against bf16 ``F.linear``, CUDA-graph and eager, and the error against a float64 linear on the unquantized weight.
Writes ``{"gpu", "paths": {path: {"tests_passed", "tests_failed", "rows": [...]}}}``; the test counts are read from
pytest logs given with ``--pytest-log PATH=FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SHAPES = [(m, k, n) for m in (1, 16, 64, 256, 1536, 4608) for k, n in ((3072, 3072), (3072, 12288), (12288, 3072))]
FORCED = {"INT8_W8A8_NO_TMA": "1", "INT8_W8A8_NO_GLUON": "1", "INT8_W8A8_NO_PDL": "1", "INT8_W8A8_NO_DIRECT_LAUNCH": "1"}


def _row(m: int, k: int, n: int) -> dict:
    """Runs inside the forced process: one shape's ratios and errors."""
    import torch
    import torch.nn.functional as F

    from ..int8.config import Int8Config
    from ..int8.linear import Int8Linear
    from .timing import eager_time_ms, graph_time_ms

    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[:, ::97] *= 30  # outlier channels, as in diffusion transformers
    ref = x.double() @ lin.weight.double().t() + lin.bias.double()
    row: dict = {"M": m, "K": k, "N": n}
    with torch.no_grad():
        def bf16() -> torch.Tensor:
            return F.linear(x, lin.weight, lin.bias)

        bf16_graph, bf16_eager = graph_time_ms([bf16]), eager_time_ms([bf16])
        for name in ("triton", "torch_int_mm"):
            layer = Int8Linear.from_linear(lin, Int8Config(runtime_backend=name))
            prefix = "" if name == "triton" else name + "_"
            row[prefix + "rel_err"] = float((layer(x).double() - ref).norm() / ref.norm())
            row[prefix + "x_bf16_graph"] = bf16_graph / graph_time_ms([lambda layer=layer: layer(x)])
            row[prefix + "x_bf16_eager"] = bf16_eager / eager_time_ms([lambda layer=layer: layer(x)])
    return row


def _measure(shapes: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for m, k, n in shapes:
        rows.append(_row(m, k, n))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _pytest_counts(log: Path) -> tuple[int, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", text))
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", text))
    return passed, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", default=["sm_80", "sm_89"], help="archs to force (INT8_W8A8_ARCH)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default docs/results/portable_<gpu>.json)")
    parser.add_argument("--pytest-log", action="append", default=[], help="PATH=FILE: pytest output of that path")
    parser.add_argument("--quick", action="store_true", help="three shapes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = SHAPES[::7] if args.quick else SHAPES
    if args.child:
        print("ROWS " + json.dumps(_measure(shapes)))
        return 0
    import torch

    gpu = torch.cuda.get_device_name()
    logs = dict(item.split("=", 1) for item in args.pytest_log)
    result: dict = {"gpu": gpu, "torch": torch.__version__, "paths": {}}
    for path in args.paths:
        env = {**os.environ, **FORCED, "INT8_W8A8_ARCH": path}
        cmd = [sys.executable, "-m", "comfy_int8_w8a8.bench.portable", "--child"] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
        if done.returncode != 0 or not lines:
            print(f"{path}: the forced run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            rows = []
        else:
            rows = json.loads(lines[-1][5:])
        passed, failed = _pytest_counts(Path(logs[path])) if path in logs else (0, 0)
        result["paths"][path] = {"tests_passed": passed, "tests_failed": failed, "rows": rows}
        print(f"\n{path} ({gpu}): tests {passed} passed / {failed} failed")
        print("| M | K->N | ours x bf16 graph / eager | torch_int_mm x bf16 graph / eager | rel err |")
        for r in rows:
            print(f"| {r['M']} | {r['K']}->{r['N']} | {r['x_bf16_graph']:.2f} / {r['x_bf16_eager']:.2f} | "
                  f"{r['torch_int_mm_x_bf16_graph']:.2f} / {r['torch_int_mm_x_bf16_eager']:.2f} | {r['rel_err']:.4f} |")
    out = args.out or Path("docs/results") / f"portable_{re.sub(r'[^a-z0-9]+', '_', gpu.lower()).strip('_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
