"""The per-shape choice between the TMA and the Gluon GEMM (int8/kernels/gemm_choice.py), with stand-in kernels and
timings: runs on the CPU wherever Triton imports."""

import importlib.util
import logging
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton importable")


@pytest.fixture
def choice(monkeypatch):
    from comfy_int8_w8a8.int8.launch import gemm_choice

    monkeypatch.setattr(gemm_choice, "_choices", {})
    monkeypatch.setattr(gemm_choice, "_broken", set())
    monkeypatch.setattr(gemm_choice, "is_capturing", lambda: False)
    monkeypatch.setattr(gemm_choice.torch.cuda, "synchronize", lambda: None)
    return gemm_choice


def _timed(monkeypatch, choice, times):
    """Stand-in benchmark: each kernel reports the time in ``times`` (by name); returns the log of runs."""
    runs = []

    def bench(fn):
        fn()
        return times[runs[-1]]

    monkeypatch.setattr(choice, "sustained_bench", bench)
    return runs, (lambda: runs.append("tma")), (lambda cfg: runs.append(cfg))


def test_the_fastest_kernel_is_chosen_once_per_key(monkeypatch, choice):
    runs, tma, gluon = _timed(monkeypatch, choice, {"tma": 2.0, "g1": 1.5, "g2": 1.2})
    assert choice.choose("k", tma, gluon, ("g1", "g2")) == "g2"
    assert runs == ["tma", "tma", "g1", "g2"]  # TMA's first (autotuning) call, then one timing per kernel
    assert choice.choose("k", tma, gluon, ("g1", "g2")) == "g2" and len(runs) == 4  # decided: nothing re-timed


def test_tma_kept_when_no_gluon_config_is_faster(monkeypatch, choice):
    _, tma, gluon = _timed(monkeypatch, choice, {"tma": 1.0, "g1": 1.5})
    assert choice.choose("k", tma, gluon, ("g1",)) is None
    assert choice._choices["k"] is None


def test_a_config_that_fails_to_build_is_logged_and_never_retried(monkeypatch, choice, caplog):
    from triton.compiler.errors import CompilationError

    runs, tma, _ = _timed(monkeypatch, choice, {"tma": 2.0, "g2": 1.0})

    def gluon(cfg):
        if cfg == "g1":
            raise CompilationError(None, None, "stand-in failure")
        runs.append(cfg)

    with caplog.at_level(logging.WARNING):
        assert choice.choose("k1", tma, gluon, ("g1", "g2")) == "g2"
    assert "g1" in choice._broken and caplog.text.count("does not build here") == 1
    with caplog.at_level(logging.WARNING):
        assert choice.choose("k2", tma, gluon, ("g1", "g2")) == "g2"
    assert caplog.text.count("does not build here") == 1  # not tried (nor logged) again


def test_nothing_is_timed_or_recorded_inside_a_capture(monkeypatch, choice):
    runs, tma, gluon = _timed(monkeypatch, choice, {"tma": 2.0, "g1": 1.0})
    monkeypatch.setattr(choice, "is_capturing", lambda: True)
    assert choice.choose("k", tma, gluon, ("g1",)) is None
    assert runs == [] and "k" not in choice._choices


def test_launch_large_runs_the_decided_kernel(monkeypatch, choice):
    calls = []
    stand_in = SimpleNamespace(CONFIGS=("g1",), supported=lambda a, c: True,
                               gluon_gemm_dequant=lambda *args: calls.append(("gluon", args[-1])))
    monkeypatch.setattr(choice, "gluon_gemm", stand_in)
    choice._choices.update({"fast": "g1", "slow": None})
    args = ("a", "b", "c", "xs", "ws", "bias", True)
    choice.launch_large(*args, "fast", lambda: calls.append(("tma", None)))
    choice.launch_large(*args, "slow", lambda: calls.append(("tma", None)))
    assert calls == [("gluon", "g1"), ("tma", None)]


def test_launch_large_without_a_usable_gluon_kernel_decides_tma_without_timing(monkeypatch, choice):
    monkeypatch.setattr(choice, "gluon_gemm", SimpleNamespace(supported=lambda a, c: False))
    monkeypatch.setattr(choice, "sustained_bench", lambda fn: pytest.fail("timed an unsupported call"))
    calls = []
    choice.launch_large("a", "b", "c", "xs", "ws", "bias", False, "k", lambda: calls.append("tma"))
    assert calls == ["tma"] and choice._choices["k"] is None
