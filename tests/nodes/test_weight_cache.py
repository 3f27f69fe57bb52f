"""The loader's weight cache (``prepack_int8_weights``) without ComfyUI: keys, hits, invalidation, damaged files,
the size cap and failed writes."""

from __future__ import annotations

import errno
import logging
import os
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig, quantize_linear_weight
from comfy_int8_w8a8.nodes import weight_cache as wc
from comfy_int8_w8a8.nodes.weight_cache import CacheLimits, CacheRecorder, cache_file, make_key, read_cache, write_cache

OPTIONS = {"preset": "flux", "outlier_method": "hadamard", "hadamard_group": 256}
BIG = CacheLimits(max_files=100, max_bytes=1 << 40)


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"blocks.0.w.weight": torch.randn(64, 64).bfloat16(), "img_in.weight": torch.randn(64, 16).bfloat16()},
              str(path))
    return path


def _quantized_sd() -> dict[str, torch.Tensor]:
    w = torch.randn(64, 64)
    q = quantize_linear_weight("blocks.0.w", w, torch.randn(64), QuantizeConfig())
    sd = {f"blocks.0.w.{k}": v for k, v in q.items()}
    sd["img_in.weight"] = torch.randn(64, 16).bfloat16()
    return sd


def _write(folder: Path, source: Path, options: dict = OPTIONS, limits: CacheLimits = BIG) -> Path:
    key = make_key(source, options)
    path = cache_file(folder, key)
    assert write_cache(path, key, _quantized_sd(), {"config": "x"}, limits)
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_write_then_read_gives_the_same_tensors_and_source_metadata(tmp_path, source) -> None:
    sd = _quantized_sd()
    key = make_key(source, OPTIONS)
    path = cache_file(tmp_path / "cache", key)
    assert write_cache(path, key, sd, {"config": "x"}, BIG, facts={"model_dtype": "bfloat16"})
    got = read_cache(path, make_key(source, OPTIONS))
    assert got is not None and got.facts == {"model_dtype": "bfloat16"}
    tensors, meta = got.state_dict, got.metadata
    assert list(tensors) == list(sd)
    assert all(torch.equal(tensors[k], sd[k]) and tensors[k].dtype == sd[k].dtype for k in sd)
    assert meta == {"config": "x"}  # the cache's own keys are not handed to ComfyUI


def test_hit_maps_the_file_privately_and_outlives_a_rewrite(tmp_path, source) -> None:
    # A hit's tensors view the cache file (nothing copied at load); writes to them stay private, and a writer
    # renaming a new file over it (a later rebuild) leaves the mapped bytes as they were.
    path = _write(tmp_path / "cache", source)
    before = path.read_bytes()
    got = read_cache(path, make_key(source, OPTIONS))
    assert got is not None
    weight = got.state_dict["blocks.0.w.weight"]
    kept = weight.clone()
    weight.fill_(3)
    assert path.read_bytes() == before
    again = read_cache(path, make_key(source, OPTIONS))
    assert torch.equal(again.state_dict["blocks.0.w.weight"], kept)
    _write(tmp_path / "cache", source)  # replaces the file by rename while `again` maps the old one
    assert torch.equal(again.state_dict["blocks.0.w.weight"], kept)


def test_read_without_a_file_is_a_silent_miss(tmp_path, source, caplog) -> None:
    assert read_cache(cache_file(tmp_path, make_key(source, OPTIONS)), make_key(source, OPTIONS)) is None
    assert _warnings(caplog) == []


def test_key_name_depends_on_source_and_options_not_on_mtime(tmp_path, source) -> None:
    key = make_key(source, OPTIONS)
    assert cache_file(tmp_path, key) != cache_file(tmp_path, make_key(source, {**OPTIONS, "outlier_method": "none"}))
    os.utime(source, ns=(1, 1))
    assert cache_file(tmp_path, make_key(source, OPTIONS)) == cache_file(tmp_path, key)  # same slot, replaced


def test_touched_source_invalidates_with_one_line(tmp_path, source, caplog) -> None:
    path = _write(tmp_path, source)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_cache(path, make_key(source, OPTIONS)) is None
    assert len(_warnings(caplog)) == 1 and "source file changed" in _warnings(caplog)[0]


def test_same_size_and_mtime_but_new_content_invalidates(tmp_path, source, caplog) -> None:
    path = _write(tmp_path, source)
    st = source.stat()
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF  # the last MiB is fingerprinted
    source.write_bytes(bytes(data))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert read_cache(path, make_key(source, OPTIONS)) is None
    assert len(_warnings(caplog)) == 1


def test_changed_options_miss_and_keep_the_other_entry(tmp_path, source) -> None:
    path = _write(tmp_path, source)
    other = make_key(source, {**OPTIONS, "preset": "wan"})
    assert read_cache(cache_file(tmp_path, other), other) is None
    assert path.exists() and read_cache(path, make_key(source, OPTIONS)) is not None


def test_pack_version_change_invalidates(tmp_path, source, caplog, monkeypatch) -> None:
    path = _write(tmp_path, source)
    monkeypatch.setattr(wc, "CACHE_FORMAT_REVISION", wc.CACHE_FORMAT_REVISION + 1)
    key = make_key(source, OPTIONS)
    assert cache_file(tmp_path, key) == path  # same slot: the rebuild replaces the stale file
    assert read_cache(path, key) is None
    assert len(_warnings(caplog)) == 1 and "written by pack" in _warnings(caplog)[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "empty"])
