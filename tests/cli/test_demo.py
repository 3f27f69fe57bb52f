import json
import tempfile

import torch

from comfy_int8_w8a8.cli.demo import format_table, run_demo
from comfy_int8_w8a8.cli.main import main


def test_demo_meets_its_promises_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the demo's temporary folder goes here
    # the defaults of `comfy-int8 demo` (4 steps, 32x32 latent): the table the README promises
    rows = run_demo(torch.device("cpu"), steps=4, methods=["none", "hadamard"], size=32)
    assert list(tmp_path.iterdir()) == []
    by_name = {r.model: r for r in rows}
    hadamard, none = by_name["int8 hadamard"], by_name["int8 none"]
    assert hadamard.weight_ratio <= 0.55 and none.weight_ratio <= 0.55
    assert hadamard.file_mb < 0.55 * rows[0].file_mb
    assert hadamard.cosine >= 0.999
    assert hadamard.cosine > none.cosine  # the built-in model has outlier channels, which the rotation handles
    table = format_table(rows)
    assert "int8 hadamard" in table and "PSNR" in table


def test_demo_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--steps", "1", "--methods", "hadamard", "--size", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows][1:] == ["int8 hadamard"]
    assert "| int8 hadamard |" in capsys.readouterr().out


def test_demo_rejects_unknown_method(capsys):
    assert main(["demo", "--methods", "gptq"]) == 2
    assert "Unknown outlier method" in capsys.readouterr().out
