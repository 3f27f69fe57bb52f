"""``comfy-int8 bench {kernels,e2e,attention,families,defaults,fidelity} [options]``: each benchmark is ``bench/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``.

A benchmark module is imported only when its subcommand runs (``e2e`` pulls in ComfyUI model code, ``kernels``
needs Triton), so ``comfy-int8 --help`` and the other subcommands work on any machine; its options are parsed
from the rest of the command line by its own parser (``comfy-int8 bench kernels --help`` lists them).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES: dict[str, str] = {
    "kernels": "Whole-linear speed and error of bf16, fp8, torch_int_mm, triton and ComfyUI native int8 (GPU).",
    "e2e": "End-to-end step time, VRAM and fidelity of a Flux-dev-sized model (GPU).",
    "attention": "Attention speed and error: bf16 SDPA, sageattention, comfy-kitchen and the int8 kernel (GPU).",
    "families": "Per model family at real size: step time, load, VRAM, fidelity of ours vs stock bf16 / int8 (GPU; --tiny on CPU).",
    "defaults": "Flux-dev at 512-1536 px: our loader and compile node at their defaults vs stock bf16 / compile / "
                "native int8, each in a fresh process (GPU; --tiny on CPU).",
    "fidelity": "Per-layer SQNR of none / hadamard / smooth on Gaussian and outlier activations (CPU or GPU).",
}


# What a missing module means for a benchmark, and how to get it.
_INSTALL_HINTS = {
    "comfy": "ComfyUI's code: put a ComfyUI checkout on PYTHONPATH",
    "comfy_api": "ComfyUI's code: put a ComfyUI checkout on PYTHONPATH",
    "triton": "Triton (ships with PyTorch's CUDA wheels on Linux): pip install triton",
    "matplotlib": "matplotlib, for the chart: pip install matplotlib",
}


def _missing_module(name: str, exc: ModuleNotFoundError) -> int:
    top = (exc.name or "").split(".")[0]
    hint = _INSTALL_HINTS.get(top, f"the Python package '{top}': install it")
    print(f"comfy-int8 bench {name} needs {hint} (No module named '{exc.name}').", file=sys.stderr)
    return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for name, help_text in BENCHES.items():
        # prefix_chars that no option uses: every token after the name (--out, --help, ...) is left for the
        # benchmark's own parser in run().
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=False, prefix_chars="\x01")
        p.add_argument("bench_args", nargs="*", help="options of this benchmark (see its --help)")


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "bench", None)
    if not name:
        print(f"Choose a benchmark: comfy-int8 bench {{{','.join(BENCHES)}}} [options] (options: add --help).")
        return 2
    try:
        module = importlib.import_module(f"..bench.{name}", __package__)
        parser = argparse.ArgumentParser(prog=f"comfy-int8 bench {name}", description=BENCHES[name])
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(args.bench_args)) or 0)
    except ModuleNotFoundError as exc:  # an optional dependency a benchmark imports when it needs it
        return _missing_module(name, exc)
