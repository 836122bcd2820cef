"""ONNX converters of pass-throughs and constants, shape manipulation and reductions."""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sympy
import torch

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext

from snnconvert.convert.onnx_ops.core import (
    _INT64_MAX,
    Const,
    SymVec,
    Tensor,
    Value,
    _norm_axis,
    all_static,
    make_vec,
    register,
    static,
    sym_div,
    sym_eq,
    sym_prod,
    to_int_list,
    vec_dtype,
)
from snnconvert.convert.onnx_ops.pooling import _ADAPTIVE_AVG


# Pass-throughs and constants
# --------------------------------------------------------------------------------------------------------------------
@register("Identity", since=1)
def convert_identity(ctx: OpContext) -> Value:
    """Identity: pass-through, no fx node."""
    return ctx.input(0)


@register("Dropout", since=12)
def convert_dropout(ctx: OpContext) -> list[Value | None]:
    """Dropout (inference): pass-through; a used mask output or ``training_mode=1`` is unsupported."""
    training = ctx.input(2)
    if training is not None:
        if not isinstance(training, Const):
            raise ctx.unsupported("training_mode is not a constant")
        if bool(training.tensor.item()):
            raise ctx.unsupported("training_mode=1 (training-time dropout)")
    if ctx.output_used(1):
        raise ctx.unsupported("the mask output is used")
    return [ctx.input(0), None]


@register("If", since=13)
def convert_if(ctx: OpContext) -> list[Value]:
    """If whose condition is known at import: the nodes of the branch taken are imported in its place. torch's
    TorchScript exporter writes ``x.squeeze(d)`` of a dim it cannot size at export as ``If(size(d) == 1, Squeeze,
    Identity)`` (``nn.LocalResponseNorm`` from opset 13 on), which shapes known here decide. A condition computed
    from data, or from a size known only at run time, is unsupported (data-dependent control flow)."""
    cond = ctx.input(0)
    if isinstance(cond, SymVec) and len(cond.elems) == 1 and cond.elems[0].is_number:
        taken = bool(cond.elems[0])
    elif isinstance(cond, Const) and cond.tensor.numel() == 1:
        taken = bool(cond.tensor.item())
    else:
        raise ctx.unsupported("a condition computed at run time (control flow that depends on the input)")
    return ctx.inline(ctx.attr("then_branch" if taken else "else_branch"))


@register("Constant", since=13)
def convert_constant(ctx: OpContext) -> Value:
    """Constant: a :class:`Const` (lifted into a buffer only if a run-time op reads it)."""
    attrs = ctx.attrs
    if "value" in attrs:
        tensor = ctx.tensor_from_proto(attrs["value"])
    elif "value_float" in attrs:
        tensor = torch.tensor(attrs["value_float"], dtype=torch.float32)
    elif "value_floats" in attrs:
        tensor = torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
    elif "value_int" in attrs:
        tensor = torch.tensor(attrs["value_int"], dtype=torch.int64)
    elif "value_ints" in attrs:
        tensor = torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
    else:
        raise ctx.unsupported(f"Constant with attribute(s) {sorted(attrs)}")
    return Const(tensor, (ctx.name, "Constant"))


@register("Shape", since=13)
def convert_shape(ctx: OpContext) -> Value:
    """Shape (``start``/``end`` since opset 15): the input's dimensions as a shape value."""
    dims = ctx.shape(ctx.input(0))
    start = ctx.attr("start", 0)
    end = ctx.attr("end", None)
    rank = len(dims)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return make_vec(dims[start:end], source=(ctx.name, "Shape"))


@register("Size", since=13)
def convert_size(ctx: OpContext) -> Value:
    """Size: the product of the input's dimensions, as a 0-d shape value."""
    return make_vec([sym_prod(ctx.shape(ctx.input(0)))], scalar=True, source=(ctx.name, "Size"))


