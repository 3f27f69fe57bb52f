"""An inductor graph pass that feeds an int8 layer's GELU (and the concatenation around it) straight into the layer's
activation quant, instead of storing the 16-bit input and reading it back.

In a compiled DiT the input of many int8 layers is built by elementwise code inductor fuses into one kernel:
``linear2(cat(attn, gelu(mlp)))`` in Flux's single blocks, ``down(gelu(up(x)))`` in the MLPs of Flux, Wan, SD3 and
others. That kernel writes the 16-bit input (4608 x 15360 bf16: 141 MB) and the quant kernel reads it back. This pass
rewrites ``w8a8_triton(reshape(cat([a, gelu(b)], -1)))`` and ``w8a8_triton(reshape(gelu(b)))`` into one
``w8a8_cat_act_triton(a, b, act)`` call whose quant kernel (``int8/kernels/triton_quant_fused.py``) reads ``a`` and
``b`` and applies the GELU itself.

It runs on the pre-grad graph (torch-level calls as dynamo recorded them): after decomposition GELU is a dozen
elementwise nodes, before it one call. A match needs every intermediate to be used only on this path, the layer to
have no smoothing or rotation, and the concatenation to be along the last dimension; anything else is left as is.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass

from ..int8.kernels import custom_ops

__all__ = ["PrologueFusionPass", "fuse_int8_prologues"]

log = logging.getLogger("comfy_int8_w8a8")

_GELUS = (torch._C._nn.gelu, F.gelu)
_CATS = (torch.cat, torch.concat, torch.concatenate)
_VIEWS = ("reshape", "view")
_ACT_CODES = {"tanh": 1, "none": 2}  # F.gelu's approximate -> the op's activation code (int8/activation.py)
_LINEAR_ARGS = ("x", "weight", "weight_scale", "bias", "smooth", "hadamard_group")


def _sole_user(node: fx.Node, user: fx.Node) -> bool:
    return isinstance(node, fx.Node) and len(node.users) == 1 and user in node.users


def _value(node: fx.Node) -> object:
    return node.meta.get("example_value", node.meta.get("val"))


def _linear_args(node: fx.Node) -> dict | None:
    if node.op != "call_function" or node.target is not custom_ops.W8A8_OP:
        return None
    args = dict(zip(_LINEAR_ARGS, node.args))
    args.update(node.kwargs)
    return args if set(args) == set(_LINEAR_ARGS) else None


def _gelu_code(node: fx.Node, user: fx.Node) -> int | None:
    """The activation code when ``node`` is a GELU call used only by ``user``; else None."""
    if node.op != "call_function" or node.target not in _GELUS or not _sole_user(node, user):
        return None
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return _ACT_CODES.get(approximate)


def _cat_operands(node: fx.Node, user: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(a, gelu_node)`` when ``node`` is ``cat([a, gelu(...)], last dim)`` used only by ``user``."""
    if node.op != "call_function" or node.target not in _CATS or not _sole_user(node, user):
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    value = _value(node)
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 2 or not isinstance(dim, int) or value is None:
        return None
    if dim not in (-1, value.dim() - 1) or not all(isinstance(t, fx.Node) for t in tensors):
        return None
    return tensors[0], tensors[1]


def _match(node: fx.Node) -> tuple[fx.Node | None, fx.Node, int, list[fx.Node]] | None:
    """``(a, b, act, dead)`` for a rewritable int8 linear ``node``: ``dead`` are the nodes the rewrite orphans."""
    args = _linear_args(node)
    if args is None or args["smooth"] is not None or args["hadamard_group"] != 0:
        return None
    dead: list[fx.Node] = []
    user, src = node, args["x"]
    while isinstance(src, fx.Node) and src.op == "call_method" and src.target in _VIEWS and _sole_user(src, user):
        dead.append(src)
        user, src = src, src.args[0]
    if not isinstance(src, fx.Node):
        return None
    act = _gelu_code(src, user)
    if act is not None:
        return None, src.args[0], act, [*dead, src]
    operands = _cat_operands(src, user)
    if operands is None:
        return None
    a, gelu = operands
    act = _gelu_code(gelu, src)
    if act is None:
        return None
    a_value, b_value = _value(a), _value(gelu.args[0])
    if a_value is None or b_value is None or a_value.dtype != b_value.dtype:
        return None
    return a, gelu.args[0], act, [*dead, src, gelu]


def fuse_int8_prologues(graph: fx.Graph) -> int:
    """Rewrite every matching int8 linear in ``graph`` (in place); returns how many were rewritten."""
    rewrites = 0
    for node in list(graph.nodes):
        match = _match(node)
        if match is None:
            continue
        a, b, act, dead = match
        args = _linear_args(node)
        with graph.inserting_before(node):
            fused = graph.call_function(custom_ops.W8A8_CAT_ACT_OP,
                                        (a, b, act, args["weight"], args["weight_scale"], args["bias"]))
        fused.meta.update(node.meta)
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        for orphan in dead:  # consumer first: each is unused once the one after it is gone
            graph.erase_node(orphan)
        rewrites += 1
    if rewrites:
        graph.lint()
        log.debug("INT8 Lazy Torch Compile: fused the input activation of %d int8 layer(s) into their quant.", rewrites)
    return rewrites


class PrologueFusionPass(CustomGraphPass):
    """``torch._inductor.config.pre_grad_custom_pass``: runs :func:`fuse_int8_prologues`. ``uuid`` names this
    version for inductor's graph cache (a pass without one turns the cache off)."""

    VERSION = "comfy_int8_prologue_fusion_v1"

    def __init__(self) -> None:
        self.rewrites = 0

    def __call__(self, graph: fx.Graph) -> None:
        self.rewrites += fuse_int8_prologues(graph)

    def uuid(self) -> str:
        return self.VERSION
