"""Host-side arithmetic and device facts the kernel launchers need on every call, kept cheap.

An eager small-M layer is bound by the Python around its ~10 us kernel, so these helpers avoid Triton's host
utilities: ``triton.cdiv`` and ``triton.next_power_of_2`` are ``constexpr_function`` objects in recent Triton and
cost ~3 us per call on the CPU (measured: 2.9 us against 0.1 us for integer division), and a launcher calls them
several times. Device facts are looked up once per device index. Importing this module never imports Triton.
"""

from __future__ import annotations

import functools
from dataclasses import MISSING, fields

import torch

from .. import compat

__all__ = ["cdiv", "next_power_of_2", "device_index", "sm_count", "capability", "supports_pdl", "is_capturing",
           "alignment_bits", "descriptor"]


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ``a`` and positive ``b``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``), like ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def device_index(device: torch.device) -> int:
    """The CUDA device index of ``device``; the current device for a bare ``cuda``."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def capability(index: int) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device ``index`` as the pack sees it (``INT8_W8A8_ARCH`` overrides
    it, see :func:`compat.capability`)."""
    return compat.capability(index)


def supports_pdl(index: int) -> bool:
    """Whether kernels on CUDA device ``index`` use programmatic dependent launch (``griddepcontrol``: sm_90,
    Hopper, and newer; and Triton has it, unless ``INT8_W8A8_NO_PDL`` is set: :func:`compat.pdl`)."""
    return capability(index)[0] >= 9 and compat.pdl()


def _capture_check():  # noqa: ANN202
    # CPU-only torch builds have no CUDA capture query, and a CUDA build on a machine without a usable GPU/driver
    # raises from it; nothing can be capturing there. The C entry behind torch.cuda.is_current_stream_capturing
    # skips a Python frame per eager call.
    if not torch.backends.cuda.is_built() or not torch.cuda.is_available():
        return lambda: False
    return getattr(torch._C, "_cuda_isCurrentStreamCapturing", torch.cuda.is_current_stream_capturing)


is_capturing = _capture_check()  # () -> whether the current CUDA stream is recording a CUDA graph


def alignment_bits(*tensors: torch.Tensor) -> int:
    """One bit per tensor, set when its data pointer is 16-byte aligned: the JIT specializes each pointer on that
    separately, so a launch cache key must tell every pattern apart (one "all aligned" flag would let a call with
    another unaligned pointer reuse a kernel compiled for a different one)."""
    bits = 0
    for i, t in enumerate(tensors):
        if t.data_ptr() % 16 == 0:
            bits |= 1 << i
    return bits


@functools.cache
def _descriptor_defaults(gluon: bool) -> tuple[type, dict]:
    # Gluon's descriptor carries the shared-memory layout; callers checked compat.gluon() / compat.host_tma().
    cls = compat.tensor_descriptor_class(gluon)
    return cls, {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def descriptor(t: torch.Tensor, block_shape: list[int], layout: object | None = None) -> object:
    """A host TMA ``TensorDescriptor`` of row-major ``t`` without its per-call validation (~3 us each, three per
    GEMM call). Only for tensors :func:`launch.gemm.hopper_tma_ok` accepted: 16-byte aligned base and rows,
    unit inner stride, which is what the validation checks; the block shapes are the kernel configs' powers of two.
    ``layout``: a Gluon shared-memory layout, for Gluon's descriptor (:mod:`launch.gluon_gemm`); None for Triton's."""
    cls, defaults = _descriptor_defaults(layout is not None)
    d = cls.__new__(cls)
    d.__dict__.update(defaults)
    d.base, d.shape, d.strides, d.block_shape = t, t.shape, t.stride(), block_shape
    if layout is not None:
        d.layout = layout
    return d
