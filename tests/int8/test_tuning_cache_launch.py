"""The launch sites of the tuning cache (int8/launch/tuning_cache.py): the TMA config and the pointer config
(launch/gemm.py) and the TMA-or-Gluon choice (launch/gemm_choice.py), each with a stand-in tuner on the CPU (Triton
importable), then one GPU round trip: a second process tunes nothing and gives the same bits."""

import importlib.util
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_int8_w8a8.int8.launch import tuning_cache as tc

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="the launchers import Triton (a CPU import is enough)")
KEY = (512, 3072, 12288, torch.bfloat16, torch.bfloat16, True)
REAL_IDENTITY = tc._device_identity


def _file(folder: Path) -> Path:
    return folder / tc.file_for(tc._device_identity(0))


def _lines(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------------------ CPU
class _Tuner:
    """Stand-in ``triton.autotune`` object: ``tuner[grid](...)`` "tunes" (counted) and sets ``best_config``."""

    def __init__(self, pick):
        self.pick, self.runs, self.best_config = pick, 0, None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.runs += 1
            self.best_config = self.pick

        return run


def _operands(m=64, n=128, k=256):
    a, b = torch.zeros(m, k, dtype=torch.int8), torch.zeros(n, k, dtype=torch.int8)
    xs, ws = torch.ones(m), torch.ones(n)
    return a, b, torch.empty(m, n, dtype=torch.bfloat16), xs, ws


@pytest.fixture
def gemm(tuning_folder, monkeypatch):
    """(launch.gemm with stand-ins for the GPU: descriptors, workspace, direct launches; the launches made)."""
    from comfy_int8_w8a8.int8.launch import gemm

    launched = []

    class _Direct:  # the raw pointer kernel: kernel[grid](*args, **kwargs)
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(("pointer", grid, kwargs))

    monkeypatch.setattr(gemm, "_tuned", {})
    monkeypatch.setattr(gemm, "_pointer_tuned", {})
    monkeypatch.setattr(gemm, "device_index", lambda device: 0)
    monkeypatch.setattr(gemm, "sm_count", lambda index: 132)
    monkeypatch.setattr(gemm, "_tail_workspace", lambda device, sms: (None, None))
    monkeypatch.setattr(gemm, "descriptor", lambda *args: None)
    monkeypatch.setattr(gemm.compat, "tensor_descriptor_class",
                        lambda: SimpleNamespace(from_tensor=lambda t, shape: None))
    monkeypatch.setattr(gemm, "_tma_launch", lambda key, dev, grid, args, warps, stages:
                        launched.append(("tma", grid, warps, stages)))
    monkeypatch.setattr(gemm, "_pointer_launch", _Direct())
    return gemm, launched


def _new_process(gemm, monkeypatch):
    """What a restart forgets: the launchers' in-memory picks and the store's."""
    monkeypatch.setattr(gemm, "_tuned", {})
    monkeypatch.setattr(gemm, "_pointer_tuned", {})
    tc.forget()


def test_tma_config_tuned_once_then_served_from_disk(gemm, monkeypatch):
    gemm, launched = gemm
    pick = gemm.TMA_CONFIGS[2]
    tuner = _Tuner(pick)
    monkeypatch.setattr(gemm, "_int8_gemm_tma_kernel", tuner)
    a, b, c, xs, ws = _operands()
    gemm._launch_tma(a, b, c, xs, ws, xs, False)  # miss: tuned, stored
    assert tuner.runs == 1 and launched == []
    assert json.loads(_file(tc.directory()).read_text())["entries"][0][0] == "tma_config"
    _new_process(gemm, monkeypatch)
    gemm._launch_tma(a, b, c, xs, ws, xs, False)
    assert tuner.runs == 1  # hit: nothing tuned
    assert list(gemm._tuned.values()) == [pick] and next(iter(gemm._tuned.values())) is pick
    assert [(kind, warps, stages) for kind, _, warps, stages in launched] == [("tma", pick.num_warps,
                                                                               pick.num_stages)]


def test_tma_config_stored_but_no_longer_a_candidate_is_tuned_again(gemm, monkeypatch, caplog):
    gemm, launched = gemm
    tuner = _Tuner(gemm.TMA_CONFIGS[0])
    monkeypatch.setattr(gemm, "_int8_gemm_tma_kernel", tuner)
    a, b, c, xs, ws = _operands()
    gemm._launch_tma(a, b, c, xs, ws, xs, False)
    path = _file(tc.directory())
    data = json.loads(path.read_text())
    data["entries"][0][2]["BLOCK_M"] = 32  # a config the current table does not have
    path.write_text(json.dumps(data))
    _new_process(gemm, monkeypatch)
    with caplog.at_level(logging.INFO):
        gemm._launch_tma(a, b, c, xs, ws, xs, False)
    assert tuner.runs == 2 and launched == [] and _lines(caplog, "not among the current candidates") == 1


def test_pointer_config_tuned_once_then_launched_directly_and_served_from_disk(gemm, monkeypatch):
    gemm, launched = gemm
    pick = gemm._int8_gemm_kernel.configs[1]
    tuner = _Tuner(pick)
    monkeypatch.setattr(gemm, "_int8_gemm_kernel", tuner)
    a, b, c, xs, ws = _operands(m=40)
    gemm._launch_pointer(a, b, c, xs, ws, xs, False)  # miss: the autotuner runs the call
    gemm._launch_pointer(a, b, c, xs, ws, xs, False)  # its pick, launched past the autotuner
    grid = (-(-40 // pick.kwargs["BLOCK_M"]) * -(-128 // pick.kwargs["BLOCK_N"]),)
    assert tuner.runs == 1 and launched == [("pointer", grid, {"HAS_BIAS": False, **pick.all_kwargs()})]
    _new_process(gemm, monkeypatch)
    gemm._launch_pointer(a, b, c, xs, ws, xs, True)  # same autotuner key: HAS_BIAS is not part of it
    assert tuner.runs == 1 and launched[-1] == ("pointer", grid, {"HAS_BIAS": True, **pick.all_kwargs()})


def test_pointer_path_runs_when_the_cache_cannot_be_written(gemm, tmp_path, monkeypatch, caplog):
    gemm, launched = gemm
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(tc.ENV, str(blocker / "tuning"))
    tuner = _Tuner(gemm._int8_gemm_kernel.configs[0])
    monkeypatch.setattr(gemm, "_int8_gemm_kernel", tuner)
    a, b, c, xs, ws = _operands()
    with caplog.at_level(logging.INFO):
        gemm._launch_pointer(a, b, c, xs, ws, xs, False)
        gemm._launch_pointer(a, b, c, xs, ws, xs, False)
    assert tuner.runs == 1 and len(launched) == 1
    assert _lines(caplog, "cannot save tuned kernel choices") == 1


@pytest.fixture
def choice(tuning_folder, monkeypatch):
    """launch.gemm_choice with stand-in Gluon configs (tuples, as GluonConfig is) and timings."""
    from comfy_int8_w8a8.int8.launch import gemm_choice

    configs = ((128, 256, 128, 4, 8, 2), (128, 128, 128, 6, 8, 1))
    gemm_choice.calls = []
    monkeypatch.setattr(gemm_choice, "gluon_gemm", SimpleNamespace(
        CONFIGS=configs, supported=lambda a, c: True,
        gluon_gemm_dequant=lambda *args: gemm_choice.calls.append(args[-1])))
    monkeypatch.setattr(gemm_choice, "_on_disk", tc.Table("gemm_choice", (None, *configs),
                                                          encode=gemm_choice._gluon_json))
    monkeypatch.setattr(gemm_choice, "_choices", {})
    monkeypatch.setattr(gemm_choice, "_broken", set())
    monkeypatch.setattr(gemm_choice, "is_capturing", lambda: False)
    monkeypatch.setattr(gemm_choice, "device_index", lambda device: 0)
    monkeypatch.setattr(gemm_choice.torch.cuda, "synchronize", lambda: None)
    yield gemm_choice, configs
    del gemm_choice.calls


@pytest.mark.parametrize("winner", [0, 1, None])
def test_gemm_choice_timed_once_then_served_from_disk(choice, monkeypatch, winner):
    gemm_choice, configs = choice
    times = {None: 2.0, configs[0]: 3.0, configs[1]: 2.5}
    if winner is not None:
        times[configs[winner]] = 1.0
    timed = []

    def bench(fn):
        fn()
        timed.append(gemm_choice.calls[-1])
        return times[gemm_choice.calls[-1]]

    monkeypatch.setattr(gemm_choice, "sustained_bench", bench)
    tma = lambda: gemm_choice.calls.append(None)  # noqa: E731
    args = (SimpleNamespace(device="cuda:0"), "b", "c", "xs", "ws", "bias", True, KEY)
    gemm_choice.launch_large(*args, tma)
    expected = None if winner is None else configs[winner]
    assert len(timed) == 3 and gemm_choice._choices[KEY] == expected
    monkeypatch.setattr(gemm_choice, "_choices", {})
    tc.forget()
    gemm_choice.calls.clear()
    gemm_choice.launch_large(*args, tma)
    assert len(timed) == 3 and gemm_choice.calls == [expected] and gemm_choice._choices[KEY] == expected


def test_gemm_choice_inside_a_capture_is_not_stored(choice, monkeypatch):
    gemm_choice, _ = choice
    monkeypatch.setattr(gemm_choice, "is_capturing", lambda: True)
    monkeypatch.setattr(tc, "is_capturing", lambda: True)
    gemm_choice.launch_large(SimpleNamespace(device="cuda:0"), "b", "c", "xs", "ws", "bias", True, KEY,
                             lambda: gemm_choice.calls.append(None))
    assert gemm_choice.calls == [None] and KEY not in gemm_choice._choices and not tc.directory().exists()


def test_real_tables_encode_every_candidate():
    from comfy_int8_w8a8.int8.launch import gemm, gemm_choice

    assert gemm._tma_on_disk.namespace == "tma_config" and gemm._pointer_on_disk.namespace == "pointer_config"
    assert len(gemm._tma_on_disk._by_value) == len(gemm.TMA_CONFIGS)
    if gemm_choice.gluon_gemm is not None:
        assert None in gemm_choice._on_disk._by_value.values()


# ------------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("use_tma", [None, False], ids=["default-path", "pointer-kernel"])
def test_gpu_second_process_reads_its_choices_from_disk_and_gives_the_same_bits(tuning_folder, monkeypatch,
                                                                                 use_tma):
    from comfy_int8_w8a8.int8.launch import gemm, gemm_choice

    timed = []

    def counting(bench):
        def run(*args, **kwargs):
            timed.append(1)
            return bench(*args, **kwargs)
        return run

    for tuner in (gemm._int8_gemm_tma_kernel, gemm._int8_gemm_kernel):
        # (the autotuner's benchmark: a cached_property in Triton 3.6, which an instance attribute overrides)
        monkeypatch.setattr(tuner, "do_bench", counting(tuner.do_bench))
    monkeypatch.setattr(gemm_choice, "sustained_bench", counting(gemm_choice.sustained_bench))

    def fresh_process():
        for tuner in (gemm._int8_gemm_tma_kernel, gemm._int8_gemm_kernel):
            monkeypatch.setattr(tuner, "cache", {})
        monkeypatch.setattr(gemm, "_tuned", {})
        monkeypatch.setattr(gemm, "_pointer_tuned", {})
        monkeypatch.setattr(gemm_choice, "_choices", {})
        tc.forget()

    monkeypatch.setattr(tc, "_device_identity", REAL_IDENTITY)  # this GPU's own
    m, n, k = 300, 768, 512
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    xs, ws = torch.rand(m, device="cuda") * 0.01, torch.rand(n, device="cuda") * 0.01
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    fresh_process()
    first = gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, use_tma=use_tma)
    torch.cuda.synchronize()
    assert timed, "the first process did not tune"
    assert list(tuning_folder.glob("*.json")), "nothing was saved"
    fresh_process()
    timed.clear()
    second = gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, use_tma=use_tma)
    torch.cuda.synchronize()
    assert timed == [] and torch.equal(first, second)
