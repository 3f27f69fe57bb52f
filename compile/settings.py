"""What the user asked the lazy compile to do, checked once when the node runs."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["CompileSettings", "BACKENDS", "MODES", "DYNAMIC_CHOICES", "parse_dynamic"]

BACKENDS = ("inductor", "cudagraphs")
MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
# Inductor modes that record CUDA graphs -> the same mode without them.
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
# The node's combo text -> torch.compile's ``dynamic`` (None lets dynamo mark shapes dynamic after a change).
DYNAMIC_CHOICES: dict[str, bool | None] = {"auto": None, "true": True, "false": False}
CACHE_SIZE_RANGE = (0, 2048)


def parse_dynamic(choice: str) -> bool | None:
    """``"auto"`` -> None, ``"true"`` -> True, ``"false"`` -> False; anything else raises ``ValueError``."""
    if choice not in DYNAMIC_CHOICES:
        raise ValueError(f"INT8 Lazy Torch Compile: dynamic must be one of {', '.join(DYNAMIC_CHOICES)}, got {choice!r}.")
    return DYNAMIC_CHOICES[choice]


@dataclass(frozen=True)
class CompileSettings:
    """Arguments of the deferred ``torch.compile`` calls.

    ``backend`` is a torch.compile backend name (the node offers ``BACKENDS``; tests also pass ``"eager"`` or a
    callable backend). ``mode`` ``"default"`` means torch's default (no mode). ``blocks_only`` compiles each block
    of the recognised block lists instead of the whole diffusion model. ``cache_size_limit`` (0 = leave torch's
    value) is written to ``torch._dynamo.config.cache_size_limit`` when the first compile happens.
    """

    backend: object = "inductor"
    mode: str = "default"
    fullgraph: bool = False
    dynamic: bool | None = True
    blocks_only: bool = False
    cache_size_limit: int = 640
    use_guard_filter: bool = True
    log_compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"INT8 Lazy Torch Compile: mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        low, high = CACHE_SIZE_RANGE
        if not low <= int(self.cache_size_limit) <= high:
            raise ValueError(
                f"INT8 Lazy Torch Compile: dynamo_cache_size_limit must be in {low}..{high}, got {self.cache_size_limit}."
            )

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether the compiled modules run as CUDA graphs (the cudagraphs backend; inductor's reduce-overhead and
        max-autotune modes turn on ``triton.cudagraphs``)."""
        return self.backend == "cudagraphs" or (self.backend == "inductor" and self.mode in CUDA_GRAPH_MODES)

    def without_cuda_graphs(self) -> CompileSettings:
        """The same compile with CUDA graphs off: reduce-overhead -> default, max-autotune -> its no-cudagraphs twin,
        the cudagraphs backend -> inductor."""
        if not self.uses_cuda_graphs:
            return self
        if self.backend == "cudagraphs":
            return replace(self, backend="inductor", mode="default")
        return replace(self, mode=CUDA_GRAPH_MODES[self.mode])

    def torch_compile_kwargs(self, guard_filter_fn: object | None) -> dict:
        """Keyword arguments for ``torch.compile`` (a fresh ``options`` dict each time: torch pops from it).

        torch.compile refuses ``mode`` and ``options`` together, and the guard filter travels in ``options``; so
        for inductor a mode is expanded into its option dict (``torch._inductor.list_mode_options``) and merged.
        Other backends take no mode.
        """
        kwargs: dict = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        options: dict = {}
        if self.mode != "default" and self.backend == "inductor":
            if guard_filter_fn is None:
                kwargs["mode"] = self.mode
            else:
                import torch._inductor  # local: importing inductor is slow and only needed at compile time

                options.update(torch._inductor.list_mode_options(self.mode, self.dynamic))
        if guard_filter_fn is not None:
            options["guard_filter_fn"] = guard_filter_fn
        if options:
            kwargs["options"] = options
        return kwargs
