"""Each Triton kernel against the float64 / torch references, with bounds from the quantization step."""

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import (
    Int8Weights,
    int8_linear_reference,
    quantize_per_channel,
    quantize_per_token,
    rotate_activation,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SHAPES = [(1, 3073, 971), (33, 3073, 971), (33, 256, 128), (130, 1024, 640), (300, 4096, 1536)]


def _acts(m, k, dtype):
    x = torch.randn(m, k, device="cuda") * 2
    x[:, ::97] *= 30  # outlier channels, as in diffusion transformers
    return x.to(dtype)


def _layer(n, k, bias):
    w = torch.randn(n, k, dtype=torch.float64, device="cuda") / k**0.5
    q, s = quantize_per_channel(w)
    return Int8Weights(q, s, torch.randn(n, device="cuda") if bias else None)


def _cast_step(ref, bias, dtype):
    # fp32 epilogue (acc * xs * ws + bias: a few fp32 roundings) then one cast to dtype (half an ulp).
    b = bias.double().abs() if bias is not None else 0
    magnitude = (ref - (bias.double() if bias is not None else 0)).abs() + b
    return magnitude * 4 * torch.finfo(torch.float32).eps + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny


def _flip_step(xs, w):
    # One int8 activation value rounded the other way on an exact tie moves the output by x_scale*max|Wq|*w_scale.
    return xs.double() * w.weight.double().abs().amax(dim=1) * w.weight_scale.double().reshape(1, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 3073), (33, 3073), (130, 8192), (7, 20000)])
def test_quant_kernel_plain_matches_quantize_per_token_exactly(m, k, dtype):
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    x = _acts(m, k, dtype)
    q, s = quantize_per_token_triton(x)
    q_ref, s_ref = quantize_per_token(x)
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)  # IEEE division and round-half-to-even, like torch.round


@pytest.mark.parametrize("dtype", DTYPES)
def test_quant_kernel_with_smooth_matches_torch(dtype):
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    x = _acts(33, 3073, dtype)
    smooth = torch.rand(3073, device="cuda") + 0.5
    q, s = quantize_per_token_triton(x, smooth)
    q_ref, s_ref = quantize_per_token(x * smooth.to(dtype))
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [64, 256, 1024])
@pytest.mark.parametrize("m,k", [(1, 3072), (33, 5120), (16, 1024)])
def test_quant_kernel_with_rotation_matches_rotate_activation(m, k, group, dtype):
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    x = _acts(m, k, dtype)
    q, s = quantize_per_token_triton(x, None, group)
    xr = rotate_activation(x, group)
    q_ref, s_ref = quantize_per_token(xr)
    # The rotation sums in a different fp32 order than torch's matmul: each rotated value may differ by up to
    # 2*G*eps32*sum_i |x_i h_i| (|h| = 1/sqrt(G)), and its rounding to x's dtype by one ulp of that dtype, so the
    # scale (absmax / 127) by that much over 127, and an int8 value by at most one step.
    group_abs = x.float().abs().reshape(m, -1, group).sum(-1) / group**0.5
    rot_err = 2 * group * torch.finfo(torch.float32).eps * group_abs.amax(-1, keepdim=True)
    assert ((s - s_ref).abs() <= rot_err / 127 + s_ref * torch.finfo(dtype).eps).all()
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max() <= 1
    same_scale = (s == s_ref).reshape(-1)
    if same_scale.any():  # with equal scales only values within a few ulps of a rounding tie may differ
        assert (diff[same_scale] > 0).float().mean() < 0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_w8a8_linear_matches_float64_reference(m, k, n, dtype, bias):
    from comfy_int8_w8a8.int8.backends.triton_dispatch import w8a8_linear

    w = _layer(n, k, bias)
    x = _acts(m, k, dtype)
    y = w8a8_linear(x, w)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = int8_linear_reference(x, w.weight, w.weight_scale, w.bias)
    assert ((y.double() - ref).abs() <= _cast_step(ref, w.bias, dtype)).all()


