"""``torch._int_mm`` with the padding its cuBLAS kernel needs: the launch of the ``torch_int_mm`` backend's GEMM
and of the ``comfy_int8::int_mm`` custom op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["int_mm_padded"]

# cuBLAS int8 GEMM needs M > 16 and K, N multiples of 8 (measured on H100, see KERNEL_NOTES); the CPU
# kernel takes any shape but we pad the same way so both devices run the same code path.
_MIN_M = 17
_ALIGN = 8


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def int_mm_padded(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a [M, K] int8 @ b_t.T`` where ``b_t`` is the int8 weight ``[N, K]``; returns int32 ``[M, N]``.

    Pads M up to 17, K and N up to multiples of 8 with zeros (zeros add nothing to an integer dot product)
    and slices the result back.
    """
    m, k = a.shape
    n = b_t.shape[0]
    k_pad, n_pad, m_pad = _round_up(k, _ALIGN), _round_up(n, _ALIGN), max(m, _MIN_M)
    if k_pad != k:
        a = F.pad(a, (0, k_pad - k))
        b_t = F.pad(b_t, (0, k_pad - k))
    if n_pad != n:
        b_t = F.pad(b_t, (0, 0, 0, n_pad - n))
    if m_pad != m:
        a = F.pad(a, (0, 0, 0, m_pad - m))
    out = torch._int_mm(a.contiguous(), b_t.t())
    return out[:m, :n]
