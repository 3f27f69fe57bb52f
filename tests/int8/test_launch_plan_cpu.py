"""The eager-plan machinery on the CPU: launch capture and pointer binding (fast_launch), and how Int8Linear builds,
reuses and drops plans (with a stand-in backend). The real kernels' plans are tested in test_eager_plan.py."""

from __future__ import annotations

import types

import pytest
import torch

from comfy_int8_w8a8.int8 import Int8Config, Int8Linear
from comfy_int8_w8a8.int8.backends.reference import ReferenceBackend
from comfy_int8_w8a8.int8.launch import fast_launch


class _FakeRunner:
    """What a compiled kernel's ``run`` looks like to the launcher (Triton 3.6 layout): records its calls."""

    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = False
    launch_pdl = False

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.launch = lambda *a: self.calls.append(a)

    def __call__(self, *a) -> None:  # noqa: ANN002
        self.calls.append(a)


@pytest.fixture(autouse=True)
def _direct_launch_allowed(monkeypatch):  # noqa: ANN001, ANN202
    # These tests fake a launcher and check the direct entry itself: the run's INT8_W8A8_NO_DIRECT_LAUNCH (a forced-
    # path GPU run sets it) would hide it. compat caches the switch, so it is read again before and after.
    from comfy_int8_w8a8.int8 import compat

    monkeypatch.delenv("INT8_W8A8_NO_DIRECT_LAUNCH", raising=False)
    compat.reset()
    yield
    monkeypatch.undo()
    compat.reset()


def _fake_jit():
    runner = _FakeRunner()
    compiled = types.SimpleNamespace(packed_metadata="meta", function="fn", run=runner)
    jit = type("Jit", (), {"__getitem__": lambda self, grid: (lambda *a, **kw: runner(*a) or compiled)})()
    return jit, runner


def _launch(launcher, args) -> None:  # noqa: ANN001
    launcher(("key",), 0, (3, 1, 1), args, 4, 3)


def test_capture_records_launches_and_binds_per_call_pointers(monkeypatch):
    monkeypatch.setattr(fast_launch, "_raw_stream", lambda idx: 1234)
    jit, runner = _fake_jit()
    launcher = fast_launch.CompiledLauncher(jit)
    x, out, weight = torch.zeros(4), torch.zeros(4), torch.ones(8)
    _launch(launcher, (x, weight, out, 7, x))  # first call compiles (the JIT path), outside any capture
    with fast_launch.capture_launches() as launches:
        _launch(launcher, (x, weight, out, 7, x))
    assert len(launches) == 1 and len(runner.calls) == 2
    prepared = launches[0].bind(x, out)
    prepared(111, 222)
    args = runner.calls[-1][-5:]
    # Per-call slots (x appears twice: both replaced), fixed tensors as their pointers, ints untouched.
    assert args == (111, weight.data_ptr(), 222, 7, 111)
    assert runner.calls[-1][:7] == (3, 1, 1, 1234, "fn", False, False)
    fast = prepared.two_pointer_call()  # the eager plans' specialized replay: the same launch, call for call
    fast(333, 444)
    fast(555, 666)
    assert runner.calls[-2][-5:] == (333, weight.data_ptr(), 444, 7, 333)
    assert runner.calls[-1] == runner.calls[-3][:-5] + (555, weight.data_ptr(), 666, 7, 555)
    assert [t is weight for t in prepared._tensors] == [True]  # keeps the weight alive, not the activations
    with fast_launch.capture_launches() as launches:
        _launch(launcher, (x, weight, out, 7, x))
    assert launches[0].bind(x, out, borrowed=[weight])._tensors == []  # a borrowed tensor is its owner's to keep


def test_bind_rejects_a_tensor_that_was_not_an_argument():
    jit, _ = _fake_jit()
    launcher = fast_launch.CompiledLauncher(jit)
    x = torch.zeros(4)
    with fast_launch.capture_launches() as launches:
        _launch(launcher, (x, 1))
    with pytest.raises(ValueError, match="not an argument"):
        launches[0].bind(torch.zeros(4))


def test_triton_3_8_launcher_layout_takes_the_run_path():
    # Triton 3.8's C launcher takes (..., metadata, hooks, scratch, arg_annotations, signature, args): calling it
    # with the 3.6 argument order would pass garbage, so only the 3.6 layout gets the direct entry.
    runner = _FakeRunner()
    assert fast_launch._direct_launch(types.SimpleNamespace(run=runner)) is runner.launch
    runner.arg_annotations = ()
    assert fast_launch._direct_launch(types.SimpleNamespace(run=runner)) is None


