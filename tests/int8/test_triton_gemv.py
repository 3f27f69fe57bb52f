"""The one/two-row GEMV path of the W8A16 small-batch kernel against the dequantized float64 layer (GPU)."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import quantize_per_channel

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("k,bias", [(3072, True), (3073, False), (200, True)])
def test_gemv_matches_dequantized_reference(dtype, m, k, bias):
    from comfy_int8_w8a8.int8.launch.gemv import use_gemv
    from comfy_int8_w8a8.int8.launch.w8a16 import w8a16_linear

    n = 64 * _sms() + 17  # wide enough for the GEMV, with a ragged last block of channels
    assert use_gemv(m, n, _sms())
    q, s = quantize_per_channel(torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5)
    b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
    x = (torch.randn(m, k, device="cuda") * 2).to(dtype)
    y = w8a16_linear(x, q, s, b)
    ref = x.double() @ (q.double() * s.double()).t() + (b.double() if bias else 0)
    # fp32 accumulation of K products (|x| |w| summed: gamma_K bound), the fp32 epilogue, one cast to dtype
    mag = x.double().abs() @ (q.double().abs() * s.double()).t() + (b.double().abs() if bias else 0)
    bound = mag * (k + 4) * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(dtype).eps
    assert y.shape == (m, n) and y.dtype == dtype
    assert ((y.double() - ref).abs() <= bound + torch.finfo(dtype).tiny).all()


def test_gemv_takes_only_wide_layers_and_few_rows():
    from comfy_int8_w8a8.int8.launch.gemv import use_gemv

    sms = _sms()
    assert use_gemv(1, 18432, 132) and use_gemv(2, 9216, 132)
    assert not use_gemv(1, 3072, 132)  # 96 programs of 32 channels: fewer than two per SM
    assert not use_gemv(3, 18432, sms) and not use_gemv(0, 18432, sms)


def test_gemv_in_a_cuda_graph_replays_with_new_inputs():
    from comfy_int8_w8a8.int8.launch.w8a16 import w8a16_linear

    n, k = 64 * _sms(), 512
    q, s = quantize_per_channel(torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w8a16_linear(x, q, s, None)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = w8a16_linear(x, q, s, None)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(y, w8a16_linear(x, q, s, None))
