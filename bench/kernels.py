"""``comfy-int8 bench kernels``: whole-linear speed and error of every int8 path against bf16, on one GPU.

Each method computes the whole layer from a bf16 activation (activation quantization included). Inputs carry
outlier channels (every 97th channel x30), the error is ``||y - y_ref|| / ||y_ref||`` against an fp32 linear on
the unquantized weight. Timing: ``eager`` = back-to-back calls timed with CUDA events (includes Python dispatch:
this is what an uncompiled model sees at small M); ``graph`` = CUDA-graph replay of the same calls (GPU time
only), measured for M <= 256. Several copies of the weights rotate the working set past the 50 MB L2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .timing import eager_time_ms, graph_time_ms

SHAPES: list[tuple[str, int, int, int]] = [
    ("Flux-1024 qkv", 4608, 3072, 9216),
    ("Flux-1024 mlp_up", 4608, 3072, 12288),
    ("Flux-1024 mlp_down", 4608, 12288, 3072),
    ("Flux-512 mlp_up", 1536, 3072, 12288),
    ("Wan-14B ffn", 32760, 5120, 13824),
    ("M=256", 256, 3072, 3072),
    ("M=64", 64, 3072, 3072),
    ("M=16", 16, 3072, 3072),
    ("M=1", 1, 3072, 3072),
    ("M=1 mod", 1, 3072, 18432),
]
QUICK = {"Flux-1024 qkv", "Flux-1024 mlp_down", "M=64", "M=1"}
# --grid: the whole layer as a model runs it (Int8Linear with default options, plain and with the loader's default
# hadamard256) against bf16 at every row count a sampler produces, for Flux's and Wan-14B's Linear shapes.
GRID_SHAPES = {"flux": [(3072, 9216), (3072, 12288), (12288, 3072), (3072, 3072)],
               "wan": [(5120, 5120), (5120, 13824), (13824, 5120)]}
GRID_ROWS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4608)
SWEEP_ROWS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256]
SWEEP_SHAPES = [(3072, 3072), (3072, 12288), (3072, 18432)]
log = logging.getLogger("comfy_int8_w8a8")

GRAPH_MAX_M = 256
EAGER_ROUNDS = 5  # timing rounds per shape (see _bench_shape)
INT8_LINEAR = "Int8Linear triton (default options)"
# The loader node's default outlier method (hadamard, group 256): what a user's quantized-at-load layer runs.
INT8_LINEAR_HADAMARD = "Int8Linear triton (default options, hadamard256)"
INT8_LINEARS = (INT8_LINEAR, INT8_LINEAR_HADAMARD)
# The module a bf16 model runs (weights without grad, as loaded for inference): the like-for-like baseline of the
# Int8Linear row, which pays the same nn.Module call overhead that a bare F.linear call does not.
BF16_MODULE = "bf16 nn.Linear (module)"
PLAIN, ROTATED = "triton", "triton +hadamard256"
L2_DEFEAT_BYTES = 256 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="folder for kernels.json")
    parser.add_argument("--quick", action="store_true", help="four shapes, no small-batch sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the small-batch threshold sweep")
    parser.add_argument("--grid", choices=("flux", "wan", "all"), default=None,
                        help="instead of the table: Int8Linear (default options, plain and hadamard256) vs bf16 at "
                             f"M = {', '.join(map(str, GRID_ROWS))} for that family's Linear shapes")


def _outlier_acts(m: int, k: int, device: str) -> torch.Tensor:
    x = torch.randn(m, k, device=device)
    x[:, ::97] *= 30.0
    return x.to(torch.bfloat16)


def _n_copies(m: int, k: int, n: int) -> int:
    per_copy = m * k * 2 + n * k * 2 + m * n * 2  # bf16 path: its working set is the largest
    return max(1, min(8, math.ceil(L2_DEFEAT_BYTES / per_copy)))


def _fp8_rowwise(w: torch.Tensor, bias: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1] < 89:
        return None
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    ws = (w.abs().amax(dim=1, keepdim=True) / fp8_max).clamp(min=1e-12)
    wq = (w / ws).to(torch.float8_e4m3fn)
    ws_t = ws.t().contiguous()

    @torch.compile
    def fp8_linear(x: torch.Tensor) -> torch.Tensor:
        xs = (x.float().abs().amax(dim=1, keepdim=True) / fp8_max).clamp(min=1e-12)
        xq = (x.float() / xs).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws_t, bias=bias, out_dtype=torch.bfloat16)

    return fp8_linear


def _comfy_kitchen():
    try:
        import comfy_kitchen
    except ImportError as exc:  # the benchmark still runs; the JSON says why this column is empty
        return None, f"comfy_kitchen not importable: {exc}"
    from importlib.metadata import PackageNotFoundError, version

    try:  # the module has no __version__; unpacked wheels keep their dist-info
        return comfy_kitchen, version("comfy-kitchen")
    except PackageNotFoundError:
        return comfy_kitchen, getattr(comfy_kitchen, "__version__", "unknown")


def _bf16_module(wb: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(wb.shape[1], wb.shape[0], device=wb.device, dtype=torch.bfloat16).requires_grad_(False)
    lin.weight.copy_(wb)
    lin.bias.copy_(bias)
    return lin


def _methods(w: torch.Tensor, bias: torch.Tensor, m: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> function of x for one weight copy (fp32 ``w`` [N, K])."""
    from ..int8 import Int8Weights, quantize_per_channel, rotate_weight
    from ..int8.backends import custom_ops
    from ..int8.backends.registry import get_backend

    wb = w.to(torch.bfloat16)
    q, s = quantize_per_channel(w)
    qh, sh = quantize_per_channel(rotate_weight(w, 256))
    plain, had = Int8Weights(q, s, bias), Int8Weights(qh, sh, bias, hadamard_group=256)
    int_mm = get_backend("torch_int_mm")
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "bf16 F.linear": lambda x: F.linear(x, wb, bias),
        "torch_int_mm": lambda x: int_mm.w8a8_linear(x, plain),
        PLAIN: lambda x: custom_ops.triton_w8a8(x, plain),
        ROTATED: lambda x: custom_ops.triton_w8a8(x, had),
    }
    if m <= GRAPH_MAX_M:
        out["triton W8A16 (small-batch path)"] = lambda x: custom_ops.triton_w8a16(x, plain)
        out.update(_module_methods(w, wb, bias))
    fp8 = _fp8_rowwise(w, bias)
    if fp8 is not None:
        out["fp8 rowwise _scaled_mm (compiled)"] = fp8
    ck, _ = _comfy_kitchen()
    if ck is not None:
        s_row = s.reshape(-1).contiguous()
        sh_row = sh.reshape(-1).contiguous()
        out["comfy native int8 (per-row)"] = lambda x: ck.int8_linear(x, q, s_row, bias, out_dtype=x.dtype)
        out["comfy native int8 convrot256"] = lambda x: ck.int8_linear(
            x, qh, sh_row, bias, out_dtype=x.dtype, convrot=True, convrot_groupsize=256)
    return out