@pytest.mark.parametrize("use_tma", [False, True])
def test_gemm_kernels_agree_on_aligned_shape(use_tma):
    from comfy_int8_w8a8.int8.launch.gemm import hopper_tma_ok, int8_gemm_dequant

    a = torch.randint(-127, 128, (257, 1024), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (384, 1024), dtype=torch.int8, device="cuda")
    if use_tma and not hopper_tma_ok(a, b):
        pytest.skip("TMA kernel needs sm_90 and Triton tensor descriptors")
    xs = torch.rand(257, 1, device="cuda") + 0.5
    ws = torch.rand(384, 1, device="cuda") + 0.5
    y = int8_gemm_dequant(a, xs, b, ws, None, torch.float32, use_tma=use_tma)
    ref = (a.double() @ b.double().t()) * xs.double() * ws.double().t()
    assert ((y.double() - ref).abs() <= ref.abs() * 4 * torch.finfo(torch.float32).eps).all()


def _tma_config_count() -> int:
    try:
        from comfy_int8_w8a8.int8.launch.gemm import TMA_CONFIGS
    except ImportError:  # no Triton here: the module's skip marker reports it
        return 0
    return len(TMA_CONFIGS)


@pytest.mark.parametrize("config_index", range(max(_tma_config_count(), 1)))
def test_every_tma_config_matches_the_float64_reference(config_index):
    # The autotuner may pick any of them: each one, with ragged edges (M, N not tile multiples, a K tail) and bias.
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm

    cfg = triton_gemm.TMA_CONFIGS[config_index]
    a, b, xs, ws, bias = _tma_gemm_operands(300, 520, 3 * 128 + 64)
    y = triton_gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, tma_config=cfg)
    ref = _gemm_reference(a, b, xs, ws, bias)
    assert ((y.double() - ref).abs() <= _cast_step(ref, bias, torch.bfloat16)).all()


def _tma_gemm_operands(m: int, n: int, k: int):
    """Random int8 operands, fp32 scales and a bf16 bias for a TMA GEMM test (skips where that kernel can't run)."""
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm

    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    if not triton_gemm.hopper_tma_ok(a, b):
        pytest.skip("TMA kernel needs sm_90 and Triton tensor descriptors")
    xs = torch.rand(m, 1, device="cuda") + 0.5
    ws = torch.rand(n, 1, device="cuda") * 1e-3
    return a, b, xs, ws, torch.randn(n, device="cuda", dtype=torch.bfloat16)


def _gemm_reference(a, b, xs, ws, bias):
    return (a.double() @ b.double().t()) * xs.double() * ws.double().t() + bias.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [64, 256])
