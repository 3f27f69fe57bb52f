"""The lazy compile engine on a tiny int8 DiT with plain torch (no ComfyUI)."""

import copy
import logging

import pytest
import torch
from torch._dynamo.utils import counters

from comfy_int8_w8a8.compile import FAILED_MESSAGE, CompileSettings, LazyCompiler


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def _inputs(step: int, tokens: int = 24):
    g = torch.Generator().manual_seed(step)
    return torch.randn(1, tokens, 8, generator=g), torch.tensor([1.0 - 0.3 * step])


class RecordingBackend:
    """A dynamo backend that runs each graph as traced (no codegen: fast) and records its input names."""

    def __init__(self) -> None:
        self.graphs: list[list[str]] = []
        self.input_ptrs: set[int] = set()  # storage addresses of the tensors the graphs took as inputs
        self.graph_modules: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):  # noqa: ANN001, ANN204
        self.graph_modules.append(gm)
        self.graphs.append([str(node.target) for node in gm.graph.nodes if node.op == "placeholder"])
        self.input_ptrs.update(t.data_ptr() for t in example_inputs if isinstance(t, torch.Tensor))
        return gm.forward


class FailingBackend:
    """A backend that fails the way a broken toolchain does: at the first call of the compiled module."""

    calls = 0

    def __call__(self, gm, example_inputs):  # noqa: ANN001, ANN204
        FailingBackend.calls += 1
        raise RuntimeError("deliberate backend failure (no C++ compiler)")


@pytest.fixture(scope="module")
def inductor_run(tiny):
    """One inductor compile of the whole tiny int8 model, then 3 steps (gcc compiling is the slow part, so the
    tests that read it share it)."""
    import torch._dynamo

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    float_model = tiny.TinyDiT(depth=2, quantize=False)
    int8_model = copy.deepcopy(float_model)
    for block in int8_model.blocks:
        block.quantize()
    owner = tiny.Owner(int8_model)
    compiler = LazyCompiler(CompileSettings(backend="inductor", dynamic=True))
    before = {"paths": compiler.compiled_paths, "graphs": _graphs()}
    steps = []
    with torch.no_grad():  # ComfyUI samples under no_grad
        for step in range(3):
            x, t = _inputs(step)
            steps.append({"x": x, "t": t, "compiled": tiny.call_through(compiler, owner, x, t), "graphs": _graphs()})
        eager = [owner.apply_model(s["x"], s["t"]) for s in steps]
        floats = [float_model(s["x"], s["t"]) for s in steps]
    return {"owner": owner, "compiler": compiler, "before": before, "steps": steps, "eager": eager, "float": floats}


def test_lazy_compile_before_first_call_compiles_nothing(inductor_run):
    assert inductor_run["before"] == {"paths": [], "graphs": 0}
    assert inductor_run["steps"][0]["graphs"] >= 1  # the first call compiled


def test_lazy_compile_inductor_output_matches_eager_within_quantization_error(inductor_run):
    # Compiling reorders fp32 arithmetic, which can flip the rounding of an activation to int8; the result must
    # stay far closer to eager int8 than int8 is to the float model (the quantization error of this very input).
    for compiled, eager, exact in zip([s["compiled"] for s in inductor_run["steps"]], inductor_run["eager"],
                                      inductor_run["float"]):
        quant_error = (eager - exact).abs().max()
        assert quant_error > 0
        assert (compiled - eager).abs().max() <= quant_error


def test_lazy_compile_three_steps_zero_recompiles(inductor_run):
    graphs = [s["graphs"] for s in inductor_run["steps"]]
    assert graphs[0] >= 1 and graphs[1] == graphs[0] and graphs[2] == graphs[0]
    assert inductor_run["compiler"].builds == 1
    assert inductor_run["compiler"].compiled_paths == ["diffusion_model"]


def test_lazy_compile_model_is_restored_after_each_call(inductor_run):
    owner = inductor_run["owner"]
    assert type(owner.diffusion_model).__name__ == "TinyDiT"
    assert all(type(b).__name__ == "Block" for b in owner.diffusion_model.blocks)


