import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear, int8_linear_reference, quantization_error_bound


def _linear(k, n, bias=True, dtype=torch.float32):
    return nn.Linear(k, n, bias=bias).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lead", [(1,), (3, 5), (2, 3, 4)])
def test_int8_linear_matches_f_linear_within_quantization_bound(dtype, lead):
    lin = _linear(3073, 971, dtype=dtype)
    q = Int8Linear.from_linear(lin, Int8Config(small_batch_fallback="never"))
    x = torch.randn(*lead, 3073).to(dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == (*lead, 971)
    exact = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    bound = quantization_error_bound(x.reshape(-1, 3073), lin.weight, q.weight_scale, dtype).reshape(exact.shape)
    assert ((y.double() - exact).abs() <= bound).all()


def test_int8_linear_equals_reference_formula():
    lin = _linear(256, 64)
    q = Int8Linear.from_linear(lin, Int8Config(small_batch_fallback="never", runtime_backend="reference"))
    x = torch.randn(40, 256)
    ref = int8_linear_reference(x, q.weight, q.weight_scale, q.bias)
    assert torch.allclose(q(x).double(), ref, rtol=1e-6, atol=1e-6)


def test_from_linear_without_bias_and_zero_input():
    lin = _linear(64, 32, bias=False)
    q = Int8Linear.from_linear(lin)
    assert q.bias is None
    assert torch.equal(q(torch.zeros(20, 64)), torch.zeros(20, 32))


def test_state_dict_round_trip_is_comfyui_native_layout():
    lin = _linear(256, 48)
    q = Int8Linear.from_linear(lin, hadamard_group=256)
    sd = q.state_dict()
    assert set(sd) == {"weight", "weight_scale", "bias", "comfy_quant"}
    assert sd["weight"].dtype == torch.int8 and sd["weight_scale"].shape == (48, 1)
    fresh = Int8Linear(256, 48)
    result = fresh.load_state_dict(sd)
    assert not result.unexpected_keys and not result.missing_keys
    assert fresh.hadamard_group == 256
    x = torch.randn(30, 256)
    assert torch.equal(fresh(x), q(x))


def test_per_tensor_scale_from_a_file_is_expanded_to_per_channel():
    lin = _linear(64, 16)
    q = Int8Linear.from_linear(lin)
    sd = q.state_dict()
    sd["weight_scale"] = torch.tensor(0.01)
    fresh = Int8Linear(64, 16)
    fresh.load_state_dict(sd)
    assert fresh.weight_scale.shape == (16, 1) and torch.all(fresh.weight_scale == 0.01)


def test_hadamard_layer_matches_plain_layer_on_gaussian_input():
    lin = _linear(512, 128)
    x = torch.randn(64, 512)
    exact = lin(x).double()
    rot = Int8Linear.from_linear(lin, Int8Config(small_batch_fallback="never"), hadamard_group=256)(x).double()
    assert F.cosine_similarity(rot.flatten(), exact.flatten(), dim=0) > 0.9999


def test_smooth_layer_computes_same_function():
    lin = _linear(128, 64)
    s = torch.rand(128) * 4 + 0.25
    q = Int8Linear.from_linear(lin, Int8Config(small_batch_fallback="never"), smooth=s)
    x = torch.randn(32, 128)
    assert F.cosine_similarity(q(x).flatten(), lin(x).flatten(), dim=0) > 0.999
    assert "smooth=True" in repr(q)


def test_to_device_keeps_int8_and_extra_repr_names_backend_and_shape():
    q = Int8Linear.from_linear(_linear(64, 32)).to("cpu").to(torch.bfloat16)
    assert q.weight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
    assert q.bias.dtype == torch.bfloat16
    q(torch.randn(2, 64, dtype=torch.bfloat16))
    text = repr(q)
    assert "in_features=64" in text and "out_features=32" in text and "backend=" in text


@pytest.mark.parametrize("policy,rows,elements,expected", [
    ("always", 16, 10**9, True), ("always", 17, 1, False), ("never", 1, 1, False),
    ("only_small_layers", 4, 3072 * 3072, True), ("only_small_layers", 4, 3072 * 3072 + 1, False),
])
def test_small_batch_policy(policy, rows, elements, expected):
    cfg = Int8Config(small_batch_fallback=policy, small_batch_rows=16)  # threshold pinned: the default is measured
    assert cfg.uses_small_batch_path(rows, elements) is expected


def test_small_batch_path_is_taken_for_few_rows(monkeypatch):
    q = Int8Linear.from_linear(_linear(64, 32), Int8Config(small_batch_fallback="always", small_batch_rows=16))
    backend = q.backend_for(torch.device("cpu"))
    calls = []
    monkeypatch.setattr(backend, "weight_only_linear", lambda x, w: calls.append("w16") or torch.zeros(x.shape[0], 32))
    monkeypatch.setattr(backend, "w8a8_linear", lambda x, w: calls.append("w8a8") or torch.zeros(x.shape[0], 32))
    q(torch.randn(16, 64))
    q(torch.randn(17, 64))
    assert calls == ["w16", "w8a8"]


def test_bad_config_and_bad_input_raise():
    with pytest.raises(ValueError, match="small_batch_fallback"):
        Int8Config(small_batch_fallback="sometimes")
    q = Int8Linear.from_linear(_linear(64, 32))
    with pytest.raises(ValueError, match=r"\[\.\.\., 64\]"):
        q(torch.randn(2, 63))
    with pytest.raises(TypeError, match="float16"):
        q(torch.ones(2, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="power of 4"):
        Int8Linear(384, 8, hadamard_group=128)


def test_cached_call_state_follows_replaced_and_reloaded_buffers():
    lin_a, lin_b = _linear(64, 32), _linear(64, 32)
    q = Int8Linear.from_linear(lin_a, Int8Config(small_batch_fallback="never"))
    other = Int8Linear.from_linear(lin_b, Int8Config(small_batch_fallback="never"))
    x = torch.randn(20, 64)
    first = q(x)
    q.load_state_dict(other.state_dict())  # copies in place
    assert torch.equal(q(x), other(x))
    q.weight = torch.zeros_like(q.weight)  # a new buffer object
    assert torch.equal(q(x), q.bias.expand(20, 32))
    assert not torch.equal(first, q(x))


def test_per_device_state_build_prepares_backend_buffers_once_per_state(monkeypatch):
    from comfy_int8_w8a8.int8.backends.reference import ReferenceBackend

    prepared = []
    monkeypatch.setattr(ReferenceBackend, "prepare_device_state", lambda self, w, config: prepared.append(w.weight))
    q = Int8Linear.from_linear(_linear(64, 32), Int8Config(runtime_backend="reference"))
    q.backend_for(torch.device("cpu"))  # what the lazy compile calls before tracing
    q(torch.randn(3, 64))
    q(torch.randn(40, 64))
    assert len(prepared) == 1 and prepared[0] is q.weight
    q.weight = q.weight.clone()  # a new buffer: new state, prepared again
    q(torch.randn(3, 64))
    assert len(prepared) == 2 and prepared[1] is q.weight