@register("ConstantOfShape", since=9)
def convert_constant_of_shape(ctx: OpContext) -> Value:
    """ConstantOfShape: a Const for a static shape, ``torch.full`` for a dynamic one."""
    fill = ctx.attr("value", None)
    fill_tensor = ctx.tensor_from_proto(fill) if fill is not None else torch.zeros(1, dtype=torch.float32)
    dims = ctx.elems(0)
    if all_static(dims):
        data = torch.full([static(d) for d in dims], fill_tensor.reshape(-1)[0].item(), dtype=fill_tensor.dtype)
        return Const(data, (ctx.name, "ConstantOfShape"))
    out = ctx.call_function(torch.full, ctx.dims_arg(dims), fill_tensor.reshape(-1)[0].item(), dtype=fill_tensor.dtype)
    out.shape, out.dtype = tuple(dims), fill_tensor.dtype
    return out


@register("Range", since=11)
def convert_range(ctx: OpContext) -> Value:
    """Range: folded to ``torch.arange`` when the bounds are constants; bounds computed from tensor shapes (the
    dynamo exporter's ``as_strided`` lowering: ``Range(0, batch)``) give ``torch.arange`` of ``x.size(i)`` at run
    time, a shape-derived (not input-dependent) index tensor."""
    inputs = [ctx.input(i) for i in range(3)]
    if all(isinstance(v, Const) for v in inputs):
        start, limit, delta = (v.tensor for v in inputs)
        if delta.item() == 0:
            raise ctx.fail("Range needs a non-zero delta")
        # ONNX: max(ceil((limit - start) / delta), 0) elements, so bounds against delta's sign give an empty range
        # (torch.arange raises on them)
        n = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
        values = start.reshape(()) + delta.reshape(()) * torch.arange(n, dtype=start.dtype)  # start + i·delta
        return Const(values, (ctx.name, "Range"))
    bounds = []
    for i in range(3):
        elems = ctx.elems(i)
        if len(elems) != 1:
            raise ctx.fail(f"Range bound (input {i}) must be a scalar")
        bounds.append(elems[0])
    start, limit, delta = bounds
    if static(delta) in (None, 0):
        raise ctx.fail("Range needs a constant, non-zero delta")
    dtype = vec_dtype(*inputs)
    out = ctx.call_function(torch.arange, *ctx.dims_arg(bounds), dtype=dtype)
    out.shape, out.dtype = (sympy.Max(sympy.ceiling((limit - start) / delta), 0),), dtype
    return out


# --------------------------------------------------------------------------------------------------------------------


# Shape manipulation
# --------------------------------------------------------------------------------------------------------------------
def _reshape_to(ctx: OpContext, x: Value, target: list[Any]) -> Value:
    """Reshape ``x`` to resolved ``target`` entries (sympy; ``None`` where unknown).

    At most one non-static entry is written as ``-1``; with several, all but one are computed from ``x.size(i)``
    at run time, so the module keeps working for any batch size.
    """
    dynamic = [i for i, d in enumerate(target) if static(d) is None]
    args: list[Any]
    if len(dynamic) <= 1:
        args = [-1 if i in dynamic else static(d) for i, d in enumerate(target)]
    else:
        keep = next((i for i in dynamic if target[i] is None), dynamic[0])
        if sum(target[i] is None for i in dynamic) > 1:
            raise ctx.fail("Reshape target has more than one unresolvable entry")
        args = [-1 if i == keep else (static(d) if static(d) is not None else ctx.dim_arg(d))
                for i, d in enumerate(target)]
    out = ctx.call_function(torch.reshape, x, tuple(args))
    if isinstance(out, Tensor):
        out.shape = tuple(target)
    return out


def _resolve_minus_one(in_shape: Sequence[Any] | None, target: list[Any]) -> list[Any]:
    """Replace a ``-1`` entry by its symbolic value when the input shape allows."""
    if -1 not in [static(d) for d in target]:
        return target
    index = [static(d) for d in target].index(-1)
    others = [d for i, d in enumerate(target) if i != index]
    resolved = None
    if in_shape is not None and all(d is not None for d in in_shape) and all(d is not None for d in others):
        resolved = sym_div(sym_prod(in_shape), sym_prod(others))
        if resolved.has(sympy.floor):
            resolved = None
    return [resolved if i == index else d for i, d in enumerate(target)]


