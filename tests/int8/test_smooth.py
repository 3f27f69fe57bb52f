"""SmoothQuant factors, the calibration hooks, and what smoothing does to the W8A8 error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from comfy_int8_w8a8.int8.linear import Int8Linear
from comfy_int8_w8a8.int8.smooth import (
    ActivationAbsMax,
    collect_activation_absmax,
    smooth_factors,
    smooth_factors_from_weight,
)


def test_smooth_factors_follow_the_formula():
    act = torch.tensor([4.0, 1.0, 100.0])
    weight = torch.tensor([[1.0, -0.25, 0.5], [0.5, 0.25, -0.04]])
    s = smooth_factors(act, weight, alpha=0.5)
    expected = act.double().sqrt() / torch.tensor([1.0, 0.25, 0.5]).double().sqrt()
    torch.testing.assert_close(s.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_smooth_factors_alpha_ends(alpha):
    act = torch.tensor([4.0, 9.0])
    weight = torch.tensor([[2.0, 0.5]])
    s = smooth_factors(act, weight, alpha)
    expected = torch.tensor([1 / 2.0, 1 / 0.5]) if alpha == 0.0 else act
    torch.testing.assert_close(s, expected)


def test_smoothing_preserves_the_product_exactly():
    x = torch.randn(5, 64, dtype=torch.float64) * torch.linspace(0.1, 50, 64, dtype=torch.float64)
    w = torch.randn(32, 64, dtype=torch.float64)
    s = smooth_factors(x.abs().amax(0), w, 0.5).double()
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t())


def test_smoothing_flattens_activation_range():
    x = torch.randn(64, 128)
    x[:, 7] *= 80.0
    w = torch.randn(64, 128) / math.sqrt(128)
    s = smooth_factors(x.abs().amax(0), w, 0.5)
    before = x.abs().amax(0)
    after = (x / s).abs().amax(0)
    assert after.max() / after.median() < (before.max() / before.median()) / 4


def test_weight_only_factors_have_unit_geometric_mean_and_even_out_columns():
    w = torch.randn(32, 64) * torch.logspace(-1, 1, 64)
    s = smooth_factors_from_weight(w, alpha=0.5)
    assert abs(torch.log(s.double()).mean().item()) < 1e-6
    col = w.abs().amax(0)
    col_s = (w * s).abs().amax(0)
    # s = col^-(1-alpha): the column ranges of W*s are col^alpha, so their spread shrinks to its square root.
    torch.testing.assert_close((col_s.max() / col_s.min()).log(), 0.5 * (col.max() / col.min()).log(), rtol=1e-4, atol=0)


def test_zero_channels_stay_finite():
    act = torch.tensor([0.0, 2.0, 3.0])
    w = torch.tensor([[1.0, 0.0, 1.0]])
    s = smooth_factors(act, w, 0.5)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert torch.isfinite(smooth_factors_from_weight(w)).all()


def test_smooth_factors_reject_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        smooth_factors(torch.ones(4), torch.ones(2, 4), alpha=1.5)
    with pytest.raises(ValueError, match="do not match"):
        smooth_factors(torch.ones(3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        smooth_factors(torch.tensor([1.0, float("nan")]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="2-D"):
        smooth_factors_from_weight(torch.ones(4))


def test_activation_absmax_records_max_over_calls_and_removes_hooks():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    a = torch.zeros(2, 8)
    a[0, 3] = -5.0
    b = torch.zeros(3, 8)
    b[1, 3] = 2.0
    b[2, 1] = 7.0
    with torch.no_grad(), ActivationAbsMax(model) as rec:
        model(a)
        model(b)
    assert set(rec.stats) == {"0", "2"}
    expected = torch.zeros(8)
    expected[3], expected[1] = 5.0, 7.0
    torch.testing.assert_close(rec.stats["0"], expected)
    assert rec.stats["2"].shape == (16,)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_collect_activation_absmax_with_select_and_kwargs():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    stats = collect_activation_absmax(model, [(torch.ones(1, 8),), {"input": 2 * torch.ones(1, 8)}],
                                      select=lambda name, m: name == "0")
    assert list(stats) == ["0"]
    torch.testing.assert_close(stats["0"], torch.full((8,), 2.0))


def _w8a8_rel_error(x: torch.Tensor, w: torch.Tensor, smooth: torch.Tensor | None) -> float:
    holder = nn.Linear(w.shape[1], w.shape[0], bias=False)
    holder.weight.data.copy_(w)
    layer = Int8Linear.from_linear(holder, smooth=smooth)
    with torch.no_grad():
        y = layer(x).double()
    ref = x.double() @ w.double().t()
    return ((y - ref).norm() / ref.norm()).item()


def test_calibrated_smoothing_cuts_the_w8a8_error_on_outlier_channels():
    k = 256
    gain = torch.ones(k)
    gain[torch.tensor([3, 50, 120, 200])] = torch.tensor([20.0, 40.0, 60.0, 90.0])
    w = torch.randn(128, k) / math.sqrt(k)
    calib, x = torch.randn(64, k) * gain, torch.randn(64, k) * gain
    plain = _w8a8_rel_error(x, w, None)
    smoothed = _w8a8_rel_error(x, w, smooth_factors(calib.abs().amax(0), w, 0.5))
    assert smoothed < plain / 2
