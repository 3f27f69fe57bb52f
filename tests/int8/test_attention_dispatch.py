"""Which calls the int8 attention takes, the fp8 / 16-bit choice, the op's fake, and the options' checks (CPU)."""

from __future__ import annotations

import functools

import pytest
import torch

from comfy_int8_w8a8.int8 import compat
from comfy_int8_w8a8.int8.backends import attention as dispatch
from comfy_int8_w8a8.int8.backends.attention import AttentionOptions, attention_unsupported_reason, resolve_pv


@pytest.fixture(autouse=True)
def _fresh():
    dispatch.forget()
    compat.reset()
    yield
    dispatch.forget()
    compat.reset()


def _t(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def _supported_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda device: None)


def test_attention_unsupported_reason_cpu_names_the_device():
    q = _t(1, 2, 2048, 64)
    assert "cpu" in attention_unsupported_reason(q, q, q, AttentionOptions())


@pytest.mark.parametrize("q,k,mask,expect", [
    ((1, 2, 2048, 64), (1, 2, 2048, 64), None, None),
    ((1, 4, 2048, 128), (1, 2, 77, 128), None, None),                    # GQA cross-attention
    ((1, 2, 2048, 64), (1, 2, 2048, 64), torch.zeros(2048, 2048), "mask"),
    ((1, 2, 2048, 80), (1, 2, 2048, 80), None, "head size 80"),
    ((1, 2, 100, 64), (1, 2, 100, 64), None, "min_seq_len"),
    ((1, 3, 2048, 64), (1, 2, 2048, 64), None, "heads"),
])
def test_attention_unsupported_reason_by_call(monkeypatch, q, k, mask, expect):
    _supported_device(monkeypatch)
    reason = attention_unsupported_reason(_t(*q), _t(*k), _t(*k), AttentionOptions(), mask)
    assert reason is None if expect is None else expect in reason


def test_attention_unsupported_reason_float32_is_refused(monkeypatch):
    _supported_device(monkeypatch)
    q = _t(1, 2, 2048, 64, dtype=torch.float32)
    assert "dtype" in attention_unsupported_reason(q, q, q, AttentionOptions())


def test_resolve_pv_auto_is_16bit_even_where_fp8_runs_and_fp8_is_taken_when_asked(monkeypatch):
    # auto stays 16-bit where the fp8 gate allows fp8: fp8 P.V measured slower and less accurate on an H100.
    monkeypatch.setattr(dispatch, "fp8_attention_unavailable_reason", lambda device: None)
    assert resolve_pv(torch.device("cuda", 0), "auto") == "16bit"
    assert resolve_pv(torch.device("cuda", 0), "fp8") == "fp8"
    assert resolve_pv(torch.device("cuda", 0), "16bit") == "16bit"


def test_resolve_pv_auto_is_16bit_and_explicit_fp8_raises_without_fp8(monkeypatch):
    monkeypatch.setattr(dispatch, "fp8_attention_unavailable_reason", lambda device: "the GPU is sm_86")
    assert resolve_pv(torch.device("cuda", 0), "auto") == "16bit"
    with pytest.raises(RuntimeError, match="sm_86"):
        resolve_pv(torch.device("cuda", 1), "fp8")


def test_resolve_pv_int8_is_taken_where_fp8_is_not(monkeypatch):
    # int8 P.V runs wherever the int8 Q.K^T does (no fp8 tensor cores needed): an sm_86 card takes it.
    monkeypatch.setattr(dispatch, "fp8_attention_unavailable_reason", lambda device: "the GPU is sm_86")
    assert resolve_pv(torch.device("cuda", 0), "int8") == "int8"
    assert AttentionOptions(pv_precision="int8").pv_precision == "int8"


def test_fp8_gate_refuses_ampere_and_the_switch(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv(compat.ARCH, "sm_86")
    assert "sm_86" in compat.fp8_attention_unavailable_reason(torch.device("cuda", 0))
    monkeypatch.setenv(compat.ARCH, "sm_90")
    assert compat.fp8_attention_unavailable_reason(torch.device("cuda", 0)) is None
    monkeypatch.setenv(compat.NO_FP8_ATTENTION, "1")
    assert compat.NO_FP8_ATTENTION in compat.fp8_attention_unavailable_reason(torch.device("cuda", 0))


def test_fp8_gate_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(compat, "_triton_fp8_reason", functools.cache(lambda: "the 'triton' package is not installed"))
    assert "triton" in compat.fp8_attention_unavailable_reason(torch.device("cuda", 0))


@pytest.mark.parametrize("layout,shape", [("bhld", (2, 3, 5, 64)), ("blhd", (2, 5, 3, 64))])
def test_int8_attention_op_fake_gives_the_output_shape(layout, shape):
    q = torch.empty(2, 3, 5, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, 1, 7, 64, device="meta", dtype=torch.bfloat16)
    out = torch.ops.comfy_int8.int8_attention(q, k, k, None, True, "auto", "block", layout)
    assert out.shape == shape and out.dtype == torch.bfloat16


def test_int8_attention_compiles_as_one_opaque_op(monkeypatch):
    # Under TorchDynamo the call goes through comfy_int8::int8_attention (no graph break); a stand-in impl.
    calls = []

    def fake_impl(q, k, v, scale, smooth_k, pv_precision, granularity, out_layout):  # noqa: ANN001, ANN202
        calls.append((scale, smooth_k, pv_precision, granularity, out_layout))
        return q * 2

    monkeypatch.setattr(dispatch, "_attention_impl", fake_impl)
    opts = AttentionOptions(pv_precision="16bit", min_seq_len=0)

    def fn(q):  # noqa: ANN001, ANN202
        return dispatch.int8_attention(q, q, q, opts, 0.5) + 1

    q = torch.randn(1, 2, 4, 64)
    eager = fn(q)
    assert calls[-1] == (0.5, True, "16bit", "block", "bhld")
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    assert compiled(q).shape == eager.shape  # fullgraph: no break around the op (the real impl ran there)


@pytest.mark.parametrize("kwargs", [dict(pv_precision="int4"), dict(granularity="row"), dict(min_seq_len=-1)])
def test_attention_options_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        AttentionOptions(**kwargs)