@register("Reshape", since=13)
def convert_reshape(ctx: OpContext) -> Value:
    """Reshape (``allowzero`` since opset 14) with a static or shape-derived target; see :func:`_reshape_to`."""
    x = ctx.input(0)
    target = ctx.elems(1)
    if isinstance(x, SymVec):
        if len(target) > 1 or (not target and len(x.elems) != 1):
            raise ctx.fail("cannot reshape a dynamic shape value to a rank above 1")
        return SymVec(x.elems, scalar=not target, dtype=x.dtype)
    in_shape = ctx.shape_or_none(x)
    if isinstance(ctx.input(1), Const) and ctx.static_batch_target(target, in_shape):
        target[0] = in_shape[0]
    if not ctx.attr("allowzero", 0):
        for i, d in enumerate(target):
            if static(d) == 0:
                if in_shape is None or i >= len(in_shape):
                    raise ctx.fail("Reshape copies a dimension (0) of an input of unknown shape")
                target[i] = in_shape[i] if in_shape[i] is not None else ctx.runtime_dim(x, i)
    target = _resolve_minus_one(in_shape, target)
    if isinstance(x, Const) and all_static(target):
        return Const(x.tensor.reshape([static(d) for d in target]), (ctx.name, "Reshape"))
    return _reshape_to(ctx, x, target)


@register("Flatten", since=13)
def convert_flatten(ctx: OpContext) -> Value:
    """Flatten -> ``torch.flatten(x, 1)`` for ``axis=1``, else a reshape to two dimensions."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    rank = len(shape)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    lead, rest = sym_prod(shape[:axis]) if axis else sympy.Integer(1), sym_prod(shape[axis:])
    if axis == 1 and rank >= 2:
        out = ctx.call_function(torch.flatten, x, 1)
        if isinstance(out, Tensor):
            out.shape = (shape[0], rest)
        return out
    return _reshape_to(ctx, x, [lead, rest])


@register("Transpose", since=13)
def convert_transpose(ctx: OpContext) -> Value:
    """Transpose -> ``torch.permute`` (default: reverse the dimensions)."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    perm = list(ctx.attr("perm", list(reversed(range(len(shape))))))
    out = ctx.call_function(torch.permute, x, tuple(perm))
    if isinstance(out, Tensor):
        out.shape = tuple(shape[p] for p in perm)
    return out


@register("Concat", since=13)
def convert_concat(ctx: OpContext) -> Value:
    """Concat -> ``torch.cat``; concatenation of shape values is done symbolically."""
    values = [v for v in ctx.inputs() if v is not None]
    axis = ctx.attr("axis")
    lists = [to_int_list(v) for v in values]
    if any(isinstance(v, SymVec) for v in values) and all(item is not None for item in lists):
        return make_vec([e for elems, _ in lists for e in elems], source=(ctx.name, "Concat"), dtype=vec_dtype(*values))
    shapes = [ctx.shape_or_none(v) for v in values]
    if any(isinstance(v, Tensor) and s and ctx.is_batch(s[0]) for v, s in zip(values, shapes)):
        values = [ctx.batch_constant(v, len(s)) if s else v for v, s in zip(values, shapes)]
        shapes = [ctx.shape_or_none(v) for v in values]
    kept = [v for v, s in zip(values, shapes) if s is None or static(s[axis]) != 0]
    values = kept or values[:1]  # every input empty along the axis: the result is the (empty) first one
    out = ctx.call_function(torch.cat, values, dim=axis, scalars=False)
    if isinstance(out, Tensor) and all(s is not None for s in shapes):
        rank = len(shapes[0])
        ax = _norm_axis(axis, rank, ctx)
        dims = list(shapes[0])
        dims[ax] = sympy.expand(sympy.Add(*[s[ax] for s in shapes])) if all(s[ax] is not None for s in shapes) else None
        out.shape = tuple(dims)
    return out


