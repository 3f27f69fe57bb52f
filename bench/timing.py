"""GPU timing helpers shared by the benchmarks: CUDA events around back-to-back calls, and CUDA-graph replay.

Eager timing calls the function(s) back to back and divides the event-measured span by the number of calls, so
the Python dispatch and launch overhead is included whenever it exceeds the GPU time (what a user sees at small
M). Graph timing captures the calls once and replays them, which removes that overhead and shows the GPU time.
Passing several closures (each over its own copy of the inputs) rotates the working set past the L2 cache.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

__all__ = ["eager_time_ms", "graph_time_ms"]


def _calls_for(fns: Sequence[Callable[[], object]], target_ms: float) -> int:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for fn in fns:
        fn()
    end.record()
    torch.cuda.synchronize()
    per_call = max(start.elapsed_time(end) / len(fns), 1e-3)
    return max(len(fns), int(target_ms / per_call) // len(fns) * len(fns))


def eager_time_ms(fns: Sequence[Callable[[], object]], target_ms: float = 40.0, repeats: int = 5,
                  warmup: int = 3) -> float:
    """Median per-call milliseconds of calling ``fns`` round-robin, back to back, in eager mode."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    calls = _calls_for(fns, target_ms)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(calls):
            fns[i % len(fns)]()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def graph_time_ms(fns: Sequence[Callable[[], object]], calls_per_graph: int = 20, repeats: int = 5,
                  replays: int = 10, target_ms: float | None = None) -> float:
    """Median per-call milliseconds of replaying a CUDA graph that holds ``calls_per_graph`` round-robin calls.

    ``target_ms``: replay as often as needed for each repeat to last about that long (sustained load, like eager
    timing), instead of ``replays`` times.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (autotuning, allocations) outside the capture
        for _ in range(3):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fns[i % len(fns)]()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    if target_ms is not None:
        replays = max(1, int(target_ms / max(start.elapsed_time(end), 1e-3)))
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (replays * calls_per_graph))
    del graph
    return statistics.median(times)
