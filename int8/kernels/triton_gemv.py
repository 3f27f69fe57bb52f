"""W8A16 for one or two rows on wide layers: a CUDA-core GEMV that streams the int8 weight once.

At one or two rows (Flux's modulation layers, 3072 -> 18432 and 3072 -> 9216, run once per block per step) the
tensor-core W8A16 kernel pads its 16-row tile with zeros and reached 1.6 TB/s of weight reads. This kernel gives
each program 32 output channels, multiplies the int8 weight tile (converted to fp32) by the activation row(s) in
fp32 and sums along K, with the loads software-pipelined; on an H100 (CUDA-graph timing,
docs/results/gemv_probe_h100_s4.json) 3072 -> 18432 took 24.7 us against 34.5 us (bf16: 42.9 us), 3072 -> 9216
16.3 against 18.0 us. On narrower layers its 32-channel programs are too few to fill the GPU (3072 -> 3072: 9.1
against 8.4 us), so :func:`int8.launch.gemv.use_gemv` keeps those on the tile kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, c_ptr, ws_ptr, bias_ptr, N, K, stride_xm, stride_wn, stride_cm,
    HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0).to(tl.float32)
        x0 = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        acc0 += tl.sum(w * x0[None, :], axis=1)
        if ROWS == 2:
            x1 = tl.load(x_ptr + stride_xm + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            acc1 += tl.sum(w * x1[None, :], axis=1)
    ws = tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    y0 = acc0 * ws
    y1 = acc1 * ws
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        y0 = y0 + bias
        y1 = y1 + bias
    tl.store(c_ptr + offs_n, y0.to(c_ptr.dtype.element_ty), mask=n_mask)
    if ROWS == 2:
        tl.store(c_ptr + stride_cm + offs_n, y1.to(c_ptr.dtype.element_ty), mask=n_mask)

