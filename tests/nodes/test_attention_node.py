"""The INT8 Attention node and its override without ComfyUI: argument binding for ComfyUI's attention signature,
routing (ours or the original), layouts, chaining a previous override, and the patch on a stand-in ModelPatcher."""

from __future__ import annotations

import copy

import pytest
import torch

from comfy_int8_w8a8.int8.backends import attention as engine
from comfy_int8_w8a8.int8.log_once import clear_log_once
from comfy_int8_w8a8.nodes.attention_node import OVERRIDE_KEY, INT8Attention, patch_attention
from comfy_int8_w8a8.nodes.attention_override import Int8AttentionOverride, bind_call

OPTS = engine.AttentionOptions(min_seq_len=0)


@pytest.fixture
def ours(monkeypatch):
    """Every call supported; the engine replaced by a stand-in that records its inputs and returns a marker."""
    seen = []

    def fake(q, k, v, options, scale=None, out_layout="bhld"):  # noqa: ANN001, ANN202
        seen.append(dict(q=q, k=k, v=v, scale=scale, out_layout=out_layout))
        b, h, lq, d = q.shape
        return torch.full((b, h, lq, d) if out_layout == "bhld" else (b, lq, h, d), 7.0, dtype=q.dtype)

    monkeypatch.setattr(engine, "attention_unsupported_reason", lambda q, k, v, options, mask=None:
                        "an attention mask was given" if mask is not None else None)
    monkeypatch.setattr(engine, "int8_attention", fake)
    return seen


def _original(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,  # noqa: ANN001, ANN202
              **kwargs):
    return "original"


def test_override_skip_reshape_runs_ours_in_bhld(ours):
    q = torch.randn(1, 4, 10, 64)
    k = torch.randn(1, 2, 6, 64)
    out = Int8AttentionOverride(OPTS)(_original, q, k, k, 4, skip_reshape=True, skip_output_reshape=True,
                                      enable_gqa=True, transformer_options={})
    assert out.shape == (1, 4, 10, 64) and (out == 7).all()
    assert ours[0]["q"] is q and ours[0]["out_layout"] == "bhld"


def test_override_flat_layout_views_heads_and_returns_b_l_hd(ours):
    q = torch.randn(2, 10, 4 * 64)
    k = torch.randn(2, 77, 4 * 64)
    out = Int8AttentionOverride(OPTS)(_original, q, k, k, 4, scale=0.25)
    assert out.shape == (2, 10, 256)
    call = ours[0]
    assert call["q"].shape == (2, 4, 10, 64) and call["k"].shape == (2, 4, 77, 64)
    assert call["q"].data_ptr() == q.data_ptr()  # a view, not a copy
    assert call["scale"] == 0.25 and call["out_layout"] == "blhd"


@pytest.mark.parametrize("kwargs", [
    dict(mask=torch.zeros(10, 10)),
    dict(low_precision_attention=False),
    dict(attn_precision=torch.float32),
])
def test_override_masked_or_refused_calls_go_to_the_original(ours, kwargs):
    q = torch.randn(1, 10, 128)
    assert Int8AttentionOverride(OPTS)(_original, q, q, q, 2, **kwargs) == "original"
    assert ours == []


def test_override_positional_mask_goes_to_the_original(ours):
    q = torch.randn(1, 2, 10, 64)
    assert Int8AttentionOverride(OPTS)(_original, q, q, q, 2, torch.zeros(10, 10), None, True) == "original"


