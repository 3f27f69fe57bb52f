import pytest
import torch

from comfy_int8_w8a8.int8 import (
    NonFiniteWeightError,
    dequantize,
    quantize_per_channel,
    quantize_per_tensor,
    quantize_per_token,
)


def test_quantize_per_channel_round_trip_within_half_step():
    w = torch.randn(37, 129, dtype=torch.float64) * torch.logspace(-3, 2, 37, dtype=torch.float64)[:, None]
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (37, 1) and s.dtype == torch.float32
    err = (dequantize(q, s, torch.float64) - w).abs()
    assert (err <= s.double() / 2 * (1 + 1e-6)).all()
    assert q.abs().max() == 127


def test_quantize_per_tensor_round_trip_within_half_step():
    w = torch.randn(16, 64, dtype=torch.float64)
    q, s = quantize_per_tensor(w)
    assert s.dim() == 0
    assert ((dequantize(q, s, torch.float64) - w).abs() <= s.double() / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_quantize_per_token_round_trip_within_half_step(dtype):
    x = (torch.randn(5, 7, 300) * 3).to(dtype)
    q, s = quantize_per_token(x)
    assert q.shape == x.shape and s.shape == (5, 7, 1)
    err = (q.double() * s.double() - x.double()).abs()
    # half a step, plus the fp32 rounding of x / scale that decides a near-tie
    assert (err <= s.double() / 2 + x.double().abs() * torch.finfo(torch.float32).eps).all()
    assert torch.isfinite(dequantize(q, s, dtype)).all()


def test_zero_rows_give_positive_scale_and_zeros_not_nan():
    w = torch.randn(4, 32)
    w[2] = 0
    q, s = quantize_per_channel(w)
    assert (s > 0).all() and (q[2] == 0).all()
    assert torch.isfinite(dequantize(q, s)).all()
    xq, xs = quantize_per_token(torch.zeros(3, 32, dtype=torch.bfloat16))
    assert (xs > 0).all() and (xq == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_raises_naming_the_layer(bad):
    w = torch.randn(4, 8)
    w[1, 3] = bad
    with pytest.raises(NonFiniteWeightError, match="double_blocks.0.img_attn.qkv"):
        quantize_per_channel(w, "double_blocks.0.img_attn.qkv")
    with pytest.raises(NonFiniteWeightError, match="my_layer"):
        quantize_per_tensor(w, "my_layer")


def test_quantize_per_channel_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        quantize_per_channel(torch.randn(2, 3, 4), "conv")
