"""The fidelity harness, and the acceptance numbers of the outlier methods at a CPU-sized shape."""

from __future__ import annotations

import math

import pytest
import torch

from comfy_int8_w8a8.int8.config import Int8Config
from comfy_int8_w8a8.int8.fidelity import format_table, make_activations, run_fidelity, sqnr_db, summarize

REFERENCE = Int8Config(runtime_backend="reference")


def test_sqnr_db_known_values():
    ref = torch.ones(100)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise power 0.01 of the signal
    assert sqnr_db(ref, ref * 0.99) == pytest.approx(40.0)


def test_make_activations_outlier_channels():
    x = make_activations("outliers", 512, 1024, seed=0)
    amax = x.abs().amax(dim=0)
    big = (amax > 8 * amax.median()).sum().item()
    assert big == 8
    # The outlier channels are a property of the layer (K), not of the draw: calibration sees the same ones.
    other = make_activations("outliers", 64, 1024, seed=5).abs().amax(dim=0)
    assert set(amax.topk(8).indices.tolist()) == set(other.topk(8).indices.tolist())
    g = make_activations("gaussian", 512, 1024, seed=0)
    assert g.abs().amax() < 8 * g.std()
    e = make_activations("every97x30", 16, 1024, seed=0)
    assert e[:, ::97].abs().mean() > 20 * e[:, 1::97].abs().mean()
    with pytest.raises(ValueError, match="Unknown activation kind"):
        make_activations("laplace", 4, 8)


@pytest.fixture(scope="module")
def small_rows():
    torch.manual_seed(0)
    return run_fidelity(shapes=[(1024, 512)], m=64, runtime=REFERENCE)


def test_hadamard_cuts_outlier_error_3x_and_costs_at_most_half_a_db_on_gaussian(small_rows):
    summary = summarize(small_rows)
    for kind in ("outliers", "every97x30", "post_gelu"):
        assert summary["outlier_error_ratio_none_over_hadamard"][kind]["1024->512"] >= 3.0, kind
    assert summary["gaussian_sqnr_cost_db_hadamard"]["1024->512"] <= 0.5


def test_calibrated_smooth_beats_none_and_weight_only_smooth_does_not_on_outliers(small_rows):
    by = {(r.kind, r.method): r for r in small_rows}
    assert by[("outliers", "smooth")].rel_error < by[("outliers", "none")].rel_error / 2
    # Without activation statistics SmoothQuant cannot see the outlier channels (documented in int8/smooth.py).
    assert by[("outliers", "smooth_w")].rel_error > by[("outliers", "none")].rel_error / 1.5


def test_w8a8_error_is_above_bf16_floor(small_rows):
    by = {(r.kind, r.method): r for r in small_rows}
    for method in ("none", "hadamard", "smooth"):
        assert by[("gaussian", method)].sqnr_db < by[("gaussian", "bf16")].sqnr_db


def test_format_table_has_one_line_per_shape_and_kind(small_rows):
    table = format_table(small_rows)
    lines = table.splitlines()
    assert lines[0] == "| K->N | activations | none | hadamard | smooth | smooth_w | bf16 |"
    assert len(lines) == 2 + 4
    assert any(line.startswith("| 1024->512 | outliers |") for line in lines)
