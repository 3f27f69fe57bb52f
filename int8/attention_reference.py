"""Float64 references for the int8 attention kernels: the quantized scheme the kernels implement, and exact SDPA.

The scheme (SageAttention's, arXiv 2410.02367, restated for this pack):

- **K mean-smoothing.** ``k - mean_L(k)`` per (batch, kv head, channel). Every score of a query row changes by the
  same ``q . mean`` and softmax is invariant to a per-row shift, so the output is unchanged; what it removes is the
  large channel offset that diffusion transformers' keys share, which would otherwise set the int8 scale and leave
  a few levels for the part that differs between keys.
- **Q and K in int8**, one fp32 scale per block of rows (``block = 1``: per token), ``scale = absmax / 127``,
  ``q = round(x / scale)`` in [-127, 127]. ``Q . K^T`` is exact in int32 and scaled back per (row, column).
- **Softmax** in full precision (float64 here; fp32 with the online max in the kernels).
- **P . V** with ``P = exp(s - rowmax)`` in [0, 1] rounded as the kernel rounds it: to V's 16-bit dtype
  (``pv="16bit"``), or ``fp8``: ``P * 448`` and ``V / v_scale`` (per channel, ``absmax / 448``) in float8 e4m3, the
  product scaled by ``v_scale / 448``. The row sum ``l`` is taken before the rounding, as in the kernels.
  ``int8`` (both products on the int8 tensor cores): V in int8 with one scale per (key block, channel),
  ``absmax / 127`` over the block's keys, and P of each key block against *that block's* row max,
  ``floor(exp(s - blockmax) * 127 + 1/2)`` in [0, 127], the int32 product scaled back by
  ``exp(blockmax - rowmax) / 127`` per row and the V scale per channel. The block's own max keeps 127 levels for
  every block (rounding against the running max loses the blocks far below it: 3.3% error instead of 1.7% with
  16-bit V on the attention benchmark's random inputs); the per-block V scales keep a few large value tokens from
  coarsening every other key's (4.3% instead of 2.1% with per-channel scales on value tokens of log-normal size).
  Both measured with a float64 variant of this reference (bench/attention_numerics.py has the shipped schemes).
  A kernel rounds P against the *running* row max of the key blocks it has seen (FlashAttention's online softmax)
  and rescales the sum later: ``key_block`` (the kernel's BLOCK_N) makes the reference round the same values. In
  fp8 the two choices differ by ~2% (measured on an H100: kernel vs the final-max reference 0.020-0.024 relative
  error, vs 16-bit P.V ~0.3%), so a reference for one kernel's bits must know its key block.

Shapes: ``q (B, H, Lq, D)``, ``k, v (B, Hkv, Lk, D)`` with ``H % Hkv == 0`` (grouped-query attention: query head
``h`` reads kv head ``h // (H // Hkv)``). Outputs ``(B, H, Lq, D)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PV_PRECISIONS", "FP8_MAX", "sdpa_reference", "quantize_attention_blocks", "int8_attention_reference",
           "relative_error"]

PV_PRECISIONS = ("16bit", "fp8", "int8")
FP8_MAX = 448.0  # largest finite float8 e4m3fn
_INT8_MAX = 127.0
_SCALE_FLOOR = 1e-12  # an all-zero block dequantizes to 0, never 0/0 (as int8.quantize.SCALE_FLOOR)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """The GQA group size ``H // Hkv``; raises ValueError on shapes no attention call has."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, H, L, D) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"k and v must share (B, Hkv, Lk, D) with q's B and D: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    return q.shape[1] // k.shape[1]


def _expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    return x.repeat_interleave(group, dim=1) if group > 1 else x


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Exact ``softmax(q k^T * scale) v`` in float64 (no mask); ``scale`` defaults to ``D ** -0.5``. Returns float64
    ``(B, H, Lq, D)``."""
    group = _check_shapes(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ _expand_kv(k.double(), group).transpose(-1, -2)) * scale
    return torch.softmax(s, dim=-1) @ _expand_kv(v.double(), group)


def quantize_attention_blocks(x: torch.Tensor, block: int, mean: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and per-row float64 scales of ``x (B, H, L, D)`` (minus ``mean (B, H, 1, D)`` when given), one
    scale per ``block`` consecutive rows of each (batch, head) (the last block may be short; ``block=1``: per
    token). Returns ``(q int8 (B, H, L, D), scale float64 (B, H, L))``, every row of a block holding its scale."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    y = x.double() - mean.double() if mean is not None else x.double()
    b, h, length, d = y.shape
    blocks = math.ceil(length / block)
    padded = torch.zeros(b, h, blocks * block, d, dtype=torch.float64, device=y.device)
    padded[:, :, :length] = y
    amax = padded.abs().reshape(b, h, blocks, block * d).amax(dim=-1)
    scale = (amax / _INT8_MAX).clamp(min=_SCALE_FLOOR).repeat_interleave(block, dim=-1)[..., :length]
    q = torch.round(y / scale[..., None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return q, scale


def _fp8(x: torch.Tensor) -> torch.Tensor:
    """Round float64 ``x`` to float8 e4m3fn (round to nearest even, saturating at 448 as the kernels' inputs never
    exceed it) and back to float64."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float32).to(torch.float8_e4m3fn).to(torch.float64)


