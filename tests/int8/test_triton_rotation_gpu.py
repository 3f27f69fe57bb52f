"""The few-rows W8A16 path of a rotated layer on the GPU: its one-launch Triton rotation against the torch rotation,
the whole layer against the float64 reference, and the eager plan that replays both launches."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Weights, quantize_per_channel, rotate_weight
from comfy_int8_w8a8.int8.backends.base import prepare_activation

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _acts(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(m, k, device="cuda") * 2
    x[:, ::97] *= 30  # outlier channels, as in diffusion transformers
    return x.to(dtype)


def _rotated_layer(n: int, k: int, group: int, smooth: bool) -> Int8Weights:
    w = torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5
    s = (torch.rand(k, device="cuda") + 0.5) if smooth else None
    folded = w / s.double() if smooth else w
    q, scale = quantize_per_channel(rotate_weight(folded, group))
    return Int8Weights(q, scale, torch.randn(n, device="cuda"), group, s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,group,smooth", [(1, 3072, 256, False), (16, 5120, 256, True), (7, 13824, 64, False),
                                              (32, 12288, 256, False)])
def test_triton_rotation_matches_the_torch_rotation(m, k, group, smooth, dtype):
    from comfy_int8_w8a8.int8.launch.quant import rotate_rows_triton

    w = _rotated_layer(8, k, group, smooth)
    x = _acts(m, k, dtype)
    out = rotate_rows_triton(x, w.smooth, group)
    ref = prepare_activation(x, w)
    xs = x.float() * w.smooth.to(dtype).float() if smooth else x.float()
    bound = 2 * group * torch.finfo(torch.float32).eps * (xs.abs().reshape(m, -1, group).sum(-1) / group**0.5)
    tol = bound.amax(-1, keepdim=True) + ref.float().abs() * torch.finfo(dtype).eps
    assert ((out.float() - ref.float()).abs() <= tol).all()
    assert (out == ref).float().mean() > 0.9


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 5, 32])
def test_rotated_layer_few_rows_matches_reference_in_eager_plans_and_graphs(m, dtype):
    # The small-batch path (<= 32 rows) of a hadamard layer: eager (first call records the plan, later calls replay
    # it) and under a CUDA graph, against the float64 reference of the same int8 weights.
    from comfy_int8_w8a8.int8.config import Int8Config
    from comfy_int8_w8a8.int8.linear import Int8Linear

    k, n = 3072, 1024
    w = _rotated_layer(n, k, 256, False)
    layer = Int8Linear(k, n, True, Int8Config(runtime_backend="triton"), hadamard_group=256, device="cuda")
    layer.weight.copy_(w.weight)
    layer.weight_scale.copy_(w.weight_scale)
    layer.bias.copy_(w.bias)
    x = _acts(m, k, dtype)
    # W8A16: the dequantized weight times the rotated 16-bit activation
    ref = prepare_activation(x.double(), w) @ (w.weight.double() * w.weight_scale.double()).t() + w.bias.double()
    tol = 0.01 * ref.abs().amax()  # the rotated activation's 16-bit rounding and the 16-bit output cast
    outs = [layer(x) for _ in range(3)]  # record, then replay
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    layer(static_x)  # warm-up outside the capture
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
    graph.replay()
    for y in (*outs, static_y):
        assert y.dtype == dtype
        assert ((y.double() - ref).abs() <= tol).all()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
