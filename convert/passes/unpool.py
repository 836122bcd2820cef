"""Max-unpooling (SegNet, DeconvNet): ``p, i = max_pool(a, return_indices=True); ...; max_unpool(y, i)``.

The indices are integers computed from the pool's input: no stream can carry them. The pass gives the pool's values a
plain max-pool (handled as every max-pool is) and turns each unpooling into one function of two float tensors,
:func:`max_unpool_at` ``(y, a)``, which recomputes the indices from ``a``. Downstream of a neuron that is a graded
unit (method.md §5.1): its decoded output after every step is exactly the unpooling of the decoded ``y`` at the
positions of the maxima of the decoded ``a`` (they may move while ``a``'s running average settles).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.passes.normalize import finish_pass, nodes_in, unique_name
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["max_unpool_at", "pair_max_unpooling"]

_POOLS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.max_pool1d_with_indices: 1,
          F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3}
_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_UNPOOLS = {F.max_unpool1d: 1, F.max_unpool2d: 2, F.max_unpool3d: 3}
_UNPOOL_MODULES = {nn.MaxUnpool1d: 1, nn.MaxUnpool2d: 2, nn.MaxUnpool3d: 3}
_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_UNPOOL_PARAMS = ("input", "indices", "kernel_size", "stride", "padding", "output_size")
#: output_size given as the pool input's own size (``x.size()``): read from ``a`` at run time
SOURCE_SIZE = "source"


def max_unpool_at(values: torch.Tensor, source: torch.Tensor, dims: int, pool: tuple, unpool: tuple,
                  output_size=None) -> torch.Tensor:
    """``max_unpool(values, indices)`` with the indices of ``max_pool(source, *pool)``: the unpooling of SegNet's
    decoder as one function of two float tensors. ``pool``: (kernel_size, stride, padding, dilation, ceil_mode);
    ``unpool``: (kernel_size, stride, padding); ``output_size``: None (torch's default), a size, or
    :data:`SOURCE_SIZE` (``source``'s spatial size)."""
    _, indices = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1](source, *pool, return_indices=True)
    size = tuple(source.shape[-dims:]) if output_size == SOURCE_SIZE else output_size
    return (F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)[dims - 1](values, indices, *unpool, output_size=size)


def _named(node: fx.Node, params: tuple[str, ...]) -> dict:
    return {**dict(zip(params, node.args)), **node.kwargs}


def _pool(gm: fx.GraphModule, node) -> tuple[int, fx.Node, tuple] | None:
    """(dims, input, (kernel, stride, padding, dilation, ceil_mode)) of a max-pool call returning indices."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module" and type(gm.get_submodule(node.target)) in _POOL_MODULES:
        m = gm.get_submodule(node.target)
        if not m.return_indices or len(node.args) != 1 or node.kwargs:
            return None
        return _POOL_MODULES[type(m)], node.args[0], (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if node.op == "call_function" and node.target in _POOLS:
        named = _named(node, _POOL_PARAMS)
        if not (named.get("return_indices") or "with_indices" in node.target.__name__):
            return None
        kernel = named["kernel_size"]
        params = (kernel, named.get("stride") or kernel, named.get("padding", 0), named.get("dilation", 1),
                  named.get("ceil_mode", False))
        if nodes_in(params):
            return None  # pooling parameters computed in the graph
        return _POOLS[node.target], named["input"], params
    return None


def _unpool(gm: fx.GraphModule, node: fx.Node) -> tuple[int, fx.Node, fx.Node, tuple, object] | None:
    """(dims, values, indices, (kernel, stride, padding), output_size) of a max-unpool call, else None."""
    if node.op == "call_module" and type(gm.get_submodule(node.target)) in _UNPOOL_MODULES:
        m = gm.get_submodule(node.target)
        named = _named(node, ("input", "indices", "output_size"))
        return (_UNPOOL_MODULES[type(m)], named.get("input"), named.get("indices"), (m.kernel_size, m.stride,
                m.padding), named.get("output_size"))
    if node.op == "call_function" and node.target in _UNPOOLS:
        named = _named(node, _UNPOOL_PARAMS)
        return (_UNPOOLS[node.target], named.get("input"), named.get("indices"),
                (named.get("kernel_size"), named.get("stride"), named.get("padding", 0)), named.get("output_size"))
    return None


def _output_size(value, source: fx.Node):
    """``output_size`` as :func:`max_unpool_at` takes it: None, a constant, :data:`SOURCE_SIZE` for ``source``'s own
    size (``x.size()``, ``x.shape``, ``x.size()[-2:]``); ``False`` for one computed otherwise (left listed)."""
    if value is None or not nodes_in(value):
        return value
    size = value
    trailing = isinstance(size, fx.Node) and size.op == "call_function" and size.target is operator.getitem and \
        isinstance(size.args[1], slice) and size.args[1].stop is None and size.args[1].step is None
    if trailing:
        size = size.args[0]  # x.size()[-2:]: the trailing dims are the same
    if isinstance(size, (list, tuple)):  # [x.size(2), x.size(3)], [x.shape[-2], x.shape[-1]]
        meta = source.meta.get("tensor_meta")
        rank = len(meta.shape) if hasattr(meta, "shape") else None
        dims = [_dim_of(item, source) for item in size]
        if None in dims or not dims:
            return False
        trailing = list(range(-len(dims), 0))  # the last dims, in order (counted from the end without a rank)
        return SOURCE_SIZE if [d if rank is None else d - rank * (d >= 0) for d in dims] == trailing else False
    return SOURCE_SIZE if _is_size_of(size, source) else False


def _dim_of(item, source: fx.Node) -> int | None:
    """``i`` when ``item`` reads ``source.size(i)``, ``source.shape[i]`` or ``source.size()[i]``, else None."""
    if not isinstance(item, fx.Node):
        return None
    if item.op == "call_method" and item.target == "size" and len(item.args) == 2 and item.args[0] is source:
        return item.args[1] if isinstance(item.args[1], int) else None
    if item.op == "call_function" and item.target is operator.getitem and isinstance(item.args[1], int):
        return item.args[1] if _is_size_of(item.args[0], source) else None
    return None


def _is_size_of(value, source: fx.Node) -> bool:
    """Whether ``value`` reads ``source``'s whole size: ``source.size()`` or ``source.shape``."""
    return isinstance(value, fx.Node) and (
        (value.op == "call_method" and value.target == "size" and value.args == (source,)) or
        (value.op == "call_function" and value.target is getattr and value.args == (source, "shape")))


def pair_max_unpooling(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Turn every ``max_unpool(y, indices)`` whose indices come from a max-pool of ``a`` into
    ``max_unpool_at(y, a, ...)``; the pool then gives its values by a plain max-pool of ``a``. An index read for
    anything else, or an ``output_size`` computed otherwise than as the pool input's size, leaves the calls as they
    are (the support check lists them).

    Before: ``p, i = pool(a); y = f(p); u = unpool(y, i)``
    After:  ``p = pool_values(a); y = f(p); u = max_unpool_at(y, a, 2, (2, 2, 0, 1, False), (2, 2, 0))``
    """
    entry = PassEntry(name="pair_max_unpooling", modified=False)
    graph = gm.graph
    for node in list(graph.nodes):
        found = _unpool(gm, node)
        if found is None:
            continue
        dims, values, indices, unpool, output_size = found
        selects = isinstance(indices, fx.Node) and indices.op == "call_function" and \
            indices.target is operator.getitem and indices.args[1] == 1
        pool = _pool(gm, indices.args[0]) if selects else None
        if pool is None or pool[0] != dims or nodes_in(unpool):
            continue
        size = _output_size(output_size, pool[1])
        if size is False:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(max_unpool_at, (values, pool[1], dims, pool[2], unpool),
                                      {"output_size": size} if size is not None else {})
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        for read in nodes_in(output_size):  # x.size() read for the output size
            _erase_unused(graph, read)
        if not indices.users:
            call = indices.args[0]
            graph.erase_node(indices)
            _plain_values(gm, call, pool)
        entry.counts["max_unpool"] = entry.counts.get("max_unpool", 0) + 1
        entry.nodes.append(new.name)
        entry.modified = True
    return finish_pass(gm, entry, report)


def _erase_unused(graph: fx.Graph, value) -> None:
    """Erase ``value`` (a node), and the nodes it reads, once nothing uses them."""
    while isinstance(value, fx.Node) and not value.users and value.op in ("call_function", "call_method"):
        inputs = value.all_input_nodes
        graph.erase_node(value)
        value = inputs[0] if len(inputs) == 1 and inputs[0].op in ("call_function", "call_method") else None


def _plain_values(gm: fx.GraphModule, call: fx.Node, pool: tuple) -> None:
    """Replace the selections ``call[0]`` (the values of a max-pool returning indices) by a plain max-pool of the
    same input; ``call`` goes when nothing else reads it."""
    values = [u for u in call.users if u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0]
    if len(values) != len(call.users):
        return
    if not values:  # ``_, i = pool(a)``: only the indices were read
        gm.graph.erase_node(call)
        return
    dims, source, (kernel, stride, padding, dilation, ceil_mode) = pool
    name = unique_name(gm, call.name.replace("_with_indices", "") + "_values")
    gm.add_submodule(name, _POOL_MODULES_BY_DIMS[dims](kernel, stride, padding, dilation, ceil_mode=ceil_mode))
    with gm.graph.inserting_before(call):
        plain = gm.graph.call_module(name, (source,))
    plain.meta = dict(values[0].meta)
    for user in values:
        user.replace_all_uses_with(plain)
        gm.graph.erase_node(user)
    gm.graph.erase_node(call)


_POOL_MODULES_BY_DIMS = {dims: cls for cls, dims in _POOL_MODULES.items()}
