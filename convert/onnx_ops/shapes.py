"""ONNX converters of pass-throughs and constants, shape manipulation and reductions."""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sympy
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext

from snnconvert.convert.onnx_ops.core import (
    _INT64_MAX,
    Const,
    SymVec,
    Tensor,
    Value,
    _norm_axis,
    _torch_pads,
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
from snnconvert.convert.onnx_ops.layers import _ADAPTIVE_AVG


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
        return Const(torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype), (ctx.name, "Range"))
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


def _blocks(ctx: OpContext) -> tuple[Value, list, int]:
    """Input, shape and ``blocksize`` of DepthToSpace / SpaceToDepth (4-d input)."""
    x = ctx.input(0)
    shape = list(ctx.shape(x))
    if len(shape) != 4:
        raise ctx.unsupported(f"a rank-{len(shape)} input (4-d only)")
    return x, shape, int(ctx.attr("blocksize"))


@register("DepthToSpace", since=13)
def convert_depth_to_space(ctx: OpContext) -> Value:
    """DepthToSpace -> ``F.pixel_shuffle`` (mode CRD, what torch exports ``nn.PixelShuffle`` as) or, for the default
    mode DCR (channels ordered block row, block column, channel), a reshape / permute / reshape."""
    x, (n, c, h, w), b = _blocks(ctx)
    mode = ctx.attr("mode", "DCR")
    out_shape = (n, sym_div(c, sympy.Integer(b * b)), h * b, w * b)
    if mode == "CRD":
        out = ctx.call_function(F.pixel_shuffle, x, b)
        if isinstance(out, Tensor):
            out.shape = out_shape
        return out
    if mode != "DCR":
        raise ctx.unsupported(f"mode={mode}")
    blocks = _reshape_to(ctx, x, [n, sympy.Integer(b), sympy.Integer(b), out_shape[1], h, w])
    moved = ctx.call_function(torch.permute, blocks, (0, 3, 4, 1, 5, 2))
    if isinstance(moved, Tensor):
        moved.shape = (n, out_shape[1], h, sympy.Integer(b), w, sympy.Integer(b))
    return _reshape_to(ctx, moved, list(out_shape))


@register("SpaceToDepth", since=13)
def convert_space_to_depth(ctx: OpContext) -> Value:
    """SpaceToDepth -> reshape / permute / reshape (output channels ordered block row, block column, channel: not
    ``F.pixel_unshuffle``'s channel-major order)."""
    x, (n, c, h, w), b = _blocks(ctx)
    bb = sympy.Integer(b)
    blocks = _reshape_to(ctx, x, [n, c, sym_div(h, bb), bb, sym_div(w, bb), bb])
    moved = ctx.call_function(torch.permute, blocks, (0, 3, 5, 1, 2, 4))
    if isinstance(moved, Tensor):
        moved.shape = (n, bb, bb, c, sym_div(h, bb), sym_div(w, bb))
    return _reshape_to(ctx, moved, [n, c * b * b, sym_div(h, bb), sym_div(w, bb)])


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


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _edge_pads(ctx: OpContext, x: Value, rank: int, begin: list[int], end: list[int],
               mode: str) -> tuple[Value, list[int], bool]:
    """The input and ``F.pad`` amounts for a reflect / edge / wrap Pad, and whether a leading unit dim was added.

    PyTorch pads in these modes along the last k dims (k <= 3) of a tensor with one or two dims before them (and
    refuses the rest at run time): the amounts name k = max(dims from the first padded one on, rank - 2) dims, and a
    tensor padded from its first dim on (rank <= 3) gets a leading unit dim for the call. Padding the first dim of a
    rank-4+ tensor (the batch dim of a feature map) is unsupported."""
    first = next(i for i in range(rank) if begin[i] or end[i])
    k = max(rank - first, rank - 2, 1)
    if k > 3:
        raise ctx.unsupported(f"mode={mode} padding dim {first} of a rank-{rank} input (PyTorch pads in this mode only "
                              "along the last 3 dims, after at least one other)")
    pads = [int(p) for i in reversed(range(rank - k, rank)) for p in (begin[i], end[i])]
    if k < rank:
        return x, pads, False
    return ctx.call_function(torch.unsqueeze, x, 0), pads, True


