"""Few-rows W8A8 in one launch: the per-token activation quant and the split-K GEMM in a single kernel.

At <= 64 rows the layer's GPU time is ~10 us, and the two-kernel path (quant kernel, then the split-K GEMM with
programmatic dependent launch) costs an uncompiled model two Triton launches plus an allocation for the
quantized rows: on an H100 host 36-39 us of CPU per 3072x3072 call at 33-64 rows against 26-29 us for bf16
``F.linear`` (docs/results/plan_probe_h100_s6_two_launch_plans.json). One launch and a persistent scratch buffer
remove both. Its GPU time is 0.4-1.2 us longer than the two kernels' with programmatic dependent launch
(docs/results/fused_variants_h100_s6.json), so calls recorded into a CUDA graph, where launches cost no CPU,
keep the two kernels (:func:`int8.backends.triton_dispatch.w8a8_linear`).

The grid is M quant programs (one row each) followed by the GEMM programs. A quant program writes its int8 row
and scale into a per-device scratch buffer, then counts itself in a ready counter (release). A GEMM program spins
on that counter (acquire) until all M rows are in, then runs its split-K tile. CUDA dispatches a grid's blocks in
increasing linear order, so every quant program is resident or done before any GEMM program spins (the
forward-progress assumption of CUB's decoupled look-back), and quant programs wait on nothing: no deadlock. The
last GEMM program past the wait re-arms both counters to zero: no memset, CUDA-graph safe. Like the split-K
workspace, the scratch and counters are shared per device: two of these kernels must not run concurrently on
different streams of one GPU.

Both phases are the two-kernel path's own bodies (:func:`triton_quant.quantize_rows`,
:func:`triton_splitk.split_k_tile`), so the output is bit-identical to it (GPU test). Launched by
:mod:`int8.launch.fused_w8a8`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_quant import quantize_rows
from .triton_splitk import split_k_tile


@triton.jit
def _fused_kernel(
    x_ptr, smooth_ptr, xq_ptr, xs_ptr, w_ptr, c_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, sync_ptr,
    M, N, K, stride_xm, stride_wn, stride_cm,
    CHUNK: tl.constexpr, HAS_SMOOTH: tl.constexpr, SINGLE_CHUNK: tl.constexpr, INTERPRETED: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < M:
        rows = pid + tl.arange(0, 1)
        quantize_rows(x_ptr, smooth_ptr, xq_ptr, xs_ptr, rows, rows < M, K, stride_xm, K, CHUNK, HAS_SMOOTH,
                      SINGLE_CHUNK, INTERPRETED)
        tl.debug_barrier()  # every thread's stores are issued before the counter says the row is in
        tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
    else:
        g = pid - M
        tiles_n = tl.cdiv(N, BLOCK_N)
        tiles_m = tl.cdiv(M, BLOCK_M)
        ready = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        while ready < M:  # (volatile loads instead of atomics spun slower: fused_variants_h100_s6.json)
            ready = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()
        passed = tl.atomic_add(sync_ptr + 1, 1, sem="relaxed", scope="gpu")
        if passed == tl.num_programs(0) - M - 1:  # the last one past the wait: nobody reads the counters again
            tl.atomic_xchg(sync_ptr + 1, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(sync_ptr, 0, sem="relaxed", scope="gpu")
        split_k_tile(xq_ptr, w_ptr, c_ptr, xs_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, K, K, stride_wn,
                     stride_cm, g % tiles_n, (g // tiles_n) % tiles_m, g // (tiles_n * tiles_m), tiles_n, HAS_BIAS,
                     True, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