@register("Split", since=13)
def convert_split(ctx: OpContext) -> list[Value]:
    """Split (sizes as input since 13, ``num_outputs`` since 18) -> ``torch.split`` and getitems."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    axis = _norm_axis(ctx.attr("axis", 0), len(shape), ctx)
    n_out = len(ctx.node.output)
    sizes_value = ctx.input(1)
    if sizes_value is not None:
        sizes = [static(d) for d in ctx.elems(1)]
    else:
        dim = static(shape[axis])
        if dim is None:
            raise ctx.fail("Split without sizes needs a static size along the split axis")
        n_parts = ctx.attr("num_outputs", n_out)
        chunk = -(-dim // n_parts)
        sizes = [chunk] * (n_parts - 1) + [dim - chunk * (n_parts - 1)]
    if any(s is None for s in sizes):
        raise ctx.fail("Split sizes must be static")
    parts = ctx.call_function(torch.split, x, sizes, dim=axis)
    outs = []
    for i, size in enumerate(sizes[:n_out]):
        part = ctx.getitem(parts, i)
        if isinstance(part, Tensor):
            part.shape = tuple(sympy.Integer(size) if j == axis else d for j, d in enumerate(shape))
        outs.append(part)
    return outs


def _slice_bound(value: int, open_end: bool) -> int | None:
    """A slice bound for Python slicing: ``None`` for an open end; ONNX's INT32/INT64 sentinels are clamped to
    ±(2³¹ − 1), which Python slicing clamps to the axis as ONNX does (a start past the end is an empty slice, an
    end before the start too)."""
    if open_end:
        return None
    return max(min(value, 2**31 - 1), -(2**31 - 1))


@register("Slice", since=13)
def convert_slice(ctx: OpContext) -> Value:
    """Slice -> Python slicing (``operator.getitem``) for positive steps, ``index_select`` for negative ones.

    Bounds may be constants or shape values; an end at INT64_MAX (or past the axis) is an open end, other huge
    sentinels are clamped (a start past the axis gives an empty slice, as in ONNX).
    """
    x = ctx.input(0)
    starts, ends = ctx.elems(1), ctx.elems(2)
    axes = [static(a) for a in ctx.elems(3)] if ctx.input(3) is not None else list(range(len(starts)))
    steps = [static(s) for s in ctx.elems(4)] if ctx.input(4) is not None else [1] * len(starts)
    vec = to_int_list(x) if isinstance(x, SymVec) else None
    if vec is not None:
        start, end, step = (static(v) for v in (starts[0], ends[0], steps[0]))
        if None in (start, end, step):
            raise ctx.fail("cannot slice a dynamic shape value with dynamic bounds")
        return make_vec(vec[0][slice(start, end, step)], source=(ctx.name, "Slice"), dtype=x.dtype)
    shape = ctx.shape(x)
    rank = len(shape)
    index: list[Any] = [slice(None)] * rank
    out_shape = list(shape)
    flips: list[tuple[int, list[int]]] = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _norm_axis(axis, rank, ctx)
        s, e, dim = static(start), static(end), static(shape[axis])
        if step is None or step == 0:
            raise ctx.fail("Slice steps must be static and non-zero")
        if step < 0:
            if dim is None or s is None or e is None:
                raise ctx.fail("Slice with a negative step needs a static dimension and bounds")
            flips.append((axis, list(range(*slice(s, e, step).indices(dim)))))
            out_shape[axis] = sympy.Integer(len(flips[-1][1]))
            continue
        s_arg = ctx.dim_arg(start) if s is None else _slice_bound(s, s == 0)
        e_arg = ctx.dim_arg(end) if e is None else _slice_bound(e, e >= _INT64_MAX or (dim is not None and e >= dim))
        index[axis] = slice(s_arg, e_arg, None if step == 1 else step)
        if dim is not None and s is not None and e is not None:
            out_shape[axis] = sympy.Integer(len(range(*slice(s, e, step).indices(dim))))
        elif s_arg is None and e_arg is None and step == 1:
            out_shape[axis] = shape[axis]
        else:
            out_shape[axis] = None
    out = x
    if any(item != slice(None) for item in index):
        while index and index[-1] == slice(None):
            index.pop()
        out = ctx.call_function(operator.getitem, out, tuple(index))
    for axis, indices in flips:
        out = ctx.call_function(torch.index_select, out, axis, Const(torch.tensor(indices, dtype=torch.int64)))
    if isinstance(out, Tensor):
        out.shape = tuple(out_shape)
    return out


@register("Squeeze", since=13)
def convert_squeeze(ctx: OpContext) -> Value:
    """Squeeze (axes as input since 13) -> ``torch.squeeze``."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    if ctx.input(1) is not None:
        axes = sorted(_norm_axis(static(a), len(shape), ctx) for a in ctx.elems(1))
    else:
        if not all_static(shape):
            raise ctx.fail("Squeeze without axes needs a static input shape")
        axes = [i for i, d in enumerate(shape) if static(d) == 1]
    if isinstance(x, SymVec):
        if axes == [0] and len(x.elems) == 1:
            return SymVec(x.elems, scalar=True, dtype=x.dtype)
        raise ctx.fail("cannot squeeze this shape value")
    out = ctx.call_function(torch.squeeze, x, tuple(axes))
    if isinstance(out, Tensor):
        out.shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    return out


