"""Decode one layer of any supported format into the engine's terms.

- int8 layers (ComfyUI ``int8_tensorwise``, ComfyUI-INT8-Fast) -> :class:`~comfy_int8_w8a8.int8.weights.Int8Weights`, the tensors of an
  ``Int8Linear`` (ComfyUI's native layout): ``weight`` int8 [N, K], ``weight_scale`` fp32 [N, 1], optional
  ``bias``, ``hadamard_group`` (= ComfyUI ``convrot``), optional ``smooth`` [K] (saved as ``input_smooth``);
- fp8 layers (legacy ``scaled_fp8``/``scale_weight``, comfy_quant float8, plain fp8) -> a dequantized float weight;
- any int8 layer can also be dequantized to a float weight in the input basis (for re-quantization).

INT8-Fast stores ``quarot_hadamard`` H (activations ``x @ H`` per group, weights ``W @ H^T``) and for HadaNorm
``hadanorm_sigma`` (activations divided by sigma first). When H is the regular Hadamard matrix the engine uses
(64/256/1024, the same as ComfyUI convrot) the layer maps exactly: ``hadamard_group = size`` and
``smooth = 1/sigma``. Any other H cannot run in the engine's kernels; that layer is dequantized, rotated
back, and re-quantized (with the regular Hadamard of the largest size dividing K), which rounds a second time:
:attr:`Int8Weights.exact` is False and a warning names the file once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch

from ..hadamard import HADAMARD_GROUP_SIZES, build_hadamard, check_group_size
from ..log_once import log_once
from ..quantize import NonFiniteWeightError, quantize_rotated_per_channel
from ..weights import INT8_FORMAT, Int8Weights, per_channel_scale
from .detect import FP8_DTYPES, FP8_FORMATS
from .errors import CheckpointError

__all__ = ["read_int8_layer", "regular_hadamard_group", "dequantize_fp8_layer", "is_int8_layer", "is_fp8_layer",
           "FP8_DEQUANT_DTYPE"]

log = logging.getLogger(__name__)

# fp8 weights are dequantized to bf16 for loading and converting alike: fp8 has 3 mantissa bits, so bf16's 8 keep
# w * scale to within 2**-9 relative, far below the int8 step (1/127 of the row's absmax) it is requantized to.
FP8_DEQUANT_DTYPE = torch.bfloat16


def is_int8_layer(tensors: Mapping[str, torch.Tensor | object], conf: dict | None) -> bool:
    if conf is not None and conf.get("format") == INT8_FORMAT:
        return True
    w = tensors.get("weight")
    return getattr(w, "dtype", None) == torch.int8


def is_fp8_layer(tensors: Mapping[str, object], conf: dict | None) -> bool:
    if conf is not None and conf.get("format") in FP8_FORMATS:
        return True
    return getattr(tensors.get("weight"), "dtype", None) in FP8_DTYPES


def _per_row_scale(path: str, layer: str, scale: torch.Tensor | None, n: int) -> torch.Tensor:
    if scale is None:
        raise CheckpointError(path, f"layer '{layer}' has an int8 weight but no '{layer}.weight_scale'.",
                              "The file is incomplete or was written by a tool we do not know: re-export it, "
                              "or use the 16-bit original.")
    if not scale.dtype.is_floating_point:
        raise CheckpointError(path, f"layer '{layer}': weight_scale has dtype {scale.dtype}, expected a float.",
                              "The file is corrupt: re-download it.")
    if scale.numel() == 1 or (scale.numel() == n and (scale.dim() == 1 or tuple(scale.shape) == (n, 1))):
        _check_finite_scale(path, layer, scale, "weight_scale")
        return per_channel_scale(scale, n)
    raise CheckpointError(path, f"layer '{layer}': weight_scale shape {tuple(scale.shape)} is neither a scalar nor "
                          f"one per output row ({n}).", "Block-wise int8 files are not supported; use a 16-bit file.")


def _check_finite_scale(path: str, layer: str, scale: torch.Tensor, name: str) -> None:
    # A NaN/Inf scale turns the whole layer's output into NaN at run time; refuse it here, never copy it.
    if not torch.isfinite(scale).all():
        raise CheckpointError(path, f"layer '{layer}': {name} holds NaN or Inf, so the layer would output NaN.",
                              "The file is corrupt: re-download it, or convert the 16-bit original.")


def _convrot_group(path: str, layer: str, conf: dict | None, k: int) -> int:
    # conf was type-checked by quant_config.check_quant_config; the isinstance guards cover direct callers.
    params = conf.get("params") if conf and isinstance(conf.get("params"), dict) else {}
    if not conf or not conf.get("convrot", params.get("convrot", False)):
        return 0
    group = conf.get("convrot_groupsize", params.get("convrot_groupsize", 256))
    if type(group) is not int:
        raise CheckpointError(path, f"layer '{layer}': convrot_groupsize of type {type(group).__name__} is not an "
                              "integer.", "The file is corrupt or from an unknown tool: re-export it.")
    try:
        check_group_size(int(group), k)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"layer '{layer}': convrot_groupsize {group!r} cannot be used ({exc}).",
                              "The file is corrupt or from an unknown tool: re-export it.") from exc
    return int(group)


def read_int8_layer(path: str, layer: str, tensors: Mapping[str, torch.Tensor], conf: dict | None) -> Int8Weights:
    """Decode an int8 layer from its tensors (suffix -> tensor: weight, weight_scale, bias, quarot_hadamard,
    hadanorm_sigma) and comfy_quant config. Raises :class:`CheckpointError` naming ``layer`` on a missing scale,
    bad shapes or an unsupported rotation."""
    w = tensors.get("weight")
    if w is None or w.dtype != torch.int8 or w.dim() != 2:
        got = "missing" if w is None else f"{w.dtype}{list(w.shape)}"
        raise CheckpointError(path, f"layer '{layer}' is marked int8 but its weight is {got}.",
                              "The file is corrupt: re-download it.")
    n, k = w.shape
    scale = _per_row_scale(path, layer, tensors.get("weight_scale"), n)
    bias = tensors.get("bias")
    if bias is not None and (not bias.is_floating_point() or bias.numel() != n or not torch.isfinite(bias).all()):
        raise CheckpointError(path, f"layer '{layer}': bias {bias.dtype}{list(bias.shape)} is not {n} finite floats.",
                              "The file is corrupt: re-download it.")
    sigma, h = tensors.get("hadanorm_sigma"), tensors.get("quarot_hadamard")
    smooth = None
    if sigma is not None:
        if sigma.numel() != k or not torch.isfinite(sigma).all() or (sigma == 0).any():
            raise CheckpointError(path, f"layer '{layer}': hadanorm_sigma must be {k} finite non-zero values.",
                                  "The file is corrupt: re-download it.")
        smooth = (1.0 / sigma.double().reshape(k)).float()
    if h is None:
        group = _convrot_group(path, layer, conf, k)
        return Int8Weights(w, scale, bias, group, smooth)
    g = h.shape[-1] if h.dim() == 2 else 0
    if h.dim() != 2 or h.shape[0] != g or g == 0 or k % g:
        raise CheckpointError(path, f"layer '{layer}': quarot_hadamard {list(h.shape)} is not a square block dividing "
                              f"in_features {k}.", "The file is corrupt: re-download it.")
    if regular_hadamard_group(h):
        return Int8Weights(w, scale, bias, g, smooth)
    return _requantize_rotation(path, layer, w, scale, bias, h.double(), smooth)


def regular_hadamard_group(h: torch.Tensor) -> int:
    """The size of ``h`` if it is the engine's regular Hadamard matrix (64/256/1024), else 0."""
    if h.dim() != 2 or h.shape[0] != h.shape[1] or h.shape[1] not in HADAMARD_GROUP_SIZES:
        return 0  # (a 0-D or 1-D h has no shape[-1] to compare)
    g = h.shape[1]
    # Entries are +-1/sqrt(g), so any other matrix differs by 2/sqrt(g) somewhere: half that is a safe tolerance.
    same = torch.allclose(h.double(), build_hadamard(g, dtype=torch.float64), atol=0.5 / math.sqrt(g), rtol=0.0)
    return g if same else 0


