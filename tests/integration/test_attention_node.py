"""The INT8 Attention node inside the real ComfyUI (in-process, CPU): registration, the patch, and that a Flux
forward reaches the override, uses its output, and sends masked or unsupported calls to the original attention.

On the CPU the int8 kernel never runs (no Triton GPU); the engine is replaced by a stand-in to prove the wiring.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_harness import import_pack, sample_tiny_flux, tiny_flux_patcher  # noqa: E402 - after the path


@pytest.fixture(scope="module")
def pack(comfy_cpu):
    """The pack imported as ``comfy_int8_w8a8`` (a link in a temp dir when the venv has no install of it)."""
    import_pack()
    import comfy_int8_w8a8.nodes as nodes

    return nodes


@pytest.fixture
def flux(comfy_cpu):
    return tiny_flux_patcher()


def _sample(patcher) -> torch.Tensor:  # noqa: ANN001
    return sample_tiny_flux(patcher, steps=2)


@pytest.fixture
def stand_in(pack, monkeypatch):
    """Every call supported and the engine replaced by exact attention times ``factor`` (1: same result)."""
    from comfy_int8_w8a8.int8.attention_reference import sdpa_reference
    from comfy_int8_w8a8.int8.backends import attention as engine

    state = {"calls": 0, "factor": 1.0}

    def fake(q, k, v, options, scale=None, out_layout="bhld"):  # noqa: ANN001, ANN202
        state["calls"] += 1
        out = (sdpa_reference(q, k, v, scale) * state["factor"]).to(q.dtype)
        return out if out_layout == "bhld" else out.transpose(1, 2).contiguous()

    monkeypatch.setattr(engine, "attention_unsupported_reason",
                        lambda q, k, v, options, mask=None: "mask" if mask is not None else None)
    monkeypatch.setattr(engine, "int8_attention", fake)
    return state


def _patched(pack, flux, **widgets):  # noqa: ANN001, ANN003, ANN202
    node = pack.NODE_CLASS_MAPPINGS["INT8Attention"]()
    inputs = {"pv_precision": "auto", "smooth_k": True, "granularity": "block", "min_seq_len": 0, **widgets}
    return node.patch(flux, **inputs)[0]


def test_int8_attention_node_registers_with_tooltips(pack):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["INT8Attention"] == "INT8 Attention"
    required = pack.NODE_CLASS_MAPPINGS["INT8Attention"].INPUT_TYPES()["required"]
    assert required["model"][0] == "MODEL" and all(spec[1].get("tooltip") for spec in required.values())


def test_int8_attention_node_patches_a_clone_only(pack, flux):
    patched = _patched(pack, flux)
    assert "optimized_attention_override" in patched.model_options["transformer_options"]
    assert "optimized_attention_override" not in flux.model_options.get("transformer_options", {})


def test_flux_forward_on_cpu_falls_back_to_the_original_attention(pack, flux):
    # No stand-in: on the CPU every call goes to ComfyUI's attention, so the result is the unpatched one.
    torch.testing.assert_close(_sample(_patched(pack, flux)), _sample(flux), rtol=0, atol=0)


def test_flux_forward_reaches_the_override_and_uses_its_output(pack, flux, stand_in):
    plain = _sample(flux)
    same = _sample(_patched(pack, flux))
    assert stand_in["calls"] > 0
    torch.testing.assert_close(same, plain, rtol=1e-4, atol=1e-4)  # exact attention in float64 vs ComfyUI's
    stand_in["factor"] = 0.0
    assert not torch.allclose(_sample(_patched(pack, flux)), plain, atol=1e-3)  # our (zero) output was used


def test_masked_call_goes_to_the_original_attention(pack, flux, stand_in):
    import comfy.ldm.modules.attention as attention

    options = _patched(pack, flux).model_options["transformer_options"]
    q = torch.randn(1, 2, 12, 64)
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 6:] = -torch.inf
    expected = attention.attention_pytorch(q, q, q, 2, mask=mask, skip_reshape=True)
    out = attention.attention_pytorch(q, q, q, 2, mask=mask, skip_reshape=True, transformer_options=options)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert stand_in["calls"] == 0
    attention.attention_pytorch(q, q, q, 2, skip_reshape=True, transformer_options=options)
    assert stand_in["calls"] == 1  # the same call without the mask is ours
