"""The generic Triton int8 attention on a CUDA GPU against the float64 reference and exact SDPA (skipped without
CUDA and Triton). Unverified until run on a GPU: written for an H100 (fp8 P.V there), valid on sm_80+ (16-bit).

Bounds as in tests/int8/test_interpreted_attention.py, looser for bf16 (its 8-bit mantissa rounds P and the
output 8x coarser than fp16): against the reference 1.5e-3 (fp16) / 1e-2 (bf16, fp8), against exact SDPA the
scheme's 2% (16-bit) and 5% (fp8) plus the kernel's share.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import compat
from comfy_int8_w8a8.int8.attention_reference import int8_attention_reference, relative_error, sdpa_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU and Triton")]


def _qkv(b, h, hkv, lq, lk, d, dtype):  # noqa: ANN001, ANN202
    q = torch.randn(b, h, lq, d, device="cuda")
    k = torch.randn(b, hkv, lk, d, device="cuda") + 3 * torch.randn(1, 1, 1, d, device="cuda")
    v = torch.randn(b, hkv, lk, d, device="cuda")
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _pvs() -> list[str]:
    fp8 = compat.fp8_attention_unavailable_reason(torch.device("cuda")) is None
    return ["16bit", "int8"] + (["fp8"] if fp8 else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,h,hkv,lq,lk,d", [
    (1, 4, 4, 1000, 1000, 64),    # lengths no multiple of any tile
    (2, 8, 2, 777, 77, 128),      # cross-attention to 77 text keys, GQA 4:1
    (1, 8, 8, 4608, 512, 128),    # Flux-like queries, 512 text keys
    (1, 2, 1, 300, 4609, 128),    # long keys, GQA 2:1
])
@pytest.mark.parametrize("granularity", ["block", "token"])
def test_int8_attention_gpu_matches_reference(b, h, hkv, lq, lk, d, dtype, granularity):
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles, int8_attention_triton

    q, k, v = _qkv(b, h, hkv, lq, lk, d, dtype)
    exact = sdpa_reference(q.cpu(), k.cpu(), v.cpu())
    for pv in _pvs():
        tiles = attention_tiles(d, pv)
        out = int8_attention_triton(q, k, v, pv=pv, granularity=granularity, tiles=tiles)
        block_q, block_k = (1, 1) if granularity == "token" else (tiles.quant_block_q, tiles.quant_block_k)
        ref = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), pv=pv, block_q=block_q, block_k=block_k,
                                       key_block=tiles.block_n)  # P rounded against the running max, as the kernel
        assert out.shape == (b, h, lq, d) and out.dtype == dtype
        tol = 1.5e-3 if (dtype == torch.float16 and pv == "16bit") else 1e-2
        assert relative_error(out.cpu(), ref) < tol, pv
        assert relative_error(out.cpu(), exact) < {"16bit": 0.025, "int8": 0.03}.get(pv, 0.055), pv


def test_int8_attention_gpu_blhd_output_equals_bhld():
    from comfy_int8_w8a8.int8.launch.attention import int8_attention_triton

    q, k, v = _qkv(1, 4, 4, 500, 600, 128, torch.bfloat16)
    bhld = int8_attention_triton(q, k, v, pv="16bit")
    blhd = int8_attention_triton(q, k, v, pv="16bit", out_layout="blhd")
    assert torch.equal(blhd.transpose(1, 2), bhld)


def test_int8_attention_gpu_captures_in_a_cuda_graph():
    from comfy_int8_w8a8.int8.backends.attention import AttentionOptions, int8_attention

    q, k, v = _qkv(1, 4, 4, 1024, 1024, 128, torch.bfloat16)
    opts = AttentionOptions(min_seq_len=0)
    eager = int8_attention(q, k, v, opts)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = int8_attention(q, k, v, opts)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


def test_int8_attention_gpu_compiles_fullgraph():
    from comfy_int8_w8a8.int8.backends.attention import AttentionOptions, int8_attention

    q, k, v = _qkv(1, 4, 4, 1024, 1024, 128, torch.bfloat16)
    opts = AttentionOptions(min_seq_len=0)
    compiled = torch.compile(lambda a, b, c: int8_attention(a, b, c, opts) * 1, fullgraph=True)
    assert torch.equal(compiled(q, k, v), int8_attention(q, k, v, opts))
