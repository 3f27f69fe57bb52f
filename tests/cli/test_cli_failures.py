"""How commands fail: one line on stderr and exit 1 for any exception (the traceback only with --debug), one
line for Ctrl-C, benchmarks that say what they need, log lines that do not land inside the progress bar."""

import json
import logging
import sys

import pytest
import safetensors.torch as st
import torch

from comfy_int8_w8a8.cli import convert as convert_cli
from comfy_int8_w8a8.cli import inspect as inspect_cli
from comfy_int8_w8a8.cli.main import main
from comfy_int8_w8a8.int8.formats import converter


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "m.safetensors"
    st.save_file({"double_blocks.0.img_attn.qkv.weight": torch.randn(256, 256).bfloat16()}, str(path))
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_unexpected_exception_is_one_line_naming_file_and_debug(small_file, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise TypeError("unhashable type: 'list'\nsecond line")

    monkeypatch.setattr(convert_cli, "convert_checkpoint", broken)
    assert main(["convert", str(small_file), str(tmp_path / "o.safetensors"), "--device", "cpu"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "convert failed on" in line and str(small_file) in line and "TypeError" in line and "--debug" in line
    with pytest.raises(TypeError):
        main(["--debug", "convert", str(small_file), str(tmp_path / "o.safetensors"), "--device", "cpu"])
    with pytest.raises(TypeError):  # also accepted after the subcommand, where users type it
        main(["convert", str(small_file), str(tmp_path / "o.safetensors"), "--device", "cpu", "--debug"])


def test_recursion_error_in_inspect_is_one_line(small_file, monkeypatch, capsys):
    def deep(ckpt):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(inspect_cli, "summarize", deep)
    assert main(["inspect", str(small_file)]) == 1
    assert "RecursionError" in _one_error_line(capsys.readouterr().err)


def test_ctrl_c_during_convert_is_one_line_and_removes_partial(small_file, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter, "_run_step", interrupted)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["convert", str(small_file), str(out_dir / "o.safetensors"), "--device", "cpu", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "comfy-int8 convert: interrupted by SIGINT (its partial output file was removed)."
    assert list(out_dir.iterdir()) == []


def test_convert_int8_weight_not_2d_names_the_layer(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    st.save_file({"blocks.0.lin.weight": torch.zeros(64, dtype=torch.int8), "blocks.0.lin.weight_scale": torch.ones(1)},
                 str(src))
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "--device", "cpu", "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "blocks.0.lin" in line and "2-D" in line and "unpack" not in line


def test_nan_int8_scale_is_refused_naming_the_layer(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    st.save_file({"blocks.0.lin.weight": torch.zeros(64, 64, dtype=torch.int8),
                  "blocks.0.lin.weight_scale": torch.full((64, 1), float("nan")),
                  "blocks.0.lin.comfy_quant": torch.tensor(list(b'{"format": "int8_tensorwise"}'), dtype=torch.uint8)},
                 str(src))
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(src), str(out), "--device", "cpu", "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "blocks.0.lin" in line and "NaN" in line and not out.exists()


def test_inspect_escapes_control_characters(tmp_path, capsys):
    src = tmp_path / "m.safetensors"
    st.save_file({"a.weight": torch.zeros(4, 4)}, str(src), metadata={"x\x1b[2J": "one\ntwo\x07"})
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "one\\ntwo" in out


def test_bench_e2e_without_comfyui_says_what_it_needs(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "comfy", None)  # `import comfy` now fails as on a machine without ComfyUI
    monkeypatch.setitem(sys.modules, "comfy.cli_args", None)
    assert main(["bench", "e2e", "--tiny", "--out", "unused.json"]) == 1
    err = capsys.readouterr().err
    assert "needs ComfyUI" in err and "PYTHONPATH" in err and "Traceback" not in err


def test_bench_missing_optional_package_names_it(monkeypatch, capsys):
    from comfy_int8_w8a8.bench import fidelity

    def needs_triton(args):
        raise ModuleNotFoundError("No module named 'triton'", name="triton")

    monkeypatch.setattr(fidelity, "run", needs_triton)
    assert main(["bench", "fidelity"]) == 1
    assert "needs Triton" in capsys.readouterr().err


def test_log_lines_are_written_above_the_progress_bar(small_file, tmp_path, monkeypatch, capsys):
    run_step = converter._run_step
    message = "a warning logged while the bar is drawn"

    def logging_step(*args, **kwargs):
        logging.getLogger("comfy_int8_w8a8.test").warning(message)
        return run_step(*args, **kwargs)

    monkeypatch.setattr(converter, "_run_step", logging_step)
    handler = logging.StreamHandler(sys.stderr)  # what basicConfig installs for the CLI
    logging.getLogger().addHandler(handler)
    try:
        from comfy_int8_w8a8.int8.quantize_model import QuantizeConfig
        from comfy_int8_w8a8.presets import load_preset

        converter.convert_checkpoint(small_file, tmp_path / "o.safetensors", load_preset("flux"), QuantizeConfig())
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if message in line]
    # tqdm.write clears the bar ("\r...\r") before the message: what follows the last \r is the message alone
    assert lines and all(line.rsplit("\r", 1)[-1] == message for line in lines), json.dumps(err)
