"""The on-disk store of tuned kernel choices (int8/launch/tuning_cache.py): the store itself with stand-in keys,
values and a stand-in GPU identity (no Triton, no GPU), the three launchers that consult it with stand-in tuners
(Triton importable, no GPU), and one GPU round trip."""

import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_int8_w8a8.int8 import log_once
from comfy_int8_w8a8.int8.launch import tuning_cache as tc

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the launchers import Triton (CPU import is enough)")
IDENTITY = {"gpu": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "sm_count": 132, "torch": "2.8.0",
            "triton": "3.6.0", "pack": "0.1.0"}
KEY = (512, 3072, 12288, torch.bfloat16, torch.bfloat16, True)
KEY_JSON = [512, 3072, 12288, "torch.bfloat16", "torch.bfloat16", True]
REAL_IDENTITY = tc._device_identity


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The store on in a temporary folder, for the stand-in GPU :data:`IDENTITY`; fresh in-memory state and logs."""
    path = tmp_path / "cache"
    monkeypatch.setenv(tc.ENV, str(path))
    monkeypatch.setattr(tc, "_device_identity", lambda index: dict(IDENTITY))
    tc.forget()
    log_once.clear_log_once()
    yield path
    tc.forget()
    tc.set_directory(None)


def _file(folder: Path) -> Path:
    return folder / tc.file_for(IDENTITY)


def _table(candidates=("a", "b", "c"), namespace="t"):
    return tc.Table(namespace, candidates, encode=lambda c: c)


def _lines(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------- the store
def test_store_miss_then_put_persists_and_a_new_process_hits(folder, caplog):
    assert _table().get(KEY, 0) is tc.MISS
    _table().put(KEY, "b", 0)
    data = json.loads(_file(folder).read_text())
    assert data["identity"] == IDENTITY and data["entries"] == [["t", KEY_JSON, "b"]]
    tc.forget()  # a new process: nothing in memory
    with caplog.at_level(logging.INFO):
        assert _table().get(KEY, 0) == "b"
        assert _table().get((1, 2), 0) is tc.MISS
    assert _lines(caplog, "1 tuned kernel choices loaded from") == 1 and str(_file(folder)) in caplog.text


def test_store_none_is_a_choice_not_a_miss(folder):
    table = tc.Table("choice", (None, (128, 256)), encode=lambda c: None if c is None else list(c))
    table.put(KEY, None, 0)
    tc.forget()
    assert table.get(KEY, 0) is None


def test_store_hit_returns_the_candidate_object_itself(folder):
    candidates = [SimpleNamespace(all_kwargs=lambda bm=bm: {"BLOCK_M": bm, "num_warps": 4}) for bm in (64, 128)]
    tc.Table("cfg", candidates).put(KEY, candidates[1], 0)
    tc.forget()
    assert tc.Table("cfg", candidates).get(KEY, 0) is candidates[1]
    assert json.loads(_file(folder).read_text())["entries"][0][2] == {"BLOCK_M": 128, "num_warps": 4}


@pytest.mark.parametrize("text", [
    "{not json", "", "[]", '{"format": 1}', json.dumps({"format": 1, "identity": "h100"}),
    json.dumps({"format": 1, "identity": IDENTITY, "candidates": {"t": "f"}, "entries": {"t": 1}}),
    json.dumps({"format": 1, "identity": IDENTITY, "candidates": {"t": "f"}, "entries": [["t", [1]]]}),
    json.dumps({"format": 1, "identity": IDENTITY, "candidates": {}, "entries": [["t", [1], "a"]]}),
], ids=["not-json", "empty", "list", "no-identity", "identity-not-object", "entries-not-list", "short-entry",
        "entry-without-candidates"])
def test_store_corrupt_file_is_ignored_with_one_line_and_rewritten(folder, caplog, text):
    folder.mkdir()
    _file(folder).write_text(text)
    with caplog.at_level(logging.INFO):
        assert _table().get(KEY, 0) is tc.MISS
        _table().put(KEY, "a", 0)  # reads the bad file again to merge: no second line
        _table().put((1,), "c", 0)
    assert _lines(caplog, "ignoring the tuning cache") == 1
    tc.forget()
    assert _table().get(KEY, 0) == "a" and _table().get((1,), 0) == "c"


def test_store_truncated_file_is_ignored_and_rewritten(folder, caplog):
    for i in range(5):
        _table().put((i,), "a", 0)
    text = _file(folder).read_text()
    _file(folder).write_text(text[: len(text) // 2])  # a write cut short (by a crash, a full disk)
    tc.forget()
    with caplog.at_level(logging.INFO):
        assert _table().get((0,), 0) is tc.MISS
    assert _lines(caplog, "not valid JSON") == 1
    _table().put((9,), "b", 0)
    assert json.loads(_file(folder).read_text())["entries"] == [["t", [9], "b"]]


@pytest.mark.parametrize("field,theirs", [("gpu", "NVIDIA GeForce RTX 4090"), ("capability", [8, 9]),
                                          ("sm_count", 114), ("triton", "3.5.1"), ("torch", "2.7.0"),
                                          ("pack", "0.0.9")])
def test_store_foreign_file_is_ignored_with_one_line_and_replaced(folder, caplog, field, theirs):
    _table().put(KEY, "b", 0)
    data = json.loads(_file(folder).read_text())
    data["identity"][field] = theirs  # copied from another machine, or written by other software at this path
    _file(folder).write_text(json.dumps(data))
    tc.forget()
    with caplog.at_level(logging.INFO):
        assert _table().get(KEY, 0) is tc.MISS
        _table().put((1,), "a", 0)
    assert _lines(caplog, f"written for {field}") == 1
    assert json.loads(_file(folder).read_text())["identity"] == IDENTITY


def test_store_other_identities_get_their_own_files(folder):
    other = dict(IDENTITY, gpu="NVIDIA GeForce RTX 4090", capability=[8, 9])
    assert tc.file_for(other) != tc.file_for(IDENTITY)
    assert re.fullmatch(r"NVIDIA_H100_80GB_HBM3-sm90-[0-9a-f]{16}\.json", tc.file_for(IDENTITY))
    assert tc.file_for(dict(IDENTITY, triton="3.5.1")) != tc.file_for(IDENTITY)


def test_store_unwritable_directory_logs_once_and_keeps_choices_in_memory(tmp_path, folder, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(tc.ENV, str(blocker / "tuning"))  # a folder cannot be made under a file (even as root)
    with caplog.at_level(logging.INFO):
        _table().put(KEY, "b", 0)
        _table().put((1,), "c", 0)
    assert _lines(caplog, "cannot save tuned kernel choices") == 1
    assert _table().get(KEY, 0) == "b"  # this process still uses it


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false"])
def test_store_env_var_turns_it_off(folder, monkeypatch, value):
    monkeypatch.setenv(tc.ENV, value)
    assert tc.directory() is None
    _table().put(KEY, "b", 0)
    assert _table().get(KEY, 0) is tc.MISS and not folder.exists()


def test_store_directory_env_then_application_then_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(tc.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tc.sys, "platform", "linux")
    assert tc.directory() == tmp_path / "xdg" / "comfy_int8_w8a8" / "tuning"
    monkeypatch.setattr(tc.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert tc.directory() == tmp_path / "local" / "comfy_int8_w8a8" / "tuning"
    try:
        tc.set_directory(tmp_path / "comfy-user")
        assert tc.directory() == tmp_path / "comfy-user"
        monkeypatch.setenv(tc.ENV, str(tmp_path / "env"))
        assert tc.directory() == tmp_path / "env"  # the environment wins over the application
    finally:
        tc.set_directory(None)


def test_store_cap_drops_the_least_recently_added(folder, monkeypatch):
    monkeypatch.setattr(tc, "MAX_ENTRIES", 3)
    for i in range(4):
        _table().put((i,), "a", 0)
    _table().put((1,), "b", 0)  # re-added: now the newest
    _table().put((4,), "c", 0)
    assert [row[1] for row in json.loads(_file(folder).read_text())["entries"]] == [[3], [1], [4]]
    tc.forget()
    assert [_table().get((i,), 0) for i in range(5)] == [tc.MISS, "b", tc.MISS, "a", "c"]


def test_store_value_not_among_current_candidates_is_ignored(folder, caplog):
    _table().put(KEY, "b", 0)
    data = json.loads(_file(folder).read_text())
    data["entries"][0][2] = "z"  # same candidate list (fingerprint), a value none of them encodes to
    _file(folder).write_text(json.dumps(data))
    tc.forget()
    with caplog.at_level(logging.INFO):
        assert _table().get(KEY, 0) is tc.MISS
    assert _lines(caplog, "not among the current candidates") == 1


def test_store_changed_candidates_drop_that_namespace_only(folder, caplog):
    _table().put(KEY, "b", 0)
    _table(namespace="other").put(KEY, "a", 0)
    tc.forget()
    changed = _table(("a", "b", "d"))
    with caplog.at_level(logging.INFO):
        assert changed.get(KEY, 0) is tc.MISS  # "b" is still a candidate, but the list it was picked from is gone
    assert _lines(caplog, "candidates changed") == 1
    changed.put((7,), "d", 0)
    rows = json.loads(_file(folder).read_text())["entries"]
    assert rows == [["other", KEY_JSON, "a"], ["t", [7], "d"]]


def test_store_two_processes_keep_each_others_entries(folder):
    first, second = tc._Store(_file(folder), IDENTITY), tc._Store(_file(folder), IDENTITY)
    table = _table()
    for store in (first, second):  # both read the (absent) file before either writes
        assert store.get("t", table.fingerprint, "[1]") is tc.MISS
    first.put(tc._Entry("t", "[1]", [1], "a", table.fingerprint))
    second.put(tc._Entry("t", "[2]", [2], "b", table.fingerprint))
    tc.forget()
    assert table.get((1,), 0) == "a" and table.get((2,), 0) == "b"


def test_store_records_nothing_inside_a_cuda_graph_capture(folder, monkeypatch):
    monkeypatch.setattr(tc, "is_capturing", lambda: True)
    _table().put(KEY, "b", 0)
    assert not folder.exists() and _table().get(KEY, 0) is tc.MISS


def test_store_save_retries_a_held_file_then_gives_up_with_one_line(folder, monkeypatch, caplog):
    real_replace, failures = os.replace, []

    def replace(src, dst, fail_times):
        if len(failures) < fail_times:
            failures.append(dst)
            raise PermissionError(13, "The process cannot access the file")  # Windows: another reader holds it
        real_replace(src, dst)

    monkeypatch.setattr(tc.time, "sleep", lambda s: None)
    monkeypatch.setattr(tc.os, "replace", lambda s, d: replace(s, d, 2))
    _table().put(KEY, "b", 0)
    assert len(failures) == 2 and json.loads(_file(folder).read_text())["entries"][0][2] == "b"
    failures.clear()
    monkeypatch.setattr(tc.os, "replace", lambda s, d: replace(s, d, 100))
    with caplog.at_level(logging.INFO):
        _table().put((1,), "c", 0)  # no exception: the model call goes on
        _table().put((2,), "c", 0)
    assert _lines(caplog, "cannot save tuned kernel choices") == 1
    assert sorted(p.name for p in folder.iterdir()) == [_file(folder).name]  # no temporary files left behind


def test_store_rejects_a_choice_that_is_not_a_candidate(folder, caplog):
    with caplog.at_level(logging.INFO):
        _table().put(KEY, "zz", 0)
    assert _lines(caplog, "not a candidate") == 1 and not folder.exists()


def test_store_identity_names_gpu_arch_sms_and_versions(monkeypatch):
    monkeypatch.setattr(tc.torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    monkeypatch.setattr(tc, "capability", lambda i: (9, 0))
    monkeypatch.setattr(tc, "sm_count", lambda i: 132)
    monkeypatch.setattr(tc.compat, "triton_release", lambda: "3.6.0")
    ident = tc._device_identity(0)
    assert ident == {"gpu": "NVIDIA H100", "capability": [9, 0], "sm_count": 132, "torch": torch.__version__,
                     "triton": "3.6.0", "pack": tc.PACK_VERSION}


def test_pack_version_matches_pyproject_and_package():
    root = Path(__file__).resolve().parents[2]
    declared = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M).group(1)
    package = re.search(r'^__version__\s*=\s*"([^"]+)"', (root / "__init__.py").read_text(), re.M).group(1)
    assert tc.PACK_VERSION == declared == package


def test_keys_must_be_json_able(folder):
    with pytest.raises(TypeError, match="no JSON form"):
        _table().put((object(),), "a", 0)


# ----------------------------------------------------------------------------------------------- the launchers (CPU)
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
def gemm(folder, monkeypatch):
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


@needs_triton
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


@needs_triton
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


@needs_triton
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


@needs_triton
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
def choice(folder, monkeypatch):
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


@needs_triton
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


@needs_triton
def test_gemm_choice_inside_a_capture_is_not_stored(choice, monkeypatch):
    gemm_choice, _ = choice
    monkeypatch.setattr(gemm_choice, "is_capturing", lambda: True)
    monkeypatch.setattr(tc, "is_capturing", lambda: True)
    gemm_choice.launch_large(SimpleNamespace(device="cuda:0"), "b", "c", "xs", "ws", "bias", True, KEY,
                             lambda: gemm_choice.calls.append(None))
    assert gemm_choice.calls == [None] and KEY not in gemm_choice._choices and not tc.directory().exists()


@needs_triton
def test_real_tables_encode_every_candidate():
    from comfy_int8_w8a8.int8.launch import gemm, gemm_choice

    assert gemm._tma_on_disk.namespace == "tma_config" and gemm._pointer_on_disk.namespace == "pointer_config"
    assert len(gemm._tma_on_disk._by_value) == len(gemm.TMA_CONFIGS)
    if gemm_choice.gluon_gemm is not None:
        assert None in gemm_choice._on_disk._by_value.values()


# ------------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs a CUDA GPU with Triton")
@pytest.mark.parametrize("use_tma", [None, False], ids=["default-path", "pointer-kernel"])
def test_gpu_second_process_reads_its_choices_from_disk_and_gives_the_same_bits(folder, monkeypatch, use_tma):
    from comfy_int8_w8a8.int8.launch import gemm, gemm_choice

    timed = []

    def counting(bench):
        def run(*args, **kwargs):
            timed.append(1)
            return bench(*args, **kwargs)
        return run

    for tuner in (gemm._int8_gemm_tma_kernel, gemm._int8_gemm_kernel):
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
    assert list(folder.glob("*.json")), "nothing was saved"
    fresh_process()
    timed.clear()
    second = gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, use_tma=use_tma)
    torch.cuda.synchronize()
    assert timed == [] and torch.equal(first, second)

