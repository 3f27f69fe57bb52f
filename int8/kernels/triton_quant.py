"""Per-token int8 activation quantization in one Triton kernel, with optional smoothing and a fused block
Hadamard rotation.

Numerics follow :func:`int8.quantize.quantize_per_token` applied after :func:`int8.backends.base.prepare_activation`:
the smoothed and the rotated activations are rounded to the input dtype (as the torch path does), the scale is
``max(absmax / 127, 1e-12)`` in fp32, and ``q = rint(x / scale)`` with an IEEE division and round-half-to-even,
like ``torch.round``. Only the fp32 summation order inside the rotation differs from the torch path.

The rotation uses the Kronecker structure of the regular Hadamard matrix (``H_{4^k} = H4 (x) ... (x) H4``): every
64-column block is multiplied by ``H64`` on the tensor cores (``tl.dot`` of ``[rows*G/64, 64] x [64, 64]``), then
each ``H4`` level above 64 is a butterfly over 4 sub-blocks. With ``H4[i, k] = -1`` exactly when ``i + k == 3``,
``y_k = 0.5 * sum_i z_i - z_{3-k}``; loading the sub-blocks in reversed order (column ``c ^ (G - 64)``) turns
``z_{3-k}`` into ``z_k`` at position k, so each level is one reduction and one subtraction, with no shuffles.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..hadamard import build_hadamard, check_group_size

__all__ = ["quantize_per_token_triton"]

# Triton's CPU interpreter (TRITON_INTERPRET=1, used to debug these kernels without a GPU) has no libdevice;
# there, rounding uses the fp32 magic-number trick, which also rounds half to even for |v| < 2**22.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _round_half_even(v, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return (v + 12582912.0) - 12582912.0
    return libdevice.rint(v)


@triton.jit
def _quantize(y, scale, INTERPRETED: tl.constexpr):
    q = _round_half_even(tl.math.div_rn(y, scale[:, None]), INTERPRETED)
    return tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)


@triton.jit
def _load_transformed(
    x_ptr, smooth_ptr, h64_ptr, rows, row_mask, stride_xm, k0, K,
    CHUNK: tl.constexpr, GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Load rows x [k0, k0 + CHUNK) of x, smooth and rotate it; returns fp32 values rounded to x's dtype."""
    cols = k0 + tl.arange(0, CHUNK)
    if GROUP > 64:
        cols = cols ^ (GROUP - 64)  # reversed sub-block order (see the module docstring)
    col_mask = cols < K
    ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :]
    x = tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    if HAS_SMOOTH:
        s = tl.load(smooth_ptr + cols, mask=col_mask, other=0.0)
        x = (x.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
    if GROUP == 0:
        return x.to(tl.float32)
    h = tl.load(h64_ptr + tl.arange(0, 64)[:, None] * 64 + tl.arange(0, 64)[None, :])
    xb = tl.reshape(x, [BLOCK_M * (CHUNK // 64), 64])
    if x.dtype == tl.float32:
        z = tl.dot(xb, h, input_precision="ieee")
    else:
        z = tl.dot(xb, h.to(x.dtype))
    if GROUP >= 256:  # the H4 level that turns 64-blocks into 256-blocks
        z4 = tl.reshape(z, [BLOCK_M * (CHUNK // 256), 4, 64])
        z = tl.reshape(0.5 * tl.sum(z4, axis=1, keep_dims=True) - z4, [BLOCK_M * (CHUNK // 64), 64])
    if GROUP >= 1024:  # and 256-blocks into 1024-blocks
        z4 = tl.reshape(z, [BLOCK_M * (CHUNK // 1024), 4, 256])
        z = tl.reshape(0.5 * tl.sum(z4, axis=1, keep_dims=True) - z4, [BLOCK_M * (CHUNK // 64), 64])
    return tl.reshape(z, [BLOCK_M, CHUNK]).to(x.dtype).to(tl.float32)


@triton.jit
def _quant_per_token_kernel(
    x_ptr, smooth_ptr, h64_ptr, q_ptr, scale_ptr, M, K, stride_xm, stride_qm,
    CHUNK: tl.constexpr, GROUP: tl.constexpr, HAS_SMOOTH: tl.constexpr, BLOCK_M: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, INTERPRETED: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    if SINGLE_CHUNK:
        y = _load_transformed(x_ptr, smooth_ptr, h64_ptr, rows, row_mask, stride_xm, 0, K,
                              CHUNK, GROUP, HAS_SMOOTH, BLOCK_M)
        amax = tl.max(tl.abs(y), axis=1)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for kc in range(0, tl.cdiv(K, CHUNK)):
            k0 = kc * CHUNK
            y = _load_transformed(x_ptr, smooth_ptr, h64_ptr, rows, row_mask, stride_xm, k0, K,
                                  CHUNK, GROUP, HAS_SMOOTH, BLOCK_M)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
    scale = tl.maximum(tl.math.div_rn(amax, 127.0), 1e-12)
    tl.store(scale_ptr + rows, scale, mask=row_mask)
    if SINGLE_CHUNK:
        cols = tl.arange(0, CHUNK)
        q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
        tl.store(q_ptrs, _quantize(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])
    else:
        for kc in range(0, tl.cdiv(K, CHUNK)):
            k0 = kc * CHUNK
            y = _load_transformed(x_ptr, smooth_ptr, h64_ptr, rows, row_mask, stride_xm, k0, K,
                                  CHUNK, GROUP, HAS_SMOOTH, BLOCK_M)
            cols = k0 + tl.arange(0, CHUNK)
            q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
            tl.store(q_ptrs, _quantize(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < K)[None, :])


@functools.cache
def _hadamard64(device: torch.device) -> torch.Tensor:
    # Cached per device: a fresh host-to-device copy per call would cost more than the kernel at small M
    # and break CUDA-graph capture.
    return build_hadamard(64, device, torch.float32)


def _launch_shape(k: int, group: int) -> tuple[int, int, int]:
    """(CHUNK columns per step, BLOCK_M rows per program, num_warps) for a row length ``k``."""
    if group:
        # tl.dot needs >= 16 rows; 16 x 1024 fp32 values per step keep the butterfly in registers.
        chunk = max(group, 256)
        return chunk, 16, 8 if chunk >= 1024 else 4
    chunk = min(triton.next_power_of_2(k), 4096)
    block_m = max(1, 8192 // chunk)
    return chunk, block_m, 8 if chunk >= 2048 else 4


def quantize_per_token_triton(
    x: torch.Tensor, smooth: torch.Tensor | None = None, hadamard_group: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [M, K]`` (fp16/bf16/fp32, CUDA) per row after optional smoothing and block rotation.

    ``smooth``: ``[K]`` multiplier (any float dtype; rounded to x's dtype like the torch path).
    ``hadamard_group``: 0, 64, 256 or 1024 (must divide K). Returns ``(q int8 [M, K], scale fp32 [M, 1])``.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_per_token_triton expects a row-major 2-D input, got shape {tuple(x.shape)} "
                         f"with strides {x.stride()}.")
    m, k = x.shape
    if hadamard_group:
        check_group_size(hadamard_group, k)
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    chunk, block_m, warps = _launch_shape(k, hadamard_group)
    h64 = _hadamard64(x.device) if hadamard_group else x
    smooth_arg = smooth.to(device=x.device, dtype=x.dtype).contiguous() if smooth is not None else x
    _quant_per_token_kernel[(triton.cdiv(m, block_m),)](
        x, smooth_arg, h64, q, scale, m, k, x.stride(0), q.stride(0),
        CHUNK=chunk, GROUP=hadamard_group, HAS_SMOOTH=smooth is not None, BLOCK_M=block_m,
        SINGLE_CHUNK=k <= chunk, INTERPRETED=_INTERPRETED, num_warps=warps,
    )
    return q, scale
