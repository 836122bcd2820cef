"""Item assignment written out: ``x[key] = v`` on an activation (MViTv2's relative-position terms added into a block of
the attention scores; a feature map copied into a zero tensor) becomes ``x2 = assign(x, key, v)``.

With a constant ``key`` (numbers and slices, or values of shapes) the result is a selection between ``x`` and ``v``
by a constant mask: linear in both, applied unchanged at every step like ``masked_fill`` with a constant mask. The
rewrite is exact only where the assignment writes into nothing else: ``x`` is not a view of another tensor, a
parameter, a buffer or an input, and no view of ``x`` is read after the assignment (it would see the new values).
Other assignments stay as they are and are listed.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from snnconvert.convert.frontend import depends_on_values
from snnconvert.convert.passes.normalize import finish_pass, nodes_in
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["assign", "functional_item_assignment"]

#: tensor methods and functions whose result can share memory with their first argument
_VIEW_METHODS = frozenset({"view", "view_as", "reshape", "reshape_as", "transpose", "permute", "expand", "expand_as",
                           "narrow", "select", "squeeze", "unsqueeze", "flatten", "unflatten", "split", "chunk",
                           "unbind", "tensor_split", "contiguous", "detach", "t", "movedim", "swapaxes", "swapdims",
                           "diagonal", "unfold", "as_strided", "real", "imag", "view_as_real", "float", "type_as",
                           "to", "type"})
_VIEW_FUNCTIONS = frozenset({operator.getitem, torch.reshape, torch.transpose, torch.permute, torch.narrow,
                             torch.select, torch.squeeze, torch.unsqueeze, torch.flatten, torch.split, torch.chunk,
                             torch.unbind, torch.tensor_split, torch.movedim, torch.swapaxes, torch.swapdims,
                             torch.diagonal, torch.t, torch.detach, torch.as_strided})


def assign(x: torch.Tensor, key, value) -> torch.Tensor:
    """``x`` with ``x[key] = value``, out of place."""
    out = x.clone()
    out[key] = value
    return out


def _is_view(node: fx.Node) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    return node.op == "call_function" and node.target in _VIEW_FUNCTIONS


def _aliases(node: fx.Node, before: int, order: dict[fx.Node, int]) -> set[fx.Node]:
    """``node`` and every view of it (views of views included) made before position ``before``."""
    found, todo = {node}, [node]
    while todo:
        for user in todo.pop().users:
            if user not in found and order[user] < before and _is_view(user) and user.args and user.args[0] in found:
                found.add(user)
                todo.append(user)
    return found


def _why_not(node: fx.Node, order: dict[fx.Node, int], memo: dict) -> str | None:
    """Why the assignment ``node`` (``operator.setitem(x, key, v)``) cannot be written out (None: it can)."""
    x, key, _ = node.args
    if not isinstance(x, fx.Node) or x.op not in ("call_function", "call_method", "call_module"):
        return "it writes into an input, a parameter or a buffer"
    if _is_view(x):
        return "it writes into a view of another tensor"
    if any(depends_on_values(k, memo) for k in nodes_in(key)):
        return "its index is computed from the input"
    aliases = _aliases(x, order[node], order)
    for alias in aliases - {x}:
        if any(u not in aliases and u is not node and order[u] > order[node] for u in alias.users):
            return "a view of the tensor made before it is read after it (it would see the new values)"
    return None


def functional_item_assignment(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Rewrite each ``x[key] = v`` on an input-dependent tensor into ``x2 = assign(x, key, v)``; later users of ``x``
    read ``x2``. Assignments that cannot be written out exactly are recorded in the report entry's ``skipped`` with
    why, and listed by the support check.

    Before: ``h = relu(conv(x)); h[:, 0] = 0; y = fc(h)``  After: ``h = relu(conv(x)); h2 = assign(h, (.., 0), 0);
    y = fc(h2)``
    """
    entry = PassEntry(name="functional_item_assignment", modified=False)
    memo: dict = {}
    setitems = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.setitem]
    if not setitems:
        return finish_pass(gm, entry, report)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in setitems:
        x, key, value = node.args
        if not (depends_on_values(x, memo) or depends_on_values(value, memo)):
            continue  # a constant filled in (a mask built from shapes): computed once, as it is
        why = _why_not(node, order, memo)
        if why is not None:
            entry.skipped[node.name] = why
            node.meta["snnconvert_why"] = why
            continue
        later = [u for u in x.users if u is not node and order[u] > order[node]]
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(assign, (x, key, value))
        new.meta = dict(x.meta)
        for user in later:
            user.replace_input_with(x, new)
        gm.graph.erase_node(node)
        entry.counts["setitem"] = entry.counts.get("setitem", 0) + 1
        entry.nodes.append(new.name)
        entry.modified = True
    return finish_pass(gm, entry, report)