def _requantize_rotation(path: str, layer: str, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                         h: torch.Tensor, smooth: torch.Tensor | None) -> Int8Weights:
    n, k = w.shape
    g = h.shape[0]
    # The file computes (x' @ H) @ Wq^T with x' = x * smooth; the same product is x' @ (Wq @ H^T)^T.
    w_basis = ((w.double() * scale.double()).reshape(n, k // g, g) @ h.t()).reshape(n, k)
    new_group = next((s for s in sorted(HADAMARD_GROUP_SIZES, reverse=True) if k % s == 0 and s <= max(g, 64)), 0)
    log_once(log, logging.WARNING, f"'{path}': its Hadamard matrices (size {g}) are not the regular Hadamard the int8 kernels "
                     f"use; those layers are re-quantized with group {new_group or 'none'} at load (a second "
                     "rounding, slightly less accurate). Convert the 16-bit original for the best result.")
    try:
        q, s = quantize_rotated_per_channel(w_basis, new_group, layer)
    except NonFiniteWeightError as exc:  # a NaN/Inf entry of h: name the file as every reader error does
        raise CheckpointError(path, str(exc)) from exc
    return Int8Weights(q, s, bias, new_group, smooth, exact=False)


def dequantize_fp8_layer(path: str, layer: str, tensors: Mapping[str, torch.Tensor], conf: dict | None,
                         scaled_fp8_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The float weight of an fp8 layer, in :data:`FP8_DEQUANT_DTYPE`.

    Legacy files: ``scale_weight`` (scalar); comfy_quant files: ``weight_scale`` (scalar), the weight possibly
    stored as uint8 bytes of the fp8 values (ComfyUI reads those through a dtype view, as here).
    """
    w = tensors["weight"]
    fp8_dtype = FP8_FORMATS.get((conf or {}).get("format"), scaled_fp8_dtype or w.dtype)
    if w.dtype == torch.uint8:
        w = w.view(fp8_dtype)
    if w.dtype not in FP8_DTYPES or w.dim() == 0:
        raise CheckpointError(path, f"layer '{layer}' is marked fp8 but its weight is {w.dtype}{list(w.shape)}.",
                              "The file is corrupt: re-download it.")
    scale = tensors.get("weight_scale", tensors.get("scale_weight"))
    wf = w.float()
    if scale is not None:
        if scale.numel() != 1 and scale.numel() != w.shape[0]:
            raise CheckpointError(path, f"layer '{layer}': fp8 scale shape {tuple(scale.shape)} is not supported.",
                                  "Use a 16-bit checkpoint, or one with per-tensor fp8 scales.")
        _check_finite_scale(path, layer, scale, "fp8 scale")
        wf = wf * (scale.float().reshape(()) if scale.numel() == 1 else scale.float().reshape(-1, 1))
    wf = wf.to(FP8_DEQUANT_DTYPE)
    if not torch.isfinite(wf).all():  # fp8 e4m3fn has NaN codes; a huge finite scale can overflow bf16
        raise CheckpointError(path, f"layer '{layer}': its fp8 weight times its scale holds NaN or Inf.",
                              "The file is corrupt: re-download it, or use the 16-bit original.")
    return wf
