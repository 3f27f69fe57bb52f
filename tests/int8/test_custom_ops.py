"""The custom ops make an Int8Linear traceable by torch.compile in one graph: the fake (meta) implementations give
the right shapes and dtypes, and TorchDynamo records no graph break."""

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear
from comfy_int8_w8a8.int8.backends import custom_ops  # noqa: F401 - registers torch.ops.comfy_int8


def _layer(backend: str, hadamard_group: int = 0) -> Int8Linear:
    lin = torch.nn.Linear(256, 96)
    cfg = Int8Config(runtime_backend=backend, small_batch_fallback="never")
    return Int8Linear.from_linear(lin, cfg, hadamard_group=hadamard_group)


def test_int_mm_fake_impl_gives_int32_shape_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = torch.empty(5, 40, dtype=torch.int8)
        b = torch.empty(24, 40, dtype=torch.int8)
        out = torch.ops.comfy_int8.int_mm(a, b)
    assert out.shape == (5, 24) and out.dtype == torch.int32


@pytest.mark.parametrize("op", ["w8a8_triton", "w8a16_triton"])
def test_triton_linear_fake_impls_give_output_shape_and_dtype(op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(7, 64, dtype=torch.bfloat16)
        w = torch.empty(33, 64, dtype=torch.int8)
        s = torch.empty(33, 1)
        out = getattr(torch.ops.comfy_int8, op)(x, w, s, None, None, 0)
    assert out.shape == (7, 33) and out.dtype == torch.bfloat16


def test_int_mm_op_matches_int_mm_padded_on_cpu():
    from comfy_int8_w8a8.int8.launch.int_mm import int_mm_padded

    a = torch.randint(-127, 128, (3, 37), dtype=torch.int8)
    b = torch.randint(-127, 128, (11, 37), dtype=torch.int8)
    assert torch.equal(torch.ops.comfy_int8.int_mm(a, b), int_mm_padded(a, b))
    assert torch.equal(int_mm_padded(a, b), (a.long() @ b.long().t()).int())


@pytest.mark.parametrize("hadamard_group", [0, 64])
def test_compiled_int8_linear_torch_int_mm_has_no_graph_break(hadamard_group):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layer = _layer("torch_int_mm", hadamard_group)
    x = torch.randn(2, 9, 256)
    expected = layer(x)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    out = compiled(x)
    assert torch.equal(out, expected)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_int8_linear_calls_the_int_mm_custom_op():
    # The fake impl is what dynamo traces with; the graph must contain the op, not an inlined _int_mm.
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch._dynamo.reset()
    layer = _layer("torch_int_mm")
    backend = EagerAndRecordGraphs()
    torch.compile(layer, backend=backend, fullgraph=True)(torch.randn(20, 256))
    code = backend.graphs[0].code
    assert "comfy_int8.int_mm" in code
