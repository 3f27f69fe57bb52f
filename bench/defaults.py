"""``comfy-int8 bench defaults``: what a user gets from this pack's nodes left at their defaults, beside stock
ComfyUI, on a Flux-dev-sized model at the usual resolutions.

It writes a random bf16 Flux-dev file (ComfyUI's own class at the published size, salient outlier channels:
``bench/family_models.py``) and, for ``native_int8_stock_compile``, a ComfyUI-native int8 file written by our
converter (``int8/formats/converter.py``, defaults, as ``bench families`` does). Then per variant:

- ``bf16``: the stock UNETLoader's function (``comfy.sd.load_diffusion_model``, weight_dtype default), eager;
- ``bf16_stock_compile``: the same plus the stock TorchCompileModel node (``TorchCompileModel.execute``);
- ``native_int8_stock_compile``: the native int8 file through the stock loader plus TorchCompileModel;
- ``ours_loader``: the loader node's own function (``load_int8_diffusion_model``) with default ``LoaderOptions``;
- ``ours_loader_node``: the same plus ``INT8LazyTorchCompile.compile`` with every input at its ``INPUT_TYPES``
  default (only ``backend`` is ``eager`` under ``--tiny``, where inductor would spend minutes in the C++ compiler);
- ``ours_loader_node_blocks_only`` / ``ours_loader_node_whole_model`` (not run unless named): the same with
  ``compile_transformer_blocks_only`` set on / off, to choose that input's default by measurement;
- ``ours_loader_attention`` / ``ours_loader_node_attention`` (not run unless named): ``ours_loader`` /
  ``ours_loader_node`` with the INT8 Attention node at its defaults before the compile.

Sampling is ``comfy.sample.sample`` (KSampler's path; Euler, scheduler simple, cfg 1, conditioning without text
encoders). Per variant and resolution: ``load_s``; ``first_call_s``, the first sampling call (one Euler step from
sigma 0.5, compile included); ``cos``, the cosine of that call's model prediction against ``bf16``'s; ``step_ms``,
the median of the steps of a second ``--steps``-step call (its first step left out); ``peak_vram_gib``
(``torch.cuda.max_memory_allocated`` from the load on; None on the CPU).

``--lora``: also a random rank-32 LoRA on every Linear (``family_models.save_lora``), applied to the variant's
loaded (and compiled) model the way LoraLoaderModelOnly does (``comfy.sd.load_lora_for_models``), at the first
resolution: ``lora_read_s`` (reading the file, once), ``lora_first_call_s`` (one call with strength 1.0: ComfyUI
patches the weights as it loads the model, requantizing int8 layers), ``lora_step_ms``, then a strength change to
0.5 from the same loaded LoRA (no file read, as the node's cache does): ``lora_restrength_first_call_s``,
``lora_restrength_step_ms``; ``lora_cos``, the strength-1.0 prediction against bf16's with the same LoRA.

``--vram-cap GIB``: ComfyUI may use at most that much of the GPU (as its ``--reserve-vram`` does: the rest is
reserved), so a model that does not fit loads partially, as on a 12-16 GB card; each cell then also records
``vram_cap_gib`` and ``streamed_layers`` (Linear layers ComfyUI left off the GPU and casts per call, after the
first call; 0 where everything fit).

Process model (``--isolate``): by default every (variant, resolution) runs in a fresh Python process, so its load
and first call are a ComfyUI start's: nothing loaded, compiled or tuned in-process before. ``variant`` loads once per
variant and runs the resolutions in order (a later resolution's first call is then a resolution change's: a
recompile or none); ``none`` runs everything in this process, resetting torch._dynamo between variants. On-disk
caches (``--caches``): ``cold`` (default) gives every process empty inductor / Triton cache folders and an empty
int8 tuning cache (``INT8_W8A8_TUNING_CACHE``), so every variant's first call is a first-ever run's; ``warm``
leaves the user's own, so a second run of the benchmark measures a restart with warm caches.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from .comfy_run import comfy_import_problem, free_models, gpu_short_name, load_model, run_worker

__all__ = ["add_arguments", "run", "VARIANTS", "RESOLUTIONS", "markdown_table", "lora_table"]

log = logging.getLogger("comfy_int8_w8a8")

# variant -> (weights, compile node): comfy_run.load_model's arguments
LOADS = {"bf16": ("bf16", None), "bf16_stock_compile": ("bf16", "stock"),
         "native_int8_stock_compile": ("native_int8", "stock"), "ours_loader": ("ours", None),
         "ours_loader_node": ("ours", "node"), "ours_loader_node_blocks_only": ("ours", "node_blocks_only"),
         "ours_loader_node_whole_model": ("ours", "node_whole_model"),
         "ours_loader_attention": ("ours", "+attention"), "ours_loader_node_attention": ("ours", "node+attention")}
VARIANTS = tuple(LOADS)
# the five; then compile_transformer_blocks_only set either way (to choose its default by measurement), then
# the INT8 Attention node (defaults) added to the loader alone and to loader + compile node
DEFAULT_VARIANTS = VARIANTS[:5]
REFERENCE = "bf16"  # cos is against its prediction
RATIO_BASE = "bf16_stock_compile"  # the table's ratios are against it
# name -> (batch, height, width)
RESOLUTIONS = {"512x512": (1, 512, 512), "1024x1024": (1, 1024, 1024), "1536x1536": (1, 1536, 1536),
               "1024x1024_b2": (2, 1024, 1024)}
FIELDS = ("step_ms", "load_s", "first_call_s", "peak_vram_gib", "cos")
LORA_FIELDS = ("lora_read_s", "lora_first_call_s", "lora_step_ms", "lora_restrength_first_call_s",
               "lora_restrength_step_ms", "lora_cos")
FAMILY = "flux1_dev"
TINY_DIVISOR = 64  # --tiny: latent side = pixels / 64 (8, 16, 24 for the three sizes) instead of pixels / 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                        help=f"what to run (default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--resolutions", nargs="+", choices=list(RESOLUTIONS), default=list(RESOLUTIONS),
                        help="(default: all)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the timed sampling call")
    parser.add_argument("--tiny", action="store_true", help="a tiny Flux and tiny latents, same code path (CPU)")
    parser.add_argument("--isolate", choices=("cell", "variant", "none"), default="cell",
                        help="a fresh process per variant and resolution (default), per variant, or none")
    parser.add_argument("--caches", choices=("cold", "warm"), default="cold",
                        help="on-disk compile / tuning caches: empty per process (default) or the user's own")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: docs/results/defaults_<gpu>.json, _tiny for --tiny); the "
                             "markdown table goes beside it (.md)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the model files go (default: a temp folder, deleted). Needs ~36 GB free")
    parser.add_argument("--lora", action="store_true", help="also time a rank-32 LoRA on every Linear: apply, "
                        "steps after it, a strength change (at the first resolution)")
    parser.add_argument("--vram-cap", type=float, default=None, metavar="GIB",
                        help="let ComfyUI use at most GIB of the GPU (the rest reserved, as --reserve-vram does)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)


def _latent(resolution: str, tiny: bool) -> tuple[int, ...]:
    batch, height, width = RESOLUTIONS[resolution]
    div = TINY_DIVISOR if tiny else 8
    return (batch, 16, height // div, width // div)


def run_cells(variant: str, resolutions: list[str], spec: dict) -> dict:
    """Load ``variant`` once and run each resolution; returns {resolution: fields}, the predictions saved in
    ``spec["folder"]`` as ``pred_<variant>_<resolution>.pt`` (cos is the parent's, against bf16's)."""
    from . import family_models as fm
    from . import family_sampling as fs
    from .family_table import FAMILIES

    family, tiny, cuda = FAMILIES[FAMILY], spec["tiny"], torch.cuda.is_available()
    positive = fm.conditioning(family, tiny, seed=2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if spec.get("vram_cap_gib"):
        fs.cap_vram(spec["vram_cap_gib"])
    start = time.perf_counter()
    patcher = load_model(spec["files"], *LOADS[variant], spec["backend"])
    load_s = time.perf_counter() - start
    out = {}
    for i, resolution in enumerate(resolutions):
        if cuda and i:
            torch.cuda.reset_peak_memory_stats()  # the weights stay resident: the peak of this resolution
        noise = torch.randn(_latent(resolution, tiny), generator=torch.Generator().manual_seed(1))
        run = fs.timed_run(patcher, noise, positive, spec["steps"])
        torch.save(run.prediction, Path(spec["folder"]) / f"pred_{variant}_{resolution}.pt")
        out[resolution] = {"step_ms": round(run.step_ms, 2), "load_s": round(load_s, 2),
                           "first_call_s": round(run.first_call_s, 2),
                           "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                           "cos": None}
        if spec.get("vram_cap_gib"):
            out[resolution].update(vram_cap_gib=spec["vram_cap_gib"], streamed_layers=fs.streamed_layers(patcher))
        log.info("defaults: %s / %s: %s", variant, resolution, json.dumps(out[resolution]))
        if spec.get("lora") and i == 0:
            lora = fs.lora_runs(patcher, spec["files"]["lora"], noise, positive, spec["steps"])
            torch.save(lora.pop("_prediction"), Path(spec["folder"]) / f"pred_{variant}_{resolution}_lora.pt")
            log.info("defaults: %s / %s LoRA: %s", variant, resolution, json.dumps(lora))
            out[resolution].update(lora)
    del patcher
    return out


def _worker(spec_path: Path) -> int:
    """A fresh process's cell: read the spec, run, write ``<spec>.result.json``."""
    from .e2e_models import import_comfy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_comfy()
    spec = json.loads(spec_path.read_text())
    result = run_cells(spec["variant"], spec["resolutions"], spec)
    spec_path.with_suffix(".result.json").write_text(json.dumps(result))
    return 0


