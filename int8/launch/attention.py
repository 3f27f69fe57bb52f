"""Host side of the generic int8 attention (device code: :mod:`int8.kernels.triton_attention`; the scheme and its
float64 reference: :mod:`int8.attention_reference`): checks, the K mean, the Q/K quant pre-pass, the fp8 V, the
output layout and the launches. Which precision runs, and whether this path runs at all, is decided above, in
:mod:`int8.backends.attention`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .. import compat
from ..attention_reference import FP8_MAX, PV_PRECISIONS
from ..kernels.triton_attention import _attn_quant_kernel, _attn_v_quant_kernel, _int8_attention_kernel
from ..kernels.triton_quant_common import INTERPRETED
from ..log_once import exception_line
from .host import cdiv

_BuildError = compat.triton_build_error()

log = logging.getLogger(__name__)

__all__ = ["HEAD_DIMS", "GRANULARITIES", "OUT_LAYOUTS", "KERNELS", "AttentionTiles", "attention_tiles",
           "hopper_kernel_runs", "int8_attention_triton"]

HEAD_DIMS = (64, 128)  # tl.arange needs a power of two; the two head sizes of Flux, Wan, SD3, HunyuanVideo, LTX
GRANULARITIES = ("block", "token")
KERNELS = ("generic", "hopper", "auto")  # the Triton kernel (any GPU); the warp-specialized Gluon one (sm_90)
OUT_LAYOUTS = ("bhld", "blhd")  # (B, H, Lq, D), or (B, Lq, H, D): ComfyUI's (B, Lq, H*D) without a copy
_LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class AttentionTiles:
    """Launch shape: attention tile (query rows x key rows), warps and stages; quant-scale block sizes."""

    block_m: int = 128
    block_n: int = 64
    warps: int = 8
    stages: int = 2
    quant_block_q: int = 64
    quant_block_k: int = 64


def attention_tiles(head_dim: int, pv: str) -> AttentionTiles:
    """The tile for a head size on the GPU. A first table, not tuned on hardware (issue #21's benchmark will
    decide): FlashAttention-2's Triton tutorial shape, smaller key blocks for D=128 to fit the fp32 accumulator."""
    if INTERPRETED:  # (int8 P.V: Triton 3.0/3.1 refuse an int8 dot over fewer than 32 keys)
        return AttentionTiles(block_m=16, block_n=32 if pv == "int8" else 16, warps=1, stages=1, quant_block_q=16,
                              quant_block_k=16)
    if head_dim == 64:
        return AttentionTiles(block_m=128, block_n=64, warps=4, stages=3)
    # int8 P.V keeps 64-key blocks: its P and V scales are per key block, and 128 keys raised the emulated error at
    # the Flux shape from 1.8% to 2.0% (bench/attention_numerics.py).
    return AttentionTiles(block_m=128, block_n=128 if pv == "fp8" else 64, warps=8, stages=2)


_hopper_broken: set[torch.device] = set()  # devices where the Hopper kernel failed to build (kernel="auto")


