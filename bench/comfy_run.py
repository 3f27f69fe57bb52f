"""What the family and defaults benchmarks do around ComfyUI, in one place: check that its code imports, apply the
stock TorchCompileModel node and INT8 Lazy Torch Compile at their defaults, free the models between variants, run a
variant in a fresh process."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["comfy_import_problem", "gpu_short_name", "sync", "free_models", "node_defaults", "node_compile",
           "stock_compile", "load_model", "run_worker"]


def comfy_import_problem(bench: str) -> str | None:
    """Import ComfyUI's code for ``comfy-int8 bench <bench>``; the one line to print when it cannot, else None."""
    try:
        from .e2e_models import import_comfy

        import_comfy()
        import comfy.sd  # noqa: F401
        import comfy_extras.nodes_torch_compile  # noqa: F401
    except ImportError as exc:
        return (f"comfy-int8 bench {bench} needs ComfyUI's code, which cannot be imported ({exc}). Put a ComfyUI "
                "checkout on PYTHONPATH with its requirements installed; --tiny runs on a CPU.")
    return None


def gpu_short_name() -> str:
    """``h100``-style name of the current GPU for result file names; ``cpu`` without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name().lower().replace("nvidia ", "").split()[0]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_models() -> None:
    """Unload every model ComfyUI holds and forget compiled code, before the next variant loads."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    torch._dynamo.reset()


def _worker_env(caches: str, folder: Path, tag: str) -> dict:
    """The environment of a worker: this process's import path (ComfyUI and this pack under whatever name it has)
    and, for cold caches, empty cache folders of its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    if caches == "cold":
        cache = folder / f"caches_{tag}"
        env.update(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"),
                   INT8_W8A8_TUNING_CACHE=str(cache / "tuning"))
    return env


def run_worker(module: str, spec: dict, folder: Path, tag: str, caches: str, timeout: float) -> dict:
    """Run ``python -m <module> --worker <spec file>`` in a fresh process (``caches`` ``cold``: with empty on-disk
    compile and tuning caches of its own, removed after) and return the JSON it wrote beside the spec file."""
    spec_path = folder / f"spec_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    package = __package__.rpartition(".")[0]  # the pack's import name
    cmd = [sys.executable, "-m", f"{package}.{module}", "--worker", str(spec_path)]
    done = subprocess.run(cmd, env=_worker_env(caches, folder, tag), timeout=timeout, check=False)
    if caches == "cold":
        shutil.rmtree(folder / f"caches_{tag}", ignore_errors=True)
    result_path = spec_path.with_suffix(".result.json")
    if done.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"worker exited with {done.returncode} (its log is above)")
    return json.loads(result_path.read_text())


def _input_defaults(node: type) -> dict:
    """A MODEL-patching node's inputs, other than the model, at their ``INPUT_TYPES`` defaults."""
    required = node.INPUT_TYPES()["required"]
    return {name: spec[1]["default"] for name, spec in required.items() if name != "model"}


def node_defaults(backend: str | None = None) -> dict:
    """INT8 Lazy Torch Compile's inputs at their ``INPUT_TYPES`` defaults (``backend`` replaced when given)."""
    from ..nodes.compile_node import INT8LazyTorchCompile

    kwargs = _input_defaults(INT8LazyTorchCompile)
    if backend is not None:
        kwargs["backend"] = backend
    return kwargs


# load_model's ``compiled`` values that mean INT8 Lazy Torch Compile: its defaults, or its defaults with
# ``compile_transformer_blocks_only`` set (to measure that input's default against the other choice)
NODE_SCOPES: dict[str, bool | None] = {"node": None, "node_blocks_only": True, "node_whole_model": False}


def node_compile(patcher, backend: str | None = None, blocks_only: bool | None = None):  # noqa: ANN001, ANN201
    """``patcher`` (a ModelPatcher) through INT8 Lazy Torch Compile with its default inputs (``blocks_only``:
    ``compile_transformer_blocks_only`` instead of its default)."""
    from ..nodes.compile_node import INT8LazyTorchCompile

    kwargs = node_defaults(backend)
    if blocks_only is not None:
        kwargs["compile_transformer_blocks_only"] = blocks_only
    return INT8LazyTorchCompile().compile(patcher, **kwargs)[0]


def stock_compile(patcher, backend: str | None = None):  # noqa: ANN001, ANN201 - a ModelPatcher
    """``patcher`` through ComfyUI's TorchCompileModel node (its backend widget defaults to inductor)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(patcher, backend or "inductor").result[0]


def load_model(files: dict, source: str, compiled: str | None, backend: str | None = None):  # noqa: ANN201
    """A ModelPatcher as a workflow builds it. ``source``: ``bf16`` (the stock UNETLoader on ``files["bf16"]``),
    ``native_int8`` (the stock loader on ``files["native_int8"]``), ``fp8`` (the stock loader, weight dtype
    ``fp8_e4m3fn_fast``) or ``ours`` (the INT8 loader node's function, default options, on ``files["bf16"]``);
    ``compiled``: None, ``stock`` (TorchCompileModel) or ``node`` (INT8 Lazy Torch Compile), at their defaults, or
    another of :data:`NODE_SCOPES`; a ``+attention`` suffix (``"+attention"`` alone: no compile) puts the INT8
    Attention node, at its defaults, before the compile."""
    import comfy.sd

    from ..nodes.loader_node import LoaderOptions, load_int8_diffusion_model

    if source == "ours":
        patcher = load_int8_diffusion_model(str(files["bf16"]), LoaderOptions())
    elif source == "fp8":
        patcher = comfy.sd.load_diffusion_model(str(files["bf16"]), {"dtype": torch.float8_e4m3fn,
                                                                     "fp8_optimizations": True})
    else:
        patcher = comfy.sd.load_diffusion_model(str(files[source]))
    compiled, _, attention = (compiled or "").partition("+")
    if attention == "attention":
        patcher = int8_attention(patcher)
    if compiled == "stock":
        return stock_compile(patcher, backend)
    return node_compile(patcher, backend, NODE_SCOPES[compiled]) if compiled in NODE_SCOPES else patcher


def int8_attention(patcher):  # noqa: ANN001, ANN201 - a ModelPatcher
    """``patcher`` through the INT8 Attention node with its default inputs."""
    from ..nodes.attention_node import INT8Attention

    return INT8Attention().patch(patcher, **_input_defaults(INT8Attention))[0]
