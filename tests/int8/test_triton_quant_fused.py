"""The fused quant of ``cat([a, gelu(b)], -1)`` and its W8A8 op against the unfused torch references (GPU)."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Weights, quantize_per_channel, quantize_per_token
from comfy_int8_w8a8.int8.activation import cat_act_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _inputs(rows: int, ka: int, kb: int, dtype: torch.dtype, wide: int = 0):
    """``a [1, rows, ka]`` and ``b [1, rows, kb]``; with ``wide`` b is a slice of a wider tensor (strided rows), as
    the MLP half of Flux's split linear1 output is."""
    a = (torch.randn(1, rows, ka, device="cuda") * 2).to(dtype) if ka else None
    full = torch.randn(1, rows, kb + wide, device="cuda") * 3
    full[..., ::97] *= 20  # outlier channels
    return a, full.to(dtype)[..., wide:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,ka,kb,wide", [(1, 0, 3073, 0), (33, 0, 12288, 0), (130, 3072, 12288, 9216),
                                             (7, 5, 971, 3)])
def test_cat_without_activation_matches_quantize_per_token_exactly(dtype, rows, ka, kb, wide):
    from comfy_int8_w8a8.int8.kernels.triton_quant_fused import quantize_cat_act_per_token

    a, b = _inputs(rows, ka, kb, dtype, wide)
    q, s = quantize_cat_act_per_token(a, b, 0)
    q_ref, s_ref = quantize_per_token(cat_act_reference(a, b, 0))
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", [1, 2])
@pytest.mark.parametrize("rows,ka,kb,wide", [(1, 0, 3073, 0), (130, 3072, 12288, 9216), (64, 0, 12288, 0)])
def test_cat_gelu_quant_is_within_one_step_of_the_unfused_reference(dtype, act, rows, ka, kb, wide):
    from comfy_int8_w8a8.int8.kernels.triton_quant_fused import quantize_cat_act_per_token

    a, b = _inputs(rows, ka, kb, dtype, wide)
    q, s = quantize_cat_act_per_token(a, b, act)
    y_ref = cat_act_reference(a, b, act).double()
    q_ref, s_ref = quantize_per_token(y_ref.to(dtype))
    # The kernel's GELU (fp32, sigmoid form) may round to the neighbouring 16-bit value of torch's: the input moves
    # by at most one ulp, the scale by that over 127, so each dequantized value by at most one step plus that ulp.
    ulp = y_ref.abs() * torch.finfo(dtype).eps
    deq, deq_ref = q.double() * s.double(), q_ref.double() * s_ref.double()
    assert ((deq - deq_ref).abs() <= s_ref.double() * (1 + 1e-3) + ulp).all()
    assert (q == q_ref).double().mean() > 0.99  # such roundings are rare: the kernels agree almost everywhere
    assert torch.allclose(s, s_ref, rtol=2 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_cat_act_op_matches_the_reference_linear(bias):
    from comfy_int8_w8a8.int8.kernels import custom_ops

    a, b = _inputs(77, 3072, 12288, torch.bfloat16, 9216)
    n, k = 640, 3072 + 12288
    wq, ws = quantize_per_channel(torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5)
    w = Int8Weights(wq, ws, torch.randn(n, device="cuda") if bias else None)
    y = custom_ops.W8A8_CAT_ACT_OP(a, b, 1, w.weight, w.weight_scale, w.bias)
    assert y.shape == (77, n) and y.dtype == torch.bfloat16
    # The op is the fused quant (tested above) then the GEMM with its fp32 dequant epilogue: against the exact
    # float64 product of that quantized input, only the epilogue's fp32 roundings and the final cast remain.
    from comfy_int8_w8a8.int8.kernels.triton_quant_fused import quantize_cat_act_per_token

    q, s = quantize_cat_act_per_token(a, b, 1)
    ref = (q.double() @ wq.double().t()) * s.double() * ws.double().reshape(1, -1)
    if bias:
        ref = ref + w.bias.double()
    bound = (ref.abs() + (w.bias.double().abs() if bias else 0)) * 4 * torch.finfo(torch.float32).eps \
        + ref.abs() * torch.finfo(torch.bfloat16).eps + torch.finfo(torch.bfloat16).tiny
    assert ((y.double() - ref).abs() <= bound).all()


def test_unsupported_rows_take_the_unfused_path():
    from comfy_int8_w8a8.int8.kernels import triton_w8a8

    a, b = _inputs(9, 8192, 12288, torch.bfloat16)  # 20480 columns: longer than the fused kernel holds
    n = 64
    wq, ws = quantize_per_channel(torch.randn(n, 20480, dtype=torch.float64, device="cuda") / 20480**0.5)
    y = triton_w8a8.w8a8_cat_act_linear(a, b, 1, Int8Weights(wq, ws))
    ref = triton_w8a8.w8a8_linear(cat_act_reference(a, b, 1), Int8Weights(wq, ws))
    assert torch.equal(y, ref)
