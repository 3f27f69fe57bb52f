"""The int8 attention kernels compiled for each GPU arch without a GPU (the harness and the method: see
test_kernel_compile.py and kernel_compile_harness.py): the attention kernel for head sizes 64 and 128 with
``attention_tiles``' launch shape, 16-bit ``P . V`` in bf16 and fp16, fp8 (e4m3) ``P . V`` where the gate allows it;
the Q/K quant pre-pass per granularity. Runs only with ``INT8_W8A8_COMPILE_MATRIX=1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernel_compile_harness import (  # noqa: E402 - after the path
    ARCHS,
    COMPILE_MARKS,
    DTYPES,
    Spec,
    _skip_unless_the_pack_compiles_here,
    _triton_version,
    check_all,
)

pytestmark = COMPILE_MARKS

# ----------------------------------------------------------------------------------------------- int8 attention
# What launch/attention.py ``int8_attention_triton`` launches for the INT8 Attention node: q, k, v in ComfyUI's
# (B, L, H, D) seen as (B, H, L, D) (Flux-like: 24 heads, 4608 tokens, no GQA), output "blhd". The quant pre-pass
# (no tl.dot) per granularity: block (64-row blocks) or token (16 rows a program, PER_TOKEN), Q without the K mean
# and K with it; the attention kernel (int8 Q . K^T, then P . V in V's 16-bit dtype or, sm_89+ where
# compat.fp8_attention_unavailable_reason allows it, e4m3 V) per head size with attention_tiles' launch shape.
# Granularity does not reach the attention kernel (both give it one scale per row).
ATT_H, ATT_L = 24, 4608
FP8_ARCH = 89  # compat.FP8_MIN_CAPABILITY


def attention_quant_specs(dtype: torch.dtype, head_dim: int) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_attention import _attn_quant_kernel
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles

    tiles = attention_tiles(head_dim, "16bit")
    specs = []
    variants = ((False, False), (False, True), (True, True))  # Q block, K block, K token
    # the dtype only changes the pre-pass's load: fp16 compiles the K block variant (bf16 all three)
    for per_token, has_mean in variants if dtype == torch.bfloat16 else variants[1:2]:
        block = 16 if per_token else (tiles.quant_block_k if has_mean else tiles.quant_block_q)
        specs.append(Spec(f"attention quant D={head_dim} {'token' if per_token else 'block'} mean={has_mean}",
                          _attn_quant_kernel,
                          (dtype, torch.float32, torch.int8, torch.float32, ATT_L, ATT_H, ATT_L * ATT_H * head_dim,
                           head_dim, ATT_H * head_dim, 1.0 if has_mean else head_dim ** -0.5 * 1.4426950408889634),
                          dict(BLOCK=block, D=head_dim, PER_TOKEN=per_token, HAS_MEAN=has_mean, INTERPRETED=False),
                          4, 3, None))  # the launcher's defaults: 4 warps, 3 stages
    return specs


def attention_v_quant_specs(dtype: torch.dtype, head_dim: int) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_attention import _attn_v_quant_kernel
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles

    block_n = attention_tiles(head_dim, "int8").block_n
    return [Spec(f"attention V quant D={head_dim} block {block_n}", _attn_v_quant_kernel,
                 (dtype, torch.int8, torch.float32, ATT_L, ATT_L, ATT_H, ATT_L * ATT_H * head_dim, head_dim,
                  ATT_H * head_dim),
                 dict(BLOCK_N=block_n, D=head_dim, INTERPRETED=False), 4, 3, None)]  # Triton's launch defaults


def attention_specs(dtype: torch.dtype, head_dim: int, pv: str) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels.triton_attention import _int8_attention_kernel
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles

    tiles = attention_tiles(head_dim, pv)
    hd = ATT_H * head_dim
    # fp8 / int8: V is _fp8_values' / _int8_values' transposed (B, H, D, L) copy (L = 4608, a multiple of the key
    # block: no padding); 16-bit: V as given, (B, L, H, D) seen as (B, H, L, D)
    transposed = (ATT_L * hd, ATT_L * head_dim, ATT_L)
    v_dtype, v_strides = {"fp8": (torch.float8_e4m3fn, transposed), "int8": (torch.int8, transposed)}.get(
        pv, (dtype, (ATT_L * hd, head_dim, hd)))
    return [Spec(f"attention D={head_dim} pv={pv} {tiles}", _int8_attention_kernel,
                 (torch.int8, torch.float32, torch.int8, torch.float32, v_dtype, torch.float32, dtype, ATT_L, ATT_L,
                  ATT_H, 1, *v_strides, ATT_L * hd, head_dim, hd),
                 dict(BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, D=head_dim, PV_FP8=pv == "fp8",
                      PV_INT8=pv == "int8"), tiles.warps,
                 tiles.stages, ("int8", {"fp8": "fp8", "int8": "int8"}.get(pv, "float")))]  # Q . K^T int8; P . V


# 16-bit P . V in both dtypes on every arch (the dtype reaches the dot); fp8 P . V on sm_89+ with a bf16 output, and
# with fp16 on sm_90 only (there the output dtype is only the epilogue's cast).
# int8 P . V on every arch with a bf16 output (the output dtype is only the epilogue's cast).
ATTENTION_CASES = [(a, d, pv) for a in ARCHS for d in DTYPES for pv in ("16bit", "fp8", "int8")
                   if pv == "16bit" or (pv == "int8" and d == torch.bfloat16)
                   or (pv == "fp8" and a >= FP8_ARCH and (d == torch.bfloat16 or a == 90))]


@pytest.mark.parametrize("arch,dtype,pv", ATTENTION_CASES,
                         ids=lambda v: f"sm_{v}" if isinstance(v, int) else str(v).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", (64, 128))
def test_attention_kernels_compile_for_arch_with_int8_mma(head_dim: int, arch: int, dtype: torch.dtype,
                                                          pv: str) -> None:
    _skip_unless_the_pack_compiles_here(arch)
    if pv == "fp8":
        from comfy_int8_w8a8.int8 import compat

        reason = compat.fp8_dot_unavailable_reason(divmod(arch, 10), _triton_version())
        if reason is not None:
            pytest.skip(f"the pack runs 16-bit P . V here: {reason}")
    specs = attention_specs(dtype, head_dim, pv)
    if pv == "16bit":  # the pre-pass does not depend on the P . V precision
        specs += attention_quant_specs(dtype, head_dim)
    if pv == "int8":
        specs += attention_v_quant_specs(dtype, head_dim)
    check_all(specs, arch)


@pytest.mark.parametrize("pv", ("16bit", "fp8", "int8"))
def test_hopper_attention_pipelines_v_like_k(pv: str) -> None:
    # On sm_90 both operand tiles of the key loop must reach shared memory by asynchronous copies inside the software
    # pipeline. An fp8 V tile in [keys, D] layout (not K-major, which fp8 wgmma requires) was loaded through registers
    # with a blocking tt.load in the loop instead: fp8 P . V ran 1.4-1.6x slower than 16-bit on an H100.
    import re

    from kernel_compile_harness import compile_spec

    _skip_unless_the_pack_compiles_here(90)
    if pv == "fp8":
        from comfy_int8_w8a8.int8 import compat

        reason = compat.fp8_dot_unavailable_reason((9, 0), _triton_version())
        if reason is not None:
            pytest.skip(f"the pack runs 16-bit P . V here: {reason}")
    (spec,) = attention_specs(torch.bfloat16, 128, pv)
    ttgir = compile_spec(spec, 90).asm["ttgir"]
    bn, d = spec.constexprs["BLOCK_N"], spec.constexprs["D"]
    # K's tile is [keys, D] int8; V's [keys, D] (16-bit) or, transposed, [D, keys] (fp8, int8)
    v_tile = {"fp8": f"{d}x{bn}xf8E4M3FN", "int8": f"{d}x{bn}xi8"}.get(pv, f"{bn}x{d}xbf16")

    def async_copies(tile: str) -> int:
        return len(re.findall(rf"ttg\.async_copy_global_to_local [^\n]*-> <{tile},", ttgir))

    # (the ragged last key block loads both tiles with plain loads, outside the loop)
    assert async_copies(v_tile) == async_copies(f"{bn}x{d}xi8"), f"V ({v_tile}) is not pipelined like K"
    if _triton_version() >= (3, 3):  # Triton 3.2's pipeliner copies neither tile asynchronously in this loop
        assert async_copies(f"{bn}x{d}xi8") > 0, "K is not copied asynchronously into shared memory"


# ------------------------------------------------------------------------------------- Hopper (Gluon) attention
def gluon_attention_specs(dtype: torch.dtype, head_dim: int, pv: str, tiles: object = None) -> list[Spec]:
    from comfy_int8_w8a8.int8.kernels import gluon_attention as kernel
    from comfy_int8_w8a8.int8.launch.gluon_attention import _layout, gluon_attention_tiles

    tiles = tiles or gluon_attention_tiles(head_dim, pv)
    bm, bn, d = tiles.block_m, tiles.block_n, head_dim
    descriptor = kernel._api.TensorDescriptor
    i8 = torch.empty(0, dtype=torch.int8)
    q = descriptor(i8, [ATT_H * ATT_L, d], [d, 1], [bm, d], _layout(bm, d, torch.int8))
    k = descriptor(i8, [ATT_H * ATT_L, d], [d, 1], [bn, d], _layout(bn, d, torch.int8))
    if pv in ("fp8", "int8"):  # V^T (B*H*D, L) e4m3 / int8
        v_dtype = torch.float8_e4m3fn if pv == "fp8" else torch.int8
        v = descriptor(torch.empty(0, dtype=v_dtype), [ATT_H * d, ATT_L], [ATT_L, 1], [d, bn], _layout(d, bn, v_dtype))
        v_rows = (0, 0, 0)
    else:  # ComfyUI's (B, L, H*D)
        v = descriptor(torch.empty(0, dtype=dtype), [ATT_L, ATT_H * d], [ATT_H * d, 1], [bn, d], _layout(bn, d, dtype))
        v_rows = (ATT_L, 0, d)
    return [Spec(f"gluon attention D={d} pv={pv} {tiles}", kernel._int8_attention_ws_kernel,
                 (q, k, v, torch.float32, torch.float32, torch.float32, dtype, ATT_L, ATT_L, ATT_H, 1, *v_rows,
                  ATT_L * ATT_H * d, d, ATT_H * d),
                 dict(STAGES=tiles.stages, PV_FP8=pv == "fp8", PV_INT8=pv == "int8", WORKER_REGS=kernel.WORKER_REGS,
                      CONSUMERS=tiles.consumers, CONSUMER_REGS=tiles.consumer_regs), tiles.warps, 1,
                 ("int8", {"fp8": "fp8", "int8": "int8"}.get(pv, "float")), dict(maxnreg=tiles.maxnreg))]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("pv", ("16bit", "fp8", "int8"))
@pytest.mark.parametrize("head_dim", (64, 128))
def test_gluon_attention_compiles_for_sm90_with_wgmma(head_dim: int, pv: str, dtype: torch.dtype) -> None:
    from comfy_int8_w8a8.int8 import compat

    version = compat.triton_release()
    if not version.startswith(compat.TESTED_TRITON) or compat.gluon_api() is None:
        pytest.skip(f"compat.gluon() runs Gluon kernels only on Triton {compat.TESTED_TRITON}x, this is {version}")
    check_all(gluon_attention_specs(dtype, head_dim, pv), 90)


@pytest.mark.parametrize("pv", ("16bit", "fp8", "int8"))
def test_every_hopper_sweep_tile_compiles_for_sm90(pv: str) -> None:
    # bench attention --sweep-hopper times these on the GPU; each must at least build (one and two consumers).
    from comfy_int8_w8a8.bench.attention import HOPPER_SWEEP
    from comfy_int8_w8a8.int8 import compat

    version = compat.triton_release()
    if not version.startswith(compat.TESTED_TRITON) or compat.gluon_api() is None:
        pytest.skip(f"compat.gluon() runs Gluon kernels only on Triton {compat.TESTED_TRITON}x, this is {version}")
    from comfy_int8_w8a8.int8.launch.gluon_attention import GluonAttentionTiles  # (imports Gluon)

    specs = []
    for bm, bn, stages, warps, regs, consumers, consumer_regs in HOPPER_SWEEP:
        tiles = GluonAttentionTiles(block_m=bm, block_n=bn, stages=stages, warps=warps, maxnreg=regs,
                                    consumers=consumers, consumer_regs=consumer_regs)
        specs += gluon_attention_specs(torch.bfloat16, 128, pv, tiles)
    check_all(specs, 90)
