"""Attention speed and error on one GPU: bf16 SDPA, peer int8 attentions where installed, and ours.

Shapes are the attention calls of the issue's models (#21): Flux-dev at 1024² and 2048², Wan 2.x 14B at 480p and
720p with 81 frames, all ``(B, H, L, D)`` self-attention in bf16. Methods:

- ``sdpa_bf16``: ``torch.nn.functional.scaled_dot_product_attention`` (FlashAttention / cuDNN as torch picks);
- ``comfy_kitchen_int8``: comfy-kitchen's int8 attention, if the installed comfy-kitchen has one this file knows;
- ``sageattention_1.0.6``: ``sageattention.sageattn`` when sageattention 1.0.6 is installed;
- ``ours``: :func:`int8.backends.attention.int8_attention` with ``pv_precision=auto`` (16-bit P.V), what the INT8
  Attention node runs: the warp-specialized Gluon kernel on sm_90 (:mod:`int8.launch.gluon_attention`), else the
  generic Triton kernel;
- ``ours_fp8``: the same with fp8 P.V (sm_89+);
- ``ours_int8pv``: the same with int8 P.V (both products on the int8 tensor cores);
- ``ours_generic`` / ``ours_generic_int8pv``: the generic Triton kernel on any GPU (16-bit / int8 P.V), called
  through the launcher;
- ``ours_hopper`` / ``ours_hopper_fp8``: the Gluon kernel with 16-bit / fp8 P.V, through the launcher with
  ``kernel="hopper"`` (sm_90);
- with ``--sweep-tiles``, ``ours_tiles_m{block_m}_n{block_n}_w{warps}_s{stages}[_{pv}pv]``: ``ours``' kernel, P.V
  precision ``--sweep-pv`` (default ``ours``'), launched with each tile of :func:`sweep_configs` (quant blocks at
  their default 64); a tile that does not compile
  or run (e.g. past the GPU's shared memory) is printed with the reason and left out;
- with ``--sweep-hopper``, ``ours_hopper_m{bm}_n{bn}_s{stages}_w{warps}_r{regs}[_c2r{regs}][_fp8]``: the Hopper kernel
  with each tile of :data:`HOPPER_SWEEP` (same skipping).

Time: median of CUDA-event-timed back-to-back calls (bench/timing.py). ``rel_err``: ``||out - ref|| / ||ref||`` on
the first ``--check-rows`` query rows against fp32 SDPA of those rows over all keys (a float64 reference of the
whole call does not fit). TFLOPS count ``4 * B * H * L^2 * D``. Rows go to ``<out>/attention_<gpu>.json``.

Run: ``comfy-int8 bench attention [--shapes flux_1024 ...] [--methods ours sdpa_bf16 ...] [--sweep-tiles]
[--sweep-hopper] [--out docs/results]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "flux_1024": (1, 24, 4608, 128),
    "flux_2048": (1, 24, 16896, 128),
    "wan_480p_81f": (1, 40, 32760, 128),
    "wan_720p_81f": (1, 40, 75600, 128),
}
METHODS = ("sdpa_bf16", "comfy_kitchen_int8", "sageattention_1.0.6", "ours", "ours_fp8", "ours_int8pv",
           "ours_generic", "ours_generic_int8pv", "ours_hopper", "ours_hopper_fp8")
# comfy-kitchen's int8 attention entry points this benchmark knows, by module attribute (none is documented yet).
_KITCHEN_NAMES = ("int8_attention", "sage_attention", "attention_int8")
# --sweep-tiles: attention tile rows/keys, warps, stages. Tiles under 64 query rows or keys are left out: Hopper's
# wgmma takes 64 rows a warpgroup, and a smaller query tile reads all of K and V for fewer rows (more traffic a flop).
SWEEP_BLOCKS = (64, 128)
SWEEP_WARPS = (4, 8)
SWEEP_STAGES = (2, 3, 4)  # (SageAttention 1.0.6's Triton kernel runs 3-4 stages)
_MIN_SWEEP_BLOCK = 64
# --sweep-hopper: the Hopper kernel's (block_m, block_n, stages, default-partition warps, registers per thread,
# consumers, a second consumer's registers), each built for sm_90 without spills (ptxas, Triton 3.6). 4 warps at 128
# registers leave room for two programs on an SM; two consumers of 64 rows split a 128-row tile (4 + 4 + the TMA
# warp's 4 = 12 warps at launch, the second consumer raised to 232 registers).
HOPPER_SWEEP = ((128, 128, 2, 8, 168, 1, 0), (128, 64, 3, 8, 168, 1, 0), (128, 128, 3, 8, 168, 1, 0),
                (64, 128, 2, 4, 256, 1, 0), (64, 64, 3, 4, 128, 1, 0), (64, 128, 2, 4, 128, 1, 0),
                (128, 128, 2, 4, 168, 2, 232), (128, 64, 3, 4, 168, 2, 232))

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="folder for attention_<gpu>.json")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="shapes to time")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to time")
    parser.add_argument("--check-rows", type=int, default=1024, help="query rows compared with fp32 SDPA")
    parser.add_argument("--target-ms", type=float, default=200.0, help="time per timing repeat")
    parser.add_argument("--sweep-tiles", action="store_true",
                        help="also time ours with each tile of the sweep (block_m, block_n, warps, stages)")
    parser.add_argument("--sweep-pv", choices=("auto", "16bit", "fp8", "int8"), default="auto",
                        help="P.V precision of the --sweep-tiles kernels (default: ours', auto)")
    parser.add_argument("--sweep-hopper", action="store_true",
                        help="also time the Hopper (sm_90) kernel with each tile of HOPPER_SWEEP, 16-bit and fp8 P.V")


def flops(b: int, h: int, lq: int, lk: int, d: int) -> float:
    """``Q . K^T`` and ``P . V`` multiply-adds, 2 flops each."""
    return 4.0 * b * h * lq * lk * d


def _ours(pv_precision: str) -> Attention:
    from ..int8.backends.attention import AttentionOptions, int8_attention

    options = AttentionOptions(pv_precision=pv_precision, min_seq_len=0)
    return lambda q, k, v: int8_attention(q, k, v, options)


def sweep_configs() -> list[tuple[int, int, int, int]]:
    """``(block_m, block_n, warps, stages)`` of ``--sweep-tiles``, in timing order."""
    return [(bm, bn, w, st) for bm in SWEEP_BLOCKS for bn in SWEEP_BLOCKS for w in SWEEP_WARPS for st in SWEEP_STAGES
            if min(bm, bn) >= _MIN_SWEEP_BLOCK]


def tile_method_name(block_m: int, block_n: int, warps: int, stages: int, pv: str = "auto") -> str:
    """The method name of one sweep tile in the rows: ``ours_tiles_m128_n64_w8_s2`` (``_int8pv`` / ``_fp8pv`` /
    ``_16bitpv`` appended for an explicit ``--sweep-pv``)."""
    return f"ours_tiles_m{block_m}_n{block_n}_w{warps}_s{stages}" + ("" if pv == "auto" else f"_{pv}pv")


def tile_sweep_methods(device: str = "cuda", pv_precision: str = "auto") -> dict[str, Attention]:
    """:func:`tile_method_name` -> ``fn(q, k, v)``: the generic kernel with that tile and P.V precision
    ``pv_precision`` (``auto``, ``ours``', resolved for ``device`` as the attention backend does)."""
    from ..int8.backends.attention import resolve_pv
    from ..int8.launch.attention import AttentionTiles, int8_attention_triton

    pv = resolve_pv(torch.device(device), pv_precision)
    methods: dict[str, Attention] = {}
    for bm, bn, warps, stages in sweep_configs():
        tiles = AttentionTiles(block_m=bm, block_n=bn, warps=warps, stages=stages)
        methods[tile_method_name(bm, bn, warps, stages, pv_precision)] = \
            lambda q, k, v, tiles=tiles: int8_attention_triton(q, k, v, pv=pv, tiles=tiles)
    return methods


def hopper_method_name(block_m: int, block_n: int, stages: int, warps: int, regs: int, consumers: int,
                       consumer_regs: int, pv: str) -> str:
    """The method name of one ``--sweep-hopper`` tile: ``ours_hopper_m128_n128_s2_w8_r168`` (``_c2r232`` for two
    consumers, ``_fp8`` / ``_int8pv`` appended)."""
    two = f"_c{consumers}r{consumer_regs}" if consumers > 1 else ""
    suffix = {"fp8": "_fp8", "int8": "_int8pv"}.get(pv, "")
    return f"ours_hopper_m{block_m}_n{block_n}_s{stages}_w{warps}_r{regs}{two}{suffix}"


def hopper_sweep_methods() -> dict[str, Attention]:
    """:func:`hopper_method_name` -> ``fn(q, k, v)``: the Hopper kernel with each :data:`HOPPER_SWEEP` tile, 16-bit,
    int8 and (where the GPU has it) fp8 P.V."""
    from ..int8.launch.attention import int8_attention_triton
    from ..int8.launch.gluon_attention import GluonAttentionTiles

    pvs = ["16bit", "int8"] + ([] if isinstance(_ours_fp8(), str) else ["fp8"])
    methods: dict[str, Attention] = {}
    for pv in pvs:
        for cfg in HOPPER_SWEEP:
            bm, bn, stages, warps, regs, consumers, consumer_regs = cfg
            tiles = GluonAttentionTiles(block_m=bm, block_n=bn, stages=stages, warps=warps, maxnreg=regs,
                                        consumers=consumers, consumer_regs=consumer_regs)
            methods[hopper_method_name(*cfg, pv)] = \
                lambda q, k, v, tiles=tiles, pv=pv: int8_attention_triton(q, k, v, pv=pv, kernel="hopper",
                                                                          hopper_tiles=tiles)
    return methods


def sweep_errors() -> tuple[type[BaseException], ...]:
    """What a sweep tile that cannot run raises: too much shared memory (OutOfResources), a tile the compiler
    rejects (CompilationError, or RuntimeError from its passes), a launch or allocation failure (RuntimeError)."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    return OutOfResources, CompilationError, RuntimeError


def _ours_fp8() -> Attention | str:
    from ..int8.backends.attention import resolve_pv

    if not torch.cuda.is_available():
        return "fp8 P.V needs a CUDA GPU"
    try:
        resolve_pv(torch.device("cuda", torch.cuda.current_device()), "fp8")
    except RuntimeError as exc:  # this GPU has no fp8 tensor cores: the row is left out with the reason
        return str(exc)
    return _ours("fp8")


def _ours_hopper(pv: str) -> Attention | str:
    if not torch.cuda.is_available():
        return "the Hopper kernel needs a CUDA GPU"
    from ..int8.launch.attention import int8_attention_triton

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return int8_attention_triton(q, k, v, pv=pv, kernel="hopper")

    try:  # one tiny call: a GPU or Triton that cannot run it leaves the row out with the reason
        q = torch.zeros(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        attention(q, q, q)
    except (ValueError, RuntimeError) as exc:
        return str(exc)
    return attention


def _ours_generic() -> Attention:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from ..int8.launch.attention import int8_attention_triton  # (imports Triton: only when timed)

        return int8_attention_triton(q, k, v, pv="16bit", kernel="generic")

    return attention


def _ours_generic_int8pv() -> Attention:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from ..int8.launch.attention import int8_attention_triton  # (imports Triton: only when timed)

        return int8_attention_triton(q, k, v, pv="int8", kernel="generic")

    return attention


def _ours_hopper_fp8() -> Attention | str:
    fp8 = _ours_fp8()
    return fp8 if isinstance(fp8, str) else _ours_hopper("fp8")


def _sage() -> Attention | str:
    if importlib.util.find_spec("sageattention") is None:
        return "sageattention is not installed"
    version = importlib.metadata.version("sageattention")
    if version != "1.0.6":
        return f"sageattention {version} is installed, not 1.0.6"
    from sageattention import sageattn

    return lambda q, k, v: sageattn(q, k, v, tensor_layout="HND", is_causal=False)


def _kitchen() -> Attention | str:
    if importlib.util.find_spec("comfy_kitchen") is None:
        return "comfy_kitchen is not installed"
    module = importlib.import_module("comfy_kitchen")
    for name in _KITCHEN_NAMES:
        fn = getattr(module, name, None)
        if callable(fn):
            return lambda q, k, v: fn(q, k, v)
    return f"comfy_kitchen {getattr(module, '__version__', '?')} has none of {_KITCHEN_NAMES}"


def available_methods(names: list[str]) -> dict[str, Attention | str]:
    """Each method name -> its ``fn(q, k, v) -> (B, H, L, D)``, or the reason it cannot run here."""
    builders: dict[str, Callable[[], Attention | str]] = {
        "sdpa_bf16": lambda: lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "comfy_kitchen_int8": _kitchen,
        "sageattention_1.0.6": _sage,
        "ours": lambda: _ours("auto"),
        "ours_fp8": _ours_fp8,
        "ours_int8pv": lambda: _ours("int8"),  # both products on the int8 tensor cores
        "ours_generic_int8pv": _ours_generic_int8pv,
        "ours_generic": _ours_generic,
        "ours_hopper": lambda: _ours_hopper("16bit"),
        "ours_hopper_fp8": _ours_hopper_fp8,
    }
    return {name: builders[name]() for name in names}


def rel_err(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int) -> float:
    """Relative Frobenius error of ``out``'s first ``rows`` query rows against fp32 SDPA of those rows."""
    ref = F.scaled_dot_product_attention(q[:, :, :rows].float(), k.float(), v.float())
    diff = out[:, :, :rows].float() - ref
    return float(diff.norm() / ref.norm())


def measure(shape_name: str, shape: tuple[int, int, int, int], methods: dict[str, Attention | str],
            timer: Callable[[list[Callable[[], object]]], float], device: str = "cuda",
            check_rows: int = 1024, dtype: torch.dtype = torch.bfloat16,
            skip_on: tuple[type[BaseException], ...] = ()) -> list[dict]:
    """One row per runnable method: ``{"shape", "B,H,L,D", "method", "ms", "tflops", "rel_err"}``; methods that
    cannot run are printed with their reason and left out, and so are methods whose call raises one of
    ``skip_on`` (the tile sweep's :func:`sweep_errors`). ``timer(fns) -> ms per call``."""
    b, h, length, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, device=device, generator=gen, dtype=torch.float32) for _ in range(3))
    k = k + 3 * torch.randn(1, 1, 1, d, device=device, generator=gen)  # diffusion keys share an offset
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    rows = []
    for name, fn in methods.items():
        if isinstance(fn, str):
            print(f"{shape_name:14s} {name:26s} skipped: {fn}")
            continue
        try:
            err = rel_err(fn(q, k, v), q, k, v, min(check_rows, length))
            ms = timer([lambda fn=fn: fn(q, k, v)])
        except skip_on as exc:
            print(f"{shape_name:14s} {name:26s} skipped: {type(exc).__name__}: {str(exc).strip()[:200]}")
            continue
        row = {"shape": shape_name, "B,H,L,D": ",".join(map(str, shape)), "method": name, "ms": round(ms, 4),
               "tflops": round(flops(b, h, length, length, d) / (ms * 1e-3) / 1e12, 1), "rel_err": round(err, 5)}
        print(f"{shape_name:14s} {name:26s} {row['ms']:9.3f} ms {row['tflops']:7.1f} TFLOPS rel_err {err:.4f}")
        rows.append(row)
    return rows


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"`` (the results file's suffix)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown_gpu"


