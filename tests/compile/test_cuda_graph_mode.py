"""CUDA-graph modes of the lazy compile: blocks that mutate their inputs, output copies, the lowvram fallback."""

import logging

import pytest
import torch
import torch.nn as nn

from comfy_int8_w8a8.compile import CompileSettings, LazyCompiler
from comfy_int8_w8a8.compile.cudagraph import InputCopyingBlock, OutputCopying, clone_tensors


class MutatingBlock(nn.Module):
    """Like ComfyUI's Flux blocks: adds the residual into its input in place and returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, img: torch.Tensor, vec: torch.Tensor, transformer_options: dict | None = None):  # noqa: ANN201
        img += self.lin(img * vec)
        return img, vec


class InPlaceRecorder:
    """A dynamo backend that records in-place ops (``+=``, ``add_``) applied directly to the graph's inputs: the
    input mutations that make inductor skip CUDA graphs."""

    def __init__(self) -> None:
        self.graphs = 0
        self.mutated: list[str] = []

    def __call__(self, gm, example_inputs):  # noqa: ANN001, ANN204
        self.graphs += 1
        for node in gm.graph.nodes:
            name = getattr(node.target, "__name__", str(node.target))
            in_place = name.startswith("i") and name in ("iadd", "imul", "isub") or (
                name.endswith("_") and not name.startswith("_"))
            if node.op in ("call_function", "call_method") and in_place and node.args \
                    and getattr(node.args[0], "op", None) == "placeholder":
                self.mutated.append(node.args[0].name)
        return gm.forward


def _call(fn, block_input):  # noqa: ANN001, ANN202
    img = block_input.clone()
    with torch.no_grad():
        out, _ = fn(img, torch.full((1, 8), 0.5), transformer_options={"x": 1})
    return img, out


def test_input_copying_block_leaves_inputs_untouched_and_computes_the_same():
    torch.manual_seed(0)
    block, x = MutatingBlock(), torch.randn(2, 8)
    img_eager, out_eager = _call(block, x)
    assert not torch.equal(img_eager, x)  # the bare block mutates its input (the case this module exists for)
    img, out = _call(InputCopyingBlock(block), x)
    assert torch.equal(img, x)
    assert torch.equal(out, out_eager)


def test_compiled_input_copying_block_has_no_input_mutation_in_its_graph():
    torch.manual_seed(0)
    block, x = MutatingBlock(), torch.randn(2, 8)
    bare, copying = InPlaceRecorder(), InPlaceRecorder()
    _call(torch.compile(block, backend=bare), x)
    img, out = _call(torch.compile(InputCopyingBlock(block), backend=copying), x)
    assert any("img" in name for name in bare.mutated)  # what makes inductor skip CUDA graphs
    assert copying.graphs and copying.mutated == []
    assert torch.equal(img, x)
    assert torch.allclose(out, _call(block, x)[1])


def test_output_copying_returns_fresh_tensors():
    kept = torch.ones(3)
    out = OutputCopying(lambda: (kept, {"a": kept}, 7))()
    assert torch.equal(out[0], kept) and out[0].data_ptr() != kept.data_ptr()
    assert out[1]["a"].data_ptr() != kept.data_ptr() and out[2] == 7
    assert clone_tensors([kept])[0].data_ptr() != kept.data_ptr()


@pytest.mark.parametrize(("backend", "mode", "graphs", "fallback"), [
    ("inductor", "reduce-overhead", True, ("inductor", "default")),
    ("inductor", "max-autotune", True, ("inductor", "max-autotune-no-cudagraphs")),
    ("cudagraphs", "default", True, ("inductor", "default")),
    ("inductor", "default", False, ("inductor", "default")),
    ("inductor", "max-autotune-no-cudagraphs", False, ("inductor", "max-autotune-no-cudagraphs")),
])
def test_settings_know_which_modes_record_cuda_graphs(backend, mode, graphs, fallback):
    settings = CompileSettings(backend=backend, mode=mode)
    assert settings.uses_cuda_graphs is graphs
    plain = settings.without_cuda_graphs()
    assert (plain.backend, plain.mode) == fallback and not plain.uses_cuda_graphs


class CompileRecorder:
    """Stands in for ``torch.compile``: records what would be compiled and with which options."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, module, **kwargs):  # noqa: ANN001, ANN204
        self.calls.append((module, kwargs))
        return module


