"""Piecewise functions written with a selection: ``torch.where(x > t, x, log1p(exp(x)))`` (the dynamo exporter's
Softplus), ``torch.where(x > 0, x, 0.1 * x)``, ``x.masked_fill(x.abs() < l, 0)`` (Hardshrink). A selection whose
mask is computed from the input is not linear, and its parts (comparisons, masks) are not convertible one by one;
but when the mask and both branches are computed from one tensor by known element-wise operations, the whole
region is one function of that tensor: it becomes one module, which the conversion runs as a graded unit (exact on
decoded values, method.md §5.1). A normalisation pass (same signature and report entry as those of
``normalize.py``)."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.frontend import depends_on_values
from snnconvert.convert.passes.normalize import finish_pass, unique_name
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["PiecewiseFunction", "fuse_piecewise_functions"]

#: selections whose mask argument (position, keyword) makes them piecewise
_SELECTIONS = {torch.where: (0, "condition"), torch.masked_fill: (1, "mask"), "masked_fill": (1, "mask"),
               "where": (0, "condition")}
#: element-wise operations a piecewise region may hold (comparisons, logic, arithmetic, casts, smooth functions)
_ELEMENTWISE_FUNCTIONS = frozenset({
    operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne, operator.and_, operator.or_,
    operator.xor, operator.invert, operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
    operator.pow, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.logical_and, torch.logical_or,
    torch.logical_not, torch.logical_xor, torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs,
    torch.sign, torch.exp, torch.expm1, torch.log, torch.log1p, torch.sqrt, torch.rsqrt, torch.pow, torch.square,
    torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.where, torch.masked_fill, torch.zeros_like,
    torch.ones_like, torch.full_like, F.softplus, F.sigmoid, F.tanh,
})
_ELEMENTWISE_METHODS = frozenset({
    "gt", "lt", "ge", "le", "eq", "ne", "logical_and", "logical_or", "logical_not", "add", "sub", "mul", "div",
    "neg", "abs", "sign", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "pow", "square", "sigmoid", "tanh",
    "clamp", "clip", "where", "masked_fill", "float", "to", "type_as", "bool",
})
#: element-wise modules a region may hold (a ReLU is not one of them: it stays a spiking neuron)
_ELEMENTWISE_MODULES = (nn.Softplus, nn.Sigmoid, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.SiLU, nn.GELU, nn.Mish,
                        nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.Tanhshrink,
                        nn.LogSigmoid, nn.Threshold)
#: the largest region fused (nodes): a selection far from its source is left to the support check
_MAX_NODES = 32


class PiecewiseFunction(nn.Module):
    """An element-wise function of one tensor, written with a selection (its region of the traced graph, as a
    ``GraphModule`` of one input): converted as a graded unit."""

    def __init__(self, region: fx.GraphModule, label: str) -> None:
        super().__init__()
        self.region, self.label = region, label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.region(x)

    def extra_repr(self) -> str:
        return self.label


def _elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ELEMENTWISE_MODULES) and len(node.args) == 1
    return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS


def _dynamic_selection(node: fx.Node, memo: dict) -> bool:
    """A ``where`` / ``masked_fill`` whose mask is computed from the input's values."""
    if node.op not in ("call_function", "call_method") or node.target not in _SELECTIONS:
        return False
    position, name = _SELECTIONS[node.target]
    mask = node.args[position] if len(node.args) > position else node.kwargs.get(name)
    return isinstance(mask, fx.Node) and depends_on_values(mask, memo)


def _region(gm: fx.GraphModule, sink: fx.Node, order: dict[fx.Node, int], memo: dict
            ) -> tuple[fx.Node, list[fx.Node]] | None:
    """The single tensor ``sink`` is computed from and the element-wise nodes between them (in graph order), or
    None: the input-dependent inputs are followed back, latest node first, until one node remains; every node
    passed is element-wise; other arguments are constants (``get_attr``) or computed from the region's metadata
    alone (``torch.full_like(x, 0.5)``)."""
    frontier, region = {sink}, set()
    while len(frontier) > 1 or sink in frontier:
        node = max(frontier, key=order.__getitem__)
        if not _elementwise(gm, node) or len(region) >= _MAX_NODES:
            return None
        frontier.discard(node)
        region.add(node)
        frontier.update(a for a in node.all_input_nodes if depends_on_values(a, memo))
        if not frontier:
            return None
    (root,) = frontier
    pending = [a for n in region for a in n.all_input_nodes if a not in region and a is not root]
    while pending:  # the arguments that are not input-dependent: constants, or metadata of the region's tensors
        arg = pending.pop()
        if arg.op == "get_attr" or arg in region:
            continue
        if depends_on_values(arg, memo) or not _elementwise(gm, arg) or len(region) >= _MAX_NODES:
            return None
        region.add(arg)
        pending.extend(a for a in arg.all_input_nodes if a not in region and a is not root)
    return root, sorted(region, key=order.__getitem__)


def _region_module(gm: fx.GraphModule, root: fx.Node, nodes: list[fx.Node], sink: fx.Node) -> fx.GraphModule:
    """``nodes`` as a graph of one input (``root``), returning ``sink``; constants read from ``gm``."""
    graph, env = fx.Graph(), {}
    env[root] = graph.placeholder("x")
    for node in gm.graph.nodes:
        if node.op == "get_attr" and any(node in n.all_input_nodes for n in nodes):
            env[node] = graph.node_copy(node)
    # a module of the region is the same object as in gm (which keeps it where other nodes still call it)
    for node in nodes:
        env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(env[sink])
    return fx.GraphModule(gm, graph)


def fuse_piecewise_functions(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Replace every selection with a mask computed from the input (``where``, ``masked_fill``) whose mask and
    branches come from one tensor through element-wise operations by one :class:`PiecewiseFunction` module of that
    tensor (the conversion makes it a graded unit). Selections of another form stay, and the support check lists
    them.

    Before: ``m = x > 20; y = where(m, x, log1p(exp(x)))``  After: ``y = piecewise(x)``
    """
    entry = PassEntry(name="fuse_piecewise_functions", modified=False)
    memo: dict = {}
    for sink in list(gm.graph.nodes):
        if sink.graph is not gm.graph or not _dynamic_selection(sink, memo):
            continue
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        found = _region(gm, sink, order, memo)
        if found is None:
            continue
        root, nodes = found
        name = unique_name(gm, f"{sink.name}_piecewise")
        label = ", ".join(str(getattr(n.target, "__name__", n.target)) for n in nodes)
        gm.add_submodule(name, PiecewiseFunction(_region_module(gm, root, nodes, sink), label))
        with gm.graph.inserting_after(sink):
            new = gm.graph.call_module(name, (root,))
        new.meta = dict(sink.meta)
        sink.replace_all_uses_with(new)
        for node in reversed(nodes):  # the region's nodes nobody else reads
            if not node.users:
                gm.graph.erase_node(node)
        memo.clear()
        entry.counts["piecewise"] = entry.counts.get("piecewise", 0) + 1
        entry.nodes.append(new.name)
        entry.modified = True
    return finish_pass(gm, entry, report)
