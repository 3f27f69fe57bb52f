"""``comfy-int8 bench families``: per model family, what this pack's loader does to a workflow at the family's real
size and usual resolution, beside stock ComfyUI.

For each family of ``bench/family_table.py`` it builds ComfyUI's own model class at the published configuration
(random weights with salient outlier channels), writes a bf16 safetensors file with ComfyUI's key names and runs,
one after another on the same file and noise, through ``comfy.sample.sample`` (KSampler's path, Euler, cfg 1):

- ``bf16``: the stock loader (``comfy.sd.load_diffusion_model``, UNETLoader's default), eager;
- ``bf16_stock_compile``: the same plus the stock TorchCompileModel node;
- ``ours_defaults``: the loader node's own function with default options plus the INT8 Lazy Torch Compile node
  with its defaults;
- ``native_int8_stock_compile``: a ComfyUI-native int8 file written by ``comfy-int8 convert``'s converter
  (defaults), through the stock loader and TorchCompileModel;
- ``fp8_e4m3fn_fast`` (the reference instead of bf16 where the bf16 weights do not fit the card) and
  ``ours_eager`` (only when named in ``--variants``).

Per variant: load seconds, the first call's seconds (one forward at sigma 0.5, compiling included), the median
step milliseconds of ``--steps`` steps, peak VRAM (``torch.cuda.max_memory_allocated`` from the load on), the
cosine of that forward's prediction against the reference's, and the cosine of the final latent.

``--lora`` (as ``bench defaults``): a random rank-32 LoRA on every Linear, applied per variant the way
LoraLoaderModelOnly does: ``lora_read_s``, ``lora_first_call_s``, ``lora_step_ms``, then a strength change to 0.5
without reading the file again (``lora_restrength_*``), ``lora_cos`` against the reference with the same LoRA,
and ``lora_vs_plain_cos`` against the variant's own prediction without it (under 1: the LoRA took effect).
``--vram-cap GIB``: ComfyUI may use only that much of the GPU, so a large model loads partially, as on a 12-16 GB
card; each variant also records ``vram_cap_gib`` and ``streamed_layers``. ``--profile STEPS``: that many more steps
under torch.profiler per variant, the op table written to ``<out>_profiles/<family>_<variant>.txt`` and
``gpu_kernel_ms_per_step`` recorded (step_ms minus it: launch gaps and host cost).

Process model (``--isolate``, as ``bench defaults``): by default every variant runs in a fresh Python process, as
after a ComfyUI restart, so nothing one variant leaves in the process (compiled code, tuned kernels, allocator
state) reaches the next; ``--caches cold`` (default) also gives it empty compile and tuning cache folders. The
predictions come back through files in the work folder. ``--isolate none`` runs them one after another in this
process, freeing the models and resetting dynamo between them (faster; what the CPU tests use).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .comfy_run import comfy_import_problem, free_models, gpu_short_name, load_model, run_worker
from .family_table import DEFAULT_FAMILIES, FAMILIES, Family

__all__ = ["add_arguments", "run", "VARIANTS"]

log = logging.getLogger("comfy_int8_w8a8")

DEFAULT_VARIANTS = ("bf16", "bf16_stock_compile", "ours_defaults", "native_int8_stock_compile")
# variant -> (weights, compile node): comfy_run.load_model's arguments
LOADS = {"bf16": ("bf16", None), "bf16_stock_compile": ("bf16", "stock"), "ours_defaults": ("ours", "node"),
         "native_int8_stock_compile": ("native_int8", "stock"), "fp8_e4m3fn_fast": ("fp8", None),
         "ours_eager": ("ours", None)}
VARIANTS = tuple(LOADS)
FIT_SHARE = 0.8  # bf16 weights above this share of the card's memory: "does not fit", fp8 is the reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(DEFAULT_FAMILIES),
                        metavar="NAME", help=f"families to run (default: all): {', '.join(FAMILIES)}")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                        help="what to run per family (default: %(default)s; fp8_e4m3fn_fast is added where bf16 "
                             "does not fit)")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps timed per variant")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: docs/results/families_<gpu>.json, families_cpu_tiny.json for --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same classes, tiny latents (CPU)")
    parser.add_argument("--backend", default=None, help="torch.compile backend of both compile nodes (default "
                        "inductor; eager with --tiny, where inductor would spend minutes per model in the C++ compiler)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the model files go (deleted per family; "
                        "default: a temp folder). Needs bf16 + int8 size of the largest family free")
    parser.add_argument("--isolate", choices=("variant", "none"), default="variant",
                        help="a fresh process per variant (default) or all in this process")
    parser.add_argument("--caches", choices=("cold", "warm"), default="cold",
                        help="with --isolate variant: on-disk compile / tuning caches empty per process (default) "
                             "or the user's own")
    parser.add_argument("--lora", action="store_true", help="also a rank-32 LoRA on every Linear per variant: "
                        "apply, steps after it, a strength change (LoRA fields in each variant)")
    parser.add_argument("--vram-cap", type=float, default=None, metavar="GIB",
                        help="let ComfyUI use at most GIB of the GPU (the rest reserved, as --reserve-vram does)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also run STEPS steps under torch.profiler per variant: its op table in a folder beside "
                             "the JSON (<out>_profiles/) and gpu_kernel_ms_per_step in the variant's results")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)


def _inputs(family: Family, tiny: bool) -> dict:
    """The noise and conditioning every variant samples from (seeded: a worker process makes the same)."""
    from . import family_models as fm

    latent = family.tiny_latent if tiny else family.latent
    return {"noise": torch.randn(latent, generator=torch.Generator().manual_seed(1)),
            "positive": fm.conditioning(family, tiny, seed=2)}


def _variant_in_process(variant: str, family: Family, files: dict, args: argparse.Namespace) -> dict:
    from . import family_models as fm

    with fm.tiny_sizes(family) if args.tiny else contextlib.nullcontext():
        return _measure(variant, family, files, _inputs(family, args.tiny), args)


def _variant_in_worker(variant: str, family: Family, files: dict, args: argparse.Namespace, folder: Path) -> dict:
    spec = {"family": family.name, "variant": variant, "files": {k: str(v) for k, v in files.items()},
            "folder": str(folder), "options": {k: getattr(args, k) for k in _WORKER_OPTIONS}}
    result = run_worker("bench.families", spec, folder, f"{family.name}_{variant}", args.caches, args.timeout)
    for key in result.pop("_tensors"):
        path = folder / f"{key[1:]}_{family.name}_{variant}.pt"
        result[key] = torch.load(path)
        path.unlink()
    return result


def _worker(spec_path: Path) -> int:
    """A fresh process's variant: read the spec, run it, write the tensors and ``<spec>.result.json``."""
    from .e2e_models import import_comfy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_comfy()
    torch._dynamo.config.cache_size_limit = 640  # as run() sets it for in-process variants
    spec = json.loads(spec_path.read_text())
    files = {k: Path(v) if k in ("bf16", "native_int8", "lora") else v for k, v in spec["files"].items()}
    result = _variant_in_process(spec["variant"], FAMILIES[spec["family"]], files, argparse.Namespace(**spec["options"]))
    folder = Path(spec["folder"])
    tensors = [k for k in result if k.startswith("_")]
    for key in tensors:
        torch.save(result.pop(key), folder / f"{key[1:]}_{spec['family']}_{spec['variant']}.pt")
    spec_path.with_suffix(".result.json").write_text(json.dumps({**result, "_tensors": tensors}))
    return 0


