"""ONNX converters of pooling: MaxPool, AveragePool (explicit, asymmetric, ``SAME`` and ceil-mode pads; pads not
counted), GlobalAveragePool and GlobalMaxPool."""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sympy
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext

from snnconvert.convert.onnx_ops.core import Const, Tensor, Value, _torch_pads, all_static, register, static
from snnconvert.convert.onnx_ops.layers import _resolve_pads, _same_at_run_time, _spatial, _window_out

_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _pool_attrs(ctx: OpContext, table: dict, what: str) -> tuple[list, int, list, list, bool]:
    """A pooling node's ``kernel_shape``, its rank (one ``table`` has a module for), ``strides``, ``dilations`` and
    ``ceil_mode``, with ONNX's defaults."""
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in table:
        raise ctx.unsupported(f"{nd}-d {what} pooling")
    return (kernel, nd, list(ctx.attr("strides", [1] * nd)), list(ctx.attr("dilations", [1] * nd)),
            bool(ctx.attr("ceil_mode", 0)))


def _pool_same_at_run_time(ctx: OpContext, x: Value, kernel: list, strides: list, dilations: list,
                           build: Callable[[], nn.Module], value: float = 0.0) -> Value | None:
    """The pooling module ``build()`` makes (unpadded) over ``x`` padded for ``auto_pad=SAME_*`` at run time
    (:func:`_same_at_run_time`); ``None`` where the pads are static."""
    same = _same_at_run_time(ctx, x, len(kernel), kernel, strides, dilations, value)
    if same is None:
        return None
    if ctx.attr("ceil_mode", 0):
        raise ctx.unsupported("auto_pad SAME with ceil_mode=1 on a dynamic spatial size")
    padded, sizes = same
    out = ctx.call_module(build(), padded)
    if isinstance(out, Tensor):
        out.shape = (*ctx.shape(x)[:2], *sizes)
    return out


def _pool_pads(ctx: OpContext, spatial: tuple | None, kernel: list, strides: list, dilations: list,
               ceil_mode: bool) -> tuple[list[int], list[int]]:
    """A pooling node's (begin, end) pads; a static size whose windows all lie past the padded input (the spec's
    output length is 0, onnxruntime's and shape inference's 1: they truncate the negative quotient) is refused."""
    begin, end = _resolve_pads(ctx, spatial, kernel, strides, dilations)
    for i, n in enumerate(spatial or ()):
        if static(n) is None:
            continue
        span, eff = static(n) + begin[i] + end[i], (kernel[i] - 1) * dilations[i] + 1
        quotient = (span - eff) / strides[i]
        if (math.ceil(quotient) if ceil_mode else math.floor(quotient)) + 1 < 1:
            raise ctx.unsupported(f"a window of {eff} longer than the padded input ({static(n)} + {begin[i] + end[i]}"
                                  f" pads) along spatial dim {i}: no output position (onnxruntime computes one)")
    return begin, end


_ADAPTIVE_AVG = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ADAPTIVE_MAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}


def _pool_out_shape(ctx, x, out, kernel, strides, dilations, begin, end, ceil_mode) -> Value:
    """Set the symbolic output shape of a pooling module."""
    shape = ctx.shape_or_none(x)
    if isinstance(out, Tensor) and shape is not None:
        nd = len(kernel)
        spatial = shape[2:]
        out.shape = (*shape[:2], *[
            _window_out(spatial[i], kernel[i], strides[i], dilations[i], begin[i] + end[i], ceil_mode, begin[i])
            for i in range(nd)
        ])
    return out


def _drop_padding_windows(ctx: OpContext, out: Value, spatial: tuple | None, kernel: list, strides: list,
                          dilations: list, begin: list, end: list, fill: list | None = None) -> Value:
    """Cut off the last window where it starts in the end padding (ceil mode with explicit pads).

    ONNX, like torch with implicit pads, drops a ceil-mode window that would start in the end padding; on an
    explicitly padded input torch cannot tell padding from data and keeps it (one more output row or column).
    """
    if spatial is None or any(static(n) is None for n in spatial):
        raise ctx.unsupported("ceil_mode=1 with asymmetric or oversized pads on a dynamic spatial size")
    index = _kept_windows(spatial, kernel, strides, dilations, begin, end, fill)
    if all(item == slice(None) for item in index):
        return out
    return ctx.call_function(operator.getitem, out, index)