@register("Unsqueeze", since=13)
def convert_unsqueeze(ctx: OpContext) -> Value:
    """Unsqueeze (axes as input since 13) -> ``torch.unsqueeze``, once per axis."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    raw_axes = [static(a) for a in ctx.elems(1)]
    rank = len(shape) + len(raw_axes)
    axes = sorted(_norm_axis(a, rank, ctx) for a in raw_axes)
    if isinstance(x, SymVec):
        if x.scalar and axes == [0]:
            return SymVec(x.elems, scalar=False, dtype=x.dtype)
        raise ctx.fail("cannot unsqueeze this shape value to a rank above 1")
    out = x
    for axis in axes:
        out = ctx.call_function(torch.unsqueeze, out, axis)
    if isinstance(out, Tensor):
        dims = list(shape)
        for axis in axes:
            dims.insert(axis, sympy.Integer(1))
        out.shape = tuple(dims)
    return out


@register("Expand", since=13)
def convert_expand(ctx: OpContext) -> Value:
    """Expand (numpy broadcasting to a static or shape-derived shape) -> ``x.expand(...)``."""
    x = ctx.input(0)
    target = ctx.elems(1)
    x_shape = ctx.shape(x)
    rank = max(len(x_shape), len(target))
    padded_x = [None] * (rank - len(x_shape)) + list(x_shape)
    padded_t = [sympy.Integer(1)] * (rank - len(target)) + list(target)
    out_dims: list[Any] = []
    args: list[Any] = []
    for xd, td in zip(padded_x, padded_t):
        if xd is not None and (static(td) == 1 or sym_eq(td, xd)):
            out_dims.append(xd)
            args.append(-1)
        elif xd is None or static(xd) == 1:
            out_dims.append(td)
            args.append(static(td) if static(td) is not None else ctx.dim_arg(td))
        else:
            raise ctx.fail(f"Expand cannot broadcast {xd} to {td}")
    if isinstance(x, Const) and all_static(out_dims):
        return Const(x.tensor.expand([static(d) for d in out_dims]), (ctx.name, "Expand"))
    out = ctx.call_method("expand", x, *args)
    if isinstance(out, Tensor):
        out.shape = tuple(out_dims)
    return out


@register("Tile", since=13)
def convert_tile(ctx: OpContext) -> Value:
    """Tile -> ``x.repeat(...)`` with static repeats."""
    repeats = [static(r) for r in ctx.elems(1)]
    if any(r is None for r in repeats):
        raise ctx.fail("Tile repeats must be static")
    return ctx.call_method("repeat", ctx.input(0), *repeats)


@register("Gather", since=13)
def convert_gather(ctx: OpContext) -> Value:
    """Gather: picks entries of shape values at import time (0-d / 1-d constant indices); on tensors a scalar
    constant index -> ``torch.select``, a 1-d one -> ``torch.index_select`` (an N-d one adds a reshape). Indices
    computed at run time may be negative (counted from the end, as in ONNX), which ``index_select`` refuses: the axis
    length is added to those, also to constant negative indices on a dynamic dim (``x[:, -1]`` of a sequence of any
    length; a scalar one is ``torch.select``'s own negative index).
    """
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(data, SymVec) and isinstance(indices, Const) and indices.tensor.ndim <= 1:
        picked = [data.elems[i] for i in indices.tensor.reshape(-1).tolist()]
        return make_vec(picked, scalar=indices.tensor.ndim == 0, source=(ctx.name, "Gather"), dtype=data.dtype)
    shape = ctx.shape(data)
    axis = _norm_axis(axis, len(shape), ctx)
    negative_on_dynamic = (isinstance(indices, Const) and bool((indices.tensor < 0).any())
                           and static(shape[axis]) is None)
    if not isinstance(indices, Const) or (negative_on_dynamic and indices.tensor.ndim > 0):
        index_shape = ctx.shape(indices) if not isinstance(indices, Const) else tuple(
            sympy.Integer(n) for n in indices.tensor.shape)
        flat = ctx.call_function(torch.reshape, indices, (-1,))
        size = ctx.dim_arg(shape[axis])  # i + size for i < 0 only: an index out of range still fails, as in ONNX
        flat = ctx.call_function(torch.where, ctx.call_function(operator.lt, flat, 0),
                                 ctx.call_function(operator.add, flat, size), flat, scalars=False)
        picked = ctx.call_function(torch.index_select, data, axis, flat)
        target = [*shape[:axis], *index_shape, *shape[axis + 1:]]
        return _reshape_to(ctx, picked, target)
    idx = indices.tensor.to(torch.int64)
    dim = static(shape[axis])
    if (idx < 0).any() and dim is not None:  # (a scalar on a dynamic dim stays negative: torch.select counts back)
        idx = torch.where(idx < 0, idx + dim, idx)
    if idx.ndim == 0:
        out = ctx.call_function(torch.select, data, axis, int(idx))
        if isinstance(out, Tensor):
            out.shape = tuple(d for i, d in enumerate(shape) if i != axis)
        return out
    picked = ctx.call_function(torch.index_select, data, axis, Const(idx.reshape(-1), indices.source))
    if idx.ndim == 1:
        if isinstance(picked, Tensor):
            picked.shape = tuple(sympy.Integer(idx.numel()) if i == axis else d for i, d in enumerate(shape))
        return picked
    target = [*shape[:axis], *[sympy.Integer(s) for s in idx.shape], *shape[axis + 1:]]
    return _reshape_to(ctx, picked, target)


@register("GatherND", since=13)
def convert_gather_nd(ctx: OpContext) -> Value:
    """GatherND with constant indices and ``batch_dims=0`` on a tensor whose leading k dims (k: the indices' last
    size) are static: the k dims are flattened into one, the rows picked by ``torch.index_select`` with the flat
    indices, and the result reshaped to ``indices.shape[:-1] + data.shape[k:]``. The dynamo exporter writes
    ``AdaptiveAvgPool2d`` over windows of unequal size (VGG's ``(7, 7)`` on a smaller map) this way."""
    data, indices = ctx.input(0), ctx.input(1)
    if ctx.attr("batch_dims", 0) != 0:
        raise ctx.unsupported("batch_dims != 0")
    if not isinstance(indices, Const):
        raise ctx.unsupported("indices computed at run time")
    shape = ctx.shape(data)
    idx = indices.tensor.to(torch.int64)
    k = idx.shape[-1] if idx.ndim else 0
    if idx.ndim == 0 or not 1 <= k <= len(shape):
        raise ctx.fail(f"indices of shape {list(idx.shape)} for data of rank {len(shape)}")
    dims = [static(d) for d in shape[:k]]
    if None in dims:
        raise ctx.unsupported("indexed dimensions of unknown size")
    sizes = torch.tensor(dims, dtype=torch.int64)
    if ((idx < -sizes) | (idx >= sizes)).any():
        raise ctx.fail("an index is out of range")
    idx = torch.where(idx < 0, idx + sizes, idx)
    strides = torch.tensor([math.prod(dims[i + 1:]) for i in range(k)], dtype=torch.int64)
    flat = (idx * strides).sum(-1).reshape(-1)
    rows = _reshape_to(ctx, data, [sympy.Integer(math.prod(dims)), *shape[k:]])
    picked = ctx.call_function(torch.index_select, rows, 0, Const(flat, indices.source))
    return _reshape_to(ctx, picked, [*(sympy.Integer(s) for s in idx.shape[:-1]), *shape[k:]])


# --------------------------------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------------------------------
_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}
#: Norms and log-sums (F.normalize exports as ReduceL2): graded units after conversion, as on the torch.fx path
_NORMS = {"ReduceL1": 1.0, "ReduceL2": 2.0}
_SMOOTH_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


def _reduce(ctx: OpContext, axes_from_input: bool) -> Value:
    """ReduceMean/Sum/Max/Min/Prod, ReduceL1/L2 (``torch.linalg.vector_norm``), ReduceSumSquare (square, then sum),
    ReduceLogSum (sum, then log) and ReduceLogSumExp (``torch.logsumexp``). A ReduceMean over all spatial axes of an
    N-d feature map -> ``nn.AdaptiveAvgPoolNd(1)`` (plus ``flatten`` when ``keepdims=0``), the form global average
    pooling has in a traced model. On integer tensors the result keeps the input's type (``torch.sum`` / ``prod``
    would widen it to int64) and ReduceMean is the sum divided by the count, truncated, as onnxruntime computes it;
    the norms and log-sums take floating inputs only.
    """
    x = ctx.input(0)
    keepdims = bool(ctx.attr("keepdims", 1))
    if axes_from_input:
        axes = [static(a) for a in ctx.elems(1)] if ctx.input(1) is not None else []
    else:
        axes = list(ctx.attr("axes", []))
    if any(a is None for a in axes):
        raise ctx.fail("reduction axes must be static")
    if isinstance(x, SymVec) and ctx.op_type in ("ReduceProd", "ReduceSum") and axes in ([], [0], [-1]):
        combine = sym_prod(x.elems) if ctx.op_type == "ReduceProd" else sympy.expand(sum(x.elems))
        return make_vec([combine], scalar=not keepdims, source=(ctx.name, ctx.op_type), dtype=x.dtype)
    shape = ctx.shape(x)
    rank = len(shape)
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(rank))
    axes = sorted(_norm_axis(a, rank, ctx) for a in axes)
    out_shape = tuple(sympy.Integer(1) if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)
    dtype = ctx.dtype_of(x)
    integer = {"dtype": dtype} if dtype is not None and not dtype.is_floating_point else {}
    if ctx.op_type in _SMOOTH_REDUCTIONS and integer:
        raise ctx.unsupported(f"{ctx.op_type} of an integer tensor")
    if ctx.op_type in _NORMS:
        out = ctx.call_function(torch.linalg.vector_norm, x, _NORMS[ctx.op_type], tuple(axes), keepdims)
    elif ctx.op_type == "ReduceLogSumExp":
        out = ctx.call_function(torch.logsumexp, x, tuple(axes), keepdim=keepdims)
    elif ctx.op_type in ("ReduceSumSquare", "ReduceLogSum"):
        summed = x if ctx.op_type == "ReduceLogSum" else ctx.call_function(torch.square, x)
        out = ctx.call_function(torch.sum, summed, tuple(axes), keepdim=keepdims)
        if ctx.op_type == "ReduceLogSum":
            out = ctx.call_function(torch.log, out)
    elif ctx.op_type == "ReduceMean" and integer:
        total = ctx.call_function(torch.sum, x, tuple(axes), keepdim=keepdims, **integer)
        count = ctx.dim_arg(sym_prod([shape[a] for a in axes]))
        out = ctx.call_function(torch.div, total, count, rounding_mode="trunc")
    elif ctx.op_type == "ReduceMean" and rank >= 3 and axes == list(range(2, rank)) and rank - 2 in _ADAPTIVE_AVG:
        out = ctx.call_module(_ADAPTIVE_AVG[rank - 2](1), x)
        if not keepdims:
            out = ctx.call_function(torch.flatten, out, 1)
    elif ctx.op_type == "ReduceProd":
        out = x
        for axis in reversed(axes):
            out = ctx.call_function(torch.prod, out, axis, keepdim=keepdims, **integer)
    elif ctx.op_type == "ReduceSum" and integer:
        out = ctx.call_function(torch.sum, x, tuple(axes), keepdim=keepdims, **integer)
    else:
        out = ctx.call_function(_REDUCE[ctx.op_type], x, tuple(axes), keepdim=keepdims)
    if isinstance(out, Tensor):
        out.shape = out_shape
    return out


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", *_SMOOTH_REDUCTIONS, since=13)
def convert_reduce_attr_axes(ctx: OpContext) -> Value:
    """Reductions with ``axes`` as attribute (all but ReduceSum before opset 18)."""
    return _reduce(ctx, axes_from_input=False)


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", *_SMOOTH_REDUCTIONS, since=18)
@register("ReduceSum", since=13)
def convert_reduce_input_axes(ctx: OpContext) -> Value:
    """Reductions with ``axes`` as input (ReduceSum since 13, the others since 18)."""
    return _reduce(ctx, axes_from_input=True)
