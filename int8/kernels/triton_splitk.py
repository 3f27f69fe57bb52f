"""The few-rows GEMM: one split-K tile kernel for 16-bit (W8A16) or per-token int8 (W8A8) activations, with the
dequant scales and bias in its epilogue.

At a few rows a linear layer is memory-bound: its time is the weight read. Enough programs must stream the
weight at once to saturate HBM: a 3072x3072 layer has only 48 tiles of 64 columns for 132 SMs, and at 64 rows
every program also re-reads its rows of x from L2. So the K loop is split over SPLIT_K programs per tile (serial
split-K): each writes its partial tile to a workspace, and the last to arrive (a per-tile counter) sums the
partials in a fixed order (deterministic), applies the epilogue and re-arms the counter to 0 for the next launch.
One launch, no memset, CUDA-graph safe. The counters are shared per device, so two of these kernels must not
run concurrently on different streams.

- W8A16 (``X_INT8 = False``): each int8 weight tile is converted to x's dtype in registers (|q| <= 127 is exact
  in fp16 and bf16) and multiplied on the tensor cores with fp32 accumulation; fp32 partials.
- W8A8 (``X_INT8 = True``): int8 x int8 products on the int8 tensor cores, exact in int32 (int32 partials, summed
  exactly), then ``acc * x_scale[m] * w_scale[n] (+ bias)`` in fp32: the same epilogue, in the same order, as
  the large-M GEMM (:mod:`triton_gemm`), so both give identical results.

Launched by :mod:`int8.launch.splitk` through its ``CompiledLauncher``: at these sizes the GPU time is ~10 us and
Triton's generic launch path would cost several times that on the CPU. Callers pick the config (no autotuner).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..compat import gdc_functions

__all__ = ["split_k_tile"]

gdc_wait, _ = gdc_functions()  # Triton's, or a no-op where it has none (then no caller sets PDL)


@triton.jit
def _epilogue(acc, c_ptr, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, HAS_BIAS: tl.constexpr,
              X_INT8: tl.constexpr):
    m_mask = offs_m < M
    n_mask = offs_n < N
    y = acc.to(tl.float32)
    if X_INT8:
        y = y * tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    y = y * tl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def split_k_tile(
    x_ptr, w_ptr, c_ptr, xs_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_wn, stride_cm,
    pid_n, pid_m, pid_k, tiles_n, HAS_BIAS: tl.constexpr, X_INT8: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    """One program's work: the ``pid_k``-th K slice of output tile (``pid_m``, ``pid_n``), and the tile's sum and
    epilogue if it is the last slice to arrive. Also the GEMM phase of the fused kernel (:mod:`triton_fused_w8a8`)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_tiles = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)  # K tiles per split
    offs_k = pid_k * k_tiles * BLOCK_K + tl.arange(0, BLOCK_K)
    rows_x = offs_m % M  # wrapped rows are computed and masked at the store
    rows_w = offs_n % N
    x_ptrs = x_ptr + rows_x.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + rows_w.to(tl.int64)[:, None] * stride_wn + offs_k[None, :]
    if X_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, k_tiles):
        k_mask = offs_k[None, :] < K - kt * BLOCK_K
        x = tl.load(x_ptrs, mask=k_mask, other=0)
        w = tl.load(w_ptrs, mask=k_mask, other=0)
        if X_INT8:
            acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if SPLIT_K > 1:
        tile = pid_m * tiles_n + pid_n
        tile_elems: tl.constexpr = BLOCK_M * BLOCK_N
        offs_t = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ptr = part_ptr + tile.to(tl.int64) * (SPLIT_K * tile_elems)
        tl.store(tile_ptr + pid_k * tile_elems + offs_t, acc, cache_modifier=".cg")
        tl.debug_barrier()  # every thread's partial is written before the counter says so
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.load(tile_ptr + offs_t, cache_modifier=".cg")
            for s in tl.static_range(1, SPLIT_K):
                acc += tl.load(tile_ptr + s * tile_elems + offs_t, cache_modifier=".cg")
            _epilogue(acc, c_ptr, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, HAS_BIAS, X_INT8)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")  # re-arm for the next launch
    else:
        _epilogue(acc, c_ptr, xs_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_cm, HAS_BIAS, X_INT8)


@triton.jit
def _split_k_kernel(
    x_ptr, w_ptr, c_ptr, xs_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_wn, stride_cm,
    HAS_BIAS: tl.constexpr, X_INT8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # launched early (programmatic dependent launch): wait for the kernel before us before reading anything
        gdc_wait()
    split_k_tile(x_ptr, w_ptr, c_ptr, xs_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_wn,
                 stride_cm, tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(0), HAS_BIAS,
                 X_INT8, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