def _in_worker(variant: str, resolutions: list[str], spec: dict, args: argparse.Namespace) -> dict:
    tag = f"{variant}_{'_'.join(resolutions)}"
    return run_worker("bench.defaults", {**spec, "variant": variant, "resolutions": resolutions},
                      Path(spec["folder"]), tag, args.caches, args.timeout)


def _write_files(folder: Path, variants: list[str], tiny: bool, lora: bool = False) -> dict:
    """The Flux-dev-sized bf16 file (and the LoRA, and the native int8 file when a variant needs them): the family
    benchmark's files for ``flux1_dev``, as strings for the workers' specs."""
    from . import families
    from .family_table import FAMILIES

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = families._write_files(FAMILIES[FAMILY], folder, tiny, device, lora)
    if any(v.startswith("native") for v in variants):
        families._native_int8(files)  # files["native_int8"]: flux1_dev_int8.safetensors
    return {k: str(v) for k, v in files.items() if isinstance(v, Path)}


def _with_cos(results: dict, folder: Path) -> None:
    from .family_sampling import cosine

    for variant, cells in results.items():
        for resolution, cell in cells.items():
            ref, mine = folder / f"pred_{REFERENCE}_{resolution}.pt", folder / f"pred_{variant}_{resolution}.pt"
            if ref.is_file() and mine.is_file() and cell.get("step_ms") is not None:
                cell["cos"] = round(cosine(torch.load(mine), torch.load(ref)), 6)
            ref, mine = ref.with_name(ref.stem + "_lora.pt"), mine.with_name(mine.stem + "_lora.pt")
            if ref.is_file() and mine.is_file():
                cell["lora_cos"] = round(cosine(torch.load(mine), torch.load(ref)), 6)


