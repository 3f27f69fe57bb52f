"""Host side of the warp-specialized Hopper int8 attention (device code: :mod:`int8.kernels.gluon_attention`):
tiles, shared-memory layouts, the 2-D views the TMA descriptors read, and the launch. Called by
:func:`int8.launch.attention.int8_attention_triton` after its Q/K quant pre-pass, with the same operands the
generic kernel takes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import compat
from ..kernels.gluon_attention import WORKER_REGS, _int8_attention_ws_kernel, gl
from .host import capability, cdiv, descriptor, device_index

__all__ = ["GluonAttentionTiles", "gluon_attention_tiles", "gluon_attention_supported", "gluon_attention"]

_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float8_e4m3fn: gl.float8e4nv,
              torch.int8: gl.int8}


@dataclass(frozen=True)
class GluonAttentionTiles:
    """Query rows and key rows per tile, K/V stages, warps of the default partition, registers per thread at launch;
    ``consumers``: 1 (the default partition computes the tile) or 2 (it and a worker of as many warps with
    ``consumer_regs`` registers each compute one half each; see the kernel)."""

    block_m: int = 64
    block_n: int = 128
    stages: int = 2
    warps: int = 4
    # 4 consumer warps + the TMA warp padded to a warpgroup = 8 warps: 8 * 32 * 128 registers and ~104 KB of shared
    # memory (D = 128) let two CTAs share an SM. On an H100 this tile was the fastest of bench attention
    # --sweep-hopper (Flux 1024^2 0.58 ms vs 0.71 ms for 128 x 128 with 8 warps; Wan 480p 37.9 vs 44.9 ms); the same
    # tile with 256 registers (one CTA per SM) ran 0.82 / 52.9 ms.
    maxnreg: int = 128
    consumers: int = 1
    consumer_regs: int = 0


def gluon_attention_tiles(head_dim: int, pv: str) -> GluonAttentionTiles:
    """The tile :class:`GluonAttentionTiles` defaults to, for every head size and P . V precision: the sweep's
    fastest on an H100 at both Flux and Wan lengths (BENCHMARKS.md, "INT8 attention")."""
    return GluonAttentionTiles()


def gluon_attention_supported(device: torch.device) -> bool:
    """Whether the warp-specialized kernel can run on ``device``: sm_90 exactly (wgmma) and the Gluon gate
    (:func:`compat.gluon`: the Triton release it was written against, ``INT8_W8A8_NO_GLUON`` unset)."""
    return device.type == "cuda" and capability(device_index(device))[0] == 9 and compat.gluon()


@functools.cache
def _layout(rows: int, cols: int, dtype: torch.dtype) -> object:
    return gl.NVMMASharedLayout.get_default_for([rows, cols], _GL_DTYPES.get(dtype, gl.int8))


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])


def _v_rows(v: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """A 16-bit V ``(B, Hkv, Lk, D)`` as the 2-D tensor the kernel's descriptor reads and (V_ROWS_B, V_ROWS_H,
    V_COL_H): its contiguous layout, or ComfyUI's ``(B, Lk, Hkv*D)`` seen as (B, Hkv, Lk, D), else a contiguous copy."""
    b, hkv, lk, d = v.shape
    if v.permute(0, 2, 1, 3).is_contiguous() and _aligned(v):
        return v.permute(0, 2, 1, 3).reshape(b * lk, hkv * d), lk, 0, d
    v = v if v.is_contiguous() and _aligned(v) else v.contiguous()
    return v.reshape(b * hkv * lk, d), hkv * lk, lk, 0


def gluon_attention(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, ks: torch.Tensor, v: torch.Tensor,
                    vs: torch.Tensor, out: torch.Tensor, out_strides: tuple[int, int, int], heads: int, pv: str,
                    tiles: GluonAttentionTiles | None = None) -> None:
    """Write the attention of the quantized operands into ``out``: ``q8 (B*H, Lq, D)`` / ``k8 (B*Hkv, Lk, D)`` int8
    with fp32 row scales ``qs (B*H, Lq)`` / ``ks (B*Hkv, Lk)`` (the pre-pass's, ``qs`` carrying the softmax scale in
    log2 units); ``v`` the 16-bit ``(B, Hkv, Lk, D)``, or for ``pv="fp8"`` the transposed e4m3 ``(B, Hkv, D, Lk')``
    with its zeroed padding and ``vs (B*Hkv, D)`` scales, or for ``pv="int8"`` the transposed int8 one with
    ``vs (B*Hkv, Lk' / block_n, D)`` (:func:`int8.launch.attention._int8_values` with the tiles' ``block_n``);
    ``out_strides``: the output's (batch, head, row) strides."""
    bh, lq, d = q8.shape
    lk = k8.shape[1]
    b = bh // heads
    hkv = k8.shape[0] // b
    tiles = tiles or gluon_attention_tiles(d, pv)
    bm, bn = tiles.block_m, tiles.block_n
    q_desc = descriptor(q8.view(bh * lq, d), [bm, d], _layout(bm, d, torch.int8))
    k_desc = descriptor(k8.view(-1, d), [bn, d], _layout(bn, d, torch.int8))
    if pv in ("fp8", "int8"):  # V^T (B*Hkv*D, Lk'); int8: vs holds one scale per (key block of bn, channel)
        v_desc = descriptor(v.view(b * hkv * d, v.shape[-1]), [d, bn], _layout(d, bn, v.dtype))
        v_rows_b = v_rows_h = v_col_h = 0  # the kernel addresses V^T by (batch, kv head) itself
    else:
        v2, v_rows_b, v_rows_h, v_col_h = _v_rows(v)
        v_desc = descriptor(v2, [bn, d], _layout(bn, d, v.dtype))
    _int8_attention_ws_kernel[(cdiv(lq, bm), bh)](
        q_desc, k_desc, v_desc, qs, ks, vs, out, lq, lk, heads, heads // hkv, v_rows_b, v_rows_h, v_col_h,
        *out_strides, STAGES=tiles.stages, PV_FP8=pv == "fp8", PV_INT8=pv == "int8", WORKER_REGS=WORKER_REGS,
        CONSUMERS=tiles.consumers,
        CONSUMER_REGS=tiles.consumer_regs, num_warps=tiles.warps, maxnreg=tiles.maxnreg)
