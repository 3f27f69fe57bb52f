"""The float64 int8-attention reference against exact SDPA, and its building blocks.

Error bounds (relative Frobenius error against exact float64 attention, random q/k/v with a key offset shared by
all keys, as diffusion transformers' keys have): with K mean-smoothing and 16-bit P.V the int8 Q.K^T costs about
1.2% (measured 1.16-1.26% over the shapes below, seed 0), so 2% (the issue's bound) holds with margin; fp8 e4m3
P.V adds the rounding of two 3-bit-mantissa operands (half an ulp is 3.1-6.3% relative, about 1.8% RMS each):
3.4-3.9% measured, bound 5%. Without smoothing the offset takes most of the int8 range: measurably worse.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfy_int8_w8a8.int8.attention_reference import (
    PV_PRECISIONS,
    int8_attention_reference,
    quantize_attention_blocks,
    relative_error,
    sdpa_reference,
)


def _qkv(b: int, h: int, hkv: int, lq: int, lk: int, d: int, dtype: torch.dtype = torch.bfloat16,
         offset: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(b, h, lq, d)
    k = torch.randn(b, hkv, lk, d) + offset * torch.randn(1, 1, 1, d)  # the offset every key shares
    v = torch.randn(b, hkv, lk, d)
    return q.to(dtype), k.to(dtype), v.to(dtype)


SHAPES = [  # (B, H, Hkv, Lq, Lk, D)
    (1, 2, 2, 200, 200, 64),    # self-attention, length no multiple of the block
    (2, 4, 2, 130, 77, 128),    # cross-attention to 77 text keys, GQA
    (1, 4, 1, 64, 512, 128),    # 512 text keys, one kv head
]


def test_sdpa_reference_matches_torch_sdpa_with_gqa():
    q, k, v = _qkv(2, 4, 2, 33, 17, 64, torch.float64)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(sdpa_reference(q, k, v), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sdpa_reference(q, k, v, scale=0.3),
                               F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1),
                                                              v.repeat_interleave(2, 1), scale=0.3))


@pytest.mark.parametrize("b,h,hkv,lq,lk,d", SHAPES)
def test_int8_attention_reference_16bit_within_2_percent_of_exact(b, h, hkv, lq, lk, d):
    q, k, v = _qkv(b, h, hkv, lq, lk, d)
    out = int8_attention_reference(q, k, v, pv="16bit")
    assert out.dtype == torch.bfloat16 and out.shape == (b, h, lq, d)
    assert relative_error(out, sdpa_reference(q, k, v)) < 0.02


@pytest.mark.parametrize("b,h,hkv,lq,lk,d", SHAPES)
def test_int8_attention_reference_fp8_within_5_percent_of_exact(b, h, hkv, lq, lk, d):
    q, k, v = _qkv(b, h, hkv, lq, lk, d)
    assert relative_error(int8_attention_reference(q, k, v, pv="fp8"), sdpa_reference(q, k, v)) < 0.05


def test_key_blocks_change_only_how_p_is_rounded():
    # The online softmax is exact math: unrounded (float32 V, "16bit" keeps fp32) it agrees with the final-max form;
    # one block covering every key is the final-max form itself; fp8 rounding against the running max differs.
    q, k, v = _qkv(1, 2, 2, 96, 300, 64)
    qf, kf, vf = q.float(), k.float(), v.float()
    torch.testing.assert_close(int8_attention_reference(qf, kf, vf, key_block=64), int8_attention_reference(qf, kf, vf),
                               rtol=1e-6, atol=1e-7)
    for pv in (p for p in PV_PRECISIONS if p != "int8"):  # int8 has no final-max form: its scales are per block
        assert torch.equal(int8_attention_reference(q, k, v, pv=pv, key_block=300),
                           int8_attention_reference(q, k, v, pv=pv))
    blocked = int8_attention_reference(q, k, v, pv="fp8", key_block=64)
    assert relative_error(blocked, int8_attention_reference(q, k, v, pv="fp8")) > 0.005
    assert relative_error(blocked, sdpa_reference(q, k, v)) < 0.05


def test_int8_attention_reference_smoothing_k_reduces_error_with_key_offset():
    q, k, v = _qkv(1, 4, 4, 256, 256, 128)
    exact = sdpa_reference(q, k, v)
    smoothed = relative_error(int8_attention_reference(q, k, v, smooth_k=True), exact)
    plain = relative_error(int8_attention_reference(q, k, v, smooth_k=False), exact)
    assert smoothed < 0.7 * plain


def test_int8_attention_reference_per_token_no_worse_than_per_block():
    q, k, v = _qkv(1, 2, 2, 256, 256, 64)
    exact = sdpa_reference(q, k, v)
    token = relative_error(int8_attention_reference(q, k, v, block_q=1, block_k=1), exact)
    block = relative_error(int8_attention_reference(q, k, v, block_q=64, block_k=64), exact)
    assert token <= block * 1.05


def test_k_mean_smoothing_is_softmax_invariant_without_quantization():
    # The smoothing itself changes nothing exact: softmax(q (k - m)^T) = softmax(q k^T) row by row.
    q, k, v = _qkv(1, 2, 2, 20, 30, 64, torch.float64)
    shifted = k - k.mean(dim=2, keepdim=True)
    torch.testing.assert_close(sdpa_reference(q, shifted, v), sdpa_reference(q, k, v), rtol=1e-10, atol=1e-12)


def test_quantize_attention_blocks_scales_per_block_and_bounds_the_error():
    x = torch.randn(1, 2, 37, 64, dtype=torch.float64)
    x[0, 1, 20] *= 50  # one outlier row: its block's scale grows, the other blocks keep theirs
    q, s = quantize_attention_blocks(x, 16)
    assert q.dtype == torch.int8 and s.shape == (1, 2, 37)
    assert torch.equal(s[0, 1, 16:32], s[0, 1, 16].expand(16)) and s[0, 1, 16] > 10 * s[0, 1, 0]
    assert q.abs().max() == 127 and (q.double() * s[..., None] - x).abs().le(s[..., None] / 2 + 1e-12).all()
    q_tok, s_tok = quantize_attention_blocks(x, 1)
    torch.testing.assert_close(s_tok, x.abs().amax(-1) / 127)


def test_quantize_attention_blocks_zero_block_gets_floor_scale():
    q, s = quantize_attention_blocks(torch.zeros(1, 1, 5, 64), 4)
    assert (q == 0).all() and (s > 0).all()


@pytest.mark.parametrize("bad", [
    dict(q=(1, 3, 8, 64), k=(1, 2, 8, 64)),   # heads not a multiple
    dict(q=(1, 2, 8, 64), k=(1, 2, 8, 32)),   # head size differs
    dict(q=(2, 8, 64), k=(2, 8, 64)),         # not 4-D
])
def test_int8_attention_reference_bad_shapes_raise(bad):
    q, k = torch.randn(bad["q"]), torch.randn(bad["k"])
    with pytest.raises(ValueError):
        int8_attention_reference(q, k, k)


def test_int8_attention_reference_unknown_pv_raises():
    q, k, v = _qkv(1, 1, 1, 4, 4, 64)
    with pytest.raises(ValueError, match="pv"):
        int8_attention_reference(q, k, v, pv="int4")


def test_int8_pv_reference_needs_the_key_block():
    q, k, v = _qkv(1, 1, 1, 4, 4, 64)
    with pytest.raises(ValueError, match="key_block"):
        int8_attention_reference(q, k, v, pv="int8")


@pytest.mark.parametrize("kind", ["benchmark", "heavy_value_tokens"])
def test_int8_pv_error_is_within_the_issue_bound_and_under_fp8s(kind):
    # bench attention's inputs (and the same with log-normal value tokens), 256 query rows of Flux's 4608 keys:
    # int8 P.V emulated 1.8% / 2.2% at the block granularity the kernels default to (1.6% / 2.0% per token),
    # fp8 3.9%, 16-bit 1.3% (bench/attention_numerics.py). Bounds: int8 <= 2.5% at every granularity and <= 2%
    # (the issue's) per token on the benchmark's inputs; fp8 is worse on both.
    from comfy_int8_w8a8.bench.attention_numerics import make_inputs

    q, k, v = make_inputs(kind, heads=1, rows=256)
    exact = sdpa_reference(q, k, v)
    errors = {(pv, block): relative_error(int8_attention_reference(q, k, v, pv=pv, block_q=block, block_k=block,
                                                                   key_block=64 if pv == "int8" else 128), exact)
              for pv in ("int8", "fp8") for block in (64, 1)}
    assert max(errors[("int8", 64)], errors[("int8", 1)]) <= 0.025
    assert errors[("int8", 1)] < errors[("int8", 64)]
    if kind == "benchmark":
        assert errors[("int8", 1)] <= 0.02
    assert errors[("fp8", 64)] > 1.5 * errors[("int8", 64)]


def test_int8_pv_rounds_p_against_each_key_blocks_own_max():
    # A row whose first key dominates: rounded against the running max, the later blocks' P would all round to 0
    # (exp(-8) * 127 < 1/2); against their own max each keeps 127 levels, so their values still count.
    q = torch.zeros(1, 1, 1, 64, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 32, 64, dtype=torch.float64)
    k[0, 0, 0, 0] = 8.0 * 8  # score 8 (scale 1/8) for key 0, 0 for the rest
    v = torch.randn(1, 1, 32, 64, dtype=torch.float64)
    out = int8_attention_reference(q, k, v, pv="int8", smooth_k=False, block_q=1, block_k=1, key_block=8)
    exact = sdpa_reference(q, k, v)
    assert relative_error(out, exact) < 0.01
