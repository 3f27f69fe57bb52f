"""A checked header entry's bytes as a CPU tensor: copied by a positioned read, or viewed through a file mapping.

Copies (:func:`read_tensor`) suit the converter, which holds about one tensor at a time. The loader hands ComfyUI
the whole state dict at once, so it maps the file, a checkpoint or a weight-cache hit alike (:func:`map_file`,
:func:`mapped_tensor`): its tensors are views of the page cache, read when a layer first touches them, never copied
into fresh memory.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import BinaryIO

import torch

from .errors import CheckpointError
from .safetensors_io import TensorInfo

__all__ = ["read_tensor", "map_file", "mapped_tensor"]


def read_tensor(f: BinaryIO, info: TensorInfo, path: str = "") -> torch.Tensor:
    """Read one tensor from the open file ``f`` into a fresh CPU tensor (exactly ``info.nbytes`` of memory)."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    # Read straight into uninitialised tensor memory: a bytearray would first zero every page (on a Flux-dev
    # file that zeroing took longer than the read itself).
    out = torch.empty(info.nbytes, dtype=torch.uint8)
    f.seek(info.begin)
    got = f.readinto((ctypes.c_char * info.nbytes).from_address(out.data_ptr()))
    if got != info.nbytes:
        raise CheckpointError(path, f"ended while reading tensor '{info.name}' (the file changed or is truncated).",
                              "Download it again.")
    return out.view(info.dtype).reshape(info.shape)


def map_file(f: BinaryIO, path: str = "") -> mmap.mmap:
    """A private (copy-on-write) mapping of the whole open file: writing to a tensor viewing it never changes the
    file, and the mapping outlives ``f``. A file that cannot be mapped raises :class:`CheckpointError`."""
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:  # ValueError: an empty file; OSError: a filesystem without mmap
        raise CheckpointError(path, f"cannot be memory-mapped ({exc}).", "Copy the file to a local disk.") from exc


def mapped_tensor(mapping: mmap.mmap, info: TensorInfo, path: str = "") -> torch.Tensor:
    """``info``'s tensor as a view of ``mapping`` (no copy; the mapping lives as long as the tensor). A tensor
    whose offset is not a multiple of its element size is copied into aligned memory instead."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    if info.end > len(mapping):
        raise CheckpointError(path, f"ended before tensor '{info.name}' (the file changed or is truncated).",
                              "Download it again.")
    element = torch.empty((), dtype=info.dtype).element_size()
    if info.begin % element:
        raw = torch.frombuffer(mapping, dtype=torch.uint8, count=info.nbytes, offset=info.begin).clone()
        return raw.view(info.dtype).reshape(info.shape)
    return torch.frombuffer(mapping, dtype=info.dtype, count=info.nbytes // element,
                            offset=info.begin).reshape(info.shape)
