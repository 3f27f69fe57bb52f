"""The on-disk store of tuned kernel choices (int8/launch/tuning_cache.py) with stand-in keys, values and GPU
identity: no Triton, no GPU. Its launch sites are tested in test_tuning_cache_launch.py."""

import json
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_int8_w8a8.int8.launch import tuning_cache as tc

KEY = (512, 3072, 12288, torch.bfloat16, torch.bfloat16, True)
KEY_JSON = [512, 3072, 12288, "torch.bfloat16", "torch.bfloat16", True]


@pytest.fixture
def folder(tuning_folder):
    return tuning_folder


def _identity() -> dict:
    return tc._device_identity(0)  # the stand-in GPU of the tuning_folder fixture


def _file(folder: Path) -> Path:
    return folder / tc.file_for(_identity())


def _table(candidates=("a", "b", "c"), namespace="t"):
    return tc.Table(namespace, candidates, encode=lambda c: c)


def _lines(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------- the store
def test_store_miss_then_put_persists_and_a_new_process_hits(folder, caplog):
    assert _table().get(KEY, 0) is tc.MISS
    _table().put(KEY, "b", 0)
    data = json.loads(_file(folder).read_text())
    assert data["identity"] == _identity() and data["entries"] == [["t", KEY_JSON, "b"]]
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
    "{not json", "", "[]", '{"format": 1}', '{"format": 1, "identity": "h100"}',
    '{"format": 1, "identity": IDENTITY, "candidates": {"t": "f"}, "entries": {"t": 1}}',
    '{"format": 1, "identity": IDENTITY, "candidates": {"t": "f"}, "entries": [["t", [1]]]}',
    '{"format": 1, "identity": IDENTITY, "candidates": {}, "entries": [["t", [1], "a"]]}',
], ids=["not-json", "empty", "list", "no-identity", "identity-not-object", "entries-not-list", "short-entry",
        "entry-without-candidates"])
def test_store_corrupt_file_is_ignored_with_one_line_and_rewritten(folder, caplog, text):
    folder.mkdir()
    _file(folder).write_text(text.replace("IDENTITY", json.dumps(_identity())))
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
    assert json.loads(_file(folder).read_text())["identity"] == _identity()


def test_store_other_identities_get_their_own_files(folder):
    ours = _identity()
    assert tc.file_for(dict(ours, gpu="NVIDIA GeForce RTX 4090", capability=[8, 9])) != tc.file_for(ours)
    assert re.fullmatch(r"NVIDIA_H100_80GB_HBM3-sm90-[0-9a-f]{16}\.json", tc.file_for(ours))
    assert tc.file_for(dict(ours, triton="3.5.1")) != tc.file_for(ours)


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
    first, second = tc._Store(_file(folder), _identity()), tc._Store(_file(folder), _identity())
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
    # (the real lookup: no tuning_folder fixture here)
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