# what a worker needs of the command line (the rest is the parent's business)
_WORKER_OPTIONS = ("tiny", "steps", "backend", "lora", "vram_cap", "profile", "profile_dir")


def _run_variant(variant: str, family: Family, files: dict, args: argparse.Namespace, folder: Path) -> dict:
    """One variant's results (with its prediction and final latent as ``_prediction``/``_latent``), measured in a
    worker process or in this one (``--isolate``)."""
    if args.isolate == "variant":
        return _variant_in_worker(variant, family, files, args, folder)
    return _variant_in_process(variant, family, files, args)


def _measure(variant: str, family: Family, files: dict, inputs: dict, args: argparse.Namespace) -> dict:
    from . import family_sampling as fs

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if args.vram_cap:
        fs.cap_vram(args.vram_cap)
    start = time.perf_counter()
    patcher = load_model(files, *LOADS[variant], args.backend)
    load_s = time.perf_counter() - start
    run = fs.timed_run(patcher, inputs["noise"], inputs["positive"], args.steps)
    result = {"load_s": round(load_s, 2), "first_call_s": round(run.first_call_s, 2),
              "step_ms": round(run.step_ms, 2),
              "int8_layers": _int8_layers(patcher.model.diffusion_model)}
    if cuda:
        result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.vram_cap:
        result.update(vram_cap_gib=args.vram_cap, streamed_layers=fs.streamed_layers(patcher))
    if args.profile:
        table, result["gpu_kernel_ms_per_step"] = fs.profile_steps(patcher, inputs["noise"], inputs["positive"],
                                                                   args.profile)
        folder = Path(args.profile_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{family.name}_{variant}.txt").write_text(
            f"{family.name} / {variant}: step_ms {result['step_ms']}, {args.profile} steps profiled\n{table}\n")
    if args.lora:
        lora = fs.lora_runs(patcher, files["lora"], inputs["noise"], inputs["positive"], args.steps)
        result["_lora_prediction"] = lora.pop("_prediction")
        result.update(lora)
    del patcher
    free_models()
    return {**result, "_prediction": run.prediction, "_latent": run.latent}


