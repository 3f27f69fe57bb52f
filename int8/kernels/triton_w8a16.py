"""The small-batch path: int8 weight, 16-bit activation (W8A16), dequant scale and bias in the epilogue.

At a few rows a linear layer is memory-bound: its time is the weight read. This kernel reads the int8 weight
(half the bytes of a bf16 weight), converts each tile to the activation dtype in registers (|q| <= 127 is exact
in fp16 and bf16), multiplies on the tensor cores with fp32 accumulation, and applies ``w_scale[n]`` and bias
once per output. Narrow N tiles keep enough programs in flight to saturate memory bandwidth at tiny M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_gemm import m_bucket

__all__ = ["w8a16_linear"]


def _prune_by_m(configs, named_args, **kwargs):  # noqa: ANN001 - triton autotune hook signature
    m = named_args["M"]
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(m))]
    return fitting or configs


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_CONFIGS = [
    _cfg(16, 32, 256, 4, 4), _cfg(16, 64, 256, 4, 4), _cfg(16, 64, 128, 4, 5), _cfg(16, 128, 128, 4, 4),
    _cfg(32, 64, 256, 4, 4), _cfg(32, 128, 128, 4, 4),
    _cfg(64, 64, 128, 4, 4), _cfg(64, 128, 128, 4, 4), _cfg(128, 128, 64, 8, 4),
]


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune_by_m})
@triton.jit
def _w8a16_kernel(
    x_ptr, w_ptr, c_ptr, ws_ptr, bias_ptr, M, N, K, stride_xm, stride_wn, stride_cm, M_BUCKET,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_x = offs_m % M  # wrapped rows are computed and masked at the store
    rows_w = offs_n % N
    x_ptrs = x_ptr + rows_x.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + rows_w.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k[None, :] < K - kt * BLOCK_K
        x = tl.load(x_ptrs, mask=k_mask, other=0.0)
        w = tl.load(w_ptrs, mask=k_mask, other=0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    m_mask = offs_m < M
    n_mask = offs_n < N
    y = acc * tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def w8a16_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(x [M,K] fp16/bf16 @ weight [N,K] int8 ^T) * w_scale[N] (+ bias)`` in x's dtype, fp32 accumulation."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"w8a16_linear takes fp16/bf16 activations, got {x.dtype}.")
    m, k = x.shape
    n = weight.shape[0]
    c = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return c
    ws = w_scale.reshape(-1)
    bias_arg = bias if bias is not None else ws

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))

    _w8a16_kernel[grid](x, weight, c, ws, bias_arg, m, n, k, x.stride(0), weight.stride(0), c.stride(0), m_bucket(m),
                        HAS_BIAS=bias is not None)
    return c
