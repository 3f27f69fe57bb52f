"""The kernel benchmark's paired hadamard-overhead statistic (pure arithmetic, CPU)."""

from comfy_int8_w8a8.bench.kernels import PLAIN, ROTATED, _hadamard_overhead


def test_overhead_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # Clocks drift between rounds: each round's pair is slower or faster together. Per-round ratios see +5% in
    # every round; a ratio of the two medians would see 1.30 / 1.00 = +30%.
    plain = [1.00, 1.30, 0.90, 1.35, 0.80]
    rotated = [p * 1.05 for p in plain]
    rotated[1], rotated[3] = 0.95 * 1.05, 1.0 * 1.05  # the rotated runs of rounds 2 and 4 met other clocks
    plain[1], plain[3] = 0.95, 1.0
    rows = [{"method": PLAIN}, {"method": ROTATED}]
    _hadamard_overhead(rows, {PLAIN: plain, ROTATED: rotated}, {PLAIN: [], ROTATED: []})
    assert abs(rows[1]["eager_hadamard_overhead"] - 0.05) < 1e-12
    assert len(rows[1]["eager_hadamard_overhead_rounds"]) == 5
    assert "graph_hadamard_overhead" not in rows[1]  # no graph rounds (small M): nothing claimed


def test_overhead_skipped_when_a_method_is_missing():
    rows = [{"method": PLAIN}]
    _hadamard_overhead(rows, {PLAIN: [1.0]}, {})
    assert rows == [{"method": PLAIN}]


def test_bf16_module_baseline_is_the_same_layer_without_grad():
    import torch
    import torch.nn.functional as F

    from comfy_int8_w8a8.bench.kernels import _bf16_module

    wb = torch.randn(7, 5).to(torch.bfloat16)
    bias = torch.randn(7).to(torch.bfloat16)
    lin = _bf16_module(wb, bias)
    x = torch.randn(3, 5).to(torch.bfloat16)
    assert torch.equal(lin(x), F.linear(x, wb, bias))
    assert not any(p.requires_grad for p in lin.parameters())  # an inference model's layer: no autograd per call
