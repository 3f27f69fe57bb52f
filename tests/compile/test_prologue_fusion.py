"""The compile pass that fuses an int8 layer's GELU / concatenated input into its quant (compile/prologue_fusion.py).

On the CPU both custom ops run the reference, so a compiled graph with the pass must give exactly the eager result;
the graph tests check which shapes of code the pass rewrites and which it must leave alone.
"""

import pytest
import torch
import torch.nn as nn

from comfy_int8_w8a8.compile.prologue_fusion import PrologueFusionPass, fuse_int8_prologues
from comfy_int8_w8a8.compile.settings import CompileSettings
from comfy_int8_w8a8.int8 import quantize_per_channel
from comfy_int8_w8a8.int8.kernels import custom_ops


class OpLinear(nn.Module):
    """Calls the triton backend's custom op directly (the CPU has no triton backend to route a layer there)."""

    def __init__(self, k: int, n: int, hadamard_group: int = 0) -> None:
        super().__init__()
        q, s = quantize_per_channel(torch.randn(n, k, dtype=torch.float64) / k**0.5)
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("bias", torch.randn(n))
        self.hadamard_group = hadamard_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = custom_ops.W8A8_OP(x.reshape(-1, x.shape[-1]), self.weight, self.weight_scale, self.bias, None,
                               self.hadamard_group)
        return y.reshape(*x.shape[:-1], -1)


class SingleBlock(nn.Module):
    """Flux's single block around its two linears: split the first's output, GELU the MLP half, concatenate."""

    def __init__(self, approximate: str = "tanh", cat_dim: int = 2) -> None:
        super().__init__()
        self.linear1 = OpLinear(32, 96)
        self.linear2 = OpLinear(32 + 64, 32)
        self.act = nn.GELU(approximate=approximate)
        self.cat_dim = cat_dim

    def forward(self, x: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qkv, mlp = torch.split(self.linear1(x), [32, 64], dim=-1)
        return self.linear2(torch.cat((attn, self.act(mlp)), self.cat_dim)), qkv


class Mlp(nn.Module):
    def __init__(self, hadamard_group: int = 0, keep_hidden: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(OpLinear(32, 128), nn.GELU(approximate="tanh"), OpLinear(128, 32, hadamard_group))
        self.keep_hidden = keep_hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.keep_hidden:
            return self.net(x)
        h = self.net[1](self.net[0](x))
        return self.net[2](h) + h[..., :32]  # the GELU output has a second user: no fusion


def _inputs(rows: int = 24):
    return torch.randn(1, rows, 32, dtype=torch.bfloat16), torch.randn(1, rows, 32, dtype=torch.bfloat16)


def _count(graph: torch.fx.Graph, target: object) -> int:
    return sum(node.target is target for node in graph.nodes)


def _dynamo_graph(module: nn.Module, *args: torch.Tensor) -> torch.fx.Graph:
    graphs = []

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=backend, fullgraph=True)(*args)
    return graphs[0].graph


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_single_block_cat_of_gelu_becomes_one_fused_op(approximate):
    block = SingleBlock(approximate).to(torch.bfloat16)
    graph = _dynamo_graph(block, *_inputs())
    assert fuse_int8_prologues(graph) == 1
    assert _count(graph, custom_ops.W8A8_CAT_ACT_OP) == 1 and _count(graph, custom_ops.W8A8_OP) == 1
    assert not any(node.target in (torch.cat, torch._C._nn.gelu) for node in graph.nodes)


def test_mlp_gelu_becomes_one_fused_op():
    graph = _dynamo_graph(Mlp().to(torch.bfloat16), _inputs()[0])
    assert fuse_int8_prologues(graph) == 1
    fused = next(n for n in graph.nodes if n.target is custom_ops.W8A8_CAT_ACT_OP)
    assert fused.args[0] is None and fused.args[2] == 1  # no concatenation; tanh GELU


@pytest.mark.parametrize("module", [Mlp(hadamard_group=64), Mlp(keep_hidden=True), SingleBlock(cat_dim=1)],
                         ids=["rotated layer", "gelu output used twice", "cat not on the last dim"])
def test_pass_leaves_other_shapes_alone(module):
    x, attn = _inputs()
    if isinstance(module, SingleBlock):  # cat on the token dim: give attn the width of the MLP half
        attn = torch.randn(1, 24, 64, dtype=torch.bfloat16)
        module.linear2 = OpLinear(64, 32)
    graph = _dynamo_graph(module.to(torch.bfloat16), *((x, attn) if isinstance(module, SingleBlock) else (x,)))
    assert fuse_int8_prologues(graph) == 0
    assert _count(graph, custom_ops.W8A8_CAT_ACT_OP) == 0


@pytest.fixture
def no_compile_cache():
    # A cached graph skips the passes (its code already holds their result): count rewrites on fresh compiles.
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(force_disable_caches=True):
        yield


def test_compiled_with_the_node_settings_fuses_and_matches_eager_exactly(no_compile_cache):
    block = SingleBlock().to(torch.bfloat16)
    mlp = Mlp().to(torch.bfloat16)
    x, attn = _inputs(40)
    y, qkv = block(x, attn)
    eager = mlp(y + qkv)
    kwargs = CompileSettings(dynamic=True).torch_compile_kwargs(None)
    fusion = kwargs["options"]["pre_grad_custom_pass"]
    compiled_block = torch.compile(block, **kwargs)
    kwargs = CompileSettings(dynamic=True).torch_compile_kwargs(None)
    compiled_mlp = torch.compile(mlp, **kwargs)
    y, qkv = compiled_block(x, attn)
    out = compiled_mlp(y + qkv)
    assert fusion.rewrites == 1 and kwargs["options"]["pre_grad_custom_pass"].rewrites == 1
    assert torch.equal(out, eager)  # on the CPU the fused op computes the unfused reference
    assert isinstance(fusion, PrologueFusionPass) and fusion.uuid()
