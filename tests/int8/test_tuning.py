"""The autotuners' benchmark (int8/kernels/tuning.py): sustained CUDA-graph timing for long calls, Triton's own
benchmark for short ones, and the GEMM autotuners use it."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _sleeper(cycles: int):
    calls = []

    def kernel_call():
        calls.append(torch.cuda.is_current_stream_capturing())
        torch.cuda._sleep(cycles)

    return kernel_call, calls


def test_long_calls_are_timed_as_one_cuda_graph_spanning_the_sustain_window(monkeypatch):
    from comfy_int8_w8a8.int8.launch import tuning

    monkeypatch.setattr(tuning, "_triton_bench", lambda *a, **k: pytest.fail("long call sent to Triton's bench"))
    kernel_call, calls = _sleeper(2_000_000)  # ~1 ms at H100 clocks: well above MIN_CALL_MS
    got = tuning.sustained_bench(kernel_call, quantiles=(0.5, 0.2, 0.8))
    assert len(got) == 3 and got[0] == got[1] == got[2] and got[0] > tuning.MIN_CALL_MS
    recorded = sum(calls)  # calls made while a graph was recording
    assert recorded >= 2 and len(calls) == 1 + 3 + recorded  # first touch, probe, then the graph's calls
    # the recorded calls span about SUSTAIN_MS of the probed per-call time (ceil, at least two)
    assert recorded * got[0] >= 0.5 * tuning.SUSTAIN_MS


def test_short_calls_keep_tritons_benchmark(monkeypatch):
    from comfy_int8_w8a8.int8.launch import tuning

    seen = []
    monkeypatch.setattr(tuning, "_triton_bench", lambda fn, q: seen.append(q) or [0.001] * len(q))
    kernel_call, calls = _sleeper(10)
    assert tuning.sustained_bench(kernel_call, quantiles=(0.5, 0.2, 0.8)) == [0.001] * 3
    assert seen == [(0.5, 0.2, 0.8)] and not any(calls)  # nothing recorded into a graph


def test_without_quantiles_one_number():
    from comfy_int8_w8a8.int8.launch import tuning

    kernel_call, _ = _sleeper(1_000_000)
    assert isinstance(tuning.sustained_bench(kernel_call), float)


def test_gemm_autotuners_rank_configs_with_the_sustained_benchmark():
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm
    from comfy_int8_w8a8.int8.launch.tuning import sustained_bench

    for tuner in (triton_gemm._int8_gemm_tma_kernel, triton_gemm._int8_gemm_kernel):
        assert tuner.do_bench is sustained_bench
