"""The CPU-side pieces of ``comfy-int8 bench attention``: arguments, method discovery, rows and the JSON file
(timed with a stand-in timer on the CPU; the GPU run is someone else's)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from comfy_int8_w8a8.bench import attention as bench
from comfy_int8_w8a8.cli import bench as cli_bench

ROW_KEYS = {"shape", "B,H,L,D", "method", "ms", "tflops", "rel_err"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_attention_is_registered_and_parses_defaults():
    assert "attention" in cli_bench.BENCHES
    args = _args()
    assert args.shapes == ["flux_1024", "flux_2048", "wan_480p_81f", "wan_720p_81f"]
    assert args.methods == list(bench.METHODS) and args.check_rows == 1024
    assert bench.SHAPES["wan_720p_81f"] == (1, 40, 75600, 128)
    with pytest.raises(SystemExit):
        _args("--shapes", "sd15")


def test_measure_rows_with_stand_in_timer_and_skipped_method(capsys):
    methods = {"sdpa_bf16": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
               "half_wrong": lambda q, k, v: F.scaled_dot_product_attention(q, k, v) * 0.5,
               "sageattention_1.0.6": "sageattention is not installed"}
    rows = bench.measure("tiny", (1, 2, 64, 64), methods, timer=lambda fns: 2.0, device="cpu",
                         dtype=torch.float32)
    assert [r["method"] for r in rows] == ["sdpa_bf16", "half_wrong"]
    assert all(set(r) == ROW_KEYS for r in rows)
    assert rows[0]["B,H,L,D"] == "1,2,64,64" and rows[0]["ms"] == 2.0
    assert rows[0]["tflops"] == round(4 * 2 * 64 * 64 * 64 / 2e-3 / 1e12, 1)
    assert rows[0]["rel_err"] < 1e-5 and rows[1]["rel_err"] == pytest.approx(0.5, abs=1e-4)
    assert "skipped: sageattention is not installed" in capsys.readouterr().out


def test_run_writes_json_named_after_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "flux_1024", (1, 1, 32, 64))
    args = _args("--shapes", "flux_1024", "--methods", "sdpa_bf16", "--out", str(tmp_path))
    assert bench.run(args, timer=lambda fns: 1.0, device="cpu") == 0
    data = json.loads((tmp_path / "attention_cpu.json").read_text())
    assert {"gpu", "torch", "triton", "rows"} <= set(data)
    assert [set(r) for r in data["rows"]] == [ROW_KEYS]


def test_available_methods_report_why_peers_are_missing(monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    found = bench.available_methods(["sageattention_1.0.6", "comfy_kitchen_int8", "sdpa_bf16"])
    assert found["sageattention_1.0.6"] == "sageattention is not installed"
    assert "comfy_kitchen" in found["comfy_kitchen_int8"] and callable(found["sdpa_bf16"])


def test_gpu_slug():
    assert bench.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
