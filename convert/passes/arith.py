"""Fused arithmetic written out: ``addmm``, ``baddbmm``, ``addbmm``, ``addmv``, ``addcmul``, ``addcdiv``, ``lerp``.

Each of these computes a sum of an input and a scaled product (or, for ``lerp``, an interpolation). Written out as
plain additions, scalings and products, the support check then treats every piece as it treats the hand-written
form: a product with a constant operand is linear (GPT-2's ``Conv1D``: ``torch.addmm(bias, x, weight)``), a product
of two activations a graded unit (method.md §5.2).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from snnconvert.convert.passes.normalize import _later_users, finish_pass
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult


def _matmul(graph: fx.Graph, a, b) -> fx.Node:
    return graph.call_function(operator.matmul, (a, b))


def _batch_sum(graph: fx.Graph, a, b) -> fx.Node:  # addbmm: the products of the batch of matrices, summed
    return graph.call_function(torch.sum, (graph.call_function(operator.matmul, (a, b)), 0))


def _mul(graph: fx.Graph, a, b) -> fx.Node:
    return graph.call_function(operator.mul, (a, b))


def _div(graph: fx.Graph, a, b) -> fx.Node:
    return graph.call_function(operator.truediv, (a, b))


#: name -> (product of the two operands, names of the call's parameters, names of its scale keywords)
_FORMS = {
    "addmm": (_matmul, ("input", "mat1", "mat2"), ("beta", "alpha")),
    "baddbmm": (_matmul, ("input", "batch1", "batch2"), ("beta", "alpha")),
    "addbmm": (_batch_sum, ("input", "batch1", "batch2"), ("beta", "alpha")),
    "addmv": (_matmul, ("input", "mat", "vec"), ("beta", "alpha")),
    "addcmul": (_mul, ("input", "tensor1", "tensor2"), (None, "value")),
    "addcdiv": (_div, ("input", "tensor1", "tensor2"), (None, "value")),
    "lerp": (None, ("input", "end", "weight"), (None, None)),
}
_FUNCTIONS = {getattr(torch, name): name for name in _FORMS}
#: the fused-arithmetic tensor methods written in place, which :func:`decompose_fused_arithmetic` makes out of place
FUSED_INPLACE_METHODS = frozenset(f"{name}_" for name in _FORMS)


def _form(node: fx.Node) -> tuple[str, bool] | None:
    """(name, in place) of a fused-arithmetic call, else None. A call with ``out=`` stays as it is (listed)."""
    if "out" in node.kwargs:
        return None
    if node.op == "call_function" and node.target in _FUNCTIONS:
        return _FUNCTIONS[node.target], False
    if node.op == "call_method" and isinstance(node.target, str):
        name = node.target.removesuffix("_")
        if name in _FORMS:
            return name, node.target.endswith("_")
    return None


def _scaled(graph: fx.Graph, value, scale):
    """``scale * value``, with no node for a scale of one."""
    return value if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale == 1 else \
        graph.call_function(operator.mul, (value, scale))


def decompose_fused_arithmetic(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Write out every fused-arithmetic call (as a function or a tensor method, in place or not).

    ``addmm/baddbmm/addmv(input, a, b, beta=β, alpha=α)`` → ``β·input + α·(a @ b)`` (``addbmm`` sums the batch of
    products over dim 0); ``addcmul/addcdiv(input, a, b, value=v)`` → ``input + v·(a * b)`` / ``input + v·(a / b)``;
    ``lerp(input, end, w)`` → ``input + w·(end − input)``. With β = 0 the input is left out, as torch ignores it
    (NaN included). In-place methods (``x.addcmul_(a, b)``) also redirect later users of ``x`` to the result.

    Before: ``y = torch.addmm(self.bias, x, self.weight)``  After: ``y = self.bias + x @ self.weight``
    """
    entry = PassEntry(name="decompose_fused_arithmetic", modified=False)
    graph = gm.graph
    for node in list(graph.nodes):
        found = _form(node)
        if found is None:
            continue
        name, inplace = found
        product, params, (beta_key, alpha_key) = _FORMS[name]
        # a method's receiver is its ``input``: the positional operands line up with the function's either way
        values = {**dict(zip(params, node.args)), **{k: v for k, v in node.kwargs.items() if k in params}}
        if len(node.args) > len(params) or any(p not in values for p in params):
            continue  # positional scales (deprecated spellings) or missing operands: left as they are (listed)
        source, a, b = (values[p] for p in params)
        beta = node.kwargs.get(beta_key, 1) if beta_key else 1
        alpha = node.kwargs.get(alpha_key, 1) if alpha_key else 1
        last = node.prev  # the written-out nodes go between it and node
        with graph.inserting_before(node):
            if name == "lerp":
                out = graph.call_function(operator.add, (source, _mul(graph, b, graph.call_function(
                    operator.sub, (a, source)))))
            else:
                term = _scaled(graph, product(graph, a, b), alpha)
                out = term if isinstance(beta, (int, float)) and beta == 0 else graph.call_function(
                    operator.add, (_scaled(graph, source, beta), term))
        inner = {k: v for k, v in node.meta.items() if k != "tensor_meta"}  # shapes of the pieces may differ
        new = last.next
        while new is not node:
            new.meta = dict(inner)
            new = new.next
        out.meta = dict(node.meta)
        later = _later_users(gm, node, source) if inplace else []
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        for user in later:
            user.replace_input_with(source, out)
        spelling = f"Tensor.{node.target}" if node.op == "call_method" else f"torch.{name}"
        entry.counts[spelling] = entry.counts.get(spelling, 0) + 1
        entry.nodes.append(out.name)
        entry.modified = True
    return finish_pass(gm, entry, report)

