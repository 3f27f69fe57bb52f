"""``comfy-int8 bench defaults --tiny`` end to end against the real ComfyUI on the CPU: the same code path as the GPU
run (files written, loader node function, compile node defaults, stock loader / TorchCompileModel, native int8 file
from our converter) at a tiny Flux, with the compile backend eager."""

from __future__ import annotations

import argparse
import json

import pytest

from comfy_int8_w8a8.bench import defaults

pytestmark = pytest.mark.integration

COSINE_MIN = 0.99


def _run(tmp_path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    defaults.add_arguments(parser)
    out = tmp_path / "defaults.json"
    args = parser.parse_args(["--tiny", "--resolutions", "512x512", "--steps", "2", "--out", str(out),
                              "--workdir", str(tmp_path / "work"), *extra])
    assert defaults.run(args) == 0
    tables = 2 if args.lora else 1  # --lora adds a second table
    assert out.with_suffix(".md").read_text().count("| 512x512 |") == len(args.variants) * tables
    return json.loads(out.read_text())


def test_bench_defaults_tiny_every_variant_has_numbers_in_the_issue_json_shape(comfy_cpu, tmp_path) -> None:
    # In-process (torch._dynamo reset between variants): the five variants' compiles alone take ~45 s on a CPU.
    result = _run(tmp_path, "--isolate", "none")
    assert set(result) == {"gpu", "results"} and result["gpu"] == "cpu"
    assert list(result["results"]) == list(defaults.DEFAULT_VARIANTS)
    for variant, cells in result["results"].items():
        assert list(cells) == ["512x512"], variant
        cell = cells["512x512"]
        assert set(cell) == set(defaults.FIELDS), variant
        for key in ("step_ms", "load_s", "first_call_s", "cos"):
            assert isinstance(cell[key], float | int) and cell[key] >= 0, (variant, key, cell)
        assert cell["peak_vram_gib"] is None  # CPU
        assert cell["cos"] >= COSINE_MIN, (variant, cell)
    assert result["results"]["bf16"]["512x512"]["cos"] == 1.0


def test_bench_defaults_tiny_fresh_process_per_cell(comfy_cpu, tmp_path) -> None:
    # The default process model: each cell in a fresh worker process with cold caches (no compile variants here,
    # to keep it short; the in-process test above runs them all).
    result = _run(tmp_path, "--variants", "bf16", "ours_loader")
    assert list(result["results"]) == ["bf16", "ours_loader"]
    ours = result["results"]["ours_loader"]["512x512"]
    assert ours["step_ms"] > 0 and ours["load_s"] > 0 and ours["cos"] >= COSINE_MIN
    assert not list((tmp_path / "work").glob("caches_*"))  # the cold cache folders go with their worker


def test_bench_defaults_tiny_lora_and_vram_cap(comfy_cpu, tmp_path) -> None:
    # --lora: a rank-32 LoRA on every Linear, applied as LoraLoaderModelOnly does, then a strength change; ours must
    # follow bf16's LoRA output, and the LoRA must change the output (else the timing says nothing).
    import torch

    from comfy_int8_w8a8.bench.family_sampling import cosine

    variants = ("bf16", "native_int8_stock_compile", "ours_loader")
    result = _run(tmp_path, "--isolate", "none", "--lora", "--vram-cap", "1", "--variants", *variants)
    for variant in variants:
        cell = result["results"][variant]["512x512"]
        assert set(defaults.LORA_FIELDS) <= set(cell), variant
        for key in defaults.LORA_FIELDS:
            assert isinstance(cell[key], float | int) and cell[key] >= 0, (variant, key, cell)
        assert cell["lora_cos"] >= COSINE_MIN, (variant, cell)
        assert cell["vram_cap_gib"] == 1 and cell["streamed_layers"] == 0  # recorded; the CPU always loads fully
        work = tmp_path / "work"
        plain, with_lora = (torch.load(work / f"pred_{variant}_512x512{s}.pt") for s in ("", "_lora"))
        assert cosine(plain, with_lora) < 0.9999, variant
    assert result["results"]["bf16"]["512x512"]["lora_cos"] == 1.0
    table = (tmp_path / "defaults.md").read_text()
    assert table.count("| 512x512 | ours_loader |") == 2  # the main table and the LoRA table


def test_bench_defaults_keeps_finished_variants_when_cut_off(comfy_cpu, tmp_path, cut_off_at) -> None:
    # A device call's time limit kills the run mid-way: the JSON and table must already hold the finished variants.
    cut_off_at(defaults, "ours_loader")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "--isolate", "none", "--variants", "bf16", "ours_loader")
    out = tmp_path / "defaults.json"
    assert list(json.loads(out.read_text())["results"]) == ["bf16"]
    assert out.with_suffix(".md").read_text().count("| 512x512 | bf16 |") == 1
