"""bench/attention_numerics.py: every P.V scheme at every granularity on every input kind, written as JSON."""

import json

from comfy_int8_w8a8.bench import attention_numerics as numerics


def test_attention_numerics_writes_one_row_per_input_granularity_and_scheme(tmp_path):
    out = tmp_path / "numerics.json"
    numerics.main(["--heads", "1", "--rows", "64", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    keys = {(r["inputs"], r["granularity"], r["pv"]) for r in rows}
    assert keys == {(i, g, s) for i in numerics.INPUTS for g in numerics.GRANULARITIES for s in numerics.SCHEMES}
    by = {(r["inputs"], r["granularity"], r["pv"]): r["rel_err"] for r in rows}
    # the ordering the docs state, on the benchmark's inputs: 16-bit < int8 < fp8
    assert by[("benchmark", "block", "16bit")] < by[("benchmark", "block", "int8")] < by[("benchmark", "block", "fp8")]
