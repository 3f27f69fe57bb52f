"""``comfy-int8 bench e2e``: step time, peak VRAM and fidelity of a Flux-dev-sized model, per precision/compile.

The model is ComfyUI's own Flux class with random weights (salient outlier channels included), 1024x1024 latents,
batch 1. Each variant samples ``--steps`` Euler steps of flow matching from the same noise; its final latent is
compared with bf16 eager (cosine, PSNR over the reference's range). Compiled variants compile per transformer
block (the graphs are reused across the 19 + 38 identical blocks): "stock" swaps ``torch.compile``d blocks in
through ComfyUI's own ``apply_torch_compile_factory`` with the stock guard filter (what TorchCompileModel does,
per block), "node" runs this pack's ``LazyCompiler`` exactly as the INT8 Lazy Torch Compile node installs it.
Where the time goes comes from ``torch.profiler``: GPU kernel time of one forward grouped by kernel name (the
rules are in :func:`_category`).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from ..compile.lazy import compiled_graph_count
from . import e2e_models as models
from .comfy_run import sync

__all__ = ["add_arguments", "run", "VARIANTS"]

log = logging.getLogger("comfy_int8_w8a8")

# name -> (model group, how it runs). Variants of one group share one built model, in this order.
VARIANTS: dict[str, tuple[str, str]] = {
    "bf16": ("bf16", "eager"),
    "bf16+stock_compile": ("bf16", "stock"),
    "bf16+stock_compile_whole": ("bf16", "stock_whole"),
    "bf16+node_compile_reduce_overhead": ("bf16", "node_ro"),
    "fp8_e4m3fn_fast": ("fp8", "eager"),
    "comfy_int8": ("comfy_int8", "eager"),
    "comfy_int8+stock_compile": ("comfy_int8", "stock"),
    "ours": ("ours", "eager"),
    "ours+node_compile": ("ours", "node"),
    "ours+node_compile_reduce_overhead": ("ours", "node_ro"),
    "ours+node_compile_reduce_overhead_blocks_only": ("ours", "node_ro_blocks"),
    "ours+node_compile_blocks_only": ("ours", "node_blocks"),
    "ours+node_compile_reduce_overhead_glue_graphs": ("ours", "node_ro_glue_graphs"),
    "ours_hadamard+node_compile": ("ours_hadamard", "node"),
    "loader_ops+node_compile": ("loader_ops", "node"),
    "loader_ops+node_compile_reduce_overhead": ("loader_ops", "node_ro"),
}
QUICK_VARIANTS = ("bf16", "ours", "ours+node_compile")
# only when named in --variants: minutes of compiling, or A/B checks of the node's choices
SLOW_VARIANTS = ("bf16+stock_compile_whole", "ours+node_compile_reduce_overhead_blocks_only",
                 "ours+node_compile_blocks_only", "ours+node_compile_reduce_overhead_glue_graphs")
PROFILED = ("bf16", "bf16+stock_compile", "comfy_int8+stock_compile", "ours+node_compile",
            "bf16+node_compile_reduce_overhead", "ours+node_compile_reduce_overhead", "loader_ops+node_compile",
            "loader_ops+node_compile_reduce_overhead")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("docs/results/e2e.json"), help="JSON results (a .md table "
                        "and a .png chart are written beside it)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps for the fidelity comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per variant (median reported)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="subset to run (default: all but the slow whole-model stock compile)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend for the compiled variants")
    parser.add_argument("--dynamic", default="true", choices=["auto", "true", "false"],
                        help="the node's dynamic input for ours+node (the node's default is true)")
    parser.add_argument("--runtime-backend", default="auto", help="Int8Linear runtime backend for ours")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip variants that would start after this")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_VARIANTS)}, 2 steps")
    parser.add_argument("--tiny", action="store_true", help="a tiny Flux at 128x128 (CPU-sized structure check)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-kernel time breakdown")


class Owner(nn.Module):
    """Owns ``diffusion_model`` as ComfyUI's BaseModel does, so ComfyUI's and our APPLY_MODEL wrappers apply."""

    def __init__(self, diffusion_model: nn.Module, inputs: dict) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.inputs = inputs

    def apply_model(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = self.inputs
        return self.diffusion_model(x, t, i["context"], y=i["y"], guidance=i["guidance"], transformer_options={})


class Executor:
    """ComfyUI's WrapperExecutor, as far as a wrapper sees it: ``class_obj`` and calling on."""

    def __init__(self, owner: Owner) -> None:
        self.class_obj = owner

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return self.class_obj.apply_model(*args, **kwargs)