@register("Pad", since=13)
def convert_pad(ctx: OpContext) -> Value:
    """Pad (pads as input, ``axes`` since 18) -> ``F.pad`` with mode constant / reflect / replicate / circular (the
    last three along the dims PyTorch supports them on: :func:`_edge_pads`)."""
    x = ctx.input(0)
    rank = len(ctx.shape(x))
    pads = [static(p) for p in ctx.elems(1)]
    if any(p is None for p in pads):
        raise ctx.fail("Pad amounts must be static")
    axes = list(range(rank))
    if ctx.input(3) is not None:
        axes = [_norm_axis(static(a), rank, ctx) for a in ctx.elems(3)]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[len(axes) + i]
    mode = ctx.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise ctx.unsupported(f"mode={mode}")
    value = ctx.input(2)
    fill = 0.0 if value is None else ctx.const(2, "Pad constant_value").item()
    kwargs = {"value": fill} if mode == "constant" and fill != 0 else {}
    if mode == "constant":
        out = ctx.call_function(F.pad, x, _torch_pads(begin, end), **kwargs)
    elif not any(begin + end):
        return x
    else:
        padded, pads, unsqueezed = _edge_pads(ctx, x, rank, begin, end, mode)
        out = ctx.call_function(F.pad, padded, pads, mode=_PAD_MODES[mode])
        if unsqueezed:
            out = ctx.call_function(torch.squeeze, out, 0)
    in_shape = ctx.shape_or_none(x)
    if isinstance(out, Tensor) and in_shape is not None:  # the padded sizes: later shape arithmetic stays static
        out.shape = tuple(None if d is None else d + b + e for d, b, e in zip(in_shape, begin, end))
    return out


_RESIZE_MODES = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
                 ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear",
                 ("cubic", 2): "bicubic"}


