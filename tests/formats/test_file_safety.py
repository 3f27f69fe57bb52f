"""Output files: modes that honour the umask, an atomic replace that waits out a reader holding the target open
(Windows), a disk-full message with real sizes, special files refused, paths with spaces and non-ASCII names."""

import errno
import os
import stat
import sys
import threading

import pytest
import safetensors.torch as st
import torch

from comfy_int8_w8a8.int8.formats import CheckpointError, fileops, load_state_dict_for_comfy, open_checkpoint
from comfy_int8_w8a8.int8.formats.converter import convert_checkpoint
from comfy_int8_w8a8.int8.formats.safetensors_io import SafetensorsStreamWriter, TensorSpec
from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig
from comfy_int8_w8a8.presets import load_preset

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits / special files")


def _write(path, force=False):
    t = torch.arange(8, dtype=torch.float32)
    with SafetensorsStreamWriter(path, [TensorSpec("a", torch.float32, (8,))], {}, force=force) as w:
        w.write("a", t)
        w.commit()


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@posix_only
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_writer_output_mode_honours_umask(tmp_path, umask, mask, mode):
    umask(mask)
    _write(tmp_path / "o.safetensors")
    assert stat.S_IMODE((tmp_path / "o.safetensors").stat().st_mode) == mode


@posix_only
@pytest.mark.parametrize("previous", [0o640, 0o664])
def test_writer_force_keeps_the_replaced_files_mode(tmp_path, umask, previous):
    umask(0o077)
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    out.chmod(previous)
    _write(out, force=True)
    assert stat.S_IMODE(out.stat().st_mode) == previous and out.stat().st_size > 3


def test_replace_retries_while_target_is_open_then_succeeds(tmp_path, monkeypatch):
    calls, real_replace = [], os.replace

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) <= 3:  # what Windows does while ComfyUI or a scanner holds the file
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_replace(src, dst)

    monkeypatch.setattr(fileops.os, "replace", flaky_replace)
    monkeypatch.setattr(fileops.time, "sleep", lambda s: None)
    out = tmp_path / "o.safetensors"
    _write(out)
    assert len(calls) == 4 and open_checkpoint(out).keys() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["o.safetensors"]


def test_replace_that_never_succeeds_names_the_file_and_removes_the_partial(tmp_path, monkeypatch):
    def locked(src, dst):
        raise PermissionError(13, "being used by another process")

    slept = []
    monkeypatch.setattr(fileops.os, "replace", locked)
    monkeypatch.setattr(fileops.time, "sleep", slept.append)
    with pytest.raises(CheckpointError, match="another program .* has it open") as exc:
        _write(tmp_path / "o.safetensors")
    assert exc.value.path.endswith("o.safetensors") and "run again" in exc.value.fix
    assert len(slept) == len(fileops.REPLACE_DELAYS_S) and list(tmp_path.iterdir()) == []


def test_disk_full_message_gives_the_real_size(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(CheckpointError, match=r"the file needs \d+ bytes, .* free") as exc:
        _write(tmp_path / "o.safetensors")
    assert "0.00 GiB" not in str(exc.value) and list(tmp_path.iterdir()) == []


@posix_only
def test_fifo_input_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    result = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(CheckpointError, open_checkpoint, fifo)),
                              daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "open_checkpoint blocked on a FIFO"
    assert "FIFO" in str(result[0].value)


@posix_only
def test_fifo_or_device_as_output_is_refused(tmp_path):
    fifo = tmp_path / "o.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="FIFO"):
        _write(fifo, force=True)
    with pytest.raises(CheckpointError, match="character device"):
        _write("/dev/null", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["o.safetensors"]


def test_convert_paths_with_spaces_and_non_ascii(tmp_path):
    src_dir, out_dir = tmp_path / "my models ü", tmp_path / "出力 folder é"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "模型 v1 (final).safetensors"
    g = torch.Generator().manual_seed(0)
    st.save_file({"double_blocks.0.img_attn.qkv.weight": torch.randn(256, 256, generator=g).bfloat16(),
                  "double_blocks.0.img_attn.qkv.bias": torch.zeros(256).bfloat16()}, str(src))
    out = out_dir / "int8 モデル.safetensors"
    report = convert_checkpoint(src, out, load_preset("flux"), QuantizeConfig(), progress=False)
    assert report.counts.get("quantize") == 1 and [p.name for p in out_dir.iterdir()] == [out.name]
    sd, _ = load_state_dict_for_comfy(out)
    assert sd["double_blocks.0.img_attn.qkv.weight"].dtype == torch.int8
