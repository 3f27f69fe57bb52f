"""The Hopper int8 GEMM with warp specialization, written in Gluon (Triton's explicit-layout dialect).

Same contract and same bits as :mod:`triton_gemm`'s TMA kernel: ``C = cast(acc * x_scale[m] * w_scale[n] (+ bias))``
with ``acc = A_q @ B_q^T`` exact in int32, the epilogue in fp32 in the same order. Why a second kernel: Triton
3.6's automatic warp specialization does not transform the TMA kernel's loops on Hopper (no partitions in its
TTGIR), and a kernel whose one instruction stream both issues the TMA loads and waits on the tensor cores reached
56-63% of the int8 peak at Flux's shapes. Here a 1-warp partition only issues TMA loads into a ring of shared-memory
stages and the two warpgroups of the default partition only run the wgmma chain and the epilogue; GEMM alone, CUDA
graphs, H100 (docs/results/gluon_probe_h100_s7.json): 4608x12288->3072 291.8 -> 250.0 us, 4608x3072->9216 245.4 ->
199.8, 4608x3072->12288 322.4 -> 277.7, outputs bit-identical to the TMA kernel.

Layout: a persistent grid (one program per SM) walks the output tiles in grouped order; stage ``s`` has a "ready"
barrier (TMA bytes landed) and an "empty" one (its wgmma retired). The consumer keeps one async wgmma group in
flight and frees the stage of the group that just retired. int8 wgmma is m64nNk32 with N <= 128 in Triton 3.6 (an
N=256 instruction asserts in its lowering), so a 256-wide tile is two instructions per warpgroup and k-step.

Only sm_90 (wgmma does not exist on Blackwell, whose path is tcgen05) and 16-bit outputs (an fp32 C tile does not
fit next to the stages). :mod:`int8.launch.gemm_choice` decides per shape between this kernel and the TMA one by timing both. Launched by
:mod:`int8.launch.gluon_gemm`; importable only where :func:`int8.compat.gluon_api` finds Gluon (ImportError else).
"""

from __future__ import annotations

from typing import NamedTuple

from ..compat import gluon_api

_api = gluon_api()
if _api is None:
    raise ImportError("this Triton has no Gluon with the Hopper API the warp-specialized GEMM uses (see int8/compat/)")
gluon, gl = _api.gluon, _api.gl
fence_async_shared, mbarrier, tma = _api.fence_async_shared, _api.mbarrier, _api.tma
warpgroup_mma, warpgroup_mma_wait = _api.warpgroup_mma, _api.warpgroup_mma_wait

__all__ = ["GluonConfig", "CONFIGS", "GROUP_M", "WORKER_REGS"]

GROUP_M = gl.constexpr(8)  # grouped tile order, as in triton_gemm
WORKER_REGS = 40  # the TMA partition's registers per thread (it holds only scalars)


class GluonConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    stages: int
    warps: int
    epilogue_split: int  # column pieces the epilogue stores one after the other (registers, shared memory)

    @property
    def maxnreg(self) -> int:
        # 8 warps + the worker padded to a warpgroup = 12 warps: 12 * 32 * 168 fits the 64K-register file.
        return 168 if self.warps == 8 else 256


# The two fastest of an H100 sweep at Flux's shapes (gluon_probe_h100_s7.json): 128x256 with 4 stages won all
# three; 128x128 with 6 stages was within 2-4% at 4608x12288->3072 and 4608x3072->9216.
CONFIGS = (GluonConfig(128, 256, 128, 4, 8, 2), GluonConfig(128, 128, 128, 6, 8, 1))


@gluon.constexpr_function
def _mma_layout(num_warps, n):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, min(n, 128), 32])