def _module_methods(w: torch.Tensor, wb: torch.Tensor, bias: torch.Tensor) -> dict[str, Callable]:
    """What a model sees: the whole Int8Linear module with the default options (small-batch fallback), plain and
    with the loader's default hadamard256, and the bf16 module they replace."""
    from ..int8 import Int8Config, Int8Linear

    cfg = Int8Config(runtime_backend="triton")
    linear = SimpleNamespace(weight=w, bias=bias)
    return {INT8_LINEAR: Int8Linear.from_linear(linear, cfg),
            INT8_LINEAR_HADAMARD: Int8Linear.from_linear(linear, cfg, hadamard_group=256),
            BF16_MODULE: _bf16_module(wb, bias)}


def _grid_methods(w: torch.Tensor, bias: torch.Tensor, m: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The ``--grid`` methods: bf16 ``F.linear`` and :func:`_module_methods`, at any ``m``."""
    wb = w.to(torch.bfloat16)
    return {"bf16 F.linear": lambda x: F.linear(x, wb, bias), **_module_methods(w, wb, bias)}


def grid_shapes(family: str) -> list[tuple[str, int, int, int]]:
    """``(label, M, K, N)`` of ``--grid family`` (``all``: both), shape by shape, rows ascending."""
    families = list(GRID_SHAPES) if family == "all" else [family]
    return [(f"{f} {k}->{n} M={m}", m, k, n) for f in families for k, n in GRID_SHAPES[f] for m in GRID_ROWS]


def _bench_shape(label: str, m: int, k: int, n: int, methods: Callable = _methods) -> list[dict]:
    copies = _n_copies(m, k, n)
    xs = [_outlier_acts(m, k, "cuda") for _ in range(copies)]
    ws = [torch.randn(n, k, device="cuda") / k**0.5 for _ in range(copies)]
    bs = [torch.randn(n, device="cuda").to(torch.bfloat16) for _ in range(copies)]
    per_copy = [methods(w, b, m) for w, b in zip(ws, bs)]
    ref = (xs[0].float() @ ws[0].t() + bs[0].float())
    rows, timed = [], {}
    for name in per_copy[0]:
        fns = [lambda f=pc[name], x=x: f(x) for pc, x in zip(per_copy, xs)]
        row: dict = {"shape": label, "M": m, "K": k, "N": n, "method": name, "copies": copies}
        try:
            y = per_copy[0][name](xs[0])
            row["rel_err"] = float((y.float() - ref).norm() / ref.norm())
            eager_time_ms(fns, target_ms=5.0, repeats=1)  # warm-up: autotuning, compiling
            timed[name] = fns
            if m <= GRAPH_MAX_M:
                row["graph_ms"] = graph_time_ms(fns)
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        torch.cuda.empty_cache()
    # Eager times in rounds (each method once per round, median over rounds). The H100's clocks follow its power
    # draw (1500-1845 MHz seen under these loads): a 20 ms burst after another method ran at other clocks than a
    # sustained run, and timing each method once, one after the other, put the drift into their ratios. So each
    # round times every method sustained (3 x 40 ms, like a sampling loop) and the rounds spread the drift.
    # Large M is also timed as CUDA-graph replays (GPU time without Python dispatch: how a layer runs under the
    # compile node's reduce-overhead mode), in the same rounds.
    rounds = {name: [] for name in timed}
    graph_rounds = {name: [] for name in timed}
    for _ in range(EAGER_ROUNDS):
        for name, fns in timed.items():
            rounds[name].append(eager_time_ms(fns, target_ms=40.0, repeats=3, warmup=1))
            if m > GRAPH_MAX_M and graph_rounds[name] is not None:
                try:
                    graph_rounds[name].append(graph_time_ms(fns, calls_per_graph=2 * len(fns), repeats=3,
                                                            target_ms=40.0))
                except RuntimeError as exc:  # a method CUDA graphs cannot capture keeps its eager time only
                    log.warning("bench kernels: %s at %s has no CUDA-graph time (%s)", name, label, exc)
                    graph_rounds[name] = None
    _hadamard_overhead(rows, rounds, graph_rounds)
    for row in rows:
        if row["method"] in rounds:
            row["eager_ms"] = statistics.median(rounds[row["method"]])
            row["eager_rounds_ms"] = rounds[row["method"]]  # the spread, for the reader of the JSON
        if graph_rounds.get(row["method"]):
            row["graph_ms"] = statistics.median(graph_rounds[row["method"]])
            row["graph_rounds_ms"] = graph_rounds[row["method"]]
    ops = 2.0 * m * k * n
    by_name = {r["method"]: r for r in rows}
    for r in rows:
        for mode in ("eager", "graph"):
            t = r.get(f"{mode}_ms")
            if t is None:
                continue
            r[f"{mode}_tops"] = ops / (t * 1e-3) / 1e12
            base = by_name["bf16 F.linear"].get(f"{mode}_ms")
            r[f"{mode}_x_bf16"] = base / t if base else None
            ck = by_name.get("comfy native int8 (per-row)", {}).get(f"{mode}_ms")
            r[f"{mode}_x_comfy"] = ck / t if ck else None
            module = by_name.get(BF16_MODULE, {}).get(f"{mode}_ms")
            if r["method"] in INT8_LINEARS and module:
                r[f"{mode}_x_bf16_module"] = module / t
    return rows


def _hadamard_overhead(rows: list[dict], rounds: dict, graph_rounds: dict) -> None:
    """What the rotation adds to the layer, paired per round: the rotated layer is timed right after the plain one
    in every round, so clock drift between rounds (the GEMMs' round-to-round spread is about 5%) cancels in each
    pair's ratio; the median over rounds goes on the rotated row as ``{mode}_hadamard_overhead``."""
    row = next((r for r in rows if r["method"] == ROTATED), None)
    for mode, times in (("eager", rounds), ("graph", graph_rounds)):
        plain, rotated = times.get(PLAIN), times.get(ROTATED)
        if row is None or not plain or not rotated or len(plain) != len(rotated):
            continue
        ratios = [r / p - 1.0 for p, r in zip(plain, rotated)]
        row[f"{mode}_hadamard_overhead"] = statistics.median(ratios)
        row[f"{mode}_hadamard_overhead_rounds"] = ratios


def _small_batch_sweep() -> list[dict]:
    """W8A16 vs triton W8A8 vs bf16 over rows, graph-replayed (GPU time) and eager: where W8A16 stops winning."""
    from ..int8 import Int8Weights, quantize_per_channel
    from ..int8.backends import custom_ops

    rows = []
    for k, n in SWEEP_SHAPES:
        copies = _n_copies(1, k, n)
        ws = [torch.randn(n, k, device="cuda") / k**0.5 for _ in range(copies)]
        iw = [Int8Weights(*quantize_per_channel(w), None) for w in ws]
        wb = [w.to(torch.bfloat16) for w in ws]
        for m in SWEEP_ROWS:
            xs = [_outlier_acts(m, k, "cuda") for _ in range(copies)]
            paths = {
                "bf16": [lambda x=x, w=w: F.linear(x, w) for x, w in zip(xs, wb)],
                "w8a16": [lambda x=x, w=w: custom_ops.triton_w8a16(x, w) for x, w in zip(xs, iw)],
                "w8a8": [lambda x=x, w=w: custom_ops.triton_w8a8(x, w) for x, w in zip(xs, iw)],
            }
            row = {"M": m, "K": k, "N": n}
            for name, fns in paths.items():
                row[f"{name}_graph_ms"] = graph_time_ms(fns)
                row[f"{name}_eager_ms"] = eager_time_ms(fns, target_ms=20.0)
            rows.append(row)
    return rows


def _versions() -> dict:
    import triton

    ck, ck_version = _comfy_kitchen()
    return {
        "device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "comfy_kitchen": ck_version, "python": platform.python_version(),
    }


def _autotune_choices() -> dict:
    from ..int8.launch import gemm as triton_gemm
    from ..int8.launch import w8a16 as triton_w8a16

    choices = {name: {str(key): str(cfg) for key, cfg in getattr(kern, "cache", {}).items()}
               for name, kern in (("gemm_tma", triton_gemm._int8_gemm_tma_kernel),
                                  ("gemm_ptr", triton_gemm._int8_gemm_kernel))}
    choices["gemm_tma_direct"] = {str(key): str(cfg) for key, cfg in triton_gemm._tuned.items()}
    choices["w8a16_table"] = {str(key): str(triton_w8a16.w8a16_config(*key)) for key in _w8a16_keys()}
    return choices


def _w8a16_keys() -> list[tuple[int, int, int, int]]:
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return [(m, n, k, sms) for m in SWEEP_ROWS if m <= 64 for k, n in SWEEP_SHAPES]


def _fmt(v: float | None, spec: str) -> str:
    return format(v, spec) if v is not None else "-"


def grid_summary(rows: list[dict], floor: float = 0.95) -> str:
    """One line per ``--grid`` shape: each Int8Linear's speed as a multiple of bf16 ``F.linear``, eager and graph;
    ``<`` marks a value under ``floor``."""
    def cell(r: dict | None) -> str:
        if r is None or "error" in r:
            return "error"
        vals = [r.get(f"{mode}_x_bf16") for mode in ("eager", "graph")]
        return " / ".join("-" if v is None else f"{v:.2f}{'<' if v < floor else ''}" for v in vals)

    lines = [f"x bf16 F.linear, eager / graph ('<': under {floor})", f"{'shape':<30} {'plain':>14} {'hadamard256':>14}"]
    by_shape: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_shape.setdefault(r["shape"], {})[r["method"]] = r
    for shape, methods in by_shape.items():
        lines.append(f"{shape:<30} {cell(methods.get(INT8_LINEAR)):>14} {cell(methods.get(INT8_LINEAR_HADAMARD)):>14}")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    head = (f"{'shape':<20} {'method':<34} {'eager ms':>9} {'TOP/s':>7} {'x bf16':>7} {'x comfy':>8} "
            f"{'graph ms':>9} {'g TOP/s':>8} {'g x bf16':>8} {'rel err':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['shape']:<20} {r['method']:<34} ERROR {r['error'][:80]}")
            continue
        lines.append(
            f"{r['shape']:<20} {r['method']:<34} {_fmt(r.get('eager_ms'), '9.4f')} {_fmt(r.get('eager_tops'), '7.1f')} "
            f"{_fmt(r.get('eager_x_bf16'), '7.2f')} {_fmt(r.get('eager_x_comfy'), '8.2f')} "
            f"{_fmt(r.get('graph_ms'), '9.4f')} {_fmt(r.get('graph_tops'), '8.1f')} "
            f"{_fmt(r.get('graph_x_bf16'), '8.2f')} {_fmt(r.get('rel_err'), '8.4f')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("comfy-int8 bench kernels needs a CUDA GPU (none is visible to torch).")
        return 1
    torch.manual_seed(0)
    grid = getattr(args, "grid", None)
    shapes = grid_shapes(grid) if grid else [s for s in SHAPES if not args.quick or s[0] in QUICK]
    rows: list[dict] = []
    for label, m, k, n in shapes:
        rows.extend(_bench_shape(label, m, k, n, _grid_methods if grid else _methods))
        print(format_table([r for r in rows if r["shape"] == label]).split("\n", 2)[-1], flush=True)
    sweep = [] if (args.quick or args.no_sweep or grid) else _small_batch_sweep()
    result = {"versions": _versions(), "rows": rows, "small_batch_sweep": sweep, "autotune": _autotune_choices()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["versions"]))
    print(format_table(rows))
    for r in rows:
        if r["method"] == ROTATED and "eager_hadamard_overhead" in r:
            graph = r.get("graph_hadamard_overhead")
            print(f"hadamard adds to the layer, {r['shape']}: eager {100 * r['eager_hadamard_overhead']:+.1f}%"
                  + (f", graph {100 * graph:+.1f}%" if graph is not None else "") + " (median of paired rounds)")
    for r in rows:
        if r["method"] in INT8_LINEARS and "eager_x_bf16_module" in r:
            print(f"{r['method']} against {BF16_MODULE}, {r['shape']}: eager {r['eager_x_bf16_module']:.2f}x"
                  + (f", graph {r['graph_x_bf16_module']:.2f}x" if "graph_x_bf16_module" in r else ""))
    if grid:
        print(grid_summary(rows))
    for r in sweep:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(f"wrote {args.out / 'kernels.json'}")
    return 0
