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
from snnconvert.convert.passes.arith import FUSED_INPLACE_METHODS
from snnconvert.convert.passes.normalize import finish_pass, nodes_in
from snnconvert.convert.passes.spellings import first_input
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["assign", "functional_item_assignment", "out_of_place_methods"]

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


#: in-place tensor methods left to a later pass (canonicalize_activations counts the ReLU spellings,
#: decompose_fused_arithmetic its own) or without an out-of-place twin of the same name; they are still checked for
#: writes into views
_KEPT_METHODS = frozenset({"relu_", "requires_grad_", "share_memory_", "fill_", "zero_", "copy_",
                           *FUSED_INPLACE_METHODS})


def _mutated(node: fx.Node) -> fx.Node | None:
    """The tensor an in-place op writes into (its first argument), or None when ``node`` does not write in place:
    a tensor method ending in ``_`` (``x.add_(y)``), a torch function ending in ``_`` (``torch.relu_``), a call with
    ``inplace=True``, a module with ``inplace = True``."""
    if node.op == "call_method":
        inplace = isinstance(node.target, str) and node.target.endswith("_") and not node.target.startswith("_")
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        inplace = node.kwargs.get("inplace") is True or (name.endswith("_") and not name.startswith("_")
                                                          and node.target is not operator.setitem)
    elif node.op == "call_module":
        inplace = getattr(node.graph.owning_module.get_submodule(node.target), "inplace", False) is True
    else:
        inplace = False
    target = first_input(node)
    return target if inplace and isinstance(target, fx.Node) else None


def _writes_through(node: fx.Node, x: fx.Node, order: dict[fx.Node, int]) -> str | None:
    """Why the in-place op ``node`` on ``x`` writes into a tensor other than ``x`` that is read after it (None: every
    later reader reads ``x`` itself, and redirecting them to an out-of-place result is exact)."""
    base = x
    while _is_view(base) and isinstance(base.args[0], fx.Node):
        base = base.args[0]
    for alias in _aliases(base, order[node], order) - {x}:
        if any(order[u] > order[node] for u in alias.users):
            what = ("a view of a tensor that is read" if base is not x
                    else "a tensor whose view (made before it) is read")
            return f"in-place {_op_name(node)} writes into {what} after it"
    return None


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{type(node.graph.owning_module.get_submodule(node.target)).__name__}(inplace=True)"
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))


def out_of_place_methods(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Make in-place tensor methods out of place: ``x.add_(y)`` (written as a statement, its result unused) becomes
    ``x2 = x.add(y)`` and every later reader of ``x`` reads ``x2``, as the ANN saw it (the SNN's stateful units keep
    tensors across steps, so a write into one must not happen behind their back). An in-place op (any spelling)
    whose write reaches a tensor read later under another name, i.e. a view of it or the tensor behind a view
    (``h[:, :2].relu_()`` then ``conv(h)``), is not followed: recorded in the entry's ``skipped`` and listed by the
    support check with how to write it (``h[:, :2] = F.relu(h[:, :2])`` is written out exactly). Writes into
    tensors computed from parameters or shapes alone are left as they are (evaluated once, in graph order).

    Before: ``out = bn(conv(h)); out.add_(h); y = relu(out)``  After: ``out = bn(conv(h)); add = out.add(h);
    y = relu(add)``
    """
    entry = PassEntry(name="out_of_place_methods", modified=False)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    memo: dict = {}
    for node in list(gm.graph.nodes):
        x = _mutated(node)
        if x is None or not depends_on_values(node, memo):
            continue  # a constant (SwinV2 zeroes part of a copied bias in place): computed once, in graph order
        why = _writes_through(node, x, order)
        if why is not None:
            entry.skipped[node.name] = why
            node.meta["snnconvert_inplace_why"] = why
            continue
        twin = node.target[:-1] if node.op == "call_method" else None
        if twin is None or node.target in _KEPT_METHODS or not hasattr(torch.Tensor, twin):
            continue
        later = [u for u in x.users if u is not node and order[u] > order[node]]
        node.target = twin
        for user in later:
            user.replace_input_with(x, node)
        entry.counts[f"Tensor.{twin}_"] = entry.counts.get(f"Tensor.{twin}_", 0) + 1
        entry.nodes.append(node.name)
        entry.modified = True
    return finish_pass(gm, entry, report)
