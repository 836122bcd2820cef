"""ONNX converters that rearrange or resample the spatial dims: DepthToSpace / SpaceToDepth, Pad and Resize."""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import sympy
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext

from snnconvert.convert.onnx_ops.core import (
    Const,
    Tensor,
    Value,
    _norm_axis,
    _torch_pads,
    register,
    static,
    sym_div,
    sym_eq,
)
from snnconvert.convert.onnx_ops.shapes import _reshape_to


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
    in_shape = ctx.shape_or_none(x)
    if mode == "constant":
        grow = ([max(p, 0) for p in begin], [max(p, 0) for p in end])
        if any(p < 0 for p in begin + end) and any(grow[0] + grow[1]):
            # the padded tensor is cut, not the input (F.pad would cut first: a cut wider than the dim fails)
            x = ctx.call_function(F.pad, x, _torch_pads(*grow), **kwargs)
            begin_cut, end_cut = [min(p, 0) for p in begin], [min(p, 0) for p in end]
            out = ctx.call_function(F.pad, x, _torch_pads(begin_cut, end_cut))
        else:
            out = ctx.call_function(F.pad, x, _torch_pads(begin, end), **kwargs)
    elif not any(begin + end):
        return x
    else:
        if mode == "wrap" and (any(p < 0 for p in begin + end) or in_shape is not None and any(
                static(d) is not None and max(b, e) > static(d) for d, b, e in zip(in_shape, begin, end))):
            raise ctx.unsupported("mode=wrap with negative pads or pads wider than the dim (PyTorch's circular "
                                  "padding wraps once and does not crop)")
        padded, pads, unsqueezed = _edge_pads(ctx, x, rank, begin, end, mode)
        out = ctx.call_function(F.pad, padded, pads, mode=_PAD_MODES[mode])
        if unsqueezed:
            out = ctx.call_function(torch.squeeze, out, 0)
    if isinstance(out, Tensor) and in_shape is not None:  # the padded sizes: later shape arithmetic stays static
        out.shape = tuple(None if d is None else d + b + e for d, b, e in zip(in_shape, begin, end))
    return out


_RESIZE_MODES = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
                 ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear",
                 ("cubic", 2): "bicubic"}