def test_w8a8_linear_with_rotation_and_smooth_matches_reference(dtype, group):
    from comfy_int8_w8a8.int8.backends.triton_dispatch import w8a8_linear

    w = _layer(971, 3072, True)
    w.hadamard_group = group
    w.smooth = torch.rand(3072, device="cuda") + 0.5
    x = _acts(33, 3072, dtype)
    y = w8a8_linear(x, w)
    xr = rotate_activation(x * w.smooth.to(dtype), group)
    ref = int8_linear_reference(xr, w.weight, w.weight_scale, w.bias)
    _, xs = quantize_per_token(xr)
    # plus one int8 step per output for the rotation's summation order (see the quant-kernel test)
    tol = _cast_step(ref, w.bias, dtype) + _flip_step(xs, w) * (1 + torch.finfo(dtype).eps * 127)
    assert ((y.double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [(1, 3073, 971), (16, 3072, 3072), (33, 256, 128), (64, 3072, 18432)])
@pytest.mark.parametrize("bias", [True, False])
def test_w8a16_kernel_matches_dequantized_linear(m, k, n, dtype, bias):
    from comfy_int8_w8a8.int8.backends.triton_dispatch import weight_only_linear

    w = _layer(n, k, bias)
    x = _acts(m, k, dtype)
    y = weight_only_linear(x, w)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = x.double() @ w.weight.double().t() * w.weight_scale.double().t()
    if bias:
        ref = ref + w.bias.double()
    # fp32 accumulation of exact products (K roundings of at most |x||Wq| each) times the scale, then the cast.
    acc_err = (x.double().abs() @ w.weight.double().abs().t()) * w.weight_scale.double().t() * k * torch.finfo(
        torch.float32).eps
    tol = acc_err + ref.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny
    assert ((y.double() - ref).abs() <= tol).all()


def test_w8a16_fp32_input_uses_dequantized_matmul():
    from comfy_int8_w8a8.int8.backends.triton_dispatch import weight_only_linear

    w = _layer(96, 200, True)
    x = torch.randn(3, 200, device="cuda")
    y = weight_only_linear(x, w)
    ref = x.double() @ (w.weight.double() * w.weight_scale.double()).t() + w.bias.double()
    assert y.dtype == torch.float32
    assert torch.allclose(y.double(), ref, rtol=4 * torch.finfo(torch.float32).eps * 200, atol=1e-5)


@pytest.mark.parametrize("hadamard_group", [0, 256])
def test_compiled_int8_linear_triton_has_no_graph_break(hadamard_group):
    from torch._dynamo.utils import counters

    from comfy_int8_w8a8.int8 import Int8Config, Int8Linear

    torch._dynamo.reset()
    counters.clear()
    lin = torch.nn.Linear(512, 256).cuda()
    layer = Int8Linear.from_linear(lin, Int8Config(runtime_backend="triton"), hadamard_group=hadamard_group)
    x = torch.randn(4, 77, 512, device="cuda", dtype=torch.bfloat16)

    def gelu_then_layer(v):  # a producer for inductor to fuse the traced quantization into
        return layer(torch.nn.functional.gelu(v))

    expected = gelu_then_layer(x)
    out = torch.compile(gelu_then_layer, fullgraph=True)(x)
    assert sum(counters["graph_break"].values()) == 0
    if hadamard_group:  # the fused rotate+quant kernel runs traced too: bit-identical
        assert torch.equal(out, expected)
        return
    # Traced, the quantization is inductor's code: a different fp32 op order may move an activation across a
    # rounding boundary, by at most one step (the token's scale) in that element; bound it from the weights.
    xg = torch.nn.functional.gelu(x).float().reshape(-1, 512)
    x_step = xg.abs().amax(1, keepdim=True) / 127
    w_abs = (layer.weight.float().abs() * layer.weight_scale.reshape(-1, 1)).sum(1)
    bound = x_step * w_abs + expected.float().reshape(-1, 256).abs() * 2**-7
    assert ((out.float() - expected.float()).reshape(-1, 256).abs() <= bound).all()


@pytest.mark.parametrize("config", [(16, 64, 128, 4, 4, 4), (32, 32, 256, 3, 4, 3), (64, 64, 128, 8, 4, 4)])
@pytest.mark.parametrize("m,k,n", [(5, 3073, 971), (64, 3072, 3072)])
def test_w8a16_split_k_matches_single_pass_and_rearms_counters(m, k, n, config):
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk
    from comfy_int8_w8a8.int8.launch import w8a16 as triton_w8a16

    w = _layer(n, k, True)
    x = _acts(m, k, torch.bfloat16)
    whole = triton_w8a16.w8a16_linear(x, w.weight, w.weight_scale, w.bias, config=(*config[:3], 1, *config[4:]))
    for _ in range(3):  # repeated launches reuse the counters: each must leave them at zero
        split = triton_w8a16.w8a16_linear(x, w.weight, w.weight_scale, w.bias, config=config)
        _, counters = triton_splitk._workspaces[torch.float32].get(x.device, 0, 0)
        assert (counters == 0).all()
    acc = (x.double().abs() @ w.weight.double().abs().t()) * w.weight_scale.double().t()
    # Both sum the same exact products in fp32 (different order): K roundings each, then one bf16 cast each.
    tol = 2 * acc * k * torch.finfo(torch.float32).eps + 2 * whole.double().abs() * torch.finfo(torch.bfloat16).eps
    assert ((split.double() - whole.double()).abs() <= tol + torch.finfo(torch.bfloat16).tiny).all()
    again = triton_w8a16.w8a16_linear(x, w.weight, w.weight_scale, w.bias, config=config)
    assert torch.equal(again, split)  # partials are summed in a fixed order: deterministic


def test_w8a16_config_splits_k_when_tiles_are_few():
    from comfy_int8_w8a8.int8.launch.w8a16 import w8a16_config

    _, _, _, split_small, _, _ = w8a16_config(64, 3072, 3072, 132)
    _, _, _, split_wide, _, _ = w8a16_config(16, 18432, 3072, 132)
    assert split_small > 1 and split_wide == 1


def test_gemm_tma_repeat_call_takes_cached_config_and_matches():
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm

    a = torch.randint(-127, 128, (300, 512), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (264, 512), dtype=torch.int8, device="cuda")
    if not triton_gemm.hopper_tma_ok(a, b):
        pytest.skip("TMA kernel needs sm_90 and Triton tensor descriptors")
    xs = torch.rand(300, 1, device="cuda") + 0.5
    ws = torch.rand(264, 1, device="cuda") + 0.5
    bias = torch.randn(264, device="cuda", dtype=torch.bfloat16)
    first = triton_gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)  # autotunes, records the pick
    assert any(key[:3] == (512, 264, 512) for key in triton_gemm._tuned)
    again = triton_gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)  # direct launch of that config
    assert torch.equal(first, again)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(70, 12288), (9, 15360), (5, 16384), (3, 16400)])
