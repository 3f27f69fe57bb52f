"""Each backend that runs on this machine against the float64 reference, within bounds derived from the
quantization step (see ``quantization_error_bound``), never a hand-picked constant."""

import pytest
import torch

from comfy_int8_w8a8.int8 import (
    BackendUnavailableError,
    Int8Weights,
    backend_names,
    get_backend,
    int8_linear_reference,
    quantization_error_bound,
    quantize_per_channel,
    quantize_per_token,
    resolve_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RUNNABLE = [n for n in backend_names()[1:] if get_backend(n).unavailable_reason(torch.device(DEVICE)) is None]
SHAPES = [(1, 64, 32), (33, 3073, 971), (16, 256, 128), (17, 24, 8), (130, 512, 640)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _layer(n, k, bias=True, device=DEVICE):
    w = torch.randn(n, k, dtype=torch.float64, device=device) / k**0.5
    q, s = quantize_per_channel(w)
    b = torch.randn(n, device=device) if bias else None
    return w, Int8Weights(q, s, b)


def _cast_step(y: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    # Backends scale the exact int32 sum in fp32 (acc * x_scale * w_scale + bias: at most 4 roundings of a value
    # no larger than |acc term| + |bias|) and cast once to `dtype` (half an ulp of |y|; eps is a full ulp).
    b = bias.double().abs() if bias is not None else 0
    magnitude = (y - (bias.double() if bias is not None else 0)).abs() + b
    return magnitude * 4 * torch.finfo(torch.float32).eps + y.abs() * torch.finfo(dtype).eps + torch.finfo(dtype).tiny


def _quant_flip_step(x: torch.Tensor, w: Int8Weights) -> torch.Tensor:
    # A backend may round a value sitting exactly on a rounding tie the other way than torch.round does (it
    # computes x/scale with a different but correctly rounded fp32 op): that moves one int8 value by 1, i.e.
    # changes the output by at most  x_scale * max_k |Wq| * w_scale  per flipped element.
    _, xs = quantize_per_token(x)
    return xs.double() * w.weight.double().abs().amax(dim=1) * w.weight_scale.double().reshape(1, -1)


@pytest.mark.parametrize("backend_name", RUNNABLE)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_matches_float64_reference(backend_name, m, k, n, dtype):
    _, w = _layer(n, k)
    x = (torch.randn(m, k, device=DEVICE) * 2).to(dtype)
    y = get_backend(backend_name).w8a8_linear(x, w)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = int8_linear_reference(x, w.weight, w.weight_scale, w.bias)
    tol = _cast_step(ref, w.bias, dtype) + (0 if backend_name != "triton" else _quant_flip_step(x, w))
    assert ((y.double() - ref).abs() <= tol).all(), (y.double() - ref).abs().max()


@pytest.mark.parametrize("backend_name", RUNNABLE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_close_to_exact_float_linear_within_quantization_bound(backend_name, dtype):
    w_float, w = _layer(971, 3073)
    x = torch.randn(4, 3073, device=DEVICE).to(dtype)
    y = get_backend(backend_name).w8a8_linear(x, w)
    exact = x.double() @ w_float.t() + w.bias.double()
    bound = quantization_error_bound(x, w_float, w.weight_scale, dtype)
    assert ((y.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("backend_name", RUNNABLE)
def test_backend_zero_input_and_zero_weight_row_are_exact(backend_name):
    _, w = _layer(40, 64)
    w.weight[3] = 0
    x = torch.randn(20, 64, device=DEVICE)
    x[5] = 0
    y = get_backend(backend_name).w8a8_linear(x, w)
    assert torch.isfinite(y).all()
    assert torch.equal(y[5], w.bias.float())
    assert torch.equal(y[:, 3], w.bias[3].float().expand(20))


@pytest.mark.parametrize("backend_name", RUNNABLE)
def test_backend_weight_only_path_matches_dequantized_linear(backend_name):
    w_float, w = _layer(96, 200)
    x = torch.randn(3, 200, device=DEVICE)
    y = get_backend(backend_name).weight_only_linear(x, w)
    deq = w.weight.double() * w.weight_scale.double()
    ref = x.double() @ deq.t() + w.bias.double()
    assert torch.allclose(y.double(), ref, rtol=4 * torch.finfo(torch.float32).eps * 200, atol=1e-5)


def test_auto_picks_a_backend_that_can_run_here():
    backend = resolve_backend("auto", DEVICE)
    assert backend.unavailable_reason(torch.device(DEVICE)) is None


def test_explicit_backend_that_cannot_run_raises_with_reason():
    with pytest.raises(BackendUnavailableError, match="triton.*cannot run on cpu.*CUDA"):
        resolve_backend("triton", "cpu")


def test_unknown_backend_raises_listing_choices():
    with pytest.raises(ValueError, match="Choose one of: auto"):
        resolve_backend("cutlass", "cpu")


def test_auto_on_cpu_warns_once(caplog):
    from comfy_int8_w8a8.int8.log_once import clear_log_once

    clear_log_once()
    with caplog.at_level("WARNING", logger="comfy_int8_w8a8"):
        resolve_backend("auto", "cpu")
        resolve_backend("auto", "cpu")
    warnings = [r for r in caplog.records if "no int8 tensor-core path" in r.message]
    assert len(warnings) == 1


def test_torch_int_mm_backend_is_unavailable_below_sm75(monkeypatch):
    monkeypatch.delenv("INT8_W8A8_ARCH", raising=False)  # the faked device, not a forced view of it
    backend = get_backend("torch_int_mm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert "sm_70" in backend.unavailable_reason(torch.device("cuda"))


def test_triton_backend_is_unavailable_without_triton_or_below_sm75(monkeypatch):
    monkeypatch.delenv("INT8_W8A8_ARCH", raising=False)  # the faked device, not a forced view of it
    from comfy_int8_w8a8.int8 import compat

    backend = get_backend("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(compat, "_installed_triton", lambda: None)
    assert "pip install triton" in backend.unavailable_reason(torch.device("cuda"))
    monkeypatch.setattr(compat, "_installed_triton", lambda: "3.6.0")
    assert "sm_70" in backend.unavailable_reason(torch.device("cuda"))