def test_override_falls_back_to_a_previous_override(ours):
    previous_calls = []

    def previous(func, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        previous_calls.append(func)
        return "previous"

    q = torch.randn(1, 10, 128)
    out = Int8AttentionOverride(OPTS, previous)(_original, q, q, q, 2, mask=torch.zeros(10, 10))
    assert out == "previous" and previous_calls == [_original]


def test_override_on_cpu_runs_the_original_and_logs_once(caplog):
    clear_log_once()
    q = torch.randn(1, 2, 2048, 64, dtype=torch.bfloat16)
    override = Int8AttentionOverride(OPTS)
    with caplog.at_level("INFO", logger="comfy_int8_w8a8"):
        assert override(_original, q, q, q, 2, skip_reshape=True) == "original"
        assert override(_original, q, q, q, 2, skip_reshape=True) == "original"
    lines = [r.getMessage() for r in caplog.records if "INT8 Attention" in r.getMessage()]
    assert len(lines) == 1 and "cpu" in lines[0]


def test_bind_call_gqa_without_enable_gqa_is_refused():
    q = torch.randn(1, 4, 10, 64)
    k = torch.randn(1, 2, 10, 64)
    call, reason = bind_call((q, k, k, 4), {"skip_reshape": True})
    assert call is None and "enable_gqa" in reason


class _StandInPatcher:
    """What patch_attention uses of ComfyUI's ModelPatcher: clone() copying model_options."""

    def __init__(self, model_options: dict | None = None) -> None:
        self.model_options = model_options or {"transformer_options": {}}

    def clone(self) -> _StandInPatcher:
        return _StandInPatcher(copy.deepcopy(self.model_options))


def test_patch_attention_installs_on_a_clone_and_replaces_its_own():
    model = _StandInPatcher()
    patched = patch_attention(model, OPTS)
    assert OVERRIDE_KEY not in model.model_options["transformer_options"]
    first = patched.model_options["transformer_options"][OVERRIDE_KEY]
    assert isinstance(first, Int8AttentionOverride) and first.previous is None
    again = patch_attention(patched, engine.AttentionOptions(pv_precision="16bit"))
    second = again.model_options["transformer_options"][OVERRIDE_KEY]
    assert second.previous is None and second.options.pv_precision == "16bit"


def test_patch_attention_keeps_another_override_as_previous():
    def other(func, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return func(*args, **kwargs)

    patched = patch_attention(_StandInPatcher({"transformer_options": {OVERRIDE_KEY: other}}), OPTS)
    assert patched.model_options["transformer_options"][OVERRIDE_KEY].previous is other


def test_int8_attention_node_every_input_has_a_tooltip_and_patch_returns_a_model():
    inputs = INT8Attention.INPUT_TYPES()["required"]
    assert set(inputs) == {"model", "pv_precision", "smooth_k", "granularity", "min_seq_len"}
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    (patched,) = INT8Attention().patch(_StandInPatcher(), "auto", True, "block", 1024)
    assert patched.model_options["transformer_options"][OVERRIDE_KEY].options.min_seq_len == 1024


def test_a_kernel_that_does_not_build_runs_pytorch_attention_once_and_then_the_original(monkeypatch, caplog):
    # A Triton or GPU nobody has tried: the kernel's build error must not break the workflow. The failing call runs
    # PyTorch's attention (also what a compiled graph would run from then on) and says why, once; later eager calls
    # are refused up front and go to ComfyUI's attention.
    import sys
    import types

    import torch.nn.functional as F

    class FakeBuildError(Exception):
        pass

    launches = []

    def failing_launcher(q, k, v, **kwargs):  # noqa: ANN001, ANN003, ANN202
        launches.append(kwargs["pv"])
        raise FakeBuildError("PTXAS error: internal compiler error\nmore lines")

    fake = types.ModuleType("comfy_int8_w8a8.int8.launch.attention")
    fake.int8_attention_triton = failing_launcher
    monkeypatch.setitem(sys.modules, "comfy_int8_w8a8.int8.launch.attention", fake)
    monkeypatch.setattr(engine, "triton_build_error", lambda: FakeBuildError)
    monkeypatch.setattr(engine, "triton_unavailable_reason", lambda device: None)  # a "GPU" with Triton
    engine.forget()
    clear_log_once()
    options = engine.AttentionOptions(pv_precision="int8", min_seq_len=0)
    override = Int8AttentionOverride(options)
    q = torch.randn(1, 8, 2 * 64, dtype=torch.bfloat16)  # ComfyUI's (B, L, H * D), 2 heads
    k = torch.randn(1, 5, 2 * 64, dtype=torch.bfloat16)
    with caplog.at_level("INFO", logger="comfy_int8_w8a8"):
        first = override(_original, q, k, k, 2)
        assert override(_original, q, k, k, 2) == "original"
    heads = [t.unflatten(-1, (2, 64)).transpose(1, 2) for t in (q, k, k)]
    expected = F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(-2)
    torch.testing.assert_close(first, expected)
    assert launches == ["int8"]  # tried once, then refused up front
    lines = [r.getMessage() for r in caplog.records if "does not build" in r.getMessage()]
    assert len(lines) == 2 and "PTXAS error" in lines[0] and "more lines" not in lines[0]
    assert "PyTorch's attention runs instead" in lines[0] and "original attention runs" in lines[1]
    reason = engine.attention_unsupported_reason(*heads, options)
    assert reason is not None and "FakeBuildError" in reason
    assert engine.attention_unsupported_reason(*heads, engine.AttentionOptions(min_seq_len=0)) is None  # 16-bit
    engine.forget()
