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


def test_sweep_configs_cover_the_tile_grid_with_unique_names():
    configs = bench.sweep_configs()
    assert len(configs) == 24 and len(set(configs)) == 24
    assert {(bm, bn) for bm, bn, _, _ in configs} == {(64, 64), (64, 128), (128, 64), (128, 128)}
    assert {(w, s) for _, _, w, s in configs} == {(4, 2), (4, 3), (4, 4), (8, 2), (8, 3), (8, 4)}
    names = [bench.tile_method_name(*c) for c in configs]
    assert len(set(names)) == 24 and not set(names) & set(bench.METHODS)
    assert bench.tile_method_name(128, 64, 8, 2) == "ours_tiles_m128_n64_w8_s2"


def test_sweep_configs_leave_out_tiles_under_64(monkeypatch):
    monkeypatch.setattr(bench, "SWEEP_BLOCKS", (32, 64))
    assert {(bm, bn) for bm, bn, _, _ in bench.sweep_configs()} == {(64, 64)}


def test_measure_skips_a_method_raising_a_sweep_error_and_keeps_others(capsys):
    def too_big(q, k, v):  # noqa: ANN001, ANN202
        raise RuntimeError("out of shared memory: 300000 > 232448")

    methods = {"too_big": too_big, "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    rows = bench.measure("tiny", (1, 1, 32, 64), methods, timer=lambda fns: 1.0, device="cpu",
                         dtype=torch.float32, skip_on=(RuntimeError,))
    assert [r["method"] for r in rows] == ["sdpa"]
    assert "too_big" in (out := capsys.readouterr().out) and "skipped: RuntimeError: out of shared memory" in out


def test_measure_without_skip_on_lets_a_failing_method_raise():
    def broken(q, k, v):  # noqa: ANN001, ANN202
        raise RuntimeError("kernel bug")

    with pytest.raises(RuntimeError, match="kernel bug"):
        bench.measure("tiny", (1, 1, 32, 64), {"ours": broken}, timer=lambda fns: 1.0, device="cpu",
                      dtype=torch.float32)



def _run_with_sweep(tmp_path, monkeypatch, flag: str, attr: str) -> list[dict]:  # noqa: ANN001
    """``bench.run`` on a tiny flux_1024 with SDPA and ``flag`` (its sweep methods patched by the caller; a
    RuntimeError counts as a sweep error): the rows it wrote. Checks the flag is off unless given."""
    monkeypatch.setitem(bench.SHAPES, "flux_1024", (1, 1, 32, 64))
    monkeypatch.setattr(bench, "sweep_errors", lambda: (RuntimeError,))
    args = _args("--shapes", "flux_1024", "--methods", "sdpa_bf16", flag, "--out", str(tmp_path))
    assert getattr(args, attr) and not getattr(_args(), attr)
    assert bench.run(args, timer=lambda fns: 1.0, device="cpu") == 0
    return json.loads((tmp_path / "attention_cpu.json").read_text())["rows"]


def test_run_with_sweep_tiles_adds_one_row_per_runnable_tile(tmp_path, monkeypatch):
    def out_of_resources(q, k, v):  # noqa: ANN001, ANN202
        raise RuntimeError("out of resources")

    sweep = {bench.tile_method_name(64, 64, 4, 2): lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
             bench.tile_method_name(128, 128, 8, 3): out_of_resources}
    monkeypatch.setattr(bench, "tile_sweep_methods", lambda device, pv: sweep)
    rows = _run_with_sweep(tmp_path, monkeypatch, "--sweep-tiles", "sweep_tiles")
    assert [r["method"] for r in rows] == ["sdpa_bf16", "ours_tiles_m64_n64_w4_s2"]
    assert all(set(r) == ROW_KEYS for r in rows)


def test_tile_sweep_methods_launch_each_tile_with_ours_pv(monkeypatch):
    pytest.importorskip("triton")
    from comfy_int8_w8a8.int8.backends import attention as backend
    from comfy_int8_w8a8.int8.launch import attention as launch

    asked, calls = [], []
    monkeypatch.setattr(backend, "resolve_pv", lambda device, pref: asked.append((device.type, pref)) or "fp8")
    monkeypatch.setattr(launch, "int8_attention_triton", lambda q, k, v, **kw: calls.append(kw))
    methods = bench.tile_sweep_methods("cpu")
    assert asked == [("cpu", "auto")]
    assert list(methods) == [bench.tile_method_name(*c) for c in bench.sweep_configs()]
    methods["ours_tiles_m128_n64_w8_s3"](None, None, None)
    assert calls == [{"pv": "fp8", "tiles": launch.AttentionTiles(block_m=128, block_n=64, warps=8, stages=3)}]
    assert calls[0]["tiles"].quant_block_q == calls[0]["tiles"].quant_block_k == 64
    assert bench.sweep_errors()[-1] is RuntimeError


def test_tile_sweep_with_an_explicit_pv_names_and_launches_it(monkeypatch):
    # (no Triton needed: the launcher module is a stand-in)
    import dataclasses
    import sys
    import types

    from comfy_int8_w8a8.int8.backends import attention as backend

    calls = []
    fake = types.ModuleType("comfy_int8_w8a8.int8.launch.attention")
    fake.AttentionTiles = dataclasses.make_dataclass("AttentionTiles", ["block_m", "block_n", "warps", "stages"])
    fake.int8_attention_triton = lambda q, k, v, **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "comfy_int8_w8a8.int8.launch.attention", fake)
    monkeypatch.setattr(backend, "resolve_pv", lambda device, pref: pref)
    methods = bench.tile_sweep_methods("cpu", "int8")
    assert len(methods) == len(bench.sweep_configs()) and all(name.endswith("_int8pv") for name in methods)
    methods[bench.tile_method_name(128, 64, 8, 3, "int8")](None, None, None)
    assert calls[0]["pv"] == "int8" and calls[0]["tiles"] == fake.AttentionTiles(128, 64, 8, 3)
    assert bench.tile_method_name(128, 64, 8, 3) == "ours_tiles_m128_n64_w8_s3"  # auto: the names as before
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args(["--sweep-tiles", "--sweep-pv", "int8"]).sweep_pv == "int8"
    assert parser.parse_args([]).sweep_pv == "auto"


def test_hopper_sweep_names_are_unique_and_join_the_run(tmp_path, monkeypatch):
    names = {bench.hopper_method_name(*cfg, pv) for cfg in bench.HOPPER_SWEEP for pv in ("16bit", "fp8", "int8")}
    assert len(names) == 3 * len(bench.HOPPER_SWEEP) and not names & set(bench.METHODS)
    assert bench.hopper_method_name(64, 128, 2, 4, 128, 1, 0, "int8") == "ours_hopper_m64_n128_s2_w4_r128_int8pv"
    assert bench.hopper_method_name(128, 128, 2, 8, 168, 1, 0, "fp8") == "ours_hopper_m128_n128_s2_w8_r168_fp8"
    assert bench.hopper_method_name(128, 64, 3, 4, 168, 2, 232, "16bit") == "ours_hopper_m128_n64_s3_w4_r168_c2r232"
    sweep = {bench.hopper_method_name(64, 64, 3, 4, 128, 1, 0, "16bit"): lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v)}
    monkeypatch.setattr(bench, "hopper_sweep_methods", lambda: sweep)
    rows = _run_with_sweep(tmp_path, monkeypatch, "--sweep-hopper", "sweep_hopper")
    assert [r["method"] for r in rows] == ["sdpa_bf16", "ours_hopper_m64_n64_s3_w4_r128"]
