"""The warp-specialized Gluon GEMM (int8/kernels/gluon_gemm.py, launched by int8/launch/gluon_gemm.py) against the TMA kernel, and the per-shape choice
between them (int8/launch/gemm_choice.py). Hopper only."""

import importlib.util
import logging

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None
    or torch.cuda.get_device_capability()[0] != 9,
    reason="needs an sm_90 (Hopper) GPU with Triton",
)


def _operands(m, k, n, dtype=torch.bfloat16):
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    xs = torch.rand(m, device="cuda") * 0.01 + 0.005
    ws = torch.rand(n, device="cuda") * 0.01 + 0.005
    return a, b, xs, ws, torch.randn(n, device="cuda").to(dtype)


def _tma(a, b, xs, ws, bias, dtype):
    from comfy_int8_w8a8.int8.launch.gemm import TMA_CONFIGS, int8_gemm_dequant

    # 128x128, 3 stages: fits beside an fp32 output tile too (TMA_CONFIGS[0]'s 4 stages of 128x256 do not)
    cfg = next(c for c in TMA_CONFIGS if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) == (128, 128, 3))
    return int8_gemm_dequant(a, xs, b, ws, bias, dtype, tma_config=cfg)


def _undecided_key(m, k, n, out_dtype, bias_dtype, has_bias):
    """The choice key ``int8_gemm_dequant`` uses for this call, with any earlier decision for it forgotten."""
    from comfy_int8_w8a8.int8.launch import gemm_choice
    from comfy_int8_w8a8.int8.launch.gemm import m_bucket

    key = (m_bucket(m), n, k, out_dtype, bias_dtype, has_bias)
    gemm_choice._choices.pop(key, None)
    return key


@pytest.fixture
def gg():
    from comfy_int8_w8a8.int8 import compat

    if not compat.gluon():
        pytest.skip(f"the Gluon kernel runs only on Triton {compat.TESTED_TRITON}x with Gluon (and not with "
                    f"{compat.NO_GLUON} set)")
    from comfy_int8_w8a8.int8.launch import gluon_gemm

    return gluon_gemm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("m,k,n", [(1000, 1552, 1000), (512, 3072, 1024), (2048, 3072, 3072), (17, 256, 136)])
def test_gluon_gemm_is_bit_identical_to_the_tma_kernel(gg, m, k, n, dtype, with_bias):
    a, b, xs, ws, bias = _operands(m, k, n, dtype)
    bias = bias if with_bias else None
    expected = _tma(a, b, xs, ws, bias, dtype)
    for cfg in gg.CONFIGS:
        c = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")  # every element must be written
        for _ in range(2):  # the second launch goes through the cached compiled kernel
            gg.gluon_gemm_dequant(a, xs, b, ws, bias if with_bias else xs, with_bias, c, cfg)
        assert torch.equal(c, expected), cfg


def test_large_shapes_record_a_choice_and_match(gg):
    from comfy_int8_w8a8.int8.launch import gemm_choice
    from comfy_int8_w8a8.int8.launch.gemm import int8_gemm_dequant

    m, k, n = 2304, 3072, 4608
    a, b, xs, ws, bias = _operands(m, k, n)
    key = _undecided_key(m, k, n, torch.bfloat16, bias.dtype, True)
    got = int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)
    assert key in gemm_choice._choices
    assert gemm_choice._choices[key] in (None, *gg.CONFIGS)
    assert torch.equal(got, _tma(a, b, xs, ws, bias, torch.bfloat16))
    assert torch.equal(int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16), got)  # decided: no re-timing


def test_fp32_output_keeps_the_tma_kernel(gg):
    from comfy_int8_w8a8.int8.launch import gemm_choice
    from comfy_int8_w8a8.int8.launch.gemm import int8_gemm_dequant

    m, k, n = 1024, 1024, 1024
    a, b, xs, ws, _ = _operands(m, k, n)
    key = _undecided_key(m, k, n, torch.float32, xs.dtype, False)
    got = int8_gemm_dequant(a, xs, b, ws, None, torch.float32)
    assert gemm_choice._choices[key] is None  # an fp32 tile does not fit beside the stages: not offered
    assert torch.equal(got, _tma(a, b, xs, ws, None, torch.float32))


def test_a_config_that_does_not_build_falls_back_to_tma_and_says_so(gg, monkeypatch, caplog):
    from triton.compiler.errors import CompilationError

    from comfy_int8_w8a8.int8.launch import gemm_choice
    from comfy_int8_w8a8.int8.launch.gemm import int8_gemm_dequant

    def broken(*args, **kwargs):
        raise CompilationError("src", None, "stand-in build failure")

    monkeypatch.setattr(gg, "gluon_gemm_dequant", broken)
    monkeypatch.setattr(gemm_choice, "_broken", set())
    m, k, n = 1536, 2048, 2048
    a, b, xs, ws, bias = _operands(m, k, n)
    key = _undecided_key(m, k, n, torch.bfloat16, bias.dtype, True)
    with caplog.at_level(logging.WARNING):
        got = int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)
    assert gemm_choice._choices.pop(key) is None
    assert set(gg.CONFIGS) <= gemm_choice._broken
    assert "does not build here" in caplog.text and "TMA" in caplog.text
    assert torch.equal(got, _tma(a, b, xs, ws, bias, torch.bfloat16))


def test_no_timing_inside_a_cuda_graph_capture(gg):
    from comfy_int8_w8a8.int8.launch import gemm_choice
    from comfy_int8_w8a8.int8.launch.gemm import int8_gemm_dequant

    m, k, n = 1024, 2048, 3072
    a, b, xs, ws, bias = _operands(m, k, n)
    expected = _tma(a, b, xs, ws, bias, torch.bfloat16)
    int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)  # compile and tune the TMA kernel outside the capture
    key = _undecided_key(m, k, n, torch.bfloat16, bias.dtype, True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = int8_gemm_dequant(a, xs, b, ws, bias, torch.bfloat16)
    assert key not in gemm_choice._choices  # undecided: the next eager call decides
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
