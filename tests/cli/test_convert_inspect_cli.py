"""`comfy-int8 convert` / `inspect`: help, exit codes a script can rely on, summaries."""

import json
import subprocess
import sys

import pytest
import safetensors.torch as st
import torch

from comfy_int8_w8a8.bench.convert_rss import flux_specs, write_synthetic
from comfy_int8_w8a8.cli.main import main


@pytest.fixture(scope="module")
def small_flux(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "flux.safetensors"
    write_synthetic(path, flux_specs(128, depth=1, depth_single=1, in_channels=64, context=256, vec=128))
    return path


@pytest.mark.parametrize("cmd", [["convert", "--help"], ["inspect", "--help"], ["--help"]])
def test_help_exits_zero(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [["convert"], ["convert", "a", "b", "--outlier-method", "bogus"],
                                 ["convert", "a", "b", "--preset", "nope"], ["inspect"]])
def test_bad_command_line_exits_two(cmd):
    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 2


def test_convert_smooth_is_a_usage_error_with_reason(small_flux, tmp_path, capsys):
    assert main(["convert", str(small_flux), str(tmp_path / "o.safetensors"), "--outlier-method", "smooth",
                 "--device", "cpu"]) == 2
    assert "stock ComfyUI cannot apply" in capsys.readouterr().err


def test_convert_then_inspect(small_flux, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(small_flux), str(out), "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Detected model family 'flux'" in text and "quantized" in text and "GiB ->" in text
    assert main(["convert", str(small_flux), str(out), "--device", "cpu", "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "comfy_int8" and summary["weights_by_dtype"]["torch.int8"] > 0
    assert 0 < summary["quantized_layer_share"] < 1 and summary["metadata"]["comfy_int8_w8a8.preset"] == "flux"
    assert main(["inspect", str(out)]) == 0
    assert "int8_tensorwise" in capsys.readouterr().out


def test_missing_input_and_unknown_family_with_explicit_preset_exit_one(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.safetensors"), str(tmp_path / "o.safetensors"),
                 "--device", "cpu"]) == 1
    assert "does not exist" in capsys.readouterr().err
    odd = tmp_path / "odd.safetensors"
    st.save_file({"foo.weight": torch.randn(64, 64)}, str(odd))
    assert main(["convert", str(odd), str(tmp_path / "o.safetensors"), "--preset", "flux", "--device", "cpu"]) == 1
    assert "match no known model family" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.safetensors")]) == 1


def test_python_dash_m_entry_point(small_flux):
    proc = subprocess.run([sys.executable, "-m", "comfy_int8_w8a8.cli", "inspect", str(small_flux)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "bf16" in proc.stdout
