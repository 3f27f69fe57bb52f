"""``comfy-int8 bench kernels --grid``: the shapes it runs and the summary it prints (CPU: no timing)."""

from comfy_int8_w8a8.bench import kernels


def test_grid_covers_every_family_shape_at_every_row_count():
    shapes = kernels.grid_shapes("all")
    expected = {(m, k, n) for family in kernels.GRID_SHAPES.values() for k, n in family for m in kernels.GRID_ROWS}
    assert {(m, k, n) for _, m, k, n in shapes} == expected and len(shapes) == len(expected)
    assert kernels.grid_shapes("wan") == [s for s in shapes if s[0].startswith("wan")]
    assert {k for _, _, k, _ in kernels.grid_shapes("flux")} == {3072, 12288}


def test_grid_summary_marks_values_under_the_floor():
    rows = [{"shape": "flux 3072->3072 M=64", "method": kernels.INT8_LINEAR, "eager_x_bf16": 1.31, "graph_x_bf16": 0.94},
            {"shape": "flux 3072->3072 M=64", "method": kernels.INT8_LINEAR_HADAMARD, "error": "RuntimeError: x"},
            {"shape": "flux 3072->3072 M=64", "method": "bf16 F.linear", "eager_x_bf16": 1.0, "graph_x_bf16": 1.0}]
    line = kernels.grid_summary(rows).splitlines()[-1]
    assert "1.31 / 0.94<" in line and line.rstrip().endswith("error")
