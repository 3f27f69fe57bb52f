"""Autotuning under the load a model puts on the GPU: configs timed at the clocks they sustain.

A GPU kept busy, as a sampling loop keeps it, runs into its power cap and lowers its clocks, and how far depends on
the kernel. On an H100 (700 W cap) the int8 GEMM of Flux's MLP down-projection (4608x12288->3072) sustained 293 us
at ~1835 MHz with a 128x256 tile and 307 us at ~1650 MHz with a 256x128 tile; in Triton's default benchmark
(short runs with the L2 flushed between them, the GPU at 1980 MHz) the two were within noise, and the autotuner
picked either from one process to the next (docs/results/gemm_sustained_sweep_h100_s7.json,
power_probe_h100_s7.json). So a call long enough to draw real power is timed the way a model runs it: back-to-back
replays of a CUDA graph, first long enough to reach the capped clocks, then timed. Short calls keep Triton's
benchmark: they never hold the GPU long enough to meet the cap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from .fast_launch import recording_paused
from .host import is_capturing

__all__ = ["SUSTAIN_MS", "MIN_CALL_MS", "sustained_bench"]

log = logging.getLogger(__name__)

SUSTAIN_MS = 40.0  # warm-up span, then timed span, per config
MIN_CALL_MS = 0.05  # calls shorter than this are timed by Triton's own benchmark


def _per_call_ms(run: Callable[[], object], calls: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def _triton_bench(kernel_call: Callable[[], object], quantiles: Sequence[float] | None) -> float | list[float]:
    import triton.testing

    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


def sustained_bench(kernel_call: Callable[[], object], quantiles: Sequence[float] | None = None
                    ) -> float | list[float]:
    """Milliseconds per call of ``kernel_call`` (a Triton autotuner's ``do_bench``): for calls of at least
    ``MIN_CALL_MS``, one CUDA graph of back-to-back calls spanning ``SUSTAIN_MS``, replayed once to reach the
    sustained clocks and once timed. ``quantiles`` given: that many copies of the time (the autotuner ranks by the
    first), as Triton's benchmark returns."""
    with recording_paused():  # timing runs inside a recorded eager call are not part of the layer
        return _sustained_bench(kernel_call, quantiles)


def _sustained_bench(kernel_call: Callable[[], object], quantiles: Sequence[float] | None) -> float | list[float]:
    if is_capturing():  # no synchronizing inside a capture; Triton's benchmark says so itself
        return _triton_bench(kernel_call, quantiles)
    kernel_call()  # compile, first-touch
    torch.cuda.synchronize()
    one = _per_call_ms(lambda: [kernel_call() for _ in range(3)], 3)
    if one < MIN_CALL_MS:
        return _triton_bench(kernel_call, quantiles)
    calls = max(2, math.ceil(SUSTAIN_MS / one))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                kernel_call()
    except RuntimeError as exc:  # a launch the graph cannot record: time it Triton's way
        log.info("int8 autotune: CUDA-graph timing unavailable (%s); using Triton's benchmark", exc)
        return _triton_bench(kernel_call, quantiles)
    graph.replay()  # reach the clocks this kernel sustains
    ms = _per_call_ms(graph.replay, calls)
    return [ms] * len(quantiles) if quantiles is not None else ms
