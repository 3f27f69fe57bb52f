"""The lazy compile: an APPLY_MODEL wrapper that builds the compiled modules at the first sampling call.

By the time ComfyUI calls ``apply_model`` the patcher has loaded the model, swapped in the INT8 modules and baked
LoRA weights, so compiling there compiles what will actually run. Compiling when the node runs would trace the
model before those patches (the wrong graph) and pay the cost even if the prompt never samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch
import torch.nn as nn

from .blocks import find_blocks, find_glue_modules, get_submodule, set_submodule
from .cudagraph import InputCopyingBlock, OutputCopying
from .fallback import CompiledWithFallback, FallbackState
from .guards import TransformerOptionsGuardFilter
from .settings import CompileSettings

__all__ = ["LazyCompiler", "DIFFUSION_MODEL", "compiled_graph_count"]

log = logging.getLogger("comfy_int8_w8a8")

DIFFUSION_MODEL = "diffusion_model"  # the attribute of ComfyUI's BaseModel that holds the network


def compiled_graph_count() -> int:
    """How many distinct graphs dynamo has compiled in this process (its ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _prime_per_device_state(root: nn.Module) -> None:
    """Resolve each INT8 layer's per-device backend and persistent buffers before tracing.

    ``Int8Linear`` picks its backend on its first forward and caches it in a dict; traced first, dynamo guards on
    that dict being empty and recompiles on the second step. Resolving it here (the weights are already on the
    sampling device: the patcher loaded them before calling the model) lets the first trace see the steady state,
    and allocates the kernels' persistent buffers outside any CUDA-graph memory pool.
    """
    for module in root.modules():
        backend_for = getattr(module, "backend_for", None)
        weight = getattr(module, "weight", None)
        if callable(backend_for) and isinstance(weight, torch.Tensor):
            backend_for(weight.device)


class LazyCompiler:
    """Callable as ``wrapper(executor, *args, **kwargs)`` for ``WrappersMP.APPLY_MODEL``.

    ``executor.class_obj`` is the model that owns ``diffusion_model`` (ComfyUI's BaseModel). On each call the
    compiled stand-ins are swapped in for the call and the originals put back afterwards, as the stock
    ``set_torch_compile_wrapper`` does, so the model outside sampling (saving, LoRA patching) is untouched.

    The stand-ins are rebuilt only when what runs changed: another module at one of the compiled paths (an object
    patch), or a new weight-patch state (``current_weight_patches_uuid``, which ComfyUI sets when it loads the
    patched weights). Between steps and between runs with the same patches, nothing is rebuilt; dynamo's own
    guards then decide whether a new input shape needs a new graph.
    """

    def __init__(self, settings: CompileSettings, block_names: tuple[str, ...] | None = None,
                 compile_glue: bool = True, glue_cuda_graphs: bool = False) -> None:
        self.settings = settings
        self.block_names = block_names
        self.compile_glue = compile_glue  # blocks-only also compiles the modules around the blocks (target_paths)
        self.glue_cuda_graphs = glue_cuda_graphs  # record those as CUDA graphs too (the benchmark's A/B; see _compile)
        self._glue_paths: set[str] = set()
        self.guard_filter = TransformerOptionsGuardFilter() if settings.use_guard_filter else None
        self.fallback = FallbackState()
        self.builds = 0
        self._state: Hashable | None = None
        self._standins: dict[str, CompiledWithFallback] = {}
        self._warned_no_blocks = False
        self._warned_lowvram = False
        self.active_settings = settings  # what the current stand-ins were compiled with (lowvram drops graphs)

    @property
    def compiled_paths(self) -> list[str]:
        """Paths (relative to the model owning ``diffusion_model``) of the modules compiled so far."""
        return list(self._standins)

    def target_paths(self, owner: nn.Module) -> list[str]:
        """What to compile: every recognised block (blocks-only) or the whole diffusion model.

        With ``compile_glue`` blocks-only also compiles the diffusion model's other direct children that hold weights
        (embedders, final layer: :func:`find_glue_modules`). Run eagerly, their small kernels leave the GPU waiting
        for the CPU at the start of every step (a trace showed 5 ms of it); measured on an H100, Flux-dev-sized, one
        run (docs/results/e2e_h100_s3_glue.json): reduce-overhead 112.9 -> 111.4 ms per step, default mode 131.7 ->
        113.7 ms.
        """
        if self.settings.blocks_only:
            diffusion_model = getattr(owner, DIFFUSION_MODEL)
            paths = find_blocks(diffusion_model, DIFFUSION_MODEL + ".", self.block_names)
            if paths:
                glue = find_glue_modules(diffusion_model, DIFFUSION_MODEL + ".", self.block_names)
                self._glue_paths = set(glue) if self.compile_glue else set()
                return paths + sorted(self._glue_paths)
            if not self._warned_no_blocks:
                self._warned_no_blocks = True
                log.warning(
                    "INT8 Lazy Torch Compile: compile_transformer_blocks_only is on, but %s has none of the block "
                    "lists %s; compiling the whole diffusion model instead.",
                    type(diffusion_model).__name__, ", ".join(self.block_names or ()) or "known to the presets",
                )
        return [DIFFUSION_MODEL]

    def __call__(self, executor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN204 - ComfyUI wrapper API
        if self.fallback.failed:
            return executor(*args, **kwargs)
        owner = executor.class_obj
        standins = self._standins_for(owner)
        originals: dict[str, nn.Module] = {}
        graphs_before = compiled_graph_count() if self.settings.log_compile else 0
        start = time.perf_counter()
        try:
            for path, standin in standins.items():
                originals[path] = get_submodule(owner, path)
                set_submodule(owner, path, standin)
            if self.active_settings.uses_cuda_graphs:
                # One model call = one CUDA-graph generation. Without this each compiled block, called from eager
                # code, starts a generation of its own and frees the previous block's outputs: its own inputs.
                torch.compiler.cudagraph_mark_step_begin()
            return executor(*args, **kwargs)
        finally:
            for path, module in originals.items():
                set_submodule(owner, path, module)
            if self.settings.log_compile:
                new_graphs = compiled_graph_count() - graphs_before
                if new_graphs:
                    log.info("INT8 Lazy Torch Compile: this call compiled %d new graph(s) in %.1f s.",
                             new_graphs, time.perf_counter() - start)

    def _standins_for(self, owner: nn.Module) -> dict[str, CompiledWithFallback]:
        paths = self.target_paths(owner)
        modules = {path: get_submodule(owner, path) for path in paths}
        lowvram = bool(getattr(owner, "model_lowvram", False))  # ComfyUI's flag: weights stream in per layer
        state = (getattr(owner, "current_weight_patches_uuid", None), tuple((p, id(m)) for p, m in modules.items()),
                 lowvram)
        if state != self._state:
            self.active_settings = self._settings_for(lowvram)
            self._standins = self._build(modules, self.active_settings)
            self._state = state
        return self._standins

    def _settings_for(self, lowvram: bool) -> CompileSettings:
        """CUDA graphs replay fixed addresses: with weights streamed in per layer (ComfyUI's lowvram load) a graph
        would replay the copies of one call. Such a load compiles without graphs, and says so once."""
        if not (lowvram and self.settings.uses_cuda_graphs):
            return self.settings
        if not self._warned_lowvram:
            self._warned_lowvram = True
            log.warning(
                "INT8 Lazy Torch Compile: the model is only partly loaded on the GPU (lowvram), and CUDA graphs "
                "(backend=%s, mode=%s) need every weight resident; compiling without CUDA graphs instead. Free VRAM "
                "(smaller batch, resolution or other models) to get them back.", self.settings.backend,
                self.settings.mode,
            )
        return self.settings.without_cuda_graphs()

    def _build(self, modules: dict[str, nn.Module], settings: CompileSettings) -> dict[str, CompiledWithFallback]:
        if settings.cache_size_limit:
            torch._dynamo.config.cache_size_limit = int(settings.cache_size_limit)
        self.builds += 1
        for module in modules.values():
            _prime_per_device_state(module)
        if settings.log_compile or self.builds > 1:
            log.info(
                "INT8 Lazy Torch Compile: %s %d module(s) (%s; backend=%s, mode=%s, dynamic=%s, fullgraph=%s)%s.",
                "compiling" if self.builds == 1 else "the model's patches changed; recompiling",
                len(modules), ", ".join(list(modules)[:3]) + (", ..." if len(modules) > 3 else ""),
                settings.backend, settings.mode, settings.dynamic, settings.fullgraph,
                "; the first call of each compiles it" if self.builds == 1 else "",
            )
        return {path: CompiledWithFallback(self._compile(path, module, settings), module, path, self.fallback)
                for path, module in modules.items()}

    def _compile(self, path: str, module: nn.Module, settings: CompileSettings) -> Callable:
        glue = path in self._glue_paths
        if glue and not self.glue_cuda_graphs:
            # A module around the blocks runs a handful of small kernels once per step. Replayed as a CUDA graph it
            # costs cudagraph trees' bookkeeping (300-450 us of CPU per call in a trace of a Flux-dev-sized step on
            # an H100) while the GPU, with nothing queued yet, waits; compiled without graphs it only fuses.
            settings = settings.without_cuda_graphs()
        # torch.compile pops the guard filter out of ``options``: each module gets its own kwargs dict.
        kwargs = settings.torch_compile_kwargs(self.guard_filter)
        if glue:
            # fullgraph is for the blocks: an embedder with Python dynamo cannot trace (some positional encodings
            # use numpy or loops) graph-breaks instead of failing, which would turn the whole compile off.
            kwargs["fullgraph"] = False
        if not settings.uses_cuda_graphs:
            return torch.compile(module, **kwargs)
        compiled = torch.compile(InputCopyingBlock(module), **kwargs)
        # A graph's outputs live in its memory pool until it replays. Inside one model call a block's outputs are
        # consumed by the next block; the whole model's output goes back to the sampler, which may keep it across
        # calls (cond and uncond), so it is copied out. So are the glue modules' outputs when they are graphs:
        # eager model code between them may keep one past the call (the final layer's output is the model's).
        copy_out = path == DIFFUSION_MODEL or glue
        return OutputCopying(compiled) if copy_out else compiled