@pytest.mark.parametrize("lowvram", [False, True])
def test_reduce_overhead_copies_block_inputs_unless_lowvram(tiny, monkeypatch, caplog, lowvram):
    recorder = CompileRecorder()
    monkeypatch.setattr(torch, "compile", recorder)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    owner = tiny.Owner(tiny.TinyDiT(depth=2))
    owner.model_lowvram = lowvram
    compiler = LazyCompiler(CompileSettings(mode="reduce-overhead", blocks_only=True))
    x, t = torch.randn(1, 24, 8), torch.tensor([1.0])
    with caplog.at_level(logging.WARNING, logger="comfy_int8_w8a8"):
        for _ in range(2):
            out = tiny.call_through(compiler, owner, x, t)
    assert torch.allclose(out, owner.apply_model(x, t))
    assert len(recorder.calls) == 5 and compiler.builds == 1  # two blocks, three modules around them, built once
    warned = [r for r in caplog.records if "only partly loaded on the GPU (lowvram)" in r.getMessage()]
    blocks = [(module, kwargs) for module, kwargs in recorder.calls if _compiled_block(module)]
    assert len(blocks) == 2
    for module, kwargs in blocks:
        graphs_on = kwargs.get("options", {}).get("triton.cudagraphs", False)
        assert graphs_on is not lowvram
        assert isinstance(module, InputCopyingBlock) is not lowvram
    assert len(warned) == (1 if lowvram else 0)
    # With graphs, each model call is one CUDA-graph generation (blocks' outputs stay valid through the call).
    assert len(marks) == (0 if lowvram else 2)


def _compiled_block(module: torch.nn.Module) -> bool:
    return type(getattr(module, "block", module)).__name__ == "Block"


def test_modules_around_the_blocks_compile_without_cuda_graphs_or_copies(tiny, monkeypatch):
    # A glue module runs a few small kernels per step: as a CUDA graph its replay bookkeeping cost more CPU time
    # than it saved. Compiled without graphs its outputs are ordinary tensors (nothing to copy out of a pool).
    recorder = CompileRecorder()
    monkeypatch.setattr(torch, "compile", recorder)
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(mode="reduce-overhead", blocks_only=True))
    tiny.call_through(compiler, owner, torch.randn(1, 24, 8), torch.tensor([1.0]))
    glue = {"diffusion_model.final_layer", "diffusion_model.img_in", "diffusion_model.time_in"}
    assert set(compiler.compiled_paths) == glue | {"diffusion_model.blocks.0"}
    for path in glue:
        standin = compiler._standins[path]
        assert not isinstance(standin.compiled, OutputCopying)
    for module, kwargs in recorder.calls:
        graphs_on = kwargs.get("options", {}).get("triton.cudagraphs", False) or kwargs.get("mode") is not None
        assert graphs_on is _compiled_block(module)
        assert isinstance(module, InputCopyingBlock) is _compiled_block(module)


def test_modules_around_the_blocks_as_cuda_graphs_copy_their_outputs(tiny, monkeypatch):
    # The A/B setting (glue_cuda_graphs): the final layer's output is the model's (the sampler keeps it across
    # calls); an embedder's output may be kept by model code too. Blocks' outputs stay in the graph pool.
    monkeypatch.setattr(torch, "compile", CompileRecorder())
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(mode="reduce-overhead", blocks_only=True), glue_cuda_graphs=True)
    tiny.call_through(compiler, owner, torch.randn(1, 24, 8), torch.tensor([1.0]))
    copied = {path for path, standin in compiler._standins.items() if isinstance(standin.compiled, OutputCopying)}
    assert copied == {"diffusion_model.final_layer", "diffusion_model.img_in", "diffusion_model.time_in"}


def test_whole_model_under_cuda_graphs_copies_its_output(tiny, monkeypatch):
    monkeypatch.setattr(torch, "compile", CompileRecorder())
    owner = tiny.Owner(tiny.TinyDiT(depth=1))
    compiler = LazyCompiler(CompileSettings(mode="reduce-overhead", blocks_only=False))
    tiny.call_through(compiler, owner, torch.randn(1, 24, 8), torch.tensor([1.0]))
    standin = compiler._standins["diffusion_model"]
    assert isinstance(standin.compiled, OutputCopying)