def test_blocks_only_compiles_each_block_and_the_modules_around_them(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    backend = RecordingBackend()
    compiler = LazyCompiler(CompileSettings(backend=backend, blocks_only=True))
    out = tiny.call_through(compiler, owner, *_inputs(0))
    assert compiler.compiled_paths == ["diffusion_model.blocks.0", "diffusion_model.blocks.1",
                                       "diffusion_model.final_layer", "diffusion_model.img_in",
                                       "diffusion_model.time_in"]
    model = owner.diffusion_model  # the embedders' and the final layer's weights went into compiled graphs
    assert {model.img_in.weight.data_ptr(), model.final_layer.weight.data_ptr()} <= backend.input_ptrs
    # the parameter-free position module stays eager: no graph computes its sine
    assert not any("sin" in str(node.target) for graph in backend.graph_modules for node in graph.graph.nodes)
    assert torch.equal(out, owner.apply_model(*_inputs(0)))


def test_blocks_only_without_glue_compiles_each_block_and_nothing_else(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    backend = RecordingBackend()
    compiler = LazyCompiler(CompileSettings(backend=backend, blocks_only=True), compile_glue=False)
    out = tiny.call_through(compiler, owner, *_inputs(0))
    assert compiler.compiled_paths == ["diffusion_model.blocks.0", "diffusion_model.blocks.1"]
    inputs = [name for graph in backend.graphs for name in graph]
    assert backend.graphs and all("img_in" not in n and "final_layer" not in n for n in inputs)
    assert owner.diffusion_model.img_in.weight.data_ptr() not in backend.input_ptrs
    assert any("up" in n for n in inputs)
    assert torch.equal(out, owner.apply_model(*_inputs(0)))


class GraphBreakingEmbedder(torch.nn.Module):
    """An embedder with Python dynamo cannot put in one graph (as some positional encodings have)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return self.inner(t)


def test_fullgraph_applies_to_blocks_not_to_the_modules_around_them(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    owner.diffusion_model.time_in = GraphBreakingEmbedder(owner.diffusion_model.time_in)
    backend = RecordingBackend()
    compiler = LazyCompiler(CompileSettings(backend=backend, blocks_only=True, fullgraph=True))
    out = tiny.call_through(compiler, owner, *_inputs(0))
    # With fullgraph on the embedder too, its graph break would fail the compile and turn it off for every module.
    assert not compiler.fallback.failed
    assert any("modules_up" in name for graph in backend.graphs for name in graph)  # the blocks were compiled
    assert torch.equal(out, owner.apply_model(*_inputs(0)))


def test_whole_model_mode_compiles_embedders_too(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    backend = RecordingBackend()
    compiler = LazyCompiler(CompileSettings(backend=backend, blocks_only=False))
    tiny.call_through(compiler, owner, *_inputs(0))
    assert compiler.compiled_paths == ["diffusion_model"]
    assert any("final_layer" in n for graph in backend.graphs for n in graph)


def test_blocks_only_without_known_block_lists_compiles_whole_model_and_warns(tiny, caplog):
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(backend=RecordingBackend(), blocks_only=True), block_names=("layers",))
    with caplog.at_level(logging.WARNING, logger="comfy_int8_w8a8"):
        tiny.call_through(compiler, owner, *_inputs(0))
        tiny.call_through(compiler, owner, *_inputs(1))
    assert compiler.compiled_paths == ["diffusion_model"]
    assert sum("has none of the block lists layers" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("use_guard_filter", [True, False])
def test_guard_filter_decides_whether_transformer_options_recompile(tiny, use_guard_filter):
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(backend="eager", blocks_only=True, use_guard_filter=use_guard_filter))
    x, t = _inputs(0)
    tiny.call_through(compiler, owner, x, t, transformer_options={"negate": False})
    first = _graphs()
    tiny.call_through(compiler, owner, x, t, transformer_options={"negate": True})
    if use_guard_filter:
        assert _graphs() == first  # the guard on negate was dropped: no recompile
        assert compiler.guard_filter.dropped
        assert all("transformer_options" in name for name in compiler.guard_filter.dropped)
    else:
        assert _graphs() == first + 1  # dynamo specialised on negate and recompiled
        assert compiler.guard_filter is None


def test_forced_compile_failure_warns_once_and_returns_eager_result(tiny, caplog):
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    compiler = LazyCompiler(CompileSettings(backend=FailingBackend(), blocks_only=True))
    FailingBackend.calls = 0
    with caplog.at_level(logging.WARNING, logger="comfy_int8_w8a8"):
        outs = [tiny.call_through(compiler, owner, *_inputs(step)) for step in range(3)]
    warnings = [r.getMessage() for r in caplog.records if FAILED_MESSAGE in r.getMessage()]
    assert len(warnings) == 1
    assert "deliberate backend failure" in warnings[0] and "diffusion_model.img_in" in warnings[0]  # the first compiled module to run
    assert FailingBackend.calls == 1  # after the failure nothing tries to compile again
    for step, out in enumerate(outs):
        assert torch.equal(out, owner.apply_model(*_inputs(step)))


def test_model_error_is_not_swallowed_as_compile_failure(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(backend="eager"))
    bad = torch.randn(1, 24, 5)  # 5 channels where img_in takes 8
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied|size mismatch|must match"):
        tiny.call_through(compiler, owner, bad, torch.tensor([1.0]))
    assert not compiler.fallback.failed
    assert type(owner.diffusion_model).__name__ == "TinyDiT"  # restored even though the call raised


def test_new_weight_patch_state_rebuilds_and_same_state_does_not(tiny):
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(backend="eager", blocks_only=True))
    owner.current_weight_patches_uuid = "patches-a"
    tiny.call_through(compiler, owner, *_inputs(0))
    tiny.call_through(compiler, owner, *_inputs(1))
    assert compiler.builds == 1
    owner.current_weight_patches_uuid = "patches-b"  # e.g. a LoRA was added after the compile node
    tiny.call_through(compiler, owner, *_inputs(2))
    assert compiler.builds == 2
    owner.diffusion_model.blocks[0] = tiny.Block()  # an object patch replaced a block
    tiny.call_through(compiler, owner, *_inputs(3))
    assert compiler.builds == 3


def test_hadamard_layers_compile_without_recompiling_on_the_second_step(tiny):
    # The rotation reads a per-device cache of Hadamard matrices; filled while priming (before tracing), so the
    # first graph already sees it and the second step does not recompile.
    from comfy_int8_w8a8.int8 import Int8Config, Int8Linear
    from comfy_int8_w8a8.int8.hadamard import _ON_DEVICE

    _ON_DEVICE.clear()
    model = tiny.TinyDiT(depth=1, quantize=False)
    cfg = Int8Config(runtime_backend="torch_int_mm", small_batch_fallback="never")
    block = model.blocks[0]
    block.up = Int8Linear.from_linear(block.up, cfg, name="up", hadamard_group=64)
    block.down = Int8Linear.from_linear(block.down, cfg, name="down", hadamard_group=64)
    _ON_DEVICE.clear()  # as after a restart: nothing cached before the first sampling call
    owner = tiny.Owner(model)
    compiler = LazyCompiler(CompileSettings(backend="eager", blocks_only=True))
    tiny.call_through(compiler, owner, *_inputs(0))
    first = _graphs()
    for step in (1, 2):
        tiny.call_through(compiler, owner, *_inputs(step))
    assert first >= 1 and _graphs() == first
