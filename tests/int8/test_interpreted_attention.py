"""The generic Triton int8 attention (quant pre-pass + attention kernel, through its launcher) under Triton's CPU
interpreter against the float64 reference. Run by ``.ci/triton_matrix.sh`` once per Triton minor version; skipped
unless ``TRITON_INTERPRET=1`` and Triton is importable.

float16 only: the interpreter multiplies bfloat16 ``tl.dot`` operands as their uint16 bit patterns (see
tests/int8/test_interpreted_kernels.py ``BF16_DOT``), so the bf16 P.V is the GPU tests' (test_attention_gpu.py);
fp8 P.V too (the interpreter has no e4m3 dot). Tiny tiles (16 x 16) so that short sequences still cover several
query and key blocks, a ragged last block of each, and the -inf masking of missing keys.

Bounds: the kernel differs from the reference by where P is rounded (against the running row max, not the final
one), fp32 accumulation, and an int8 value one step away where fp32 and float64 round a tie differently: measured
1.3e-4 to 2.6e-4 relative, bound 1.5e-3; the int8 scheme itself is ~1% from exact, so a broken scale, smoothing or
GQA mapping lands far outside.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch

from comfy_int8_w8a8.int8.attention_reference import (
    int8_attention_reference,
    quantize_attention_blocks,
    relative_error,
    sdpa_reference,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
    reason="runs the Triton kernels under Triton's CPU interpreter: needs TRITON_INTERPRET=1 and triton installed "
           "(.ci/triton_matrix.sh runs it once per Triton version)",
)

BLOCK = 16


def _launcher():  # noqa: ANN202 - imports Triton, so only inside the tests
    from comfy_int8_w8a8.int8.launch import attention

    tiles = attention.AttentionTiles(block_m=BLOCK, block_n=BLOCK, warps=1, stages=1, quant_block_q=BLOCK,
                                     quant_block_k=BLOCK)
    return attention, tiles


def _int8_pv_launcher():  # noqa: ANN202
    # 32-key blocks: Triton 3.0/3.1 refuse an int8 tl.dot over fewer than 32 (its K is the key block here)
    attention, tiles = _launcher()
    return attention, dataclasses.replace(tiles, block_n=32)


def _qkv(b, h, hkv, lq, lk, d, offset=3.0):  # noqa: ANN001, ANN202
    q = torch.randn(b, h, lq, d).half()
    k = (torch.randn(b, hkv, lk, d) + offset * torch.randn(1, 1, 1, d)).half()
    v = torch.randn(b, hkv, lk, d).half()
    return q, k, v


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,granularity,smooth", [
    (1, 2, 2, 37, 29, 64, "block", True),    # ragged query and key blocks
    (2, 2, 1, 20, 77, 128, "block", True),   # cross-attention to 77 keys, GQA 2:1, batch 2
    (1, 4, 2, 33, 40, 64, "token", True),    # per-token scales, GQA
    (1, 1, 1, 17, 18, 128, "block", False),  # no smoothing
])
def test_int8_attention_kernel_matches_reference(b, h, hkv, lq, lk, d, granularity, smooth):
    attention, tiles = _launcher()
    q, k, v = _qkv(b, h, hkv, lq, lk, d)
    out = attention.int8_attention_triton(q, k, v, smooth_k=smooth, granularity=granularity, tiles=tiles)
    block = 1 if granularity == "token" else BLOCK
    ref = int8_attention_reference(q, k, v, smooth_k=smooth, block_q=block, block_k=block, key_block=tiles.block_n)
    assert out.shape == (b, h, lq, d) and out.dtype == torch.float16
    assert relative_error(out, ref) < 1.5e-3
    assert relative_error(out, sdpa_reference(q, k, v)) < 0.03


@pytest.mark.parametrize("b,h,hkv,lq,lk,d,granularity", [
    (1, 2, 2, 37, 29, 64, "block"),    # ragged query and key blocks: the last V scale block is partial
    (2, 2, 1, 20, 77, 128, "block"),   # cross-attention to 77 keys, GQA 2:1, batch 2
    (1, 4, 2, 33, 40, 64, "token"),    # per-token Q/K scales, GQA
])
def test_int8_pv_kernel_matches_reference(b, h, hkv, lq, lk, d, granularity):
    attention, tiles = _int8_pv_launcher()
    q, k, v = _qkv(b, h, hkv, lq, lk, d)
    v = v * torch.exp(torch.randn(b, hkv, lk, 1)).half()  # values of unequal size per token: per-block V scales
    out = attention.int8_attention_triton(q, k, v, pv="int8", granularity=granularity, tiles=tiles)
    block = 1 if granularity == "token" else BLOCK
    ref = int8_attention_reference(q, k, v, pv="int8", block_q=block, block_k=block, key_block=tiles.block_n)
    assert out.shape == (b, h, lq, d) and out.dtype == torch.float16
    # fp32 exp2 in the kernel, float64 exp in the reference: a P value on a rounding edge may land one level off
    # (1/127 of its block's max), which moves the output by far less than the scheme's own error (~2%).
    assert relative_error(out, ref) < 4e-3
    assert relative_error(out, sdpa_reference(q, k, v)) < 0.04


def test_int8_values_are_transposed_padded_and_scaled_per_key_block():
    from comfy_int8_w8a8.int8.launch.attention import _int8_values

    torch.manual_seed(0)
    v = torch.randn(2, 3, 37, 64, dtype=torch.bfloat16)
    v[:, :, 5] = 50.0  # one large value token: only its own block's scales grow
    vt, scale = _int8_values(v, 16)
    assert vt.dtype == torch.int8 and vt.shape == (2, 3, 64, 48) and vt.is_contiguous()
    assert scale.shape == (6, 3, 64)
    blocks = torch.zeros(2, 3, 48, 64)
    blocks[:, :, :37] = v.float()
    expected_scale = (blocks.reshape(2, 3, 3, 16, 64).abs().amax(dim=3) / 127).clamp(min=1e-12).reshape(6, 3, 64)
    torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)  # (x * (1/127) in the kernel)
    assert (scale[:, 0] > 10 * scale[:, 1]).all()
    assert torch.equal(vt[..., 37:], torch.zeros_like(vt[..., 37:]))
    deq = vt.float().reshape(2, 3, 64, 3, 16) * scale.reshape(2, 3, 3, 64).permute(0, 1, 3, 2)[..., None]
    err = (deq.reshape(2, 3, 64, 48)[..., :37] - v.float().transpose(2, 3)).abs()
    assert (err <= scale.reshape(2, 3, 3, 64).permute(0, 1, 3, 2).repeat_interleave(16, -1)[..., :37] / 2 + 1e-6).all()


def test_int8_pv_auto_runs_the_generic_kernel_off_hopper():
    attention, tiles = _int8_pv_launcher()
    q, k, v = _qkv(1, 2, 2, 32, 32, 64)
    with pytest.raises(ValueError, match="sm_90|Hopper"):
        attention.int8_attention_triton(q, k, v, pv="int8", kernel="hopper")
    auto = attention.int8_attention_triton(q, k, v, pv="int8", tiles=tiles, kernel="auto")
    assert torch.equal(auto, attention.int8_attention_triton(q, k, v, pv="int8", tiles=tiles))


def test_int8_attention_kernel_strided_input_and_blhd_output_with_scale():
    # ComfyUI's (B, L, H*D) layout: q/k/v as transposed views, the output written as (B, Lq, H, D) directly.
    attention, tiles = _launcher()
    b, lq, lk, h, d = 1, 21, 35, 2, 64
    flat = [torch.randn(b, n, h * d).half() for n in (lq, lk, lk)]
    q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in flat)
    assert not q.is_contiguous()
    out = attention.int8_attention_triton(q, k, v, scale=0.2, out_layout="blhd", tiles=tiles)
    ref = int8_attention_reference(q, k, v, scale=0.2, block_q=BLOCK, block_k=BLOCK, key_block=tiles.block_n)
    assert out.shape == (b, lq, h, d)
    assert relative_error(out.transpose(1, 2), ref) < 1.5e-3


@pytest.mark.parametrize("per_token,mean", [(False, False), (True, False), (False, True)])
def test_attention_quant_kernel_matches_reference_quantization(per_token, mean):
    from comfy_int8_w8a8.int8.kernels.triton_attention import _attn_quant_kernel
    from comfy_int8_w8a8.int8.kernels.triton_quant_common import INTERPRETED

    x = torch.randn(2, 3, 37, 64).half()
    m = x.float().mean(dim=2) if mean else None
    q = torch.empty(6, 37, 64, dtype=torch.int8)
    s = torch.empty(6, 37, dtype=torch.float32)
    _attn_quant_kernel[(3, 6)](x, m.reshape(-1, 64).contiguous() if mean else s, q, s, 37, 3, x.stride(0),
                               x.stride(1), x.stride(2), 2.0, BLOCK=16, D=64, PER_TOKEN=per_token,
                               HAS_MEAN=mean, INTERPRETED=INTERPRETED)
    q_ref, s_ref = quantize_attention_blocks(x, 1 if per_token else 16, m[:, :, None] if mean else None)
    # fp32 in the kernel, float64 in the reference: the scale within a few fp32 ulps, a value within one step.
    torch.testing.assert_close(s.double().reshape(2, 3, 37) / 2.0, s_ref, rtol=1e-6, atol=0)
    assert (q.reshape(2, 3, 37, 64).int() - q_ref.int()).abs().max() <= 1


def test_int8_attention_launcher_rejects_unsupported_head_size():
    attention, tiles = _launcher()
    q = torch.randn(1, 1, 8, 96).half()
    with pytest.raises(ValueError, match="head sizes"):
        attention.int8_attention_triton(q, q, q, tiles=tiles)


def test_fp8_values_are_transposed_and_padded_for_a_k_major_operand():
    # fp8 wgmma takes K-major operands only: P . V's V goes in as V^T (D, keys), rows padded to 16 bytes.
    from comfy_int8_w8a8.int8.launch.attention import _fp8_values

    torch.manual_seed(0)
    v = torch.randn(2, 3, 37, 64, dtype=torch.bfloat16)
    vt, scale = _fp8_values(v)
    assert vt.dtype == torch.float8_e4m3fn and vt.shape == (2, 3, 64, 48) and vt.is_contiguous()
    assert scale.shape == (6, 64)
    expected_scale = (v.float().abs().amax(dim=2) / 448.0).reshape(6, 64)
    assert torch.equal(scale, expected_scale)
    expected = (v.float() / expected_scale.reshape(2, 3, 1, 64)).to(torch.float8_e4m3fn)
    assert torch.equal(vt[..., :37].float(), expected.transpose(2, 3).float())


@pytest.mark.parametrize("kernel", ["hopper", "cuda"])
def test_kernel_choice_other_than_generic_is_refused_off_hopper(kernel):
    attention, _ = _launcher()
    q, k, v = _qkv(1, 2, 2, 32, 32, 64)
    with pytest.raises(ValueError, match="sm_90|Hopper" if kernel == "hopper" else "kernel must be one of"):
        attention.int8_attention_triton(q, k, v, kernel=kernel)


def test_auto_kernel_is_generic_off_hopper_and_falls_back_once_when_hopper_does_not_build(monkeypatch, caplog):
    attention, tiles = _launcher()
    q, k, v = _qkv(1, 2, 2, 40, 40, 64)
    assert not attention.hopper_kernel_runs(q.device)  # not an sm_90 GPU
    generic = attention.int8_attention_triton(q, k, v, tiles=tiles)
    assert torch.equal(attention.int8_attention_triton(q, k, v, tiles=tiles, kernel="auto"), generic)

    # A Hopper kernel that fails to build: "auto" says so once and runs the generic kernel; an explicit "hopper" raises.
    try:
        from comfy_int8_w8a8.int8.launch import gluon_attention
    except ImportError:
        pytest.skip("this Triton has no Gluon: kernel='auto' never tries the Hopper kernel (checked above)")

    def does_not_build(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise attention._BuildError("ptxas: out of registers")

    broken: set = set()
    monkeypatch.setattr(attention, "_hopper_broken", broken)
    monkeypatch.setattr(attention, "hopper_kernel_runs", lambda device: device not in broken)  # as on an sm_90 GPU
    monkeypatch.setattr(gluon_attention, "gluon_attention", does_not_build)
    monkeypatch.setattr(gluon_attention, "gluon_attention_supported", lambda device: True)
    with caplog.at_level("WARNING"):
        assert torch.equal(attention.int8_attention_triton(q, k, v, tiles=tiles, kernel="auto"), generic)
        assert torch.equal(attention.int8_attention_triton(q, k, v, tiles=tiles, kernel="auto"), generic)
    assert broken == {q.device}
    assert [r.message.count("does not build") for r in caplog.records] == [1]
    with pytest.raises(attention._BuildError):
        attention.int8_attention_triton(q, k, v, tiles=tiles, kernel="hopper")


def test_int8_pv_falling_back_from_hopper_requantizes_v_for_the_generic_key_block(monkeypatch):
    # V's int8 scales are per key block: quantized for the Hopper tile's 128 keys, they must be redone for the
    # generic kernel's block when the Hopper kernel does not build.
    attention, tiles = _int8_pv_launcher()
    try:
        from comfy_int8_w8a8.int8.launch import gluon_attention
    except ImportError:
        pytest.skip("this Triton has no Gluon: kernel='auto' never tries the Hopper kernel")
    q, k, v = _qkv(1, 2, 2, 40, 150, 64)
    v = v * torch.exp(torch.randn(1, 2, 150, 1)).half()
    generic = attention.int8_attention_triton(q, k, v, pv="int8", tiles=tiles)
    seen = []

    def does_not_build(q8, qs, k8, ks, v8, vs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(vs.shape)
        raise attention._BuildError("ptxas: out of registers")

    monkeypatch.setattr(attention, "_hopper_broken", set())
    monkeypatch.setattr(attention, "hopper_kernel_runs", lambda device: True)
    monkeypatch.setattr(gluon_attention, "gluon_attention", does_not_build)
    out = attention.int8_attention_triton(q, k, v, pv="int8", tiles=tiles, kernel="auto")
    assert seen == [(2, 2, 64)]  # 150 keys in two blocks of the Hopper tile's 128, 64 channels
    assert torch.equal(out, generic)
