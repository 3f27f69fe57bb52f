"""The Triton kernels compiled for each GPU arch the pack runs them on, without a GPU: PTX and cubin per target.

The interpreter tests (test_interpreted_kernels.py) run the kernel bodies on the CPU but cannot show what breaks
only in the GPU compiler: a lowering that does not exist for one arch (an int8 or bf16 ``tl.dot`` on sm_120), an
instruction of the wrong generation (``wgmma`` outside sm_90), ptxas errors, or a config whose shared memory does
not fit the arch. Here each kernel is compiled through its JIT (``kernel.warmup``, so the specialization is the
JIT's own) against a stand-in driver whose target is the arch: Triton's wheels bundle ptxas, so this yields the
cubin, and the PTX is checked for the tensor-core instruction the arch should get.

What is compiled is what the launchers in int8/launch/ launch: their argument dtypes, representative integer
arguments (multiples of 16 where the layer shapes are), their config tables and launch-shape functions, PDL flags
where :func:`launch.host.supports_pdl` sets them (sm_90+), for bf16 and fp16 activations/outputs:

- generic kernels (sm_80, sm_86, sm_89, sm_90, sm_100, sm_120): per-token quant (whole row / chunked, smooth),
  both rotated quant kernels, the pointer GEMM with each config of the table its arch gets (Ampere table below
  sm_90, Hopper table from sm_90 on: launch/gemm.py ``_pointer_configs``), split-K W8A8 and W8A16 with the configs
  of ``w8a8_config`` / ``w8a16_config``, the W8A16 GEMV, the fused few-rows W8A8 kernel;
- the int8 attention (launch/attention.py ``int8_attention_triton``), every arch: the attention kernel for head
  sizes 64 and 128 with ``attention_tiles``' launch shape, 16-bit ``P . V`` in bf16 and fp16, fp8 (e4m3) ``P . V``
  on sm_89+ only (``compat.fp8_attention_unavailable_reason``), its MMA check both dots (int8 ``Q . K^T``, then
  16-bit or e4m3 ``P . V``); the Q/K quant pre-pass per granularity (block, token), with and without the K mean;
- Hopper-only kernels, sm_90 only: the TMA GEMM with each of ``TMA_CONFIGS`` (Triton >= 3.4, as the gate says) and
  the Gluon GEMM (the Triton release the gate allows it on). That the launch layer never routes another arch to
  them is tested in test_compat.py (``test_hopper_tma_kernel_only_on_sm90_exactly``,
  ``test_gluon_kernel_only_on_sm90_exactly``).

Trimmed for time: fp16 compiles on sm_80, sm_90, sm_100 and sm_120 (bf16 on every arch). Where the activation dtype
only changes loads and the epilogue's cast (the int8 GEMMs, the fused kernel, the GEMV), fp16 compiles one variant
and bf16 all of them; where it reaches ``tl.dot`` (rotations, W8A16 split-K) both compile every variant. Split-K
compiles the configs of two row counts (16x128 tiles split 4 ways, 64xN unsplit), the rotations both kernels
(one-pass with two group blocks; chunked: one quant and one absmax pass). Attention compiles the pre-pass in fp16
for the K block variant only, and fp8 ``P . V`` with an fp16 output on sm_90 only (there the dtype is only the
loads and the epilogue's cast); it adds about 30 s per shard. About 130 s of CPU per Triton version, so it runs only with ``INT8_W8A8_COMPILE_MATRIX=1``; ``.ci/triton_matrix.sh`` sets it once per Triton version
and runs two processes over the archs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernel_compile_harness import (  # noqa: E402 - after the path
    ARCH_DTYPES,
    COMPILE_MARKS,
    DTYPES,
    Spec,
    _pdl,
    _skip_unless_the_pack_compiles_here,
    _triton_version,
    check_all,
)

pytestmark = COMPILE_MARKS

def quant_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_quant import _quant_per_token_kernel
    from comfy_int8_w8a8.int8.launch.quant import _plain_launch_shape

    specs = []
    for m, k, smooth in ((4096, 3072, False), (33, 12288, True), (1, 20480, False)):  # whole row, few rows, chunked
        chunk, block_m, warps = _plain_launch_shape(k, m)
        specs.append(Spec(f"quant m={m} k={k} smooth={smooth}", _quant_per_token_kernel,
                          (dtype, dtype, torch.int8, torch.float32, m, k, k, k),
                          dict(CHUNK=chunk, HAS_SMOOTH=smooth, BLOCK_M=block_m, SINGLE_CHUNK=k <= chunk,
                               INTERPRETED=False, TRIGGER=_pdl(arch)), warps, 3, None))
    return specs


def rotated_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels import triton_quant_rotated as rot
    from comfy_int8_w8a8.int8.launch.host import cdiv, next_power_of_2
    from comfy_int8_w8a8.int8.launch.quant import one_pass_launch_shape, rot_row_group_split

    specs = []
    for group, k, smooth in ((256, 12288, False), (64, 3072, True)):  # one pass: 32 + 16 groups; 16 groups
        g_a, g_b = rot_row_group_split(k // 256)
        _, warps, stages = one_pass_launch_shape(k)
        specs.append(Spec(f"rotated one-pass group={group} k={k}", rot._rotated_row_quant_kernel,
                          (dtype, dtype, dtype, torch.int8, torch.float32, 4096, k, k, k),
                          dict(GROUP=group, HAS_SMOOTH=smooth, G_A=g_a, G_B=g_b, INTERPRETED=False), warps, stages,
                          "float"))
        specs.append(Spec(f"rotation only group={group} k={k}", rot._rotated_row_kernel,
                          (dtype, dtype, dtype, dtype, 32, k, k, k),
                          dict(GROUP=group, HAS_SMOOTH=smooth, G_A=g_a, G_B=g_b), warps, stages, "float"))
    k = 2432  # 64-column groups, K % 256 != 0 (SD3.5-large): 38 blocks in 32 + 16
    g_a, g_b = rot_row_group_split(k // 64)
    _, warps, stages = one_pass_launch_shape(k)
    specs.append(Spec(f"rotated one-pass 64-blocks k={k}", rot._rotated_blocks64_quant_kernel,
                      (dtype, dtype, dtype, torch.int8, torch.float32, 4096, k, k, k),
                      dict(HAS_SMOOTH=True, G_A=g_a, G_B=g_b, INTERPRETED=False), warps, stages, "float"))
    # chunked (K past the one-pass kernel, or not a multiple of 256): 1024-column chunks, quant pass; 64-groups
    # with K % 256 != 0, absmax pass (the two passes share the rotation; one of each keeps the time down)
    for group, k, quant in ((1024, 4096, True), (64, 3136, False)):
        n_chunks = cdiv(k, 1024 if group >= 1024 else 256)
        specs.append(Spec(f"rotated chunked group={group} k={k} quant={quant}", rot._rotated_quant_kernel,
                          (dtype, dtype, dtype, torch.int8, torch.float32, torch.float32, 4096, k, k, k, n_chunks),
                          dict(GROUP=group, HAS_SMOOTH=False, BLOCK_M=rot.ROT_BLOCK_M,
                               NCHUNK_P2=next_power_of_2(n_chunks), QUANT=quant, INTERPRETED=False),
                          rot.ROT_WARPS, 3, "float"))
    return specs


def pointer_gemm_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels import triton_gemm

    table = triton_gemm.POINTER_CONFIGS_HOPPER if arch >= 90 else triton_gemm.POINTER_CONFIGS_AMPERE
    name = "hopper" if arch >= 90 else "ampere"
    configs = list(enumerate(table)) if dtype == torch.bfloat16 else [(0, table[0])]
    m, n, k = 4096, 3072, 3072
    return [Spec(f"pointer gemm {name}[{i}] {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages}",
                 triton_gemm._int8_gemm_kernel,
                 (torch.int8, torch.int8, dtype, torch.float32, torch.float32, dtype, m, n, k, k, k, n, m),
                 dict(HAS_BIAS=True, **cfg.kwargs), cfg.num_warps, cfg.num_stages, "int8") for i, cfg in configs]


def _split_k_spec(label: str, int8_x: bool, dtype: torch.dtype, m: int, n: int, k: int, config: tuple,
                  pdl: bool) -> Spec:
    from comfy_int8_w8a8.int8.kernels.triton_splitk import _split_k_kernel

    block_m, block_n, block_k, split, warps, stages = config
    x, part = (torch.int8, torch.int32) if int8_x else (dtype, torch.float32)
    return Spec(f"{label} m={m} {config} pdl={pdl}", _split_k_kernel,
                (x, torch.int8, dtype, torch.float32, torch.float32, dtype, part, torch.int32, m, n, k, k, k, n),
                dict(HAS_BIAS=True, X_INT8=int8_x, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split,
                     PDL=pdl), warps, stages, "int8" if int8_x else "float")


SMS = 132  # H100's SM count: it only sets how far K is split, and the rows below reach splits 1, 2 and 4


def split_k_w8a8_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.launch.splitk import w8a8_config

    # m=1: 16x128 tiles, K split in 4; m=33: 64x32 tiles, unsplit (fp16: the first only, see the module doc)
    rows = (1, 33) if dtype == torch.bfloat16 else (1,)
    # The two-kernel W8A8 path launches it with PDL after the quant kernel where supports_pdl (sm_90+).
    return [_split_k_spec("split-k w8a8", True, dtype, m, 3072, 3072, w8a8_config(m, 3072, 3072, SMS), _pdl(arch))
            for m in rows]


def split_k_w8a16_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.launch.w8a16 import w8a16_config

    return [_split_k_spec("split-k w8a16", False, dtype, m, 3072, 3072, w8a16_config(m, 3072, 3072, SMS), False)
            for m in (1, 64)]  # 16x128 tiles split in 4; 64x64 tiles (the x dtype reaches tl.dot: both dtypes)


def gemv_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_gemv import _gemv_kernel
    from comfy_int8_w8a8.int8.launch import gemv

    n, k = 18432, 3072
    return [Spec(f"gemv rows={rows}", _gemv_kernel, (dtype, torch.int8, dtype, torch.float32, dtype, n, k, k, k, n),
                 dict(HAS_BIAS=True, ROWS=rows, BLOCK_N=gemv._BLOCK_N, BLOCK_K=gemv._BLOCK_K, STAGES=gemv._STAGES),
                 gemv._WARPS, 3, None) for rows in ((1, 2) if dtype == torch.bfloat16 else (2,))]


def fused_specs(arch: int, dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_fused_w8a8 import _fused_kernel
    from comfy_int8_w8a8.int8.launch.fused_w8a8 import _CHUNK
    from comfy_int8_w8a8.int8.launch.host import next_power_of_2
    from comfy_int8_w8a8.int8.launch.splitk import w8a8_config

    specs = []
    cases = ((1, 3072, False), (64, 12288, True)) if dtype == torch.bfloat16 else ((1, 3072, False),)
    for m, k, smooth in cases:
        n = 3072
        block_m, block_n, block_k, split, warps, stages = config = w8a8_config(m, n, k, SMS)
        chunk = min(next_power_of_2(k), _CHUNK)
        specs.append(Spec(f"fused w8a8 m={m} k={k} {config}", _fused_kernel,
                          (dtype, dtype, torch.int8, torch.float32, torch.int8, dtype, torch.float32, dtype, torch.int32,
                           torch.int32, torch.int32, m, n, k, k, k, n),
                          dict(CHUNK=chunk, HAS_SMOOTH=smooth, SINGLE_CHUNK=k <= chunk, INTERPRETED=False,
                               HAS_BIAS=True, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split),
                          warps, stages, "int8"))
    return specs


GENERIC = {"quant": quant_specs, "rotated": rotated_specs, "pointer_gemm": pointer_gemm_specs,
           "split_k_w8a8": split_k_w8a8_specs, "split_k_w8a16": split_k_w8a16_specs, "gemv": gemv_specs,
           "fused_w8a8": fused_specs}
OVER_SHARED_OK = {"pointer_gemm"}  # autotuned: a config that does not fit is skipped at run time


@pytest.mark.parametrize("arch,dtype", ARCH_DTYPES, ids=lambda v: f"sm_{v}" if isinstance(v, int) else
                         str(v).removeprefix("torch."))
@pytest.mark.parametrize("family", list(GENERIC))
def test_generic_kernel_compiles_for_arch_with_its_tensor_core_mma(family: str, arch: int, dtype: torch.dtype,
                                                                   record_property: Callable) -> None:
    _skip_unless_the_pack_compiles_here(arch)
    too_big = check_all(GENERIC[family](arch, dtype), arch, over_shared_ok=family in OVER_SHARED_OK)
    if too_big:  # not a failure (the autotuner skips them there), but worth seeing in the log
        record_property("over_shared", too_big)
        print(f"sm_{arch} {family}: configs the autotuner will skip (shared memory): {too_big}")


# ------------------------------------------------------------------------------------------- Hopper-only (sm_90)
def tma_specs(dtype: torch.dtype) -> list[Spec]:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from comfy_int8_w8a8.int8.kernels import triton_gemm
    from comfy_int8_w8a8.int8.launch.gemm import m_bucket

    m, n, k = 4096, 3072, 3072
    a = torch.empty(0, dtype=torch.int8)  # only dtype, shape and strides reach the compiler
    c = torch.empty(0, dtype=dtype)
    configs = list(enumerate(triton_gemm.TMA_CONFIGS)) if dtype == torch.bfloat16 else [(0, triton_gemm.TMA_CONFIGS[0])]
    specs = []
    for i, cfg in configs:
        kw = cfg.kwargs
        bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
        descs = (TensorDescriptor(a, [m, k], [k, 1], [bm, bk]), TensorDescriptor(a, [n, k], [k, 1], [bn, bk]),
                 TensorDescriptor(c, [m, n], [n, 1], [bm, bn // 2 if kw["EPILOGUE_SUBTILE"] else bn]))
        specs.append(Spec(f"tma gemm [{i}] {kw} w{cfg.num_warps} s{cfg.num_stages}", triton_gemm._int8_gemm_tma_kernel,
                          (*descs, dtype, torch.float32, torch.float32, dtype, torch.int32, torch.int32, m, n, k, n,
                           m_bucket(m)),
                          dict(HAS_BIAS=True, CAN_TMA_STORE=True, NUM_SMS=SMS, **kw), cfg.num_warps, cfg.num_stages,
                          "int8"))
    return specs


def gluon_specs(dtype: torch.dtype) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels import gluon_gemm
    from comfy_int8_w8a8.int8.launch.gluon_gemm import _layouts

    m, n, k = 4096, 3072, 3072
    descriptor = gluon_gemm._api.TensorDescriptor
    a, c = torch.empty(0, dtype=torch.int8), torch.empty(0, dtype=dtype)
    specs = []
    for cfg in gluon_gemm.CONFIGS:
        la, lb, lc = _layouts(cfg, dtype)
        descs = (descriptor(a, [m, k], [k, 1], [cfg.block_m, cfg.block_k], la),
                 descriptor(a, [n, k], [k, 1], [cfg.block_n, cfg.block_k], lb),
                 descriptor(c, [m, n], [n, 1], [cfg.block_m, cfg.block_n // cfg.epilogue_split], lc))
        specs.append(Spec(f"gluon gemm {cfg}", gluon_gemm._int8_gemm_ws_kernel,
                          (*descs, torch.float32, torch.float32, dtype, m, n, k),
                          dict(NUM_BUFFERS=cfg.stages, SPLIT=cfg.epilogue_split, HAS_BIAS=True,
                               WORKER_REGS=gluon_gemm.WORKER_REGS), cfg.warps, 1, "int8",
                          dict(maxnreg=cfg.maxnreg)))
    return specs


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_tma_gemm_compiles_for_sm90_with_wgmma(dtype: torch.dtype) -> None:
    from comfy_int8_w8a8.int8 import compat

    _skip_unless_the_pack_compiles_here(90)
    if _triton_version() < compat.TMA_TRITON:
        pytest.skip(f"the TMA kernel needs host tensor descriptors (Triton >= {compat.TMA_TRITON}); "
                    "compat.host_tma() keeps the pointer kernel here")
    check_all(tma_specs(dtype), 90)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_gluon_gemm_compiles_for_sm90_with_wgmma(dtype: torch.dtype) -> None:
    from comfy_int8_w8a8.int8 import compat

    version = compat.triton_release()
    if not version.startswith(compat.TESTED_TRITON) or compat.gluon_api() is None:
        pytest.skip(f"compat.gluon() runs the Gluon kernel only on Triton {compat.TESTED_TRITON}x, this is {version}")
    check_all(gluon_specs(dtype), 90)