def _kept_windows(spatial: tuple, kernel: list, strides: list, dilations: list, begin: list, end: list,
                  fill: list | None = None) -> tuple:
    """The index keeping ONNX's ceil-mode windows of a pooling over an input explicitly padded by ``begin`` and
    ``end`` and then zero-filled by ``fill`` at the end (static sizes)."""
    index: list[Any] = [slice(None), slice(None)]
    for i, n in enumerate(static(n) for n in spatial):
        want = _window_out(n, kernel[i], strides[i], dilations[i], begin[i] + end[i], True, begin[i])
        got = _window_out(n + begin[i] + end[i] + (fill[i] if fill else 0), kernel[i], strides[i], dilations[i], 0,
                          True, 0)
        index.append(slice(None) if got == want else slice(0, int(want)))
    return tuple(index)


@register("MaxPool", since=12)
def convert_max_pool(ctx: OpContext) -> Value:
    """MaxPool -> ``nn.MaxPool1d/2d/3d`` (kernel, stride, dilation, ceil mode).

    Asymmetric pads, or pads wider than torch allows, become an explicit ``F.pad`` with ``-inf``. A used Indices
    output is unsupported.
    """
    if ctx.output_used(1):
        raise ctx.unsupported("the Indices output is used")
    if ctx.attr("storage_order", 0):
        raise ctx.unsupported("storage_order=1")
    x = ctx.input(0)
    kernel, nd, strides, dilations, ceil_mode = _pool_attrs(ctx, _MAX_POOL, "max")
    same = _pool_same_at_run_time(ctx, x, kernel, strides, dilations, value=float("-inf"), build=lambda: _MAX_POOL[nd](
        tuple(kernel), stride=tuple(strides), dilation=tuple(dilations)))
    if same is not None:
        return same
    begin, end = _pool_pads(ctx, _spatial(ctx, x, nd), kernel, strides, dilations, ceil_mode)
    shape_begin, shape_end = begin, end
    padding: Any = tuple(begin)
    too_wide = any(p > k // 2 for p, k in zip(begin, kernel))  # torch's limit: half the undilated kernel
    explicit = begin != end or too_wide
    if explicit:
        x = ctx.call_function(F.pad, x, _torch_pads(begin, end), value=float("-inf"))
        padding = 0
    module = _MAX_POOL[nd](tuple(kernel), stride=tuple(strides), padding=padding, dilation=tuple(dilations),
                           ceil_mode=ceil_mode)
    out = ctx.call_module(module, x)
    if explicit and ceil_mode:
        out = _drop_padding_windows(ctx, out, _spatial(ctx, ctx.input(0), nd), kernel, strides, dilations, begin, end)
    return _pool_out_shape(ctx, ctx.input(0), out, kernel, strides, dilations, shape_begin, shape_end, ceil_mode)


@register("AveragePool", since=11)
def convert_average_pool(ctx: OpContext) -> Value:
    """AveragePool -> ``nn.AvgPool1d/2d/3d`` with ``count_include_pad`` and ``ceil_mode``.

    Asymmetric or oversized pads become an explicit zero ``F.pad``; with ``count_include_pad=0`` (static spatial
    sizes) the result is then rescaled per window by a constant. A 3-d input (padded) shorter than the kernel, whose
    ceil-mode window overhangs it (torch's 3-d pool refuses it), is zero-filled to the kernel's length and rescaled the
    same way, the fill not counted. Dilations are unsupported.
    """
    x = ctx.input(0)
    kernel, nd, strides, dilations, ceil_mode = _pool_attrs(ctx, _AVG_POOL, "average")
    if any(d != 1 for d in dilations):
        raise ctx.unsupported(f"dilations={dilations}")
    count_include_pad = bool(ctx.attr("count_include_pad", 0))
    if count_include_pad:  # (not counting pads whose amounts are known only at run time: refused below)
        same = _pool_same_at_run_time(ctx, x, kernel, strides, dilations,
                                      build=lambda: _AVG_POOL[nd](tuple(kernel), stride=tuple(strides)))
        if same is not None:
            return same
    spatial = _spatial(ctx, x, nd)
    begin, end = _pool_pads(ctx, spatial, kernel, strides, dilations, ceil_mode)
    padding: Any = tuple(begin)
    too_wide = any(p > k // 2 for p, k in zip(begin, kernel))
    # torch's 3-d average pool refuses an input smaller than the kernel before padding it (1-d and 2-d do not)
    short = nd == 3 and any(begin) and spatial is not None and any(
        static(n) is not None and static(n) < k for n, k in zip(spatial, kernel))
    # ... and after: a ceil-mode window overhanging a (padded) input shorter than the kernel gets a zero fill
    fill = [max(0, k - (static(n) + b + e)) if nd == 3 and ceil_mode and static(n) is not None else 0
            for n, k, b, e in zip(spatial or [None] * nd, kernel, begin, end)]
    explicit = begin != end or too_wide or short or any(fill)
    exclude = explicit and ((not count_include_pad and any(begin + end)) or any(fill))
    if exclude and (spatial is None or not all_static(spatial)):
        raise ctx.unsupported("asymmetric or oversized pads with count_include_pad=0 on a dynamic spatial size")
    if explicit:
        x = ctx.call_function(F.pad, x, _torch_pads(begin, [e + f for e, f in zip(end, fill)]))
        padding = 0
    module = _AVG_POOL[nd](tuple(kernel), stride=tuple(strides), padding=padding, ceil_mode=ceil_mode,
                           count_include_pad=count_include_pad)
    out = ctx.call_module(module, x)
    if explicit and ceil_mode:
        out = _drop_padding_windows(ctx, out, spatial, kernel, strides, dilations, begin, end, fill)
    if exclude:
        # the windows' averages over the zero-padded input, rescaled by (torch's count) / (ONNX's count): the same
        # pooling of a map that is 1 where ONNX counts (the input; the pads with count_include_pad) gives that
        # fraction for every window (a constant of the static sizes; TF's "SAME" average pooling as tf2onnx writes it)
        with torch.no_grad():
            counted = F.pad(torch.ones(1, 1, *[static(n) for n in spatial]), _torch_pads(begin, end),
                            value=float(count_include_pad))
            share = module(F.pad(counted, _torch_pads([0] * nd, fill)))
            if ceil_mode:
                share = share[_kept_windows(spatial, kernel, strides, dilations, begin, end, fill)]
        out = ctx.call_function(operator.mul, out, Const(1.0 / share, (ctx.name, "AveragePool")))
    return _pool_out_shape(ctx, ctx.input(0), out, kernel, strides, dilations, begin, end, ceil_mode)


def _global_pool(ctx: OpContext, table: dict) -> Value:
    """A global pooling as an adaptive pooling module with output size 1."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    nd = len(shape) - 2
    if nd not in table:
        raise ctx.unsupported(f"rank-{len(shape)} input")
    out = ctx.call_module(table[nd](1), x)
    if isinstance(out, Tensor):
        out.shape = (*shape[:2], *[sympy.Integer(1)] * nd)
    return out


@register("GlobalAveragePool", since=1)
def convert_global_average_pool(ctx: OpContext) -> Value:
    """GlobalAveragePool -> ``nn.AdaptiveAvgPool1d/2d/3d(1)``."""
    return _global_pool(ctx, _ADAPTIVE_AVG)


@register("GlobalMaxPool", since=1)
def convert_global_max_pool(ctx: OpContext) -> Value:
    """GlobalMaxPool -> ``nn.AdaptiveMaxPool1d/2d/3d(1)``."""
    return _global_pool(ctx, _ADAPTIVE_MAX)