def _int8_layers(model: torch.nn.Module) -> int:
    """Layers holding an int8 ComfyUI ``QuantizedTensor`` weight: ours and stock native int8 alike."""
    from comfy.quant_ops import QuantizedTensor

    return sum(1 for m in model.modules() if isinstance(getattr(m, "weight", None), QuantizedTensor)
               and m.weight.dtype != torch.float8_e4m3fn and getattr(m.weight, "_qdata", m.weight).dtype == torch.int8)


def _write_files(family: Family, folder: Path, tiny: bool, device: torch.device, lora: bool = False) -> dict:
    from . import family_models as fm

    start = time.perf_counter()
    model = fm.build_model(family, tiny, device)
    params = sum(p.numel() for p in model.parameters())
    files = {"bf16": folder / f"{family.name}_bf16.safetensors", "params": params}
    fm.save_bf16(model, files["bf16"])
    if lora:
        files["lora"] = folder / f"{family.name}_lora_r32.safetensors"
        fm.save_lora(model, files["lora"])
    del model
    free_models()
    files["write_s"] = round(time.perf_counter() - start, 1)
    return files


def _native_int8(files: dict) -> None:
    from ..int8.formats import open_checkpoint
    from ..int8.formats.converter import convert_checkpoint
    from ..int8.quantize_model import QuantizeConfig
    from ..presets import resolve_preset

    with open_checkpoint(str(files["bf16"])) as ckpt:
        preset, _ = resolve_preset("auto", ckpt.keys())
    files["native_int8"] = files["bf16"].with_name(files["bf16"].name.replace("_bf16", "_int8"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    convert_checkpoint(files["bf16"], files["native_int8"], preset, QuantizeConfig(), device=device, force=True,
                       progress=False)
    files["convert_s"] = round(time.perf_counter() - start, 1)


def _variants_for(params: int, args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The variants to run and, where the bf16 weights do not fit the card, why bf16 is left out."""
    variants = list(args.variants)
    if not torch.cuda.is_available():
        return variants, None
    total = torch.cuda.get_device_properties(0).total_memory
    if params * 2 <= FIT_SHARE * total:
        return variants, None
    note = (f"bf16 weights ({params * 2 / 2**30:.1f} GiB) exceed {FIT_SHARE:.0%} of the card's {total / 2**30:.0f} "
            "GiB: bf16 left out, fp8_e4m3fn_fast is the reference")
    variants = [v for v in variants if not v.startswith("bf16")]
    return ["fp8_e4m3fn_fast", *[v for v in variants if v != "fp8_e4m3fn_fast"]], note


def run_family(family: Family, args: argparse.Namespace, folder: Path,
               progress: Callable[[dict], None] | None = None) -> dict:
    """One family's variants; ``progress(summary)`` after each variant, so a run cut off by a time limit keeps the
    variants it finished."""
    from . import family_sampling as fs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = _write_files(family, folder, args.tiny, device, args.lora)
    variants, note = _variants_for(files["params"], args)
    latent = family.tiny_latent if args.tiny else family.latent
    out: dict = {"resolution": "tiny" if args.tiny else family.resolution, "latent": list(latent),
                 "text_tokens": (family.tiny_context if args.tiny else family.context)[0],
                 "params_b": round(files["params"] / 1e9, 3), "model_class": family.model_class,
                 "preset": family.preset, "reference": variants[0], "write_s": files["write_s"], "variants": {}}
    if note:
        out["notes"] = [note]
    reference = None
    for variant in variants:
        try:
            if variant.startswith("native") and "native_int8" not in files:
                _native_int8(files)
                out["convert_s"] = files["convert_s"]
            result = _run_variant(variant, family, files, args, folder)
        # A benchmark of many families records a variant's failure (OOM, a shape a kernel refuses, ...) and goes
        # on: the failure is the finding. The message is kept in the JSON and logged.
        except Exception as exc:  # noqa: BLE001
            log.exception("families: %s / %s failed", family.name, variant)
            out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            free_models()
            continue
        tensors = (result.pop("_prediction"), result.pop("_latent"), result.pop("_lora_prediction", None))
        reference = reference or tensors  # the first variant that ran (bf16, or fp8 where bf16 does not fit)
        result["cos"] = round(fs.cosine(tensors[0], reference[0]), 6)
        result["final_latent_cos"] = round(fs.cosine(tensors[1], reference[1]), 6)
        if tensors[2] is not None and reference[2] is not None:
            result["lora_cos"] = round(fs.cosine(tensors[2], reference[2]), 6)
            result["lora_vs_plain_cos"] = round(fs.cosine(tensors[2], tensors[0]), 6)  # < 1: the LoRA acted
        out["variants"][variant] = result
        log.info("families: %s / %s: %s", family.name, variant, json.dumps(result))
        if progress is not None:
            progress(_summarise(out))
    for path in (files.get("bf16"), files.get("native_int8"), files.get("lora")):
        if path is not None:
            path.unlink(missing_ok=True)
    return _summarise(out)


def _summarise(out: dict) -> dict:
    """The issue's per-family table from the per-variant results: step_ms per variant, peak VRAM of the reference
    and ours, cos = our default setup's prediction cosine against the reference."""
    ok = {k: v for k, v in out["variants"].items() if "error" not in v}
    out["step_ms"] = {k: v["step_ms"] for k, v in ok.items()}
    out["first_call_s"] = {k: v["first_call_s"] for k, v in ok.items()}
    out["load_s"] = {k: v["load_s"] for k, v in ok.items()}
    out["peak_vram_gib"] = {k: v["peak_vram_gib"] for k, v in ok.items() if "peak_vram_gib" in v}
    ours = ok.get("ours_defaults") or ok.get("ours_eager")
    out["cos"] = ours["cos"] if ours else None
    out["final_latent_cos"] = ours["final_latent_cos"] if ours else None
    return out


def run(args: argparse.Namespace) -> int:
    if args.worker is not None:
        return _worker(args.worker)
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.backend = args.backend or ("eager" if args.tiny else "inductor")
    problem = comfy_import_problem("families")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    gpu = gpu_short_name()
    out_path = args.out or Path(f"docs/results/families_{gpu}{'_tiny' if args.tiny else ''}.json")
    args.profile_dir = str(out_path.with_name(out_path.stem + "_profiles"))
    results: dict = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "tiny": args.tiny,
                     "steps": args.steps, "compile_backend": args.backend, "torch": torch.__version__,
                     "isolate": args.isolate, "caches": args.caches if args.isolate == "variant" else "warm",
                     "families": {}}
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="int8_families_"))
    folder.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.cache_size_limit = 640
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)

        def save(name: str, summary: dict) -> None:
            results["families"][name] = summary
            results["elapsed_s"] = round(time.perf_counter() - started, 1)
            out_path.write_text(json.dumps(results, indent=1, default=str))

        for name in args.families:
            log.info("families: %s ...", name)
            save(name, run_family(FAMILIES[name], args, folder, functools.partial(save, name)))
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    for name, fam in results["families"].items():
        print(f"{name:16s} {fam['resolution']:>12s}  step_ms {fam['step_ms']}  cos {fam['cos']}")
    print(f"wrote {out_path} in {results.get('elapsed_s', 0)} s")
    return 0


if __name__ == "__main__":  # a worker: python -m <pack>.bench.families --worker SPEC
    _parser = argparse.ArgumentParser(prog="comfy-int8 bench families (worker)")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