def hopper_kernel_runs(device: torch.device) -> bool:
    """Whether ``kernel="auto"`` takes the Hopper kernel on ``device``: an sm_90 GPU, Gluon's Hopper API and the
    Gluon gate (:func:`int8.launch.gluon_attention.gluon_attention_supported`), and no earlier build failure."""
    if device.type != "cuda" or device in _hopper_broken:
        return False
    try:
        from .gluon_attention import gluon_attention_supported
    except ImportError:  # a Triton without Gluon's Hopper API: compat.gluon() has said so for the GEMM
        return False
    return gluon_attention_supported(device)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str, granularity: str, out_layout: str) -> None:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"int8 attention expects q (B, H, Lq, D) and k, v (B, Hkv, Lk, D): q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"k, v must have q's batch and head size and a number of heads dividing q's: "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}")
    if d not in HEAD_DIMS:
        raise ValueError(f"int8 attention supports head sizes {HEAD_DIMS}, got {d}")
    if k.shape[2] == 0:
        raise ValueError("int8 attention needs at least one key")
    if pv not in PV_PRECISIONS or granularity not in GRANULARITIES or out_layout not in OUT_LAYOUTS:
        raise ValueError(f"pv {pv!r} (one of {PV_PRECISIONS}), granularity {granularity!r} (one of "
                         f"{GRANULARITIES}), out_layout {out_layout!r} (one of {OUT_LAYOUTS})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one float dtype (float16, bfloat16, float32): {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _quantize(x: torch.Tensor, mean: torch.Tensor | None, mult: float, block: int,
              per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``(B*H, L, D)`` and fp32 per-row scales ``(B*H, L)`` of ``x (B, H, L, D)`` (see the kernel)."""
    b, h, length, d = x.shape
    q = torch.empty(b * h, length, d, dtype=torch.int8, device=x.device)
    scale = torch.empty(b * h, length, dtype=torch.float32, device=x.device)
    rows = 16 if per_token and not INTERPRETED else block  # per token: any row count per program
    _attn_quant_kernel[(cdiv(length, rows), b * h)](
        x, mean if mean is not None else scale, q, scale, length, h, x.stride(0), x.stride(1), x.stride(2), mult,
        BLOCK=rows, D=d, PER_TOKEN=per_token, HAS_MEAN=mean is not None, INTERPRETED=INTERPRETED)
    return q, scale


def _fp8_values(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V in float8 e4m3, transposed: ``(B, Hkv, D, Lk')`` with ``Lk'`` = Lk rounded up to 16 (16-byte rows; the
    padding is zero), and one fp32 scale per (batch, head, channel), ``absmax / 448``, as ``(B*Hkv, D)``.
    Plain torch ops for now (one read of V for the absmax, one for the cast); a fused pre-pass is future work."""
    b, hkv, lk, d = v.shape
    scale = (v.abs().amax(dim=2, keepdim=True).float() / FP8_MAX).clamp_(min=1e-12)
    vt = torch.empty(b, hkv, d, cdiv(lk, 16) * 16, dtype=torch.float8_e4m3fn, device=v.device)
    vt[..., :lk] = (v.float() / scale).to(torch.float8_e4m3fn).transpose(2, 3)
    vt[..., lk:] = 0  # the Hopper kernel's TMA reads the padding (0 * NaN would be NaN); the generic one masks it
    return vt, scale.reshape(-1, d).contiguous()


def _int8_values(v: torch.Tensor, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V in int8, transposed like :func:`_fp8_values`: ``(B, Hkv, D, Lk')`` with ``Lk'`` = Lk rounded up to
    ``block_n`` (the padding is zero), and one fp32 scale per (batch, head, block of ``block_n`` keys, channel),
    ``absmax / 127``, as ``(B*Hkv, Lk' / block_n, D)``: the kernels' int8 ``P . V`` operands (their BLOCK_N must be
    ``block_n``). One pass of :func:`~int8.kernels.triton_attention._attn_v_quant_kernel`."""
    b, hkv, lk, d = v.shape
    padded = cdiv(lk, block_n) * block_n
    vt = torch.empty(b, hkv, d, padded, dtype=torch.int8, device=v.device)
    scale = torch.empty(b * hkv, padded // block_n, d, dtype=torch.float32, device=v.device)
    _attn_v_quant_kernel[(padded // block_n, b * hkv)](
        v, vt, scale, lk, padded, hkv, v.stride(0), v.stride(1), v.stride(2), BLOCK_N=block_n, D=d,
        INTERPRETED=INTERPRETED)
    return vt, scale


def int8_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                          smooth_k: bool = True, pv: str = "16bit", granularity: str = "block",
                          out_layout: str = "bhld", tiles: AttentionTiles | None = None,
                          kernel: str = "generic", hopper_tiles: object | None = None) -> torch.Tensor:
    """Attention with int8 ``Q . K^T`` (no mask, not causal), numerics of
    :func:`int8.attention_reference.int8_attention_reference` with ``block_q``/``block_k`` the tiles' quant blocks
    (1 with ``granularity="token"``).

    ``q (B, H, Lq, D)``, ``k, v (B, Hkv, Lk, D)`` (any strides with a contiguous last dim; ``H % Hkv == 0``),
    ``D`` in :data:`HEAD_DIMS`, one float dtype. ``pv="fp8"`` needs a GPU that
    :func:`int8.compat.fp8_attention_unavailable_reason` accepts (the caller asks). ``kernel``: ``generic`` (the
    Triton kernel, any GPU), ``hopper`` (the warp-specialized Gluon kernel, :mod:`int8.launch.gluon_attention`;
    sm_90 only; ``hopper_tiles``: its :class:`~int8.launch.gluon_attention.GluonAttentionTiles`) or ``auto``
    (:func:`hopper_kernel_runs` decides; a Hopper kernel that fails to build falls back to the generic one, said
    once). Returns the output in ``q``'s dtype, ``(B, H, Lq, D)`` or, ``out_layout="blhd"``, ``(B, Lq, H, D)``.
    Raises ValueError on bad inputs.
    """
    _check(q, k, v, pv, granularity, out_layout)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    fallback = kernel == "auto"
    if fallback:
        kernel = "hopper" if hopper_kernel_runs(q.device) else "generic"
    elif kernel == "hopper":
        try:
            from .gluon_attention import gluon_attention_supported
        except ImportError as exc:  # a Triton without Gluon's Hopper API
            raise ValueError(f"the Hopper attention kernel cannot run here ({exc}): use kernel='generic'") from exc
        if not gluon_attention_supported(q.device):
            raise ValueError(f"the Hopper attention kernel needs an sm_90 GPU and Gluon (compat.gluon()); {q.device} "
                             "has not: use kernel='generic'")
    b, h, lq, d = q.shape
    tiles = tiles or attention_tiles(d, pv)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    softmax_scale = d ** -0.5 if scale is None else float(scale)
    per_token = granularity == "token"
    # (the reduction reads 16-bit K and accumulates in fp32: no fp32 copy of K)
    mean = torch.mean(k, dim=2, dtype=torch.float32).reshape(-1, d).contiguous() if smooth_k else None
    q8, qs = _quantize(q, None, softmax_scale * _LOG2E, tiles.quant_block_q, per_token)
    k8, ks = _quantize(k, mean, 1.0, tiles.quant_block_k, per_token)
    v_given = v
    if pv == "fp8":
        v, vs = _fp8_values(v)
    elif pv == "int8":  # V's scale blocks are the kernel's key blocks
        if kernel == "hopper":
            from .gluon_attention import gluon_attention_tiles

            hopper_tiles = hopper_tiles or gluon_attention_tiles(d, pv)
        v, vs = _int8_values(v, hopper_tiles.block_n if kernel == "hopper" else tiles.block_n)
    else:
        vs = qs  # unused pointer
    if out_layout == "bhld":
        out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
        ob, oh, ol = out.stride(0), out.stride(1), out.stride(2)
    else:
        out = torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device)
        ob, oh, ol = out.stride(0), out.stride(2), out.stride(1)
    if kernel == "hopper":
        from .gluon_attention import gluon_attention

        try:
            gluon_attention(q8, qs, k8, ks, v, vs, out, (ob, oh, ol), h, pv, hopper_tiles)
            return out
        except _BuildError as exc:
            if not fallback:
                raise
            _hopper_broken.add(q.device)
            log.warning("INT8 Attention: the Hopper kernel does not build here (%s); the generic Triton kernel "
                        "runs instead", exception_line(exc))
            if pv == "int8" and hopper_tiles.block_n != tiles.block_n:  # V's scales follow the key block
                v, vs = _int8_values(v_given, tiles.block_n)
    _int8_attention_kernel[(cdiv(lq, tiles.block_m), b * h)](
        q8, qs, k8, ks, v, vs, out, lq, k.shape[2], h, h // k.shape[1],
        v.stride(0), v.stride(1), v.stride(2), ob, oh, ol,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, D=d, PV_FP8=pv == "fp8", PV_INT8=pv == "int8",
        num_warps=tiles.warps, num_stages=tiles.stages)
    return out

