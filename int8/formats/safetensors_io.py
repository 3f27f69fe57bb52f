"""Reading and writing the safetensors container ourselves: a checked header, one tensor at a time.

Why not ``safetensors.safe_open``: it memory-maps the whole file, and every page a conversion touches stays
in the process's resident set (file-backed RSS), so converting a 24 GB file would show ~24 GB peak RSS. Plain
positioned reads (``tensor_data.read_tensor``) keep the resident set at about one tensor, and the header check below
turns every malformed file into a :class:`CheckpointError` instead of a crash deep inside a reader. The loader, which
hands ComfyUI the whole state dict at once, maps the file instead (``tensor_data.mapped_tensor``). The format itself
(https://github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}``, then the tensor bytes,
contiguous, offsets relative to the end of the header.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import PICKLE_SUFFIXES, CheckpointError, pickle_refusal
from .fileops import check_regular, open_regular, output_mode, replace_with_retry

__all__ = [
    "DTYPE_BY_NAME",
    "NAME_BY_DTYPE",
    "TensorInfo",
    "SafetensorsHeader",
    "read_header",
    "SafetensorsStreamWriter",
    "TensorSpec",
]

# The safetensors limit; a larger header is a corrupt or hostile file, and we never allocate for one.
MAX_HEADER_BYTES = 100_000_000

DTYPE_BY_NAME: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E8M0", "float8_e8m0fnu")):
    if hasattr(torch, _attr):  # newer torch builds only
        DTYPE_BY_NAME[_name] = getattr(torch, _attr)
NAME_BY_DTYPE: dict[torch.dtype, str] = {v: k for k, v in DTYPE_BY_NAME.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: what a tensor is, without reading it. ``begin``/``end`` are absolute file offsets."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, TensorInfo]  # in file order
    metadata: dict[str, str]
    file_size: int


def _refuse_non_safetensors(path: Path, head: bytes) -> None:
    # zip (torch.save since 1.6) or a raw pickle stream (0x80, protocol byte): a pickled checkpoint, whatever its
    # extension says. A safetensors header length can also start with 0x80, but its JSON then starts at byte 8.
    raw_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{"
    if head[:4] == b"PK\x03\x04" or raw_pickle or path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(path)
    if head[:4] == b"GGUF":
        raise CheckpointError(path, "is a GGUF file, not safetensors.", "Load it with ComfyUI-GGUF's loader instead.")


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        path, f"is not a valid safetensors file: {problem}.",
        "The file is truncated or corrupt (an interrupted download or copy?): download it again.",
    )


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and check the header of ``path`` (no tensor data is read).

    Raises :class:`CheckpointError` for a missing file, a pickled checkpoint, or any malformed header:
    bad length, not JSON, unknown dtype, bad shape, offsets out of bounds, overlapping or leaving gaps,
    or a file size that does not match (truncated / trailing bytes).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "does not exist.", "Check the path (and that the download finished).")
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            _refuse_non_safetensors(path, head)
            head = head[:8]
            if len(head) < 8:
                raise _bad(path, f"only {len(head)} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n < 2 or 8 + n > size:
                raise _bad(path, f"header length {n} does not fit the file size {size}")
            f.seek(8)
            raw = f.read(n)
    except OSError as exc:  # permissions, a socket (ENXIO), an I/O error of the disk
        raise CheckpointError(path, f"cannot be read ({exc.strerror or exc}).", "Check the file and its "
                              "permissions.") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"its header is not UTF-8 JSON ({type(exc).__name__})") from exc
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    data_start = 8 + n
    tensors = [_parse_entry(path, name, entry, data_start) for name, entry in header.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    expected = data_start
    for t in tensors:
        if t.begin != expected:
            raise _bad(path, f"tensor '{t.name}' starts at byte {t.begin - data_start}, expected {expected - data_start}"
                             " (overlapping or missing data)")
        expected = t.end
    if expected != size:
        raise _bad(path, f"the tensors need {expected} bytes but the file has {size}"
                         + (" (truncated)" if size < expected else " (trailing bytes)"))
    return SafetensorsHeader(str(path), {t.name: t for t in tensors}, dict(metadata), size)


def _parse_entry(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(path, f"entry '{name}' is not an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPE_BY_NAME:  # a list or object is unhashable
        shown = dtype_name if isinstance(dtype_name, str | int | float | None) else f"a JSON {type(dtype_name).__name__}"
        raise _bad(path, f"tensor '{name}' has unknown dtype {str(shown)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**48 for d in shape):
        raise _bad(path, f"tensor '{name}' has an invalid shape {_short_json(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] < 2**62):
        raise _bad(path, f"tensor '{name}' has invalid data_offsets {_short_json(offsets)}")
    dtype = DTYPE_BY_NAME[dtype_name]
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != nbytes:
        raise _bad(path, f"tensor '{name}' {dtype_name}{shape} needs {nbytes} bytes but its offsets span "
                         f"{offsets[1] - offsets[0]}")
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _short_json(value: object) -> str:
    # Only flat values are shown whole: repr of a hostile nested value can be huge or exhaust the stack.
    if isinstance(value, list) and len(value) <= 8 and all(isinstance(v, int | float | str | None) for v in value):
        return repr(value)[:80]
    return f"(a JSON {type(value).__name__})"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{n} bytes"


def _free_space(path: Path) -> str:
    try:
        return f", {_size(shutil.disk_usage(path.parent if str(path.parent) else '.').free)} free"
    except OSError:
        return ""  # the size is still worth reporting without the free space


def _chmod(path: str, mode: int) -> None:
    # mkstemp made the file 0600: give it the mode a plain open() would (see fileops.output_mode).
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be given mode {oct(mode)} ({exc.strerror}).",
                              "Check the output folder's filesystem and permissions.") from exc


@dataclass(frozen=True)
class TensorSpec:
    """What the writer will store under ``name``: known before any tensor is computed."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor: the header (all specs) first, then each tensor's bytes.

    Peak memory is the tensor being written. The file goes to a temporary name in the output's folder and is
    renamed into place by :meth:`commit` (atomic on one filesystem), so a crash, a full disk or an error never
    leaves a half-written ``out_path``; an existing ``out_path`` is replaced only with ``force=True``.
    ``metadata`` values may hold placeholders that :meth:`patch_metadata` overwrites with a same-length value
    after the data is written (e.g. a hash computed while converting).
    """

    def __init__(self, out_path: str | Path, specs: list[TensorSpec], metadata: dict[str, str],
                 force: bool = False) -> None:
        self.out_path = Path(out_path)
        self.force = force
        self._specs = list(specs)
        self._next = 0
        if self.out_path.exists():
            check_regular(self.out_path, self.out_path.stat().st_mode, "output")
            if not force:
                raise CheckpointError(self.out_path, "already exists.", "Pass --force to overwrite it, or choose another "
                                      "name.")
        header: dict[str, object] = {"__metadata__": dict(metadata)}
        offset = 0
        for s in self._specs:
            if s.dtype not in NAME_BY_DTYPE:
                raise ValueError(f"Tensor '{s.name}': dtype {s.dtype} cannot be stored in safetensors.")
            header[s.name] = {"dtype": NAME_BY_DTYPE[s.dtype], "shape": list(s.shape),
                              "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # safetensors pads the header so tensor data starts 8-byte aligned
        self._header = raw
        self.total_bytes = 8 + len(raw) + offset
        self._tmp: str | None = None
        self._f: BinaryIO | None = None
        self._open()

    def _open(self) -> None:
        folder = self.out_path.parent if str(self.out_path.parent) else Path(".")
        if not folder.is_dir():
            raise CheckpointError(self.out_path, f"cannot be written: the folder '{folder}' does not exist.",
                                  "Create it first or choose another output path.")
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.out_path.name}.", suffix=".partial", dir=folder)
        except OSError as exc:
            raise CheckpointError(self.out_path, f"cannot be written: the folder '{folder}' is not writable "
                                  f"({exc.strerror}).", "Choose a folder you can write to.") from exc
        # From here until the `with` block owns the writer, any exception (a full disk, or a signal turned into an
        # exception while posix_fallocate runs) must remove the file itself.
        try:
            self._mode = output_mode(self.out_path)
            self._f = os.fdopen(fd, "wb")
            self._reserve(fd)
            self._f.write(struct.pack("<Q", len(self._header)))
            self._f.write(self._header)
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            if self._f is None:
                os.close(fd)
            self.abort()
            raise

    def _reserve(self, fd: int) -> None:
        # Claim the whole size now, so a disk that cannot hold the output fails before any work is done.
        if not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(fd, 0, self.total_bytes)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return  # the filesystem cannot reserve; writes will still report a full disk
            raise

    def _fail(self, exc: OSError) -> None:
        self.abort()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(self.out_path, f"cannot be written: the disk is full (the file needs "
                                  f"{_size(self.total_bytes)}{_free_space(self.out_path)}).",
                                  "Free space or choose another folder; the partial file was removed.") from exc
        raise CheckpointError(self.out_path, f"cannot be written ({exc.strerror or exc}).",
                              "The partial file was removed; check the folder and try again.") from exc

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor; it must match the next spec's name, dtype and shape."""
        if self._f is None:
            raise RuntimeError(f"Writer for '{self.out_path}' is closed.")
        if self._next >= len(self._specs):
            raise RuntimeError(f"Writer for '{self.out_path}': unexpected extra tensor '{name}'.")
        spec = self._specs[self._next]
        if name != spec.name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            self.abort()
            raise RuntimeError(f"Writer for '{self.out_path}': got '{name}' {tensor.dtype}{tuple(tensor.shape)}, planned "
                               f"'{spec.name}' {spec.dtype}{spec.shape}. This is a bug in the converter.")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        try:
            self._f.write(data)
        except OSError as exc:
            self._fail(exc)
        self._next += 1

    def patch_metadata(self, placeholder: str, value: str) -> None:
        """Overwrite ``placeholder`` (a unique metadata value) in the written header with ``value`` of equal length."""
        old, new = json.dumps(placeholder).encode(), json.dumps(value).encode()
        at = self._header.find(old)
        if len(old) != len(new) or at < 0 or self._header.find(old, at + 1) >= 0:
            raise ValueError("patch_metadata needs a unique placeholder of the same encoded length as the value.")
        try:
            self._f.seek(8 + at)
            self._f.write(new)
            self._f.seek(0, os.SEEK_END)
        except OSError as exc:
            self._fail(exc)

    def commit(self) -> None:
        """Flush, fsync and rename the finished file into place."""
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            self.abort()
            raise RuntimeError(f"Writer for '{self.out_path}': tensor '{missing}' was never written.")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            if self.out_path.exists() and not self.force:
                raise CheckpointError(self.out_path, "appeared while converting.", "Pass --force to overwrite it.")
            _chmod(self._tmp, self._mode)
            replace_with_retry(self._tmp, self.out_path)
            self._tmp = None
        except OSError as exc:
            self._fail(exc)
        finally:
            if self._tmp is not None:
                self.abort()

    def abort(self) -> None:
        """Close and delete the temporary file (safe to call twice)."""
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass  # closing a file we are deleting: a failed flush of its data does not matter
            self._f = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            self.abort()
