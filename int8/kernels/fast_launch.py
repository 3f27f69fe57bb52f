"""Launch an already-compiled Triton kernel without the JIT's per-call argument binding.

At a few rows a linear layer's GPU time is ~10 us, while ``kernel[grid](...)`` (binder, specialization, cache
lookup, launch-metadata, and for autotuned kernels the autotuner's bookkeeping) costs tens of microseconds of
Python per call. The first call for a key goes through the normal JIT (compiling if needed) and keeps the
``CompiledKernel``; later calls go straight to its C launcher.

The caller's key must capture everything the JIT specializes on: argument dtypes, which integer arguments are 1
or divisible by 16, which pointers are 16-byte aligned, and the constexprs. A wrong key would run a kernel
compiled for other alignments, so callers build it from exactly those facts (see ``triton_w8a16``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

__all__ = ["CompiledLauncher"]


class CompiledLauncher:
    """Caches the compiled kernel per key and launches it directly on the current stream.

    ``jit_fn`` is a ``triton.JITFunction`` (not an autotuner: callers pick the config). Arguments are passed
    positionally in the kernel's signature order, constexprs included (the C launcher skips them).
    """

    def __init__(self, jit_fn: object) -> None:
        self._fn = jit_fn
        self._compiled: dict[Hashable, tuple[object, Callable | None, bool]] = {}

    def __call__(self, key: Hashable, device_index: int, grid: tuple[int, int, int], args: Sequence[object],
                 num_warps: int, num_stages: int, launch_pdl: bool = False) -> None:
        """``launch_pdl``: launch with programmatic dependent launch (sm_90+; the kernel must ``gdc_wait`` before it
        reads anything an earlier kernel wrote). It is part of the compiled kernel, so callers put it in ``key``."""
        key = (device_index, key)  # a compiled kernel's function handle belongs to one device
        entry = self._compiled.get(key)
        if entry is None:
            # First call for this key: the normal JIT path compiles (or loads from cache) and launches.
            extra = {"launch_pdl": True} if launch_pdl else {}
            compiled = self._fn[grid](*args, num_warps=num_warps, num_stages=num_stages, **extra)
            if hasattr(compiled, "packed_metadata"):  # TRITON_INTERPRET=1 returns no compiled kernel: no caching
                self._compiled[key] = (compiled, _direct_launch(compiled), bool(getattr(compiled.run, "launch_pdl",
                                                                                        False)))
            return
        compiled, direct, pdl = entry
        stream = _raw_stream(device_index)
        if direct is not None:
            direct(grid[0], grid[1], grid[2], stream, compiled.function, False, pdl, None, None,
                   compiled.packed_metadata, None, None, None, *args)
        else:
            compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None,
                         None, *args)


def _direct_launch(compiled: object) -> Callable | None:
    """The C launch entry when the kernel needs no scratch memory or cooperative grid (then the Python wrapper
    around it only passes None/False through, and the PDL flag, which the caller passes itself); else None."""
    runner = compiled.run
    needs_wrapper = (getattr(runner, "global_scratch_size", 1) or getattr(runner, "profile_scratch_size", 1)
                     or getattr(runner, "launch_cooperative_grid", True) or not hasattr(runner, "launch_pdl"))
    launch = getattr(runner, "launch", None)
    return None if needs_wrapper or launch is None else launch


def _stream_getter() -> Callable[[int], int]:
    try:
        from torch._C import _cuda_getCurrentRawStream  # what Triton's own driver uses
    except ImportError:  # pragma: no cover - builds without CUDA
        return lambda idx: torch.cuda.current_stream(idx).cuda_stream
    return _cuda_getCurrentRawStream


_raw_stream = _stream_getter()