def markdown_table(results: dict) -> str:
    """One row per resolution and variant; ``x`` columns are ratios against ``bf16_stock_compile`` there."""

    def fmt(value: object) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def ratio(cell: dict, base: dict | None, key: str) -> str:
        if not base or cell.get(key) is None or not base.get(key):
            return "-"
        return f"{cell[key] / base[key]:.2f}x"

    lines = ["| resolution | variant | step_ms | step vs stock compile | load_s | first_call_s | "
             "first call vs stock compile | peak_vram_gib | vram vs stock compile | cos |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    resolutions = [r for r in RESOLUTIONS if any(r in cells for cells in results.values())]
    for resolution in resolutions:
        base = results.get(RATIO_BASE, {}).get(resolution)
        for variant, cells in results.items():
            cell = cells.get(resolution)
            if cell is None:
                continue
            lines.append(f"| {resolution} | {variant} | {fmt(cell['step_ms'])} | {ratio(cell, base, 'step_ms')} | "
                         f"{fmt(cell['load_s'])} | {fmt(cell['first_call_s'])} | "
                         f"{ratio(cell, base, 'first_call_s')} | {fmt(cell['peak_vram_gib'])} | "
                         f"{ratio(cell, base, 'peak_vram_gib')} | {fmt(cell['cos'])} |")
    return "\n".join(lines)


def lora_table(results: dict) -> str:
    """The ``--lora`` fields, one row per variant (at the resolution they were measured)."""
    lines = ["| resolution | variant | read s | first call s | step ms | new strength: first call s | step ms | cos |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant, cells in results.items():
        for resolution, cell in cells.items():
            if cell.get("lora_step_ms") is not None:
                lines.append(f"| {resolution} | {variant} | " + " | ".join(
                    "-" if cell.get(k) is None else f"{cell[k]:g}" for k in LORA_FIELDS) + " |")
    return "\n".join(lines)


def _write_outputs(results: dict, folder: Path, out_path: Path, args: argparse.Namespace) -> str:
    """The JSON and the markdown table of the variants measured so far (cos against bf16's saved prediction);
    returns the table."""
    _with_cos(results["results"], folder)
    results["results"] = {v: results["results"][v] for v in VARIANTS if v in results["results"]}
    table = markdown_table(results["results"])
    if args.lora:
        table += "\n\n" + lora_table(results["results"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    flags = (", --tiny" if args.tiny else "") + (f", --vram-cap {args.vram_cap:g}" if args.vram_cap else "")
    out_path.with_suffix(".md").write_text(f"{results['gpu']}, --isolate {args.isolate}, --caches {args.caches}, "
                                           f"--steps {args.steps}{flags}\n\n{table}\n")
    return table


def _run_variant(variant: str, spec: dict, args: argparse.Namespace) -> dict:
    if args.isolate == "none":
        try:
            return run_cells(variant, list(args.resolutions), spec)
        finally:
            free_models()  # torch._dynamo reset included
    groups = [[r] for r in args.resolutions] if args.isolate == "cell" else [list(args.resolutions)]
    out: dict = {}
    for resolutions in groups:
        out.update(_in_worker(variant, resolutions, spec, args))
    return out


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:
        return _worker(args.worker)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = comfy_import_problem("defaults")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    started = time.perf_counter()
    gpu = gpu_short_name()
    out_path = args.out or Path(f"docs/results/defaults_{gpu}{'_tiny' if args.tiny else ''}.json")
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="int8_defaults_"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "results": {}}
    try:
        files = _write_files(folder, list(args.variants), args.tiny, args.lora)
        spec = {"files": files, "folder": str(folder), "tiny": args.tiny, "steps": args.steps,
                "backend": "eager" if args.tiny else None, "lora": args.lora, "vram_cap_gib": args.vram_cap}
        variants = sorted(args.variants, key=lambda v: v != REFERENCE)  # bf16 first: the others' cos reference
        table = ""
        for variant in variants:
            log.info("defaults: %s ...", variant)
            try:
                results["results"][variant] = _run_variant(variant, spec, args)
            # The failure (OOM, a worker that died) is the finding: recorded in the cells, the rest goes on.
            except Exception as exc:  # noqa: BLE001
                log.exception("defaults: %s failed", variant)
                error = f"{type(exc).__name__}: {exc}"[:500]
                results["results"][variant] = {r: {**dict.fromkeys(FIELDS), "error": error} for r in args.resolutions}
            # after every variant, so a run cut off by a time limit leaves the variants it finished
            table = _write_outputs(results, folder, out_path, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(table)
    print(f"wrote {out_path} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":  # a worker: python -m <pack>.bench.defaults --worker SPEC
    _parser = argparse.ArgumentParser(prog="comfy-int8 bench defaults (worker)")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