def test_quant_kernel_plain_long_rows_match_exactly(m, k, dtype):
    # One read of rows up to 16384 columns held in registers; 16400 takes the two-pass chunked path.
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    x = _acts(m, k, dtype)
    q, s = quantize_per_token_triton(x)
    q_ref, s_ref = quantize_per_token(x)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


def test_quant_kernel_repeat_calls_respect_alignment():
    # Later calls skip the JIT (fast_launch): a view 2 bytes off alignment must not reuse the aligned kernel.
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    base = _acts(40, 3072 + 16, torch.bfloat16)
    aligned, shifted = base[:, :3072], base[:, 1:3073]
    for x in (aligned, aligned, shifted, shifted, aligned):
        for group in (0, 256):
            q, s = quantize_per_token_triton(x, None, group)
            q_ref, s_ref = quantize_per_token(rotate_activation(x, group) if group else x)
            assert (q.int() - q_ref.int()).abs().max() <= (1 if group else 0)
            if not group:
                assert torch.equal(s, s_ref)


@pytest.mark.parametrize("group", [64, 256])
@pytest.mark.parametrize("m,k", [(1500, 3072), (3, 15360), (37, 1024), (7, 12288), (5, 10240)])
def test_one_pass_rotation_kernel_matches_rotate_activation(m, k, group):
    # m = 1500 exceeds the persistent grid on any GPU below 188 SMs, so programs walk several rows;
    # K = 15360 pads 60 groups to 64.
    from comfy_int8_w8a8.int8.launch.quant import quantize_per_token_triton

    dtype = torch.bfloat16
    x = _acts(m, k, dtype)
    q, s = quantize_per_token_triton(x, None, group)
    q_ref, s_ref = quantize_per_token(rotate_activation(x, group))
    group_abs = x.float().abs().reshape(m, -1, group).sum(-1) / group**0.5
    rot_err = 2 * group * torch.finfo(torch.float32).eps * group_abs.amax(-1, keepdim=True)
    assert ((s - s_ref).abs() <= rot_err / 127 + s_ref * torch.finfo(dtype).eps).all()
    assert (q.int() - q_ref.int()).abs().max() <= 1


@pytest.mark.parametrize("m,k", [(1500, 2432), (3, 2432), (9, 1088)])
def test_one_pass_blocks64_kernel_matches_rotate_activation(m, k):
    # 64-column groups with K % 256 != 0 (SD3.5-large's 2432 = 38 x 64; 1088 = 17 x 64, padded to 32).
    from comfy_int8_w8a8.int8.launch.quant import one_pass_blocks64_fits, quantize_per_token_triton

    assert one_pass_blocks64_fits(k, 64)
    dtype = torch.bfloat16
    x = _acts(m, k, dtype)
    q, s = quantize_per_token_triton(x, None, 64)
    q_ref, s_ref = quantize_per_token(rotate_activation(x, 64))
    group_abs = x.float().abs().reshape(m, -1, 64).sum(-1) / 8
    rot_err = 2 * 64 * torch.finfo(torch.float32).eps * group_abs.amax(-1, keepdim=True)
    assert ((s - s_ref).abs() <= rot_err / 127 + s_ref * torch.finfo(dtype).eps).all()
    assert (q.int() - q_ref.int()).abs().max() <= 1


