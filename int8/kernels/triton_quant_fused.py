"""Per-token int8 quantization of ``cat([a, act(b)], -1)`` in one Triton kernel: the activation quant fused with the
GELU (and the concatenation) that produce a linear layer's input.

A compiled DiT runs ``linear2(cat(attn, gelu(mlp)))`` (Flux single blocks) or ``down(gelu(up(x)))`` (every MLP) as
an inductor kernel that writes the 16-bit input of the int8 layer, then this pack's quant kernel reads it back. This
kernel reads ``a`` and the pre-activation ``b`` directly, so the 16-bit intermediate is never written or read: at
4608 x 15360 that is 280 MB of HBM traffic less per layer. The compile pass that routes a graph here is
``compile/prologue_fusion.py``.

Numerics follow the unfused graph: ``act(b)`` is computed in fp32 and rounded to b's dtype (what inductor's GELU
kernel stores), then the row is quantized exactly like :func:`triton_quant.quantize_per_token_triton` (same
scale formula, same correctly rounded quotient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..activation import ACTIVATIONS
from .fast_launch import CompiledLauncher
from .triton_quant import _INTERPRETED, _quantize, _spec_key

__all__ = ["quantize_cat_act_per_token", "supports"]

_MAX_K = 16384  # the row stays in registers (one read); longer rows are left to the unfused path


@triton.jit
def _act(v, ACT: tl.constexpr, INTERPRETED: tl.constexpr):
    """GELU in torch's operation order (its CUDA kernel and inductor's decomposition), so the values rounded to
    16 bits match theirs: a different but equally accurate formula moved ~5% of the int8 values by one step."""
    if ACT == 1:  # gelu, tanh approximation
        inner = 0.7978845608028654 * (v + 0.044715 * (v * v * v))
        if INTERPRETED:  # the CPU interpreter has no libdevice: 0.5 * (1 + tanh(u)) = sigmoid(2u)
            return v * tl.sigmoid(2.0 * inner)
        return 0.5 * v * (1.0 + libdevice.tanh(inner))
    if ACT == 2:  # gelu, exact
        return v * 0.5 * (1.0 + tl.math.erf(v * 0.7071067811865476))
    return v


@triton.jit
def _cat_act_quant_kernel(
    a_ptr, b_ptr, q_ptr, scale_ptr, M, KA, KB, stride_am, stride_bm, stride_qm,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, HAS_A: tl.constexpr, ACT: tl.constexpr, INTERPRETED: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    cols = tl.arange(0, CHUNK)
    k = KA + KB
    in_b = (cols >= KA) & (cols < k)
    b = tl.load(b_ptr + rows.to(tl.int64)[:, None] * stride_bm + (cols - KA)[None, :],
                mask=row_mask[:, None] & in_b[None, :], other=0.0)
    y = _act(b.to(tl.float32), ACT, INTERPRETED).to(b.dtype).to(tl.float32)  # rounded like the stored activation
    if HAS_A:
        in_a = cols < KA
        a = tl.load(a_ptr + rows.to(tl.int64)[:, None] * stride_am + cols[None, :],
                    mask=row_mask[:, None] & in_a[None, :], other=0.0)
        y = tl.where(in_a[None, :], a.to(tl.float32), y)
    amax = tl.max(tl.abs(y), axis=1)
    # x * (1/127), not x / 127: torch divides by a Python scalar through its fp32 reciprocal, and we match it.
    scale = tl.maximum(amax * (1.0 / 127.0), 1e-12)
    tl.store(scale_ptr + rows, scale, mask=row_mask)
    q_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :]
    tl.store(q_ptrs, _quantize(y, scale, INTERPRETED), mask=row_mask[:, None] & (cols < k)[None, :])


_launch = CompiledLauncher(_cat_act_quant_kernel)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, t.shape[-1]]`` with unit column stride: a view when the leading dims merge (a slice of a
    wider tensor keeps its row stride), else a copy."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def supports(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Whether the fused kernel takes these inputs (CUDA, fp16/bf16, matching dtypes, row fits in registers)."""
    k = b.shape[-1] + (a.shape[-1] if a is not None else 0)
    return (b.is_cuda and b.dtype in (torch.float16, torch.bfloat16) and 0 < k <= _MAX_K
            and (a is None or (a.dtype == b.dtype and a.device == b.device)))


def quantize_cat_act_per_token(a: torch.Tensor | None, b: torch.Tensor, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_per_token(activation.cat_act_reference(a, b, act))`` without materialising the 16-bit input.

    ``a [..., KA]`` (or None) and ``b [..., KB]`` share their leading dims; returns ``(q int8 [M, KA + KB],
    scale fp32 [M, 1])``. Raises ``ValueError`` for inputs :func:`supports` refuses.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"quantize_cat_act_per_token: unknown activation code {act}.")
    if not supports(a, b):
        raise ValueError("quantize_cat_act_per_token takes CUDA fp16/bf16 inputs of one dtype with KA + KB <= "
                         f"{_MAX_K}; got b {b.dtype} on {b.device}" + (f", a {a.dtype}" if a is not None else ""))
    b2 = _rows(b)
    a2 = _rows(a) if a is not None else b2
    m = b2.shape[0]
    if a is not None and a2.shape[0] != m:
        raise ValueError(f"quantize_cat_act_per_token: a has {a2.shape[0]} rows, b has {m}.")
    ka = a2.shape[1] if a is not None else 0
    kb = b2.shape[1]
    q = torch.empty((m, ka + kb), dtype=torch.int8, device=b.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=b.device)
    if m == 0:
        return q, scale
    chunk = triton.next_power_of_2(ka + kb)
    block_m = max(1, 8192 // chunk)  # ~64 elements per thread, as the plain quant kernel (its H100 sweep)
    warps = max(4, min(16, chunk * block_m // 2048))
    runtime = (a2, b2, q, scale, m, ka, kb, a2.stride(0), b2.stride(0), q.stride(0))
    constexprs = (chunk, block_m, a is not None, act, _INTERPRETED)
    _launch(_spec_key(runtime, constexprs + (warps,)), b.device.index, (triton.cdiv(m, block_m), 1, 1),
            runtime + constexprs, warps, 3)
    return q, scale