#: Coordinate transformations of the spec computed here (source positions from static sizes); ``tf_crop_and_resize``
#: (a region of interest and an extrapolation value) is not.
_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                "half_pixel_symmetric")
_NEAREST_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@register("Resize", since=13)
def convert_resize(ctx: OpContext) -> Value:
    """Resize of the spatial dims, linear in the input whatever the mode:

    - ``nearest`` with ``asymmetric`` coordinates and ``floor`` rounding: ``F.interpolate(mode="nearest")``; other
      coordinates and roundings (the ONNX defaults, TF's ``tf_half_pixel_for_nn``) on static sizes and whole-number
      factors: source indices picked per axis (:func:`_resize_by_taps`);
    - ``linear`` (1-3 d) and ``cubic`` (2-d, ``cubic_coeff_a = -0.75``) with ``half_pixel`` /
      ``pytorch_half_pixel`` coordinates: ``F.interpolate(align_corners=False)``; with ``align_corners``:
      ``align_corners=True``;
    - other ``linear`` and ``cubic`` forms on static sizes (``asymmetric`` coordinates as TF 1's bilinear resize
      writes them, ``half_pixel_symmetric``, TF's bicubic ``cubic_coeff_a = -0.5``, ``exclude_outside``, inputs of
      any rank): per axis, each output position as the weighted sum of its 2 (linear) or 4 (cubic) source positions
      with the spec's weights, the positions clamped to the edge (:func:`_resize_by_taps`).

    Output sizes come from ``sizes`` (static, or computed from shapes: ``F.interpolate(x, size=y.shape[2:])``; a
    static-batch export's ``sizes`` lead with the batch size, which then follows the input's) or from constant
    ``scales`` (``scale_factor``: PyTorch maps coordinates with 1/scale, as ONNX does). Antialiasing, ``axes``,
    ``tf_crop_and_resize`` and resizing of the batch or channel dims are unsupported.

    ``pytorch_half_pixel`` maps an output axis of length 1 to input coordinate 0 where PyTorch (and ``half_pixel``)
    take the window's centre: such an axis (of a static output length) is narrowed to its first element and kept
    at length 1. An output length that is dynamic is assumed not to be 1 there.
    """
    x = ctx.input(0)
    shape = ctx.shape(x)
    nd = len(shape) - 2
    mode, ctm = ctx.attr("mode", "nearest"), ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic") or nd < 1:
        raise ctx.unsupported(f"mode={mode} on a rank-{len(shape)} input")
    if ctx.attr("antialias", 0):
        raise ctx.unsupported("antialias=1")
    if ctx.attr("axes", None) is not None or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.unsupported("axes / keep_aspect_ratio_policy")
    if ctm not in _COORDINATES:
        raise ctx.unsupported(f"coordinate_transformation_mode={ctm}")
    nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
    cubic_a, exclude_outside = float(ctx.attr("cubic_coeff_a", -0.75)), bool(ctx.attr("exclude_outside", 0))
    if mode == "nearest":
        if nearest_mode not in _NEAREST_ROUNDING:
            raise ctx.unsupported(f"nearest_mode={nearest_mode}")
        by_taps = (ctm, nearest_mode) != ("asymmetric", "floor") or nd > 3  # else F.interpolate's nearest
    else:
        by_taps = ((mode, nd) not in _RESIZE_MODES or exclude_outside or abs(cubic_a + 0.75) > 1e-6
                   or ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"))
    sizes = ctx.input(3)
    kwargs: dict[str, Any] = {}
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
    if any(static(d) == 0 for d in out_spatial):
        raise ctx.unsupported(f"an output size of 0 ({[str(d) for d in out_spatial]}: an empty tensor)")
    out_shape = (*shape[:2], *(sympy.Integer(d) if isinstance(d, int) else d for d in out_spatial))
    if by_taps:
        what = f"{mode} with {ctm} coordinates" + (f" and {nearest_mode} rounding" if mode == "nearest" else "")
        return _resize_by_taps(ctx, x, out_shape, kwargs.get("scale_factor"), what, ctm=ctm, mode=mode,
                               rounding=nearest_mode, cubic_a=cubic_a, exclude_outside=exclude_outside)
    kwargs["mode"] = _RESIZE_MODES[mode, nd]
    if mode != "nearest":
        kwargs["align_corners"] = ctm == "align_corners"
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


def _resize_by_taps(ctx: OpContext, x: Value, out_shape: tuple, scale_factor: tuple | None, what: str,
                    **taps: Any) -> Value:
    """A Resize that ``F.interpolate`` does not express, to ``out_shape`` on static sizes (``scale_factor``: the
    given scales, else output / input sizes): per spatial axis, :func:`_resize_taps` (with ``taps``) gives each
    output position's source indices ``[n_out, K]`` and their weights (``None`` for one tap of weight 1: nearest);
    the sources are picked with one ``torch.index_select`` and, for K > 1, weighted and summed over the taps. An
    axis whose size and scale stay 1 is left as it is (onnxruntime does not resample it either, whatever the
    coordinate mode)."""
    spatial = [static(d) for d in ctx.shape(x)[2:]]
    out_sizes = [static(d) for d in out_shape[2:]]
    if None in spatial or None in out_sizes:
        raise ctx.unsupported(f"{what} on a dynamic size (its source positions are computed from static sizes)")
    scales = ([np.float32(f) for f in scale_factor] if scale_factor is not None
              else [np.float32(o) / np.float32(i) for i, o in zip(spatial, out_sizes)])
    out = x
    rank = len(out_shape)
    for axis, (n_in, n_out, scale) in enumerate(zip(spatial, out_sizes, scales), start=2):
        if n_in == n_out and scale == 1:
            continue
        try:
            index, weight = _resize_taps(n_in, n_out, scale, **taps)
        except ValueError as err:
            raise ctx.unsupported(f"{what} {err}") from None
        source = Const(torch.from_numpy(index.reshape(-1)), (ctx.name, "Resize"))
        out = ctx.call_function(torch.index_select, out, axis, source)
        if weight is not None:
            k = index.shape[1]
            per_tap = torch.from_numpy(weight.astype(np.float32)).reshape(n_out, k, *[1] * (rank - 1 - axis))
            out = ctx.call_method("unflatten", out, axis, (n_out, k))
            out = ctx.call_function(operator.mul, out, Const(per_tap, (ctx.name, "Resize")))
            out = ctx.call_function(torch.sum, out, axis + 1)
    if isinstance(out, Tensor):
        out.shape = out_shape
    return out


def _source_coordinates(n_in: int, n_out: int, scale: np.float32, ctm: str) -> np.ndarray:
    """ONNX Resize's input coordinate of every output position along one axis, in float32 as onnxruntime computes
    it (``pytorch_half_pixel`` to length 1: coordinate 0, the spec's text and onnxruntime)."""
    f32 = np.float32
    x = np.arange(n_out, dtype=f32)
    if ctm == "asymmetric":
        return x / scale
    if ctm == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / scale
    if ctm == "align_corners":
        return np.zeros_like(x) if n_out == 1 else x * f32(n_in - 1) / f32(n_out - 1)
    if ctm == "pytorch_half_pixel" and n_out == 1:
        return np.zeros_like(x)
    offset = f32(0)
    if ctm == "half_pixel_symmetric":  # centres the output canvas when n_out is not n_in * scale
        offset = f32(n_in) / f32(2) * (f32(1) - f32(n_out) / (scale * f32(n_in)))
    return offset + (x + f32(0.5)) / scale - f32(0.5)


def _resize_taps(n_in: int, n_out: int, scale: np.float32, ctm: str, mode: str, rounding: str, cubic_a: float,
                 exclude_outside: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Source indices ``[n_out, K]`` (clamped to the edge, as the spec pads) and weights along one axis."""
    orig = _source_coordinates(n_in, n_out, scale, ctm)
    if mode == "nearest":
        enlarged = n_out % n_in == 0 and scale == n_out // n_in
        shrunk = n_in % n_out == 0 and np.float32(1) / scale == n_in // n_out  # every k-th element, no ties
        if not (enlarged or shrunk):
            # other factors put source positions near rounding ties, where onnxruntime's arithmetic and the
            # spec's differ (seen when comparing random cases with onnxruntime)
            raise ValueError(f"by a factor other than a whole number or its inverse ({n_in} -> {n_out})")
        if rounding == "floor":
            index = np.floor(orig)
        elif rounding == "ceil":
            index = np.ceil(orig)
        else:
            tie = orig == np.floor(orig) + np.float32(0.5)
            index = np.where(tie, np.floor(orig) if rounding == "round_prefer_floor" else np.ceil(orig),
                             np.round(orig))
        return np.clip(index, 0, n_in - 1).astype(np.int64)[:, None], None
    # the spec's neighbours: base = the last index below the coordinate, ratio in (0, 1] (an integer coordinate has
    # ratio 1: the same value as ratio 0 one index up)
    orig = orig.astype(np.float64)
    base = np.ceil(orig) - 1
    r = (orig - base)[:, None]
    if mode == "linear":
        offsets, weight = np.arange(2), np.concatenate([1 - r, r], axis=1)
    else:
        a = cubic_a
        near, far = np.concatenate([r, 1 - r], axis=1), np.concatenate([r + 1, 2 - r], axis=1)
        inner = ((a + 2) * near - (a + 3)) * near * near + 1  # |d| <= 1
        outer = ((a * far - 5 * a) * far + 8 * a) * far - 4 * a  # 1 < |d| < 2
        offsets, weight = np.arange(-1, 3), np.stack([outer[:, 0], inner[:, 0], inner[:, 1], outer[:, 1]], axis=1)
    index = base[:, None] + offsets
    if exclude_outside:
        weight = np.where((index < 0) | (index >= n_in), 0.0, weight)
        weight = weight / weight.sum(axis=1, keepdims=True)
    return np.clip(index, 0, n_in - 1).astype(np.int64), weight