def int8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                             smooth_k: bool = True, block_q: int = 64, block_k: int = 64,
                             pv: str = "16bit", key_block: int | None = None) -> torch.Tensor:
    """The int8 attention scheme of the kernels in float64 (see the module docstring), output in ``q``'s dtype.

    ``pv``: ``"16bit"`` rounds P to V's dtype (V must be float16 or bfloat16, or float32 for no rounding), ``"fp8"``
    emulates the float8 e4m3 P . V, ``"int8"`` the int8 one (needs ``key_block``: its V scale and P max blocks).
    ``block_q`` / ``block_k``: rows per int8 scale (1 = per token). ``key_block``: round P per block of that many
    keys against the running max, as a kernel with that BLOCK_N does (None: one block, the final max). Raises
    ValueError on bad shapes or options.
    """
    group = _check_shapes(q, k, v)
    if pv not in PV_PRECISIONS:
        raise ValueError(f"pv must be one of {PV_PRECISIONS}, got {pv!r}")
    if pv == "int8" and key_block is None:
        raise ValueError("pv='int8' needs key_block (the kernel's BLOCK_N: V's scale blocks and P's max blocks)")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mean = k.double().mean(dim=2, keepdim=True) if smooth_k else None
    qi, qs = quantize_attention_blocks(q, block_q)
    ki, ks = quantize_attention_blocks(k, block_k, mean)
    qk = qi.double() @ _expand_kv(ki.double(), group).transpose(-1, -2)  # exact: |sum| <= D * 127^2 << 2^53
    s = qk * qs[..., :, None] * _expand_kv(ks, group)[..., None, :] * scale
    vv = _expand_kv(v, group)
    if pv == "fp8":
        v_scale = (vv.double().abs().amax(dim=2, keepdim=True) / FP8_MAX).clamp(min=_SCALE_FLOOR)
        v_round = _fp8(vv.double() / v_scale)

        def p_dot_v(p: torch.Tensor, cols: slice) -> torch.Tensor:
            return _fp8(p * FP8_MAX) @ v_round[..., cols, :]
    elif pv == "int8":
        v_int8 = _int8_value_blocks(vv.double(), key_block)

        def p_dot_v(p: torch.Tensor, cols: slice) -> torch.Tensor:
            block_max = p.amax(dim=-1, keepdim=True)  # exp(blockmax - rowmax); the block's own max rounds P
            p_int8 = torch.floor(p / block_max.clamp(min=1e-300) * _INT8_MAX + 0.5)
            return (p_int8 @ v_int8[..., cols, :]) * (block_max / _INT8_MAX)
    else:
        def p_dot_v(p: torch.Tensor, cols: slice) -> torch.Tensor:
            return p.to(v.dtype).double() @ vv[..., cols, :].double()
    step = s.shape[-1] if key_block is None else key_block
    row_max = torch.full_like(s[..., :1], -math.inf)
    row_sum = torch.zeros_like(row_max)
    acc = None
    for start in range(0, s.shape[-1], step):  # online softmax: P against the max of the key blocks seen so far
        cols = slice(start, start + step)
        new_max = torch.maximum(row_max, s[..., cols].amax(dim=-1, keepdim=True))
        alpha = torch.exp(row_max - new_max)
        p = torch.exp(s[..., cols] - new_max)
        row_sum = row_sum * alpha + p.sum(dim=-1, keepdim=True)
        acc = p_dot_v(p, cols) if acc is None else acc * alpha + p_dot_v(p, cols)
        row_max = new_max
    if pv == "fp8":
        acc = acc * (v_scale / FP8_MAX)
    return (acc / row_sum).to(q.dtype)


def _int8_value_blocks(v: torch.Tensor, key_block: int) -> torch.Tensor:
    """``v (B, H, Lk, D)`` float64 rounded to int8 with one scale per (block of ``key_block`` keys, channel),
    ``absmax / 127``, and scaled back: the values the int8 ``P . V`` multiplies (the scale applied per block)."""
    b, h, length, d = v.shape
    blocks = math.ceil(length / key_block)
    padded = torch.zeros(b, h, blocks * key_block, d, dtype=torch.float64, device=v.device)
    padded[:, :, :length] = v
    tiles = padded.reshape(b, h, blocks, key_block, d)
    scale = (tiles.abs().amax(dim=3, keepdim=True) / _INT8_MAX).clamp(min=_SCALE_FLOOR)
    return (torch.round(tiles / scale).clamp(-_INT8_MAX, _INT8_MAX) * scale).reshape(b, h, -1, d)[:, :, :length]


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    """``||out - exact|| / ||exact||`` (Frobenius, float64): the error measure the issue's 2% bound is stated in."""
    diff = out.double() - exact.double()
    return float(diff.norm() / exact.double().norm().clamp(min=1e-300))