def _stock_wrapper(owner: Owner, backend: str, whole: bool = False) -> Callable:
    """TorchCompileModel's mechanism: ``torch.compile`` each block (or, as the stock node does by default, the whole
    diffusion model) with the stock guard filter and let ComfyUI's ``apply_torch_compile_factory`` swap them in
    around each call."""
    from comfy_api.torch_helpers.torch_compile import apply_torch_compile_factory

    from ..compile.blocks import find_blocks, get_submodule

    def skip_torch_compile_dict(guard_entries):  # noqa: ANN001, ANN202 - comfy_extras/nodes_torch_compile.py
        return [("transformer_options" not in entry.name) for entry in guard_entries]

    keys = ["diffusion_model"] if whole else find_blocks(owner.diffusion_model, "diffusion_model.")
    compiled = {k: torch.compile(get_submodule(owner, k), backend=backend,
                                 options={"guard_filter_fn": skip_torch_compile_dict}) for k in keys}
    return apply_torch_compile_factory(compiled)


def _node_wrapper(args: argparse.Namespace, mode: str = "default", glue: bool = True,
                  glue_graphs: bool = False) -> Callable:
    """The node's defaults (guard filter on, dynamic from --dynamic, cache 640) with blocks-only on; ``glue`` False
    leaves the modules around the blocks uncompiled (the node compiles them); ``glue_graphs`` records them as CUDA
    graphs under reduce-overhead (the node compiles them without)."""
    from ..compile import CompileSettings, LazyCompiler, parse_dynamic

    return LazyCompiler(CompileSettings(backend=args.backend, mode=mode, dynamic=parse_dynamic(args.dynamic),
                                        blocks_only=True), compile_glue=glue, glue_cuda_graphs=glue_graphs)