@register("Resize", since=13)
def convert_resize(ctx: OpContext) -> Value:
    """Resize of the spatial dims -> ``F.interpolate`` (every mode of it is linear in the input), for the
    combinations torch's exporters write:

    - ``nearest`` with ``asymmetric`` coordinates and ``floor`` rounding: ``mode="nearest"``;
    - ``linear`` (1-3 d) and ``cubic`` (2-d, ``cubic_coeff_a = -0.75``) with ``half_pixel`` /
      ``pytorch_half_pixel`` coordinates: ``align_corners=False``; with ``align_corners``: ``align_corners=True``.

    Output sizes come from ``sizes`` (static, or computed from shapes: ``F.interpolate(x, size=y.shape[2:])``; a
    static-batch export's ``sizes`` lead with the batch size, which then follows the input's) or from constant
    ``scales`` (``scale_factor``: PyTorch maps coordinates with 1/scale, as ONNX does). Other modes, antialiasing,
    ``exclude_outside``, ``axes`` and resizing of the batch or channel dims are unsupported.

    ``pytorch_half_pixel`` maps an output axis of length 1 to input coordinate 0 where PyTorch (and ``half_pixel``)
    take the window's centre: such an axis (of a static output length) is narrowed to its first element and kept
    at length 1. An output length that is dynamic is assumed not to be 1 there.
    """
    x = ctx.input(0)
    shape = ctx.shape(x)
    nd = len(shape) - 2
    mode, ctm = ctx.attr("mode", "nearest"), ctx.attr("coordinate_transformation_mode", "half_pixel")
    if (mode, nd) not in _RESIZE_MODES:
        raise ctx.unsupported(f"mode={mode} on a rank-{len(shape)} input")
    for name, default in (("antialias", 0), ("exclude_outside", 0)):
        if ctx.attr(name, default):
            raise ctx.unsupported(f"{name}=1")
    if ctx.attr("axes", None) is not None or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported("axes / keep_aspect_ratio_policy")
    align: bool | None = None
    if mode == "nearest":
        if ctm != "asymmetric" or ctx.attr("nearest_mode", "round_prefer_floor") != "floor":
            raise ctx.unsupported(f"nearest with {ctm} coordinates and {ctx.attr('nearest_mode', 'round_prefer_floor')}"
                                  " rounding (PyTorch's nearest is asymmetric + floor)")
    elif ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        align = ctm == "align_corners"
        if mode == "cubic" and abs(ctx.attr("cubic_coeff_a", -0.75) + 0.75) > 1e-6:
            raise ctx.unsupported(f"cubic_coeff_a={ctx.attr('cubic_coeff_a')} (PyTorch's bicubic uses -0.75)")
    else:
        raise ctx.unsupported(f"coordinate_transformation_mode={ctm}")
    kwargs: dict[str, Any] = {"mode": _RESIZE_MODES[mode, nd]}
    if align is not None:
        kwargs["align_corners"] = align
    sizes = ctx.input(3)
    if sizes is not None and (ctx.shape_or_none(sizes) or (1,))[0] != 0:
        target = ctx.elems(3)
        if len(target) == len(shape) and isinstance(sizes, Const) and ctx.static_batch_target(target, shape):
            target[0] = shape[0]
        if len(target) != len(shape) or any(not sym_eq(t, d) for t, d in zip(target[:2], shape[:2])):
            raise ctx.unsupported("resizing the batch or channel dims")
        out_spatial = list(target[2:])
        kwargs["size"] = tuple(static(d) if static(d) is not None else ctx.dim_arg(d) for d in out_spatial)
    else:
        scales = [float(v) for v in ctx.const(2, "Resize scales").reshape(-1)]
        if len(scales) != len(shape) or scales[:2] != [1.0, 1.0]:
            raise ctx.unsupported(f"scales {scales} (only the spatial dims may be resized)")
        kwargs["scale_factor"] = tuple(scales[2:])
        out_spatial = [sympy.floor(d * sympy.Float(f)) if static(d) is None else int(math.floor(static(d) * f))
                       for d, f in zip(shape[2:], scales[2:])]
    out_shape = (*shape[:2], *(sympy.Integer(d) if isinstance(d, int) else d for d in out_spatial))
    if mode != "nearest" and ctm == "pytorch_half_pixel":
        firsts = [i for i, d in enumerate(out_spatial) if static(d) == 1 and static(shape[2 + i]) != 1]
        if firsts:
            index = tuple(slice(0, 1) if i - 2 in firsts else slice(None) for i in range(2 + max(firsts) + 1))
            x = ctx.call_function(operator.getitem, x, index)
            if len(firsts) == nd:  # every spatial axis is its first element: nothing left to resample
                if isinstance(x, Tensor):
                    x.shape = out_shape
                return x
            if "scale_factor" in kwargs:  # length 1 to length 1
                kwargs["scale_factor"] = tuple(1.0 if i in firsts else f for i, f in enumerate(kwargs["scale_factor"]))
    out = ctx.call_function(F.interpolate, x, **kwargs)
    if isinstance(out, Tensor):
        out.shape = out_shape
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
    length is added to those.
    """
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(data, SymVec) and isinstance(indices, Const) and indices.tensor.ndim <= 1:
        picked = [data.elems[i] for i in indices.tensor.reshape(-1).tolist()]
        return make_vec(picked, scalar=indices.tensor.ndim == 0, source=(ctx.name, "Gather"), dtype=data.dtype)
    shape = ctx.shape(data)
    axis = _norm_axis(axis, len(shape), ctx)
    if not isinstance(indices, Const):
        index_shape = ctx.shape(indices)
        flat = ctx.call_function(torch.reshape, indices, (-1,))
        size = ctx.dim_arg(shape[axis])  # i + size for i < 0 only: an index out of range still fails, as in ONNX
        flat = ctx.call_function(torch.where, ctx.call_function(operator.lt, flat, 0),
                                 ctx.call_function(operator.add, flat, size), flat, scalars=False)
        picked = ctx.call_function(torch.index_select, data, axis, flat)
        target = [*shape[:axis], *index_shape, *shape[axis + 1:]]
        return _reshape_to(ctx, picked, target)
    idx = indices.tensor.to(torch.int64)
    dim = static(shape[axis])
    if (idx < 0).any():
        if dim is None:
            raise ctx.fail("Gather with negative indices needs a static dimension")
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


def _reduce(ctx: OpContext, axes_from_input: bool) -> Value:
    """ReduceMean/Sum/Max/Min/Prod. A ReduceMean over all spatial axes of an N-d feature map ->
    ``nn.AdaptiveAvgPoolNd(1)`` (plus ``flatten`` when ``keepdims=0``), the form global average pooling has in a
    traced model. On integer tensors the result keeps the input's type (``torch.sum`` / ``prod`` would widen it to
    int64) and ReduceMean is the sum divided by the count, truncated, as onnxruntime computes it.
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
    if ctx.op_type == "ReduceMean" and integer:
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


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", since=13)
def convert_reduce_attr_axes(ctx: OpContext) -> Value:
    """Reductions with ``axes`` as attribute (ReduceMean/Max/Min/Prod before opset 18)."""
    return _reduce(ctx, axes_from_input=False)


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", since=18)
@register("ReduceSum", since=13)
def convert_reduce_input_axes(ctx: OpContext) -> Value:
    """Reductions with ``axes`` as input (ReduceSum since 13, the others since 18)."""
    return _reduce(ctx, axes_from_input=True)