class _CountingPlan:
    def __init__(self, y: torch.Tensor) -> None:
        self.y, self.calls, self.stale = y, 0, False

    def __call__(self, x: torch.Tensor, out_shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        self.calls += 1
        if self.stale:
            return None
        return self.y if out_shape is None or tuple(out_shape) == tuple(self.y.shape) else self.y.reshape(out_shape)


def _planned_layer(monkeypatch, built: list) -> Int8Linear:  # noqa: ANN001
    """An Int8Linear on the reference backend whose eager calls up to 8 rows get stand-in plans, kept in ``built``."""
    def eager_plan(self, x, w, config):  # noqa: ANN001, ANN202
        y = self.linear(x, w, config)
        built.append(_CountingPlan(y))
        return built[-1], y

    monkeypatch.setattr(ReferenceBackend, "plan_rows", lambda self, config: 8)
    monkeypatch.setattr(ReferenceBackend, "eager_plan", eager_plan)
    return Int8Linear.from_linear(torch.nn.Linear(64, 32), Int8Config(runtime_backend="reference"))


def test_int8_linear_builds_a_plan_once_per_key_and_drops_a_stale_one(monkeypatch):
    built: list[_CountingPlan] = []
    q = _planned_layer(monkeypatch, built)
    x = torch.randn(4, 64)
    first = q(x)
    assert len(built) == 1 and built[0].calls == 0
    assert q(x) is built[0].y and q(x[None]).shape == (1, 4, 32)  # replays (3-D input: same 2-D key)
    assert built[0].calls == 2
    q(torch.randn(9, 64))  # above plan_rows: the normal path, no plan
    q(x.double().float()[:, :64])  # same key, other tensor: replays
    assert len(built) == 1 and built[0].calls == 3
    q(torch.randn(4, 64).half())  # another dtype: its own plan
    assert len(built) == 2
    built[0].stale = True
    assert torch.equal(q(x), first)  # stale plan: the normal path, plans dropped
    q(x)
    assert len(built) == 3


def test_int8_linear_without_plans_on_backends_that_have_none():
    q = Int8Linear.from_linear(torch.nn.Linear(64, 32), Int8Config(runtime_backend="reference"))
    q(torch.randn(4, 64))
    state = q._runtime._state[torch.device("cpu")]
    assert state.plans == {} and state.plan_rows == 0


def test_replay_fast_path_notices_a_replaced_buffer(monkeypatch):
    # The fast path skips the per-device state lookup: it must still see an assigned weight (e.g. a LoRA bake) and compute with it.
    built: list[_CountingPlan] = []
    q = _planned_layer(monkeypatch, built)
    x = torch.randn(4, 64)
    q(x)
    assert q(x) is built[0].y and len(q._runtime.replays) == 1  # the second call replayed through the fast path
    q.weight = torch.zeros_like(q.weight)
    assert torch.equal(q(x), q.bias.expand(4, 32))  # zero weight: bias only, from the normal path
    assert len(built) == 1 + 1  # the old plan was not replayed: a new one was recorded for the new weight
    assert torch.equal(q(x), q.bias.expand(4, 32))


def test_replay_fast_path_keys_on_the_input_as_given(monkeypatch):
    built: list[_CountingPlan] = []
    q = _planned_layer(monkeypatch, built)
    x3 = torch.randn(2, 2, 64)
    q(x3)
    assert q(x3).shape == (2, 2, 32) and built[0].calls == 1
    assert len(q._runtime.replays) == 1 and next(iter(q._runtime.replays))[0] == (2, 2, 64)
    strided = torch.randn(2, 64, 2).transpose(1, 2)  # 3-D, not contiguous: reshaping copies, so no fast replay
    q(strided)
    assert len(q._runtime.replays) == 1  # still only x3's
    q.to(torch.float32)  # moving the module drops every plan and replay
    assert q._runtime.replays == {}


class _CEntry:
    """Stands in for a kernel's C launch entry (a builtin: no Python code object), recording its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *args) -> None:  # noqa: ANN002
        self.calls.append(args)


def test_replayer_finds_per_call_buffers_through_views_and_owns_only_its_fixed_tensors(monkeypatch):
    monkeypatch.setattr(fast_launch, "_raw_stream", lambda idx: 7)
    entry, compiled = _CEntry(), types.SimpleNamespace(packed_metadata="meta", function="fn")
    x, tmp, out = torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(4, 3)
    weight, workspace = torch.ones(3, 2), torch.ones(5)
    args = [x, tmp.reshape(-1), weight.reshape(-1), workspace, out, 9]  # views, as the GEMM gets its scales
    replay = fast_launch.PreparedLaunch(compiled, entry, False, 0, (2, 1, 1), args).replayer(
        [x, tmp, out], borrowed=[weight])
    replay([100, 200, 300])
    replay([101, 201, 301])
    assert entry.calls[0][:7] == (2, 1, 1, 7, "fn", False, False) and entry.calls[0][9] == "meta"
    assert entry.calls[0][13:] == (100, 200, weight.data_ptr(), workspace.data_ptr(), 300, 9)
    assert entry.calls[1][13:] == (101, 201, weight.data_ptr(), workspace.data_ptr(), 301, 9)
    assert [t is workspace for t in replay.keepalive] == [True]  # the weight is its owner's to keep
    assert replay.per_call_used == {0, 1, 2}
    offset_view = fast_launch.PreparedLaunch(compiled, entry, False, 0, (1, 1, 1), [x[1:]])
    with pytest.raises(ValueError, match="another offset"):
        offset_view.replayer([x])


def test_replayer_accepts_only_the_known_descriptor_wrapper():
    def wrapper_of(launcher, tensordesc_indices, tensordesc_meta):  # noqa: ANN001, ANN202 - Triton 3.6's shape
        def inner(*args):  # noqa: ANN002, ANN202
            return launcher, tensordesc_indices, tensordesc_meta

        return inner

    entry = _CEntry()
    assert fast_launch._tensordesc_entry(entry) == (entry, frozenset(), [])
    meta = {"swizzle": 3}
    assert fast_launch._tensordesc_entry(wrapper_of(entry, {1}, [meta])) == (entry, frozenset({1}), [meta])
    with pytest.raises(ValueError, match="without TMA metadata"):
        fast_launch._tensordesc_entry(wrapper_of(entry, {1}, [None]))
    with pytest.raises(ValueError, match="unknown launcher wrapper"):
        fast_launch._tensordesc_entry(lambda *a: entry(*a))


def test_recording_keeps_declared_temporaries_and_skips_paused_launches(monkeypatch):
    monkeypatch.setattr(fast_launch, "_raw_stream", lambda idx: 7)
    jit, runner = _fake_jit()
    launcher = fast_launch.CompiledLauncher(jit)
    x, kept, benched = torch.zeros(4), torch.zeros(2), torch.zeros(3)
    fast_launch.note_temporary(torch.zeros(1))  # no recording on: nothing happens
    with fast_launch.capture_launches() as recording:
        _launch(launcher, (x, 1))
        fast_launch.note_temporary(kept)
        with fast_launch.recording_paused():  # e.g. an autotuner timing configs inside a recorded call
            _launch(launcher, (x, 2))
            fast_launch.note_temporary(benched)
        _launch(launcher, (x, 3))
    assert len(recording) == 2 and len(runner.calls) == 3
    assert [t is kept for t in recording.temporaries] == [True]


def test_planned_call_records_again_when_asked_then_gives_up(monkeypatch):
    from comfy_int8_w8a8.int8.launch import eager_plan

    outcomes = [eager_plan.RETRY, eager_plan.RETRY, "plan"]
    record = lambda x, w, config: (outcomes.pop(0), "y")  # noqa: E731 - a backend's eager_plan
    plans: dict = {}
    x = torch.zeros(2, 4)
    assert [eager_plan.planned_call(plans, x, record, None, None) for _ in range(3)] == ["y"] * 3
    assert list(plans.values()) == ["plan"]  # recorded on the third call
    outcomes[:] = [eager_plan.RETRY] * eager_plan._ATTEMPTS
    plans.clear()
    for _ in range(eager_plan._ATTEMPTS):
        eager_plan.planned_call(plans, x, record, None, None)
    assert list(plans.values()) == [None]  # gave up: the normal path from now on
    assert eager_plan.planned_call(plans, x, record, None, None) is None
