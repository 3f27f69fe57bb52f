"""The warp-specialized Hopper int8 attention (Gluon) on an sm_90 GPU against the float64 reference, exact SDPA and
the generic kernel (skipped elsewhere). Same bounds as tests/int8/test_attention_gpu.py; the reference rounds P
against the running max of the Hopper kernel's 128-key blocks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from comfy_int8_w8a8.int8 import compat
from comfy_int8_w8a8.int8.attention_reference import int8_attention_reference, relative_error, sdpa_reference


def _hopper_problem() -> str | None:
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return "needs a CUDA GPU and Triton"
    if torch.cuda.get_device_capability()[0] != 9:
        return "the Hopper kernel runs on sm_90 only"
    if not compat.gluon():
        return "the Gluon gate is off here (compat.gluon())"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_hopper_problem() is not None, reason=str(_hopper_problem()))]


def _qkv(b, h, hkv, lq, lk, d, dtype, comfy_layout=False):  # noqa: ANN001, ANN202
    """q, k, v (B, H, L, D); ``comfy_layout``: views of (B, L, H, D) memory, as ComfyUI's (B, L, H*D) reaches us."""
    shape_q, shape_kv = (b, lq, h, d), (b, lk, hkv, d)
    q = torch.randn(*shape_q, device="cuda")
    k = torch.randn(*shape_kv, device="cuda") + 3 * torch.randn(1, 1, 1, d, device="cuda")
    v = torch.randn(*shape_kv, device="cuda")
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    return (q, k, v) if comfy_layout else tuple(t.contiguous() for t in (q, k, v))


def _pvs() -> list[str]:
    fp8 = compat.fp8_attention_unavailable_reason(torch.device("cuda")) is None
    return ["16bit", "int8"] + (["fp8"] if fp8 else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,h,hkv,lq,lk,d,comfy_layout", [
    (1, 4, 4, 1000, 1000, 64, False),   # lengths no multiple of any tile
    (2, 8, 2, 777, 77, 128, True),      # cross-attention to 77 text keys, GQA 4:1, ComfyUI's layout
    (1, 8, 8, 4608, 512, 128, True),    # Flux-like queries, 512 text keys
    (2, 2, 1, 300, 4609, 128, False),   # long keys (a ragged last block), GQA 2:1, two batches
])
def test_hopper_attention_matches_reference(b, h, hkv, lq, lk, d, comfy_layout, dtype):
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles, int8_attention_triton
    from comfy_int8_w8a8.int8.launch.gluon_attention import gluon_attention_tiles

    q, k, v = _qkv(b, h, hkv, lq, lk, d, dtype, comfy_layout)
    exact = sdpa_reference(q.cpu(), k.cpu(), v.cpu())
    for pv in _pvs():
        quant = attention_tiles(d, pv)
        out = int8_attention_triton(q, k, v, pv=pv, kernel="hopper")
        ref = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), pv=pv, block_q=quant.quant_block_q,
                                       block_k=quant.quant_block_k, key_block=gluon_attention_tiles(d, pv).block_n)
        assert out.shape == (b, h, lq, d) and out.dtype == dtype
        assert not out.isnan().any(), pv
        tol = 1.5e-3 if (dtype == torch.float16 and pv == "16bit") else 1e-2
        assert relative_error(out.cpu(), ref) < tol, pv
        assert relative_error(out.cpu(), exact) < {"16bit": 0.025, "int8": 0.03}.get(pv, 0.055), pv


def test_hopper_attention_blhd_output_and_generic_kernel_agree():
    from comfy_int8_w8a8.int8.launch.attention import int8_attention_triton

    q, k, v = _qkv(1, 4, 4, 700, 900, 128, torch.bfloat16, comfy_layout=True)
    bhld = int8_attention_triton(q, k, v, pv="16bit", kernel="hopper")
    blhd = int8_attention_triton(q, k, v, pv="16bit", out_layout="blhd", kernel="hopper")
    assert torch.equal(blhd.transpose(1, 2), bhld)
    generic = int8_attention_triton(q, k, v, pv="16bit")
    assert relative_error(bhld.float(), generic.float()) < 1e-2  # same scheme; P rounded against other key blocks


def test_hopper_attention_captures_in_a_cuda_graph():
    from comfy_int8_w8a8.int8.launch.attention import int8_attention_triton

    q, k, v = _qkv(1, 4, 4, 1024, 1024, 128, torch.bfloat16)
    eager = int8_attention_triton(q, k, v, kernel="hopper")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = int8_attention_triton(q, k, v, kernel="hopper")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)


@pytest.mark.parametrize("consumers", [1, 2])
def test_hopper_attention_one_or_two_consumers_match_reference(consumers):
    # Two consumer partitions split the 128-row tile (bench attention --sweep-hopper times both forms).
    from comfy_int8_w8a8.int8.launch.attention import attention_tiles, int8_attention_triton
    from comfy_int8_w8a8.int8.launch.gluon_attention import GluonAttentionTiles

    tiles = GluonAttentionTiles(block_m=128, block_n=64, stages=3, warps=4 if consumers == 2 else 8, maxnreg=168,
                                consumers=consumers, consumer_regs=232 if consumers == 2 else 0)
    q, k, v = _qkv(1, 4, 2, 1100, 1000, 128, torch.bfloat16, comfy_layout=True)
    quant = attention_tiles(128, "16bit")
    out = int8_attention_triton(q, k, v, pv="16bit", kernel="hopper", hopper_tiles=tiles)
    ref = int8_attention_reference(q.cpu(), k.cpu(), v.cpu(), pv="16bit", block_q=quant.quant_block_q,
                                   block_k=quant.quant_block_k, key_block=64)
    assert not out.isnan().any() and relative_error(out.cpu(), ref) < 1e-2
