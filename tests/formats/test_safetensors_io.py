"""The safetensors header check, reader and streaming writer: valid files round-trip, every broken one ends in
CheckpointError (including a bounded fuzz over corrupted headers and bytes)."""

import errno
import json
import os
import struct
import zipfile

import pytest
import safetensors.torch as st
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from comfy_int8_w8a8.int8.formats import CheckpointError, open_checkpoint
from comfy_int8_w8a8.int8.formats.safetensors_io import SafetensorsStreamWriter, TensorSpec, read_header


def _tensors():
    return {"a.weight": torch.randn(4, 8, dtype=torch.bfloat16), "a.bias": torch.randn(4),
            "q.weight": torch.randint(-127, 128, (3, 5), dtype=torch.int8),
            "f8.weight": torch.randn(2, 2).to(torch.float8_e4m3fn), "s": torch.tensor(2.5)}


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    t = _tensors()
    st.save_file(t, str(path), metadata={"k": "v"})
    return path


def test_read_header_valid_file_lists_dtypes_shapes_and_metadata(tmp_path):
    path, t = tmp_path / "good.safetensors", _tensors()
    st.save_file(t, str(path), metadata={"k": "v"})
    h = read_header(path)
    assert h.metadata == {"k": "v"}
    assert h.tensors["a.weight"].dtype == torch.bfloat16 and h.tensors["a.weight"].shape == (4, 8)
    assert h.tensors["s"].shape == ()
    with open_checkpoint(path) as ckpt:
        for k, v in t.items():
            got = ckpt.tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got.float(), v.float())


def test_writer_output_loads_with_official_safetensors(tmp_path):
    t = _tensors()
    out = tmp_path / "out.safetensors"
    with SafetensorsStreamWriter(out, [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in t.items()], {"m": "x"}) as w:
        for k, v in t.items():
            w.write(k, v)
        w.commit()
    back = st.load_file(str(out))
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k].float(), t[k].float())
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_writer_refuses_existing_output_without_force_and_replaces_with_force(good_file):
    spec = [TensorSpec("x", torch.float32, (1,))]
    with pytest.raises(CheckpointError, match="already exists.*--force"):
        SafetensorsStreamWriter(good_file, spec, {})
    with SafetensorsStreamWriter(good_file, spec, {}, force=True) as w:
        w.write("x", torch.ones(1))
        w.commit()
    assert list(st.load_file(str(good_file))) == ["x"]


def test_writer_disk_full_mid_write_removes_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "out.safetensors"
    w = SafetensorsStreamWriter(out, [TensorSpec("x", torch.float32, (1024,))], {})

    class _FullDisk:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

    w._f = _FullDisk(w._f)
    with pytest.raises(CheckpointError, match="disk is full.*partial file was removed"):
        w.write("x", torch.zeros(1024))
    assert list(tmp_path.iterdir()) == []


def test_writer_folder_not_writable_is_a_clean_error(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(CheckpointError, match="not writable"):
        SafetensorsStreamWriter(tmp_path / "o.safetensors", [], {})
    with pytest.raises(CheckpointError, match="does not exist"):
        SafetensorsStreamWriter(tmp_path / "missing_dir" / "o.safetensors", [], {})


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        open_checkpoint(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(exc.value)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "model.pth"])
def test_pickled_checkpoint_is_refused_with_a_safe_conversion_hint(tmp_path, name):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:  # what torch.save writes; never unpickled here
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="pickled.*weights_only=True"):
        open_checkpoint(path)


def test_raw_pickle_with_safetensors_extension_is_refused(tmp_path):
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 32)
    with pytest.raises(CheckpointError, match="pickled"):
        open_checkpoint(path)


def _header_file(tmp_path, header: dict, data: bytes) -> str:
    raw = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("header,data,match", [
    ({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 6, "overlapping or missing"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9, "trailing bytes"),
    ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
])
def test_corrupt_header_is_a_clean_error(tmp_path, header, data, match):
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(_header_file(tmp_path, header, data))


def test_truncated_file_and_garbage_header_are_clean_errors(tmp_path, good_file):
    raw = good_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated|does not fit"):
        open_checkpoint(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    with pytest.raises(CheckpointError, match="not UTF-8 JSON"):
        open_checkpoint(junk)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="only 3 bytes"):
        open_checkpoint(tiny)


_GOOD = None


def _good_bytes() -> bytes:
    global _GOOD
    if _GOOD is None:
        t = {"blk.0.lin.weight": torch.randint(-127, 128, (4, 8), dtype=torch.int8),
             "blk.0.lin.weight_scale": torch.rand(4, 1), "blk.0.lin.bias": torch.randn(4),
             "blk.0.lin.comfy_quant": torch.tensor(list(b'{"format": "int8_tensorwise"}'), dtype=torch.uint8)}
        _GOOD = st.save(t, metadata={"k": "v"})
    return _GOOD


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=hs.lists(hs.tuples(hs.integers(min_value=0, max_value=400), hs.integers(0, 255)), max_size=8),
       cut=hs.one_of(hs.none(), hs.integers(min_value=0, max_value=400)),
       header_len=hs.one_of(hs.none(), hs.integers(min_value=0, max_value=2**64 - 1)))
