"""Every hostile file (hostile_cases.py) through the reader, ``inspect`` and ``convert``: a clean error or a
correct read, one error line without a traceback, and nothing left behind in the output folder."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from comfy_int8_w8a8.cli.main import main
from comfy_int8_w8a8.int8.formats import CheckpointError, load_state_dict_for_comfy, open_checkpoint


def load_cases_module():
    name = "comfy_int8_hostile_cases"
    if name not in sys.modules:  # tests/ is not a package: load the generator by path, once
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("hostile_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


CASES = load_cases_module().all_cases()


def test_generator_has_at_least_100_hostile_files():
    hostile = [c for c in CASES if c.expect != "read"]
    assert len(hostile) >= 100 and len({c.name for c in CASES}) == len(CASES)


def _check_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "--debug" not in err, err  # --debug: an unforeseen exception got through


def _read(path: Path) -> str:
    try:
        sd, _ = load_state_dict_for_comfy(path)
    except CheckpointError as exc:
        assert exc.path and exc.problem
        return "error"
    for key, t in sd.items():
        assert isinstance(t, torch.Tensor), key
        if key.endswith(".weight_scale"):  # an int8 layer as the engine will run it
            assert t.dtype == torch.float32 and torch.isfinite(t).all() and t.shape[1:] == (1,)
            assert sd[key[: -len("_scale")]].dtype == torch.int8
    return "read"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file_gives_clean_error_or_correct_read(case, tmp_path, capsys):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    path = case.make(src_dir)
    outcome = _read(path)
    if case.expect != "any":
        assert outcome == case.expect

    capsys.readouterr()
    rc = main(["inspect", str(path)])
    captured = capsys.readouterr()
    assert rc in (0, 1)
    if rc:
        _check_error_line(captured.err)

    out = out_dir / "out.safetensors"
    rc = main(["convert", str(path), str(out), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert rc in (0, 1)
    if rc:
        _check_error_line(captured.err)
        assert list(out_dir.iterdir()) == []  # no output, no hidden .partial
    else:
        assert list(out_dir.iterdir()) == [out]
        with open_checkpoint(out) as ckpt:  # what convert writes, the reader takes back
            assert all(not t.dtype.is_floating_point or torch.isfinite(ckpt.tensor(k)).all()
                       for k, t in ckpt.infos().items())
        assert _read(out) == "read"
    if case.expect == "error":
        assert rc == 1
    assert not Path("/tmp/comfy_int8_pwned").exists()  # nothing was ever unpickled


@pytest.mark.parametrize("raw", [b'{"format": ["int8_tensorwise"]}', b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 b"[" * 5000 + b"]" * 5000, b"\xff", b'"int8_tensorwise"'])
def test_parse_comfy_quant_hostile_payload_is_value_error(raw):
    from comfy_int8_w8a8.int8.weights import parse_comfy_quant

    with pytest.raises(ValueError, match="blk.lin"):
        parse_comfy_quant(torch.tensor(list(raw), dtype=torch.uint8), "blk.lin")
