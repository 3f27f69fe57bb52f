"""Eager launch plans (int8/kernels/eager_plan.py): replayed few-rows calls equal the normal path bit for bit."""

import gc
import importlib.util
import weakref

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA GPU with Triton",
)


def _layer(k: int, n: int, bias: bool = True, smooth: bool = False, **config) -> Int8Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=bias, device="cuda")
    s = torch.rand(k, device="cuda") + 0.5 if smooth else None
    layer = Int8Linear.from_linear(lin, Int8Config(runtime_backend="triton", **config), smooth=s)
    if bias:
        layer.bias = layer.bias.to(torch.bfloat16)
    return layer


def _unplanned(layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    backend = layer.backend_for(x.device)
    y = backend.linear(x.reshape(-1, layer.in_features), layer.int8_weights(), layer.config)
    return y.reshape(*x.shape[:-1], -1)


def _plans(layer: Int8Linear) -> dict:
    return layer._runtime._state[torch.device("cuda", torch.cuda.current_device())].plans


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [(1, 3072, 18432), (2, 1024, 9216), (1, 3073, 971), (7, 1024, 640),
                                   (32, 3072, 3072), (33, 3072, 1536), (64, 4096, 1536)])
@pytest.mark.parametrize("bias", [True, False])
def test_replayed_plan_equals_normal_path(m, k, n, dtype, bias):
    # Rows 1-2 on wide layers: GEMV; up to 32: W8A16 split-K; 33-64: quant kernel + W8A8 split-K (two launches).
    layer = _layer(k, n, bias)
    xs = [(torch.randn(m, k, device="cuda") * 3).to(dtype) for _ in range(3)]
    first = layer(xs[0])  # builds the plan (the normal path, recorded)
    plans = _plans(layer)
    assert len(plans) == 1 and next(iter(plans.values())) is not None
    assert torch.equal(first, _unplanned(layer, xs[0]))
    for x in xs:  # replays with new inputs
        got = layer(x)
        assert got.dtype == dtype and got.shape == (m, n)
        assert torch.equal(got, _unplanned(layer, x))
    assert len(plans) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n,smooth", [(1, 3072, 18432, False), (16, 5120, 5120, True), (32, 3072, 3072, False)])
def test_rotated_few_rows_layer_replays_rotation_and_w8a16_as_one_plan(m, k, n, smooth, dtype):
    # A hadamard layer's few-rows path is two launches (the Triton rotation, then W8A16) with the rotated activation
    # a per-call temporary: one plan replays both. The torch rotation it replaced could not be replayed.
    from comfy_int8_w8a8.int8.launch.eager_plan import EagerPlan

    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, device="cuda")
    s = torch.rand(k, device="cuda") + 0.5 if smooth else None
    layer = Int8Linear.from_linear(lin, Int8Config(runtime_backend="triton"), hadamard_group=256, smooth=s)
    xs = [(torch.randn(m, k, device="cuda") * 3).to(dtype) for _ in range(4)]
    for x in xs:
        assert torch.equal(layer(x), _unplanned(layer, x))
    plans = _plans(layer)
    assert len(plans) == 1 and isinstance(next(iter(plans.values())), EagerPlan)


def test_plan_with_smoothing_and_3d_input():
    layer = _layer(1024, 1536, smooth=True)
    for _ in range(3):
        x = torch.randn(2, 20, 1024, device="cuda", dtype=torch.bfloat16)  # 40 rows: the W8A8 plan
        assert torch.equal(layer(x), _unplanned(layer, x))
    assert next(iter(_plans(layer).values())) is not None


def test_unaligned_input_gets_its_own_plan():
    # A view 2 bytes into a buffer is not 16-byte aligned: the kernel compiled for aligned x must not run on it.
    layer = _layer(1024, 640)
    base = torch.randn(3 * 1024 + 8, device="cuda", dtype=torch.bfloat16)
    aligned, unaligned = base[:3 * 1024].view(3, 1024), base[1:3 * 1024 + 1].view(3, 1024)
    for x in (aligned, unaligned, aligned, unaligned):
        assert torch.equal(layer(x), _unplanned(layer, x))
    assert sorted(key[-1] for key in _plans(layer)) == [False, True]


def test_swapped_weight_storage_drops_the_plan():
    # ``t.data = ...`` keeps the tensor object but moves its storage: the plan's pointers would dangle.
    layer = _layer(1024, 640)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    before = layer(x)
    layer(x)
    layer.weight.data = layer.weight.data.flip(0).contiguous()  # new storage, other values
    got = layer(x)
    assert torch.equal(got, _unplanned(layer, x)) and not torch.equal(got, before)
    assert torch.equal(layer(x), got)  # re-recorded plan on the new storage