def test_reserved_workspace_covers_every_small_batch_call_without_growing(assert_workspace_kept):
    # A workspace grown during a CUDA-graph warm-up would be allocated in the graph's pool: preparing the layer's
    # state must reserve enough for every row count the small-batch path takes.
    from comfy_int8_w8a8.int8 import Int8Config, Int8Linear
    from comfy_int8_w8a8.int8.launch import splitk as triton_splitk

    workspace = triton_splitk._workspaces[torch.float32]
    workspace._bufs.clear()
    lin = torch.nn.Linear(3072, 18432).cuda()
    config = Int8Config(runtime_backend="triton", small_batch_fallback="always")
    layer = Int8Linear.from_linear(lin, config)
    layer.backend_for(torch.device("cuda", torch.cuda.current_device()))
    assert_workspace_kept(workspace, torch.cuda.current_device(),
                          ((f"{m} rows", lambda m=m: layer(torch.randn(m, 3072, device="cuda", dtype=torch.bfloat16)))
                           for m in range(1, config.small_batch_rows + 1)))


def _split_tail_cases():
    from comfy_int8_w8a8.int8.launch.gemm import TMA_CONFIGS

    return [c for c in TMA_CONFIGS if c.kwargs["SPLIT_TAIL"]]


@pytest.mark.parametrize("extra_tiles", [3, -120])  # a last wave of 3 tiles; fewer tiles than SMs
@pytest.mark.parametrize("config_index", range(7))
def test_gemm_split_tail_matches_unsplit_exactly_and_rearms_counters(extra_tiles, config_index):
    from comfy_int8_w8a8.int8.kernels.triton_gemm import tma_cfg
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm

    configs = _split_tail_cases()
    if config_index >= len(configs):
        pytest.skip(f"only {len(configs)} split-tail configs")
    split_cfg = configs[config_index]
    kw = split_cfg.kwargs
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cols = max(sms + extra_tiles, 2)  # one row of tiles: the tail has `extra_tiles` (or all) of them
    # ragged edges, K tail
    a, b, xs, ws, bias = _tma_gemm_operands(kw["BLOCK_M"] - 5, kw["BLOCK_N"] * cols - 8, 16 * kw["BLOCK_K"] + 64)
    unsplit_cfg = tma_cfg(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], split_cfg.num_warps,
                                       split_cfg.num_stages, kw["EPILOGUE_SUBTILE"], kw["USE_TMA_STORE"],
                                       split_tail=False)
    whole = triton_gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, tma_config=unsplit_cfg)
    for _ in range(3):  # repeated launches reuse the counters: each must leave them at zero
        split = triton_gemm.int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16, tma_config=split_cfg)
        _, counters = triton_gemm._split_workspace.get(a.device, 0, 0)
        assert (counters == 0).all()
        # int32 partial sums are exact, and the epilogue is the same code: bit-identical to the unsplit kernel
        assert torch.equal(split, whole)
    ref = _gemm_reference(a, b, xs, ws, bias)
    assert ((split.double() - ref).abs() <= _cast_step(ref, bias, torch.bfloat16)).all()


def test_reserved_tail_workspace_is_not_regrown_by_gemm_calls(assert_workspace_kept):
    # Reserved when a layer's state is built (before any CUDA graph records); a GEMM call must never grow it.
    from comfy_int8_w8a8.int8.launch import gemm as triton_gemm

    triton_gemm._split_workspace._bufs.clear()
    device = torch.device("cuda", torch.cuda.current_device())
    triton_gemm.reserve_tail_workspace(device)
    if not triton_gemm._split_workspace._bufs:
        pytest.skip("no TMA kernel on this GPU: nothing to reserve")

    def gemm(m: int, n: int, k: int) -> None:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
        triton_gemm.int8_gemm_dequant(a, torch.ones(m, device="cuda"), b, torch.ones(n, device="cuda"), None,
                                      torch.bfloat16)

    assert_workspace_kept(triton_gemm._split_workspace, device.index,
                          ((f"{m}x{n}x{k}", lambda shape=(m, n, k): gemm(*shape))
                           for m, n, k in [(1000, 3072, 2048), (64, 3072, 3072), (4608, 3072, 1024)]))


def test_one_pass_rotation_covers_groups_with_least_padding():
    from comfy_int8_w8a8.int8.launch.quant import rot_row_group_split

    # K = 12288 (48 groups of 256) and 10240 (40) take two dots (32 + 16 rows) instead of one of 64.
    assert rot_row_group_split(48) == (32, 16) and rot_row_group_split(40) == (32, 16)
    assert rot_row_group_split(12) == (16, 0) and rot_row_group_split(60) == (64, 0)
    for groups in range(1, 65):
        g_a, g_b = rot_row_group_split(groups)
        assert g_a + g_b >= groups and g_a >= 16 and g_b in (0, *(2**i for i in range(4, 7)))
