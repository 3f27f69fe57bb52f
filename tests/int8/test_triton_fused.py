"""The one-launch few-rows W8A8 kernel (int8/kernels/triton_fused_w8a8.py) against the two-kernel path."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear, Int8Weights, quantize_per_channel

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _weights(k: int, n: int, bias: bool = True) -> Int8Weights:
    w = torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5
    q, s = quantize_per_channel(w)
    return Int8Weights(q, s, torch.randn(n, device="cuda").to(torch.bfloat16) if bias else None)


def _two_kernels(x: torch.Tensor, w: Int8Weights, smooth: torch.Tensor | None, config) -> torch.Tensor:  # noqa: ANN001
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    xq, xs = quantize_per_token_triton(x, smooth)
    return triton_splitk.split_k_linear(xq, w.weight, xs, w.weight_scale, w.bias, x.dtype, config)


@pytest.mark.parametrize("config", [(16, 128, 256, 1, 4, 3), (16, 32, 256, 4, 4, 3), (64, 32, 256, 1, 4, 3),
                                    (32, 64, 128, 2, 4, 3)])
@pytest.mark.parametrize("m,k,n", [(1, 3072, 3072), (17, 3073, 971), (33, 1024, 640), (64, 12288, 1536),
                                   (5, 20000, 256)])
@pytest.mark.parametrize("dtype,smooth", [(torch.bfloat16, False), (torch.float16, True), (torch.float32, False)])
def test_fused_equals_two_kernel_path_exactly_and_rearms_counters(m, k, n, config, dtype, smooth):
    # Same quant body, same tile body: bit-identical. Repeated launches re-arm the counters (else the next
    # launch's GEMM programs would start before its rows are quantized, or the split-K sums would be off).
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk
    from comfy_int8_w8a8.int8.launch.fused_w8a8 import _scratch, fused_w8a8_linear

    w = _weights(k, n)
    s = torch.rand(k, device="cuda") + 0.5 if smooth else None
    for seed in range(3):
        torch.manual_seed(seed)
        x = (torch.randn(m, k, device="cuda") * (seed + 1)).to(dtype)
        x[:, ::97] *= 30
        got = fused_w8a8_linear(x, s, w.weight, w.weight_scale, w.bias, config)
        assert got.dtype == dtype and got.shape == (m, n)
        assert torch.equal(got, _two_kernels(x, w, s, config))
        sync = _scratch.get(x.device, 0, 2)[1]
        assert (sync[:2] == 0).all()
        assert (triton_splitk._workspaces[torch.int32].get(x.device, 0, 0)[1] == 0).all()


def test_w8a8_linear_takes_the_fused_kernel_for_few_plain_rows_outside_graph_captures(monkeypatch):
    from comfy_int8_w8a8.int8.backends import triton_dispatch as triton_w8a8
    from comfy_int8_w8a8.int8.launch import fused_w8a8 as triton_fused_w8a8

    calls = []
    real = triton_fused_w8a8.fused_w8a8_linear
    monkeypatch.setattr(triton_w8a8, "fused_w8a8_linear", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    w = _weights(1024, 640)
    xs = {m: torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16) for m in (1, 64, 65)}
    eager = {m: triton_w8a8.w8a8_linear(x, w) for m, x in xs.items()}
    triton_w8a8.w8a8_linear(xs[1], Int8Weights(w.weight, w.weight_scale, w.bias, hadamard_group=256))  # rotated
    assert calls == [1, 64]
    graph = torch.cuda.CUDAGraph()  # a capture records the two kernels (faster on the GPU; launches are free)
    with torch.cuda.graph(graph):
        captured = {m: triton_w8a8.w8a8_linear(x, w) for m, x in xs.items()}
    graph.replay()
    assert calls == [1, 64]
    assert all(torch.equal(captured[m], eager[m]) for m in xs)


def test_fused_kernel_in_a_cuda_graph_replays_with_fresh_inputs():
    # The kernel itself is graph-safe (counters re-armed in-kernel), though w8a8_linear records the two kernels.
    from comfy_int8_w8a8.int8.launch.fused_w8a8 import fused_w8a8_linear
    from comfy_int8_w8a8.int8.launch.splitk import w8a8_config

    w = _weights(3072, 3072)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    static = [torch.randn(m, 3072, device="cuda", dtype=torch.bfloat16) for m in (3, 48)]
    configs = [w8a8_config(x.shape[0], 3072, 3072, sms) for x in static]

    def run():  # noqa: ANN202
        return [fused_w8a8_linear(x, None, w.weight, w.weight_scale, w.bias, c) for x, c in zip(static, configs)]

    run()  # compile and reserve outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run()
    for seed in range(3):
        torch.manual_seed(seed)
        for x in static:
            x.copy_(torch.randn_like(x) * (seed + 1))
        graph.replay()
        for x, y, c in zip(static, outs, configs):
            assert torch.equal(y, _two_kernels(x, w, None, c))


def test_reserved_scratch_covers_every_few_rows_call_without_growing(assert_workspace_kept):
    from comfy_int8_w8a8.int8.launch import fused_w8a8 as triton_fused_w8a8

    triton_fused_w8a8._scratch._bufs.clear()
    layer = Int8Linear.from_linear(torch.nn.Linear(12288, 512).cuda(),
                                   Int8Config(runtime_backend="triton", small_batch_fallback="never"))
    layer.backend_for(torch.device("cuda", torch.cuda.current_device()))
    assert_workspace_kept(triton_fused_w8a8._scratch, torch.cuda.current_device(),
                          ((f"{m} rows", lambda m=m: layer(torch.randn(m, 12288, device="cuda"))) for m in (1, 63, 64)))