def _skip_without_direct_launch() -> None:
    from comfy_int8_w8a8.int8 import compat

    if not compat.direct_launch():  # test_fallbacks_gpu.py checks that no two-launch plan is built then
        pytest.skip("two-launch plans replay through direct launches, which are off here (INT8_W8A8_NO_DIRECT_LAUNCH "
                    "or a Triton without the launcher layout)")


def _only_plan(layer: Int8Linear):  # noqa: ANN202
    from comfy_int8_w8a8.int8.launch.eager_plan import EagerPlan

    plans = _plans(layer)
    assert len(plans) == 1
    plan = next(iter(plans.values()))
    assert isinstance(plan, EagerPlan)
    return plan


@pytest.mark.parametrize("kernel", ["gluon", "tma"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [(65, 1024, 640), (256, 3072, 3072), (300, 1024, 1544), (1536, 3072, 12288)])
@pytest.mark.parametrize("bias", [True, False])
def test_tiled_w8a8_calls_replay_two_launches_bit_for_bit(m, k, n, dtype, bias, kernel, monkeypatch):
    # Above 64 rows: the quant kernel and the GEMM (TMA descriptors re-encoded for each call's buffers), either
    # GEMM kernel (gemm_choice); the first call of a shape may autotune through Triton's JIT and record later.
    from comfy_int8_w8a8.int8 import compat
    from comfy_int8_w8a8.int8.launch import gemm_choice

    _skip_without_direct_launch()
    monkeypatch.setattr(gemm_choice, "_choices", {})
    if kernel == "tma":  # (where the pack sees no Hopper: the pointer GEMM, still two launches)
        monkeypatch.setattr(gemm_choice, "gluon_gemm", None)
    elif gemm_choice.gluon_gemm is None or compat.capability(torch.cuda.current_device()) != (9, 0):
        pytest.skip("the Gluon GEMM runs on sm_90 with Triton 3.6 only")
    else:
        monkeypatch.setattr(gemm_choice, "choose", lambda *a: gemm_choice.gluon_gemm.CONFIGS[-1])
    layer = _layer(k, n, bias)
    xs = [(torch.randn(m, k, device="cuda") * 3).to(dtype) for _ in range(4)]
    for x in xs:
        got = layer(x)
        assert got.dtype == dtype and got.shape == (m, n)
        assert torch.equal(got, _unplanned(layer, x))
    assert len(_only_plan(layer)._launches) == 2
    x3 = xs[0].reshape(1, m, k)  # a 3-D input replays from forward with its own output shape
    assert torch.equal(layer(x3), layer(x3)) and torch.equal(layer(x3)[0], _unplanned(layer, xs[0]))


def test_rotated_calls_replay_the_rotation_kernel_and_the_gemm():
    _skip_without_direct_launch()
    rotated = Int8Linear.from_linear(torch.nn.Linear(1024, 640, device="cuda"), Int8Config(runtime_backend="triton"),
                                     hadamard_group=256)
    for m in (40, 300):
        for _ in range(3):
            x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
            assert torch.equal(rotated(x), _unplanned(rotated, x))
    assert len(_plans(rotated)) == 2 and all(len(p._launches) == 2 for p in _plans(rotated).values())


def test_layer_tensors_are_not_kept_alive_by_a_two_launch_plan():
    _skip_without_direct_launch()
    # The GEMM reads the weight through a TMA descriptor and the scale through a reshaped view: both borrowed.
    layer = _layer(1024, 640)
    x = torch.randn(128, 1024, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        layer(x)
    plan = _only_plan(layer)
    old = [weakref.ref(layer.weight), weakref.ref(layer.weight_scale)]
    layer.weight = layer.weight.flip(0).contiguous()
    layer.weight_scale = layer.weight_scale.clone()
    layer._runtime.reset()  # what the next call does on noticing the new buffers; the plan itself stays alive here
    gc.collect()
    assert [ref() for ref in old] == [None, None]
    assert plan(x) is None  # its guards see the freed tensors
    assert torch.equal(layer(x), _unplanned(layer, x))


def test_graph_capture_records_the_normal_path_next_to_eager_plans(monkeypatch):
    # Plans exist to cut CPU per call; a capture takes the normal path (two kernels for W8A8, faster on the GPU).
    from comfy_int8_w8a8.int8.launch.eager_plan import EagerPlan

    layer = _layer(3072, 3072)
    static = {m: torch.randn(m, 3072, device="cuda", dtype=torch.bfloat16) for m in (1, 16, 48)}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for x in static.values():  # record the plans outside the capture
            layer(x)
            layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    assert all(isinstance(p, EagerPlan) for p in _plans(layer).values()) and len(_plans(layer)) == 3
    monkeypatch.setattr(EagerPlan, "__call__", lambda *a: pytest.fail("plan replayed during a capture"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = {m: layer(x) for m, x in static.items()}
    monkeypatch.undo()
    for _ in range(2):
        for x in static.values():
            x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        for m, x in static.items():
            assert torch.equal(outs[m], _unplanned(layer, x))
