"""``torch.library`` custom ops around the fast paths, with fake (meta) implementations, so ``torch.compile`` traces
an ``Int8Linear`` as one opaque node per kernel call, without graph breaks, on any backend.

Eager calls skip the op layer (its Python dispatch costs more than a small-M kernel): the helpers below call the
launchers directly unless TorchDynamo is tracing. Importing this module never imports Triton.

The activation quantization stays inside the op rather than traced as torch ops for inductor to fuse into the
producer: measured on an H100 (Flux-dev-sized, compiled), inductor splits it into an amax reduction and a second
pass that recomputes the producer, and the step's GPU kernel time was 110.2 ms against 107.1 ms with the fused
op (two runs, one each way).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..launch.int_mm import int_mm_padded
from ..weights import Int8Weights

__all__ = ["triton_w8a8", "triton_w8a16", "int_mm"]

_NS = "comfy_int8"
_LINEAR_SCHEMA = ("(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias, Tensor? smooth, int hadamard_group) "
                  "-> Tensor")


def _weights(weight, weight_scale, bias, smooth, hadamard_group) -> Int8Weights:  # noqa: ANN001
    return Int8Weights(weight, weight_scale, bias, hadamard_group, smooth)


def _define(name: str, schema: str, impl: Callable, fake: Callable) -> Callable:
    """Define ``comfy_int8::name`` with the plain ``torch.library`` API and return its overload.

    Not ``torch.library.custom_op``: its Python wrappers (autograd registration, aliasing checks) cost ~25-60 us
    per call (measured on the CPU: 34-78 us against 17-20 us for this registration), paid once per layer per
    step whenever no CUDA graph replays the compiled code. The ops are inference-only (no autograd formula) and
    return fresh tensors, which is what the schema (no alias annotations) says. The kernel is registered for
    every backend (CompositeExplicitAutograd): the launchers themselves check the device.
    """
    namespace = getattr(torch.ops, _NS)
    if not hasattr(namespace, name):  # a second import of this package (another module name) reuses the op
        _LIBRARY.define(name + schema)
        _LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{_NS}::{name}", fake, lib=_LIBRARY)
    return getattr(namespace, name).default


def _w8a8_impl(x, weight, weight_scale, bias, smooth, hadamard_group):  # noqa: ANN001, ANN202
    from . import triton_dispatch

    return triton_dispatch.w8a8_linear(x, _weights(weight, weight_scale, bias, smooth, hadamard_group))


def _w8a16_impl(x, weight, weight_scale, bias, smooth, hadamard_group):  # noqa: ANN001, ANN202
    from . import triton_dispatch

    return triton_dispatch.weight_only_linear(x, _weights(weight, weight_scale, bias, smooth, hadamard_group))


def _linear_fake(x, weight, weight_scale, bias, smooth, hadamard_group):  # noqa: ANN001, ANN202
    return x.new_empty((x.shape[0], weight.shape[0]))


def _int_mm_impl(a, b):  # noqa: ANN001, ANN202
    return int_mm_padded(a, b).contiguous()


def _int_mm_fake(a, b):  # noqa: ANN001, ANN202
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


_LIBRARY = torch.library.Library(_NS, "FRAGMENT")
_w8a8_triton_op = _define("w8a8_triton", _LINEAR_SCHEMA, _w8a8_impl, _linear_fake)
_w8a16_triton_op = _define("w8a16_triton", _LINEAR_SCHEMA, _w8a16_impl, _linear_fake)
_int_mm_op = _define("int_mm", "(Tensor a, Tensor b) -> Tensor", _int_mm_impl, _int_mm_fake)


def triton_w8a8(x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    """Whole W8A8 linear through the Triton kernels; ``x [M, K]`` -> ``[M, N]`` in x's dtype."""
    if torch.compiler.is_compiling():
        return _w8a8_triton_op(x, w.weight, w.weight_scale, w.bias, w.smooth, w.hadamard_group)
    from . import triton_dispatch

    return triton_dispatch.w8a8_linear(x, w)


def triton_w8a16(x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    """Small-batch W8A16 linear through the Triton kernel; ``x [M, K]`` -> ``[M, N]`` in x's dtype."""
    if torch.compiler.is_compiling():
        return _w8a16_triton_op(x, w.weight, w.weight_scale, w.bias, w.smooth, w.hadamard_group)
    from . import triton_dispatch

    return triton_dispatch.weight_only_linear(x, w)


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [M, K] int8 @ b [N, K]^T`` -> int32 ``[M, N]`` via ``torch._int_mm`` with padding (see launch/int_mm.py)."""
    if torch.compiler.is_compiling():
        return _int_mm_op(a, b)
    return int_mm_padded(a, b)