def write_results(rows: list[dict], out_dir: Path, gpu_name: str) -> Path:
    """``<out_dir>/attention_<gpu>.json`` with the rows and what they were measured on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"attention_{gpu_slug(gpu_name)}.json"
    triton_version = importlib.metadata.version("triton") if importlib.util.find_spec("triton") else None
    meta = {"gpu": gpu_name, "torch": torch.__version__, "triton": triton_version, "python": platform.python_version()}
    path.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    return path


def run(args: argparse.Namespace, timer: Callable[[list[Callable[[], object]]], float] | None = None,
        device: str = "cuda") -> int:
    if device == "cuda" and not torch.cuda.is_available():
        print("comfy-int8 bench attention needs a CUDA GPU.")
        return 1
    if timer is None:
        from .timing import eager_time_ms

        timer = lambda fns: eager_time_ms(fns, target_ms=args.target_ms)  # noqa: E731
    methods = available_methods(args.methods)
    sweep = tile_sweep_methods(device, args.sweep_pv) if args.sweep_tiles else {}
    if args.sweep_hopper:
        sweep.update(hopper_sweep_methods())
    rows = []
    for name in args.shapes:
        rows += measure(name, SHAPES[name], methods, timer, device, args.check_rows)
        if sweep:
            rows += measure(name, SHAPES[name], sweep, timer, device, args.check_rows, skip_on=sweep_errors())
        if device == "cuda":
            torch.cuda.empty_cache()
        # after every shape, so a run cut off by a time limit keeps the shapes it finished
        path = write_results(rows, args.out, torch.cuda.get_device_name() if device == "cuda" else "cpu")
    print(f"wrote {path}")
    return 0
