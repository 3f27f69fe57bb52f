"""The few-rows W8A8 split-K GEMM (int8/kernels/triton_splitk.py) against the tiled GEMM and the float64 reference."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear, Int8Weights, int8_linear_reference, quantize_per_channel

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _operands(m: int, k: int, n: int, dtype: torch.dtype = torch.bfloat16):
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    x = torch.randn(m, k, device="cuda") * 2
    x[:, ::97] *= 30
    w = torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5
    q, s = quantize_per_channel(w)
    xq, xs = quantize_per_token_triton(x.to(dtype))
    bias = torch.randn(n, device="cuda").to(dtype)
    return x.to(dtype), xq, xs, q, s, bias


@pytest.mark.parametrize("config", [(16, 64, 128, 1, 4, 3), (16, 32, 256, 2, 4, 3), (32, 64, 128, 4, 4, 3),
                                    (64, 64, 128, 8, 4, 3), (64, 128, 64, 3, 8, 4)])
@pytest.mark.parametrize("m,k,n", [(1, 3072, 3072), (17, 3073, 971), (33, 1024, 640), (64, 4096, 1536)])
def test_split_k_w8a8_equals_tiled_gemm_exactly_and_rearms_counters(m, k, n, config):
    # Same exact int32 products and the same fp32 epilogue in the same order: bit-identical outputs.
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk
    from comfy_int8_w8a8.int8.launch.gemm import int8_gemm_dequant

    _, xq, xs, q, s, bias = _operands(m, k, n)
    expected = int8_gemm_dequant(xq, xs, q, s, bias, torch.bfloat16)
    for _ in range(3):  # repeated launches reuse the counters: each must leave them at zero
        got = triton_splitk.split_k_linear(xq, q, xs, s, bias, torch.bfloat16, config)
        _, counters = triton_splitk._workspaces[torch.int32].get(xq.device, 0, 0)
        assert (counters == 0).all()
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 5, 16, 33, 64])
def test_few_rows_w8a8_linear_matches_float64_reference(m, dtype):
    from comfy_int8_w8a8.int8.backends import triton_dispatch as triton_w8a8
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk

    x, _, _, q, s, bias = _operands(m, 3072, 1536, dtype)
    w = Int8Weights(q, s, bias)
    assert triton_splitk.w8a8_config(m, 1536, 3072, torch.cuda.get_device_properties(0).multi_processor_count)
    got = triton_w8a8.w8a8_linear(x, w)
    assert got.dtype == dtype and got.shape == (m, 1536)
    # The reference quantizes x exactly as the kernel does (same dtype), then exact products in float64: only
    # the fp32 epilogue (a few roundings) and the final cast differ.
    ref = int8_linear_reference(x, q, s, bias)
    bound = ((ref - bias.double()).abs() + bias.double().abs()) * 4 * torch.finfo(torch.float32).eps \
        + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny
    assert ((got.double() - ref).abs() <= bound).all()


def test_w8a8_config_splits_few_rows_and_leaves_many_to_the_tiled_gemm():
    from comfy_int8_w8a8.int8.launch.splitk import W8A8_MAX_ROWS, w8a8_config

    # The measured rule (few_rows_tune_h100_s5.json): split the K loop when the tiles are too few to stream the
    # weight (16 rows on 3072->3072; long K at any row count), not at 33-64 rows with K = 3072.
    assert w8a8_config(16, 3072, 3072, 132)[3] > 1
    assert w8a8_config(64, 12288, 3072, 132)[3] == 1 and w8a8_config(64, 3072, 12288, 132)[3] > 1
    assert w8a8_config(64, 3072, 3072, 132)[3] == 1
    assert w8a8_config(W8A8_MAX_ROWS + 1, 3072, 3072, 132) is None


def test_reserved_w8a8_workspace_covers_every_few_rows_call_without_growing(assert_workspace_kept):
    # A workspace grown inside a CUDA-graph warm-up would land in the graph's pool (see prepare_device_state).
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk

    workspace = triton_splitk._workspaces[torch.int32]
    workspace._bufs.clear()
    layer = Int8Linear.from_linear(torch.nn.Linear(3072, 3072).cuda(),
                                   Int8Config(runtime_backend="triton", small_batch_fallback="never"))
    layer.backend_for(torch.device("cuda", torch.cuda.current_device()))
    assert_workspace_kept(workspace, torch.cuda.current_device(),
                          ((f"{m} rows", lambda m=m: layer(torch.randn(m, 3072, device="cuda", dtype=torch.bfloat16)))
                           for m in range(1, triton_splitk.W8A8_MAX_ROWS + 1)))


def test_few_rows_w8a8_replays_in_a_cuda_graph_with_fresh_inputs():
    # On Hopper the GEMM is launched programmatically dependent on the quant kernel: captured in a graph, a replay
    # must still see the activations the quant kernel has just written (new input values each replay).
    from comfy_int8_w8a8.int8.backends import triton_dispatch as triton_w8a8

    x, _, _, q, s, bias = _operands(48, 3072, 3072)
    w = Int8Weights(q, s, bias)
    static_x = x.clone()
    triton_w8a8.w8a8_linear(static_x, w)  # compile and reserve outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = triton_w8a8.w8a8_linear(static_x, w)
    for seed in range(3):
        torch.manual_seed(seed)
        static_x.copy_(torch.randn_like(static_x) * (seed + 1))
        graph.replay()
        assert torch.equal(static_y, triton_w8a8.w8a8_linear(static_x, w))


def test_pdl_and_plain_launch_give_identical_results():
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 (Hopper) or newer")
    _, xq, xs, q, s, bias = _operands(64, 3072, 3072)
    cfg = triton_splitk.w8a8_config(64, 3072, 3072, torch.cuda.get_device_properties(0).multi_processor_count)
    plain = triton_splitk.split_k_linear(xq, q, xs, s, bias, torch.bfloat16, cfg)
    assert torch.equal(triton_splitk.split_k_linear(xq, q, xs, s, bias, torch.bfloat16, cfg, pdl=True), plain)