def _wrapper_for(how: str, owner: Owner, args: argparse.Namespace) -> Callable | None:
    if how in ("stock", "stock_whole"):
        return _stock_wrapper(owner, args.backend, whole=how == "stock_whole")
    if how == "node":
        return _node_wrapper(args)
    if how == "node_ro":  # the node with mode reduce-overhead: CUDA graphs remove the per-kernel launch cost
        return _node_wrapper(args, "reduce-overhead")
    if how == "node_ro_blocks":  # A/B: reduce-overhead compiling the blocks alone (the embedders run eagerly)
        return _node_wrapper(args, "reduce-overhead", glue=False)
    if how == "node_blocks":  # A/B: default mode compiling the blocks alone
        return _node_wrapper(args, glue=False)
    if how == "node_ro_glue_graphs":  # A/B: reduce-overhead with the modules around the blocks as CUDA graphs too
        return _node_wrapper(args, "reduce-overhead", glue_graphs=True)
    return None


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of one call (synchronised before and after; one untimed warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _sample(call: Callable, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Euler steps of flow matching from sigma 1 to 0 (what ComfyUI's euler sampler does for Flux)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise.float()
    for i in range(steps):
        v = call(x.to(noise.dtype), sigmas[i : i + 1])
        x = x + (sigmas[i + 1] - sigmas[i]) * v.float()
    return x


def fidelity(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Cosine similarity and PSNR (dB, peak = the reference's value range) of ``out`` against ``ref``."""
    a, b = out.double().flatten(), ref.double().flatten()
    mse = torch.mean((a - b) ** 2).item()
    peak = (b.max() - b.min()).item()
    return {"cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)}


_CATEGORY_RULES = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("linear", re.compile(r"gemm|matmul|_mm|xmma|cutlass|nvjet|sm90_|wgmma|int8|w8a8|quant|scaled_mm|cublas", re.I)),
)


def _category(kernel: str) -> str:
    """Linears = GEMM kernels plus separate activation-quant kernels, by name; attention = SDPA/flash kernels;
    rest = everything else (norms, RoPE, GELU, modulation, and inductor-fused kernels, whatever they fused)."""
    for name, rule in _CATEGORY_RULES:
        if rule.search(kernel):
            return name
    return "rest"


def _breakdown(call: Callable[[], object]) -> dict:
    """GPU kernel time of one forward, grouped by :func:`_category`, with the top kernels of each group."""
    from torch.profiler import ProfilerActivity, profile

    call()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        sync()
    groups: dict[str, dict] = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None)
        if us is None:
            us = getattr(event, "self_cuda_time_total", 0.0)
        if not us:
            continue
        group = groups.setdefault(_category(event.key), {"ms": 0.0, "top": []})
        group["ms"] += us / 1e3
        group["top"].append((event.key[:80], round(us / 1e3, 3)))
    for group in groups.values():
        group["top"] = sorted(group["top"], key=lambda kv: -kv[1])[:4]
        group["ms"] = round(group["ms"], 3)
    return groups


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _build_group(group: str, ref: nn.Module, args: argparse.Namespace) -> tuple[nn.Module, int]:
    if group == "bf16":
        return ref, 0
    if group == "fp8":
        return models.to_fp8_fast(ref)
    if group == "comfy_int8":
        return models.to_comfy_int8(ref)
    if group == "loader_ops":  # the loader node's own path, with its default outlier method (hadamard)
        return models.to_ours_loader_ops(ref, models.TINY_FLUX if args.tiny else models.FLUX_DEV,
                                         runtime_backend=args.runtime_backend)
    outlier = "hadamard" if group == "ours_hadamard" else "none"
    return models.to_ours(ref, outlier, runtime_backend=args.runtime_backend)


def _cudagraph_skips() -> int:
    """Graphs inductor compiled but would not record as CUDA graphs (mutated inputs, CPU tensors, ...)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _run_variant(name: str, how: str, owner: Owner, wrapper: Callable | None, state: dict,
                 args: argparse.Namespace) -> dict:
    inputs = owner.inputs

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return wrapper(Executor(owner), x, t) if wrapper is not None else owner.apply_model(x, t)

    t_mid = torch.full((1,), 0.5, device=inputs["noise"].device)
    graphs0, skips0 = compiled_graph_count(), _cudagraph_skips()
    start = time.perf_counter()
    call(inputs["noise"], t_mid)  # the first call compiles (if it does)
    sync()
    first_call_s = time.perf_counter() - start
    graphs_after_first = compiled_graph_count()
    out = _sample(call, inputs["noise"], args.steps)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    step_ms = _time_ms(lambda: call(inputs["noise"], t_mid), args.repeats)
    result = {
        "variant": name, "run": how, "step_ms": round(step_ms, 2), "first_call_s": round(first_call_s, 2),
        "graphs_compiled": graphs_after_first - graphs0,
        "recompiles_after_first_call": compiled_graph_count() - graphs_after_first,
        "cudagraph_skips": _cudagraph_skips() - skips0,
        "layers_converted": state["converted"], "int8_backends": models.int8_backend_names(owner.diffusion_model),
    }
    if torch.cuda.is_available():
        result["peak_vram_gib"] = round((torch.cuda.max_memory_allocated() - state["other_bytes"]) / 2**30, 2)
        result["weights_gib"] = round(state["weights_bytes"] / 2**30, 2)
    fallback = getattr(wrapper, "fallback", None)
    if fallback is not None and fallback.failed:
        result["compile_failed"] = fallback.reason
    if state.get("reference") is None:
        state["reference"] = out
    result.update({k: round(v, 6) for k, v in fidelity(out, state["reference"]).items()})
    if not args.no_profile and name in PROFILED and torch.cuda.is_available():
        result["breakdown"] = _breakdown(lambda: call(inputs["noise"], t_mid))
    return result


def _module_bytes(model: nn.Module, exclude: set[int]) -> int:
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in exclude]
    return sum(t.numel() * t.element_size() for t in tensors)


def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def _write(results: dict, out: Path) -> None:
    from .e2e_plot import draw_chart, markdown_table

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown_table(results))
    draw_chart(results, out.with_suffix(".png"))


def run(args: argparse.Namespace) -> int:
    from .e2e_plot import markdown_table

    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        models.import_comfy()
    except ImportError as exc:
        print(f"comfy-int8 bench e2e needs ComfyUI's model code, which cannot be imported ({exc}). Put a ComfyUI "
              "checkout on PYTHONPATH (PYTHONPATH=/path/to/ComfyUI comfy-int8 bench e2e ...) with its requirements "
              "installed; --tiny runs on a CPU, the full-size model needs a CUDA GPU.", file=sys.stderr)
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = models.TINY_FLUX if args.tiny else models.FLUX_DEV
    size, txt = (128, 16) if args.tiny else (1024, 512)
    default_names = QUICK_VARIANTS if args.quick else [v for v in VARIANTS if v not in SLOW_VARIANTS]
    names = list(args.variants or default_names)
    if args.quick:
        args.steps, args.repeats = min(args.steps, 2), min(args.repeats, 3)
    results = {"environment": _environment(device), "model": "tiny Flux" if args.tiny else "Flux-dev-sized (Flux)",
               "image_size": size, "txt_tokens": txt, "steps": args.steps, "repeats": args.repeats,
               "compile_backend": args.backend, "node_dynamic": args.dynamic, "variants": [], "skipped": []}
    torch._dynamo.config.cache_size_limit = 640
    with torch.inference_mode():
        ref = models.build_flux(config, device)
        inputs = models.flux_inputs(config, size, txt, device)
        shared = {id(p) for p in ref.parameters()}
        state: dict = {"reference": None}
        groups: dict[str, list[str]] = {}
        for name in VARIANTS:  # canonical order: bf16 eager first, it is the fidelity reference (always run)
            if name in names or name == "bf16":
                groups.setdefault(VARIANTS[name][0], []).append(name)
        for group, members in groups.items():
            if time.perf_counter() - started > args.budget_s:
                results["skipped"] += [f"{m}: time budget ({args.budget_s:.0f} s) spent" for m in members]
                continue
            _free()
            before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            model, state["converted"] = _build_group(group, ref, args)
            after = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            # The variant's memory = what it uses: the tensors it allocated (measured: quantized tensor subclasses
            # misreport their size) plus the reference's it shares (kept Linears; all of them for bf16).
            state["weights_bytes"] = after - before + _module_bytes(model, set()) - _module_bytes(model, shared)
            state["other_bytes"] = after - state["weights_bytes"]
            owner = Owner(model, inputs)
            for name in members:
                how = VARIANTS[name][1]
                wrapper = _wrapper_for(how, owner, args)
                log.info("e2e: %s (%s) ...", name, how)
                results["variants"].append(_run_variant(name, how, owner, wrapper, state, args))
                log.info("e2e: %s", json.dumps({k: v for k, v in results["variants"][-1].items() if k != "breakdown"}))
                results["elapsed_s"] = round(time.perf_counter() - started, 1)
                _write(results, args.out)
            del owner, model, wrapper  # the wrapper holds the compiled blocks, which hold the model
            torch._dynamo.reset()  # drop this group's compiled code (it holds the model's tensors)
    print(markdown_table(results))
    _write(results, args.out)
    return 0