def test_damaged_or_foreign_cache_is_ignored_with_one_line_and_rebuilt(tmp_path, source, caplog, damage) -> None:
    path = _write(tmp_path, source)
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "foreign":
        save_file({"x": torch.zeros(3)}, str(path))
    else:
        path.write_bytes(b"")
    key = make_key(source, OPTIONS)
    assert read_cache(path, key) is None
    assert len(_warnings(caplog)) == 1 and "will be rebuilt" in _warnings(caplog)[0]
    assert write_cache(path, key, _quantized_sd(), {}, BIG)
    assert read_cache(path, key) is not None


def test_cap_on_files_evicts_the_least_recently_used(tmp_path, source) -> None:
    limits = CacheLimits(max_files=2, max_bytes=1 << 40)
    paths = []
    for i, method in enumerate(("hadamard", "none", "smooth")):
        paths.append(_write(tmp_path, source, {**OPTIONS, "outlier_method": method}, limits))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    # a hit refreshes an entry: the next write evicts the other one
    read_cache(paths[1], make_key(source, {**OPTIONS, "outlier_method": "none"}))
    fourth = _write(tmp_path, source, {**OPTIONS, "preset": "wan"}, limits)
    assert paths[1].exists() and not paths[2].exists() and fourth.exists()


def test_cap_on_bytes_evicts_and_skips_a_file_larger_than_the_cap(tmp_path, source, caplog) -> None:
    first = _write(tmp_path, source)
    size = first.stat().st_size
    limits = CacheLimits(max_files=100, max_bytes=size + size // 2)
    second = _write(tmp_path, source, {**OPTIONS, "preset": "wan"}, limits)
    assert second.exists() and not first.exists()
    key = make_key(source, {**OPTIONS, "preset": "ltx"})
    assert not write_cache(cache_file(tmp_path, key), key, _quantized_sd(), {}, CacheLimits(1, size // 2))
    assert "more than the cache limit" in _warnings(caplog)[-1]


def test_eviction_never_touches_files_that_are_not_cache_entries(tmp_path, source) -> None:
    mine = tmp_path / "my_model.safetensors"
    mine.write_bytes(b"user data")
    for method in ("hadamard", "none", "smooth"):
        _write(tmp_path, source, {**OPTIONS, "outlier_method": method}, CacheLimits(max_files=1, max_bytes=1 << 40))
    assert mine.read_bytes() == b"user data"
    assert len(list(tmp_path.glob("*" + wc.CACHE_SUFFIX))) == 1


def test_failed_write_leaves_nothing_behind(tmp_path, source, caplog, monkeypatch) -> None:
    folder = tmp_path / "cache"
    key = make_key(source, OPTIONS)
    calls = []

    def full_disk(self, name, tensor):  # noqa: ANN001 - the second tensor hits a full disk
        calls.append(name)
        if len(calls) == 2:
            self._fail(OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(wc.SafetensorsStreamWriter, "write", full_disk)
    assert not write_cache(cache_file(folder, key), key, _quantized_sd(), {}, BIG)
    assert list(folder.iterdir()) == []
    assert len(_warnings(caplog)) == 1 and "disk is full" in _warnings(caplog)[0]


def test_failed_rewrite_keeps_no_partial_and_the_old_file_is_ignored_not_served(tmp_path, source, monkeypatch) -> None:
    path = _write(tmp_path, source)
    os.utime(source, ns=(1, 1))  # stale now
    key = make_key(source, OPTIONS)
    monkeypatch.setattr(wc.SafetensorsStreamWriter, "commit", lambda self: self._fail(OSError(errno.EIO, "I/O")))
    assert not write_cache(path, key, _quantized_sd(), {}, BIG)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert read_cache(path, key) is None


def test_low_free_space_skips_the_write_with_one_line(tmp_path, source, caplog, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(wc.shutil, "disk_usage", lambda p: usage(10 << 30, 9 << 30, 1 << 30))
    key = make_key(source, OPTIONS)
    assert not write_cache(cache_file(tmp_path, key), key, _quantized_sd(), {}, BIG)
    assert list(tmp_path.glob("*" + wc.CACHE_SUFFIX)) == []
    assert len(_warnings(caplog)) == 1 and "free" in _warnings(caplog)[0]


def test_limits_from_env_read_overrides_and_reject_bad_values() -> None:
    assert CacheLimits.from_env({}) == CacheLimits()
    assert CacheLimits.from_env({"INT8_W8A8_CACHE_MAX_FILES": "2", "INT8_W8A8_CACHE_MAX_GB": "1.5"}) == \
        CacheLimits(2, int(1.5 * 2**30))
    with pytest.raises(ValueError, match="INT8_W8A8_CACHE_MAX_GB"):
        CacheLimits.from_env({"INT8_W8A8_CACHE_MAX_GB": "lots"})
    with pytest.raises(ValueError, match=">= 1"):
        CacheLimits.from_env({"INT8_W8A8_CACHE_MAX_FILES": "0"})


def test_recorder_swaps_in_quantized_tensors_and_drops_the_float_weight() -> None:
    w, b, other = torch.randn(64, 64), torch.randn(64), torch.randn(8)
    rec = CacheRecorder({"l.weight": w, "l.bias": b, "norm.scale": other})
    q = quantize_linear_weight("l", w, b, QuantizeConfig())
    rec.record("l", w, q)
    assert rec.quantized == 1 and torch.equal(rec.state_dict["l.weight"], q["weight"])
    assert rec.state_dict["norm.scale"] is other and set(rec.state_dict) == {"l.weight", "l.bias", "norm.scale",
                                                                           "l.weight_scale", "l.comfy_quant"}
    assert all(v is not w for v in rec.state_dict.values())


def test_recorder_marks_a_layer_comfyui_converted_as_unmatched() -> None:
    w = torch.randn(64, 64)
    rec = CacheRecorder({"l.weight": w})
    rec.record("l", w.clone(), quantize_linear_weight("l", w, None, QuantizeConfig()))
    assert rec.unmatched == ["l"] and rec.quantized == 0