@gluon.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP: gl.constexpr):
    num_in_group = GROUP * num_pid_n
    first_pid_m = (tile_id // num_in_group) * GROUP
    group_size_m = min(num_pid_m - first_pid_m, GROUP)
    return first_pid_m + (tile_id % num_in_group) % group_size_m, (tile_id % num_in_group) // group_size_m


@gluon.jit
def _producer(a_desc, b_desc, bufs, M, N, K):
    a_bufs, b_bufs, ready, empty = bufs
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    NB: gl.constexpr = a_bufs.type.shape[0]
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    it = 0
    for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        for kk in range(gl.cdiv(K, BK)):
            s = it % NB
            # A fresh mbarrier counts as "previous phase complete": the first round's wait (parity 1) passes.
            mbarrier.wait(empty.index(s), ((it // NB) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * BM, kk * BK], bar, a_bufs.index(s))
            tma.async_copy_global_to_shared(b_desc, [pid_n * BN, kk * BK], bar, b_bufs.index(s))
            it += 1


@gluon.jit
def _split_columns(x, HALF_LAYOUT: gl.constexpr):
    """[BM, W] -> two [BM, W/2] column halves; register-only for the wgmma accumulator layout (asserted)."""
    lo, hi = x.reshape([x.shape[0], 2, x.shape[1] // 2]).permute((0, 2, 1)).split()
    return (gl.convert_layout(lo, HALF_LAYOUT, assert_trivial=True),
            gl.convert_layout(hi, HALF_LAYOUT, assert_trivial=True))


@gluon.jit
def _store_piece(acc, xs, ws_ptr, bias_ptr, N, off_m, off_n, c_desc, c_smem, HAS_BIAS: gl.constexpr):
    """Dequant one [BM, W] piece (fp32: acc * xs * ws + bias, triton_gemm's order) and TMA-store it at (off_m, off_n)."""
    layout: gl.constexpr = acc.type.layout
    offs_n = off_n + gl.arange(0, acc.shape[1], gl.SliceLayout(0, layout))
    n_mask = offs_n < N
    ws = gl.load(ws_ptr + offs_n, mask=n_mask, other=0.0)
    xs = gl.convert_layout(xs, gl.SliceLayout(1, layout), assert_trivial=True)
    y = acc.to(gl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + gl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(gl.float32)[None, :]
    tma.store_wait(0)  # the previous piece's TMA store has finished reading c_smem
    c_smem.store(y.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)  # TMA clips rows/columns past M/N


@gluon.jit
def _consumer(bufs, c_desc, c_smem, xs_ptr, ws_ptr, bias_ptr, M, N, K, SPLIT: gl.constexpr,
              HAS_BIAS: gl.constexpr):
    a_bufs, b_bufs, ready, empty = bufs
    NB: gl.constexpr = a_bufs.type.shape[0]
    BM: gl.constexpr = a_bufs.type.shape[1]
    BK: gl.constexpr = a_bufs.type.shape[2]
    BN: gl.constexpr = b_bufs.type.shape[1]
    acc_layout: gl.constexpr = _mma_layout(gl.num_warps(), BN)
    half_layout: gl.constexpr = _mma_layout(gl.num_warps(), BN // 2)
    num_pid_m = gl.cdiv(M, BM)
    num_pid_n = gl.cdiv(N, BN)
    acc = gl.zeros([BM, BN], gl.int32, acc_layout)
    it = 0
    for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BM
        off_n = pid_n * BN
        for kk in range(gl.cdiv(K, BK)):
            s = it % NB
            mbarrier.wait(ready.index(s), (it // NB) & 1)
            acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, use_acc=kk > 0, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # the previous stage's group has retired
            gl.thread_barrier()  # both warpgroups are past their wait before thread 0 frees that stage
            mbarrier.arrive(empty.index((it + NB - 1) % NB), count=1, pred=kk > 0)
            it += 1
        offs_m = off_m + gl.arange(0, BM, gl.SliceLayout(1, acc_layout))
        xs = gl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0)  # issued before the drain: hides its latency
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        gl.thread_barrier()
        mbarrier.arrive(empty.index((it + NB - 1) % NB), count=1)
        if SPLIT == 1:
            _store_piece(acc, xs, ws_ptr, bias_ptr, N, off_m, off_n, c_desc, c_smem, HAS_BIAS)
        else:
            gl.static_assert(SPLIT == 2, "epilogue_split must be 1 or 2")
            lo, hi = _split_columns(acc, half_layout)
            _store_piece(lo, xs, ws_ptr, bias_ptr, N, off_m, off_n, c_desc, c_smem, HAS_BIAS)
            _store_piece(hi, xs, ws_ptr, bias_ptr, N, off_m, off_n + BN // 2, c_desc, c_smem, HAS_BIAS)
    tma.store_wait(0)


@gluon.jit
def _int8_gemm_ws_kernel(a_desc, b_desc, c_desc, xs_ptr, ws_ptr, bias_ptr, M, N, K, NUM_BUFFERS: gl.constexpr,
                         SPLIT: gl.constexpr, HAS_BIAS: gl.constexpr, WORKER_REGS: gl.constexpr):
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_BUFFERS] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_BUFFERS] + b_desc.block_type.shape, b_desc.layout)
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUFFERS, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUFFERS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUFFERS):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    bufs = (a_bufs, b_bufs, ready, empty)
    gl.warp_specialize(
        [(_consumer, (bufs, c_desc, c_smem, xs_ptr, ws_ptr, bias_ptr, M, N, K, SPLIT, HAS_BIAS)),
         (_producer, (a_desc, b_desc, bufs, M, N, K))],
        [1], [WORKER_REGS])