def test_fuzzed_file_reads_or_raises_checkpoint_error(tmp_path_factory, edits, cut, header_len):
    raw = bytearray(_good_bytes())
    for pos, byte in edits:
        raw[pos % len(raw)] = byte
    if header_len is not None:
        raw[:8] = struct.pack("<Q", header_len)
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(bytes(raw))
    try:
        from comfy_int8_w8a8.int8.formats import load_state_dict_for_comfy

        sd, _ = load_state_dict_for_comfy(path)
        assert all(isinstance(v, torch.Tensor) for v in sd.values())
    except CheckpointError as exc:
        assert str(path) in str(exc)
    finally:
        os.unlink(path)


def test_header_length_starting_with_pickle_byte_is_still_safetensors(tmp_path):
    raw = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    raw = raw.ljust(0x0280, b" ")  # length bytes 80 02 ...: looks like the start of a pickle stream
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<f", 1.5))
    assert open_checkpoint(path).tensor("x").item() == 1.5


@pytest.mark.parametrize("mapped", [False, True])
def test_every_dtype_reads_back_exactly_copied_or_mapped(tmp_path, mapped):
    good_file, expected = tmp_path / "good.safetensors", _tensors()
    st.save_file(expected, str(good_file))
    with open_checkpoint(good_file, mapped=mapped) as ckpt:
        got = {k: ckpt.tensor(k) for k in ckpt.keys()}
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(got[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_mapped_tensors_are_private_writes_never_reach_the_file(tmp_path):
    good_file, expected = tmp_path / "good.safetensors", _tensors()
    st.save_file(expected, str(good_file))
    before = good_file.read_bytes()
    with open_checkpoint(good_file, mapped=True) as ckpt:
        weight = ckpt.tensor("a.weight")
    weight.fill_(7.0)  # still alive after close(): the mapping lives with its tensors
    assert torch.all(weight == 7.0)
    assert good_file.read_bytes() == before
    with open_checkpoint(good_file, mapped=True) as ckpt:
        assert torch.equal(ckpt.tensor("a.weight"), expected["a.weight"])


def test_mapped_tensor_at_an_unaligned_offset_is_copied_aligned(tmp_path):
    # A 3-byte uint8 tensor first puts the bf16 tensor at an odd offset (safetensors writers may pad; not all do).
    values = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    header = {"pad": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [3, 15]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data start 8-aligned, so only the offset inside the data is odd
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"abc" + values.view(torch.uint8).numpy().tobytes())
    with open_checkpoint(path, mapped=True) as ckpt:
        w = ckpt.tensor("w")
    assert w.data_ptr() % 2 == 0 and torch.equal(w, values)


def test_mapped_read_of_a_file_truncated_after_open_is_a_clean_error(good_file):
    ckpt = open_checkpoint(good_file, mapped=True)  # header checked against the full file
    with open(good_file, "r+b") as f:
        f.truncate(os.path.getsize(good_file) - 4)
    with pytest.raises(CheckpointError, match="truncated"):
        [ckpt.tensor(k) for k in ckpt.keys()]
    ckpt.close()


def test_loader_state_dict_of_a_path_maps_the_file(tmp_path, monkeypatch):
    good_file, expected = tmp_path / "good.safetensors", {"a.weight": torch.randn(4, 8, dtype=torch.bfloat16)}
    st.save_file(expected, str(good_file))
    from comfy_int8_w8a8.int8.formats import checkpoint, load_state_dict_for_comfy

    def no_copy(*args, **kwargs):
        raise AssertionError("the loader's state dict was copied tensor by tensor instead of mapped")

    monkeypatch.setattr(checkpoint, "read_tensor", no_copy)
    sd, _ = load_state_dict_for_comfy(good_file)
    assert torch.equal(sd["a.weight"], expected["a.weight"])


def test_a_filesystem_that_refuses_mmap_is_a_clean_error(tmp_path, monkeypatch):
    from comfy_int8_w8a8.int8.formats import tensor_data

    path = tmp_path / "good.safetensors"
    st.save_file({"w": torch.ones(2, 2)}, str(path))

    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(tensor_data.mmap, "mmap", refuse)
    with open_checkpoint(path, mapped=True) as ckpt, pytest.raises(CheckpointError, match="memory-mapped.*local disk"):
        ckpt.tensor("w")
