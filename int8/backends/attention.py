"""Which attention runs: the int8 kernels (:mod:`int8.launch.attention`: the warp-specialized one on sm_90, else
the generic Triton one) for calls they support, else the caller's own attention (SDPA), with the reason logged once
by the caller. A kernel that does not build on the user's GPU and Triton runs PyTorch's attention for that call
(said once), and its reason refuses the later calls.

Decided per call from tensor metadata only (device, dtype, head size, lengths, mask), so it traces under
``torch.compile``; compiled code calls the kernel through the ``comfy_int8::int8_attention`` op (opaque to
TorchDynamo, with a fake implementation), eager code calls the launcher directly. Importing this module never
imports Triton.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..compat import fp8_attention_unavailable_reason, triton_build_error, triton_unavailable_reason
from ..log_once import exception_line, log_once
from .custom_ops import _define

log = logging.getLogger("comfy_int8_w8a8")

__all__ = ["PV_CHOICES", "AttentionOptions", "attention_unsupported_reason", "resolve_pv", "int8_attention", "forget"]


PV_CHOICES = ("auto", "fp8", "16bit", "int8")
_GRANULARITIES = ("block", "token")
_HEAD_DIMS = (64, 128)  # int8.launch.attention.HEAD_DIMS (not imported: that module imports Triton)
_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AttentionOptions:
    """How the int8 attention runs.

    ``pv_precision``: ``auto`` (16-bit; see :func:`_device_pv`), ``fp8`` (float8 P and V; raises at the call on a
    GPU without fp8), ``16bit`` (P and V in V's dtype), ``int8`` (P and V in int8 with per-key-block scales;
    :func:`int8.attention_reference.int8_attention_reference`). ``smooth_k``: subtract
    K's mean over the sequence before quantizing. ``granularity``: one int8 scale per ``block`` of rows or per
    ``token``. ``min_seq_len``: calls with fewer query rows run the caller's attention.
    """

    pv_precision: str = "auto"
    smooth_k: bool = True
    granularity: str = "block"
    min_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.pv_precision not in PV_CHOICES:
            raise ValueError(f"pv_precision must be one of {PV_CHOICES}, got {self.pv_precision!r}")
        if self.granularity not in _GRANULARITIES:
            raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {self.granularity!r}")
        if not isinstance(self.min_seq_len, int) or self.min_seq_len < 0:
            raise ValueError(f"min_seq_len must be an integer >= 0, got {self.min_seq_len!r}")


# (device, pv_precision) -> why the kernel does not build there (a Triton or GPU nobody has tried); filled by the
# first failing call, which runs PyTorch's attention instead; later calls are refused up front.
_unbuildable: dict[tuple[torch.device, str], str] = {}


def attention_unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: AttentionOptions,
                                 mask: torch.Tensor | None = None) -> str | None:
    """Why the int8 kernel does not take this call (``q (B, H, Lq, D)``, ``k, v (B, Hkv, Lk, D)``), or None when
    it does. The reasons name no shapes beyond the head size, so each is logged once, not once per resolution."""
    if mask is not None:
        return "an attention mask was given (masked calls run the original attention)"
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        return "the tensors are not (B, H, L, D) with k and v alike"
    if q.shape[-1] not in _HEAD_DIMS:
        return f"head size {q.shape[-1]} (the kernel has {_HEAD_DIMS})"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}/{k.dtype}/{v.dtype} (the kernel takes float16 or bfloat16 q, k, v alike)"
    if k.shape[0] != q.shape[0] or k.shape[1] == 0 or q.shape[1] % k.shape[1] or k.shape[2] == 0:
        return "the key/value heads or batch do not match the queries'"
    if q.shape[2] < options.min_seq_len:
        return f"fewer query rows than min_seq_len={options.min_seq_len}"
    broken = _unbuildable.get((q.device, options.pv_precision))
    return broken if broken is not None else triton_unavailable_reason(q.device)


@functools.cache
def _device_pv(device: torch.device, preference: str) -> str:
    # auto is 16-bit on every GPU: on an H100 the fp8 P.V kernel took 1.4-1.6x the 16-bit kernel's time at the
    # Flux and Wan shapes, with 3.9% error against 1.3% (docs/results/attention_h100.json). fp8 stays a choice.
    if preference == "int8":
        return "int8"  # any GPU the int8 Q.K^T runs on
    if preference != "fp8":
        return "16bit"
    reason = fp8_attention_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"INT8 Attention: pv_precision 'fp8' cannot run on {device}: {reason}. Choose 'auto' "
                           "or '16bit'.")
    return "fp8"


def resolve_pv(device: torch.device, preference: str) -> str:
    """``"fp8"``, ``"int8"`` or ``"16bit"`` for ``preference`` (:data:`PV_CHOICES`) on ``device``; an explicit
    ``fp8`` that the device cannot run raises RuntimeError (it never downgrades)."""
    return _device_pv(device, preference)


def _attention_impl(q, k, v, scale, smooth_k, pv_precision, granularity, out_layout):  # noqa: ANN001, ANN202
    # The precision is resolved here, inside the op, so TorchDynamo never traces the device probe.
    # A kernel that does not build must not break sampling, compiled or not: this call (and, inside a compiled
    # graph, every later one) runs PyTorch's attention; eager callers see the reason in attention_unsupported_reason.
    if (q.device, pv_precision) not in _unbuildable:
        from ..launch.attention import int8_attention_triton

        try:
            return int8_attention_triton(q, k, v, scale=scale, smooth_k=smooth_k,
                                         pv=resolve_pv(q.device, pv_precision), granularity=granularity,
                                         out_layout=out_layout, kernel="auto")
        except triton_build_error() as exc:
            reason = (f"the int8 kernel (pv_precision {pv_precision!r}) does not build on this GPU and Triton "
                      f"({exception_line(exc)})")
            _unbuildable[(q.device, pv_precision)] = reason
            log_once(log, logging.WARNING, f"INT8 Attention: {reason}; PyTorch's attention runs instead.")
    out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out if out_layout == "bhld" else out.transpose(1, 2).contiguous()  # the fake's (B, Lq, H, D) strides


def _attention_fake(q, k, v, scale, smooth_k, pv_precision, granularity, out_layout):  # noqa: ANN001, ANN202
    b, h, lq, d = q.shape
    return q.new_empty((b, h, lq, d) if out_layout == "bhld" else (b, lq, h, d))


def _attention_op_impl(*args):  # noqa: ANN002, ANN202 - looks _attention_impl up per call (tests replace it)
    return _attention_impl(*args)


_attention_op = _define(
    "int8_attention",
    "(Tensor q, Tensor k, Tensor v, float? scale, bool smooth_k, str pv_precision, str granularity, "
    "str out_layout) -> Tensor",
    _attention_op_impl, _attention_fake)


def int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: AttentionOptions,
                   scale: float | None = None, out_layout: str = "bhld") -> torch.Tensor:
    """The int8 kernel on a call :func:`attention_unsupported_reason` accepted: output in ``q``'s dtype,
    ``(B, H, Lq, D)`` (``out_layout="bhld"``) or ``(B, Lq, H, D)`` (``"blhd"``)."""
    scale = None if scale is None else float(scale)
    args = (q, k, v, scale, options.smooth_k, options.pv_precision, options.granularity, out_layout)
    return _attention_op(*args) if torch.compiler.is_compiling() else _attention_impl(*args)


def forget() -> None:
    """Forget the per-device precision choices and kernel build failures (tests: after faking the fp8 probe)."""
    _device_pv.cache_clear()
    _unbuildable.clear()
