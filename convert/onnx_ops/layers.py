"""ONNX converters of layers with weights (convolutions, Gemm / MatMul, normalisations), and the pads and
window sizes they share with pooling (``pooling.py``)."""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sympy
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext

from snnconvert.convert.onnx_ops.core import (
    Const,
    Tensor,
    Value,
    _float,
    _norm_axis,
    _same_shape,
    _torch_pads,
    all_static,
    broadcast_shapes,
    register,
    static,
)


# Layers with weights
# --------------------------------------------------------------------------------------------------------------------
def _window_out(
    size: Any, kernel: int, stride: int, dilation: int, pad_total: int, ceil_mode: bool, pad_begin: int
) -> Any:
    """Output length of a convolution / pooling window along one dimension (torch's rule for ceil mode)."""
    n = static(size)
    eff = (kernel - 1) * dilation + 1
    if n is None:
        if ceil_mode or size is None:
            return None
        return sympy.floor((size + pad_total - eff) / stride) + 1
    if ceil_mode:
        out = -(-(n + pad_total - eff) // stride) + 1
        if (out - 1) * stride >= n + pad_begin:
            out -= 1
        return sympy.Integer(out)
    return sympy.Integer((n + pad_total - eff) // stride + 1)


def _resolve_pads(
    ctx: OpContext, spatial: Sequence[Any], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(begin, end) pads from ``pads`` or ``auto_pad`` (SAME_UPPER puts the odd pad at the end)."""
    nd = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * nd)))
        return pads[:nd], pads[nd:]
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(f"auto_pad={auto_pad}")
    begin, end = [], []
    for i in range(nd):
        n = spatial[i] if spatial is not None and i < len(spatial) and spatial[i] is not None else _ANY_SIZE
        b, e, _ = _same_pads(n, (kernel[i] - 1) * dilations[i] + 1, strides[i], auto_pad == "SAME_UPPER")
        if not (b.is_Integer and e.is_Integer):  # a stride > 1 on a size known only at run time
            raise ctx.unsupported("auto_pad SAME with a stride > 1 on a dynamic spatial size (pads computed at "
                                  "run time: Conv, MaxPool and an AveragePool counting pads)")
        begin.append(int(b))
        end.append(int(e))
    return begin, end


#: a spatial size nothing is known of (SAME's pads with stride 1 do not depend on it)
_ANY_SIZE = sympy.Symbol("_any_size", integer=True, positive=True)


def _same_pads(n: Any, eff: int, stride: int, upper: bool) -> tuple[sympy.Expr, sympy.Expr, sympy.Expr]:
    """``auto_pad=SAME_*`` along one dim of size ``n`` (an int or a sympy expression) for a window reaching ``eff``
    elements: the begin and end pads and the output length ``ceil(n / stride)``, with ``total = max((out - 1) *
    stride + eff - n, 0)``, its odd element at the end for SAME_UPPER, at the beginning for SAME_LOWER (sympy values;
    integers where ``n`` is one or the stride is 1)."""
    out = (sympy.sympify(n) + stride - 1) // stride
    total = sympy.Max((out - 1) * stride + eff - n, 0)
    small = total // 2
    return (small, total - small, out) if upper else (total - small, small, out)


def _same_at_run_time(ctx: OpContext, x: Value, nd: int, kernel: list, strides: list, dilations: list,
                      value: float = 0.0) -> tuple[Value, list] | None:
    """``auto_pad=SAME_*`` with a stride > 1 along a spatial size known only at run time (tf2onnx's form for a Keras
    model without fixed input sizes): the pads (:func:`_same_pads`) depend on the size modulo the stride, so the
    input is padded by ``F.pad`` with amounts computed at run time and the window then runs unpadded. Returns the
    padded input and the output sizes, ``ceil(n / s)``; ``None`` where the pads are static (:func:`_resolve_pads`)
    or a size is not even a symbol."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    spatial = _spatial(ctx, x, nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or spatial is None or None in spatial or all(
            static(n) is not None or s == 1 for n, s in zip(spatial, strides)):
        return None
    begin, end, sizes = zip(*(_same_pads(n, (k - 1) * d + 1, s, auto_pad == "SAME_UPPER")
                              for n, k, s, d in zip(spatial, kernel, strides, dilations)))
    amounts = [a for b, e in zip(reversed(begin), reversed(end)) for a in (b, e)]
    padded = ctx.call_function(F.pad, x, ctx.dims_arg(amounts), value=value)
    if isinstance(padded, Tensor):
        padded.shape = (*ctx.shape(x)[:2], *(n + b + e for n, b, e in zip(spatial, begin, end)))
    return padded, sizes


def _spatial(ctx: OpContext, x: Value, nd: int) -> tuple | None:
    """The spatial dimensions of an N-d feature map, or ``None``."""
    shape = ctx.shape_or_none(x)
    return None if shape is None or len(shape) != nd + 2 else tuple(shape[2:])


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register("Conv", since=11)
def convert_conv(ctx: OpContext) -> Value:
    """Conv -> ``nn.Conv1d/2d/3d`` (weights constant) or ``F.conv*`` (weights computed at run time).

    Asymmetric pads (and ``auto_pad=SAME_*`` with an odd total) become an explicit ``F.pad`` node before a
    convolution with ``padding=0``.
    """
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    w_shape = ctx.shape(w)
    nd = len(w_shape) - 2
    if nd not in _CONV:
        raise ctx.unsupported(f"{nd}-d convolution")
    kernel = list(ctx.attr("kernel_shape", [static(d) for d in w_shape[2:]]))
    strides = list(ctx.attr("strides", [1] * nd))
    dilations = list(ctx.attr("dilations", [1] * nd))
    group = ctx.attr("group", 1)
    spatial = _spatial(ctx, x, nd)
    same = _same_at_run_time(ctx, x, nd, kernel, strides, dilations)
    if same is not None:
        x, out_sizes = same
        begin = end = [0] * nd
    else:
        begin, end = _resolve_pads(ctx, spatial, kernel, strides, dilations)
        out_sizes = [_window_out(spatial[i], kernel[i], strides[i], dilations[i], begin[i] + end[i], False, begin[i])
                     if spatial else None for i in range(nd)]
    padding: Any = tuple(begin)
    if begin != end:
        x = ctx.call_function(F.pad, x, _torch_pads(begin, end))
        padding = 0
    if not isinstance(w, Const) or (b is not None and not isinstance(b, Const)):
        out = ctx.call_function(
            _CONV_FN[nd], x, w, b, stride=tuple(strides), padding=padding, dilation=tuple(dilations), groups=group
        )
    else:
        weight = w.tensor
        module = _CONV[nd](
            in_channels=weight.shape[1] * group,
            out_channels=weight.shape[0],
            kernel_size=tuple(kernel),
            stride=tuple(strides),
            padding=padding,
            dilation=tuple(dilations),
            groups=group,
            bias=b is not None,
        )
        module.weight = nn.Parameter(_float(weight))
        if b is not None:
            module.bias = nn.Parameter(_float(b.tensor))
        out = ctx.call_module(module, x, name=ctx.param_name(1, 2))
    if isinstance(out, Tensor):
        batch = ctx.shape_or_none(ctx.input(0))
        out.shape = (batch[0] if batch else None, w_shape[0], *out_sizes)
    return out


@register("ConvTranspose", since=11)
def convert_conv_transpose(ctx: OpContext) -> Value:
    """ConvTranspose -> ``nn.ConvTranspose1d/2d/3d``.

    ``output_shape`` / ``auto_pad`` are turned into pads (``output_shape`` needs static spatial sizes; SAME's pads,
    ``output_padding + (kernel - 1) * dilation + 1 - stride`` for an output of ``input * stride``, do not depend on the
    input size); asymmetric pads use the common part as ``padding`` and crop the rest with a slice after the module.
    """
    x, b = ctx.input(0), ctx.input(2)
    weight = ctx.const(1, "ConvTranspose weight")
    bias = ctx.const(2, "ConvTranspose bias") if b is not None else None
    nd = weight.ndim - 2
    if nd not in _CONV_T:
        raise ctx.unsupported(f"{nd}-d transposed convolution")
    kernel = list(ctx.attr("kernel_shape", list(weight.shape[2:])))
    strides = list(ctx.attr("strides", [1] * nd))
    dilations = list(ctx.attr("dilations", [1] * nd))
    output_padding = list(ctx.attr("output_padding", [0] * nd))
    group = ctx.attr("group", 1)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape", None)
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        spatial = _spatial(ctx, x, nd)
        if output_shape is not None and (spatial is None or not all_static(spatial)):
            raise ctx.fail("ConvTranspose with output_shape needs static spatial input sizes")
        begin, end = [], []
        for i in range(nd):
            # the full output minus the wanted one: stride * (n - 1) + output_padding + k_eff - target
            reach = output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
            if output_shape is not None:
                total = strides[i] * (static(spatial[i]) - 1) + reach - list(output_shape)[-nd:][i]
            else:  # target n * stride, whatever n
                total = reach - strides[i]
            if total < 0:
                output_padding[i] -= total
                total = 0
            if auto_pad == "SAME_UPPER":
                begin.append(total // 2)
                end.append(total - total // 2)
            else:
                begin.append(total - total // 2)
                end.append(total // 2)
    elif auto_pad == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = list(ctx.attr("pads", [0] * (2 * nd)))
        begin, end = pads[:nd], pads[nd:]
    common = [min(p, q) for p, q in zip(begin, end)]
    module = _CONV_T[nd](
        in_channels=weight.shape[0],
        out_channels=weight.shape[1] * group,
        kernel_size=tuple(kernel),
        stride=tuple(strides),
        padding=tuple(common),
        output_padding=tuple(output_padding),
        groups=group,
        bias=bias is not None,
        dilation=tuple(dilations),
    )
    module.weight = nn.Parameter(_float(weight))
    if bias is not None:
        module.bias = nn.Parameter(_float(bias))
    out = ctx.call_module(module, x, name=ctx.param_name(1, 2))
    if begin != common or end != common:
        index: list[Any] = [slice(None), slice(None)]
        for i in range(nd):
            cut_begin, cut_end = begin[i] - common[i], end[i] - common[i]
            index.append(slice(cut_begin or None, -cut_end if cut_end else None))
        out = ctx.call_function(operator.getitem, out, tuple(index))
    return out


@register("Gemm", since=13)
def convert_gemm(ctx: OpContext) -> Value:
    """Gemm -> ``nn.Linear`` when B is constant (``alpha`` folded into the weight, ``beta*C`` into the bias; a
    C of shape [M, N] stays an add). Otherwise ``torch.matmul`` with explicit transposes and scales.
    """
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    if isinstance(b, Const) and isinstance(a, Tensor) and (c is None or isinstance(c, Const)):
        weight = b.tensor if trans_b else b.tensor.t()
        if alpha != 1.0:
            weight = weight * alpha
        n_out = weight.shape[0]
        bias = None
        if c is not None:
            c_tensor = c.tensor * beta if beta != 1.0 else c.tensor
            if c_tensor.numel() in (1, n_out) and c_tensor.ndim <= 2 and (c_tensor.ndim < 2 or c_tensor.shape[0] == 1):
                bias = c_tensor.reshape(-1).expand(n_out)
        if trans_a:
            a = ctx.call_function(torch.t, a)
        module = nn.Linear(weight.shape[1], n_out, bias=bias is not None)
        module.weight = nn.Parameter(_float(weight))
        if bias is not None:
            module.bias = nn.Parameter(_float(bias))
        out = ctx.call_module(module, a, name=ctx.param_name(1, 2))
        if c is not None and bias is None:
            out = ctx.call_function(operator.add, out, Const(c.tensor * beta, c.source))
        return out
    if trans_a:
        a = ctx.call_function(torch.t, a)
    if trans_b:
        b = ctx.call_function(torch.t, b)
    out = ctx.call_function(torch.matmul, a, b)
    if alpha != 1.0:
        out = ctx.call_function(operator.mul, out, alpha)
    if c is not None:
        c_term = ctx.call_function(operator.mul, c, beta) if beta != 1.0 else c
        out = ctx.call_function(operator.add, out, c_term)
    return out


def _fusable_bias(ctx: OpContext, n_out: int, rank: int | None) -> tuple[Const | None, Any]:
    """The Add that follows a MatMul with a constant [N] bias, when it is the MatMul's only consumer."""
    consumers = ctx.consumers(0)
    if len(consumers) != 1 or ctx.is_graph_output(0):
        return None, None
    add = consumers[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None, None
    others = [name for name in add.input if name != ctx.node.output[0]]
    if len(others) != 1:
        return None, None
    bias = ctx.value_by_name(others[0])
    if not isinstance(bias, Const) or bias.tensor.numel() != n_out or not bias.tensor.dtype.is_floating_point:
        return None, None
    if bias.tensor.ndim > 1 and (rank is None or bias.tensor.ndim > rank or bias.tensor.shape[-1] != n_out):
        return None, None
    return bias, add


@register("Einsum", since=12)
def convert_einsum(ctx: OpContext) -> Value:
    """Einsum -> ``torch.einsum`` (a matrix product: linear when every operand but one is a constant)."""
    equation = ctx.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    return ctx.call_function(torch.einsum, equation, *ctx.inputs(), scalars=False)


@register("MatMul", since=13)
def convert_matmul(ctx: OpContext) -> Value:
    """MatMul -> ``nn.Linear`` when the right operand is a constant 2-d weight; an ``Add`` of a constant [N] bias
    that is the MatMul's only consumer is absorbed as the Linear's bias. Otherwise ``torch.matmul``.
    """
    a, b = ctx.input(0), ctx.input(1)
    if isinstance(b, Const) and b.tensor.ndim == 2 and isinstance(a, Tensor) and b.tensor.dtype.is_floating_point:
        k, n = b.tensor.shape
        a_shape = ctx.shape_or_none(a)
        bias, add = _fusable_bias(ctx, n, len(a_shape) if a_shape is not None else None)
        module = nn.Linear(k, n, bias=bias is not None)
        module.weight = nn.Parameter(_float(b.tensor.t()))
        name = ctx.param_name(1)
        if bias is not None:
            module.bias = nn.Parameter(_float(bias.tensor.reshape(-1)))
            name = name or next(filter(None, map(ctx.param_name_of, [*add.input, bias.source[0]])), None)
        out = ctx.call_module(module, a, name=name)
        if isinstance(out, Tensor) and a_shape is not None:
            out.shape = (*a_shape[:-1], sympy.Integer(n))
        if add is not None:
            ctx.fuse(add, out)
        return out
    out = ctx.call_function(torch.matmul, a, b)
    if isinstance(out, Tensor):
        out.shape = _matmul_shape(ctx.shape_or_none(a), ctx.shape_or_none(b))
    return out


def _matmul_shape(a: tuple | None, b: tuple | None) -> tuple | None:
    """``torch.matmul``'s output shape: broadcast batch dims, then ``[n, m]`` (a 1-d operand drops its dim)."""
    if a is None or b is None or not a or not b:
        return None
    batch = broadcast_shapes([a[:-2], b[:-2]])
    if batch is None:
        return None
    return (*batch, *a[-2:-1], *b[-1:]) if len(b) > 1 else (*batch, *a[-2:-1])


_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@register("BatchNormalization", since=9)
def convert_batch_norm(ctx: OpContext) -> Value:
    """BatchNormalization (inference) -> ``nn.BatchNorm1d/2d/3d`` in eval mode with the running statistics.

    ``training_mode=1`` or used statistics outputs are unsupported; non-constant parameters fall back to
    ``F.batch_norm``.
    """
    if ctx.attr("training_mode", 0):
        raise ctx.unsupported("training_mode=1")
    if any(ctx.output_used(i) for i in (1, 2)):
        raise ctx.unsupported("running statistics outputs are used")
    x = ctx.input(0)
    params = [ctx.input(i) for i in range(1, 5)]
    eps = ctx.attr("epsilon", 1e-5)
    rank = len(ctx.shape(x))
    if not all(isinstance(p, Const) for p in params) or rank not in _BATCH_NORM:
        scale, bias, mean, var = params
        return _same_shape(ctx, ctx.call_function(F.batch_norm, x, mean, var, scale, bias, False, 0.0, eps), x)
    scale, bias, mean, var = (p.tensor for p in params)
    module = _BATCH_NORM[rank](scale.numel(), eps=eps, momentum=1.0 - ctx.attr("momentum", 0.9))
    module.weight = nn.Parameter(_float(scale))
    module.bias = nn.Parameter(_float(bias))
    module.running_mean.copy_(mean.float())
    module.running_var.copy_(var.float())
    module.eval()
    return _same_shape(ctx, ctx.call_module(module, x, name=ctx.param_name(1, 2)), x)


def _layer_norm_param(ctx: OpContext, tensor: torch.Tensor, normalized: list[int], rank: int,
                      what: str) -> torch.Tensor:
    """A constant Scale / B broadcast to the normalised shape. ONNX only asks it to broadcast with X: leading unit
    dims (``[1, C]`` for a normalised ``[C]``, as onnxruntime accepts) are dropped first, which cannot change the
    result's shape while X (of rank ``rank``) has at least as many dims."""
    extra = tensor.dim() - len(normalized)
    if 0 < extra and tensor.dim() <= rank and all(d == 1 for d in tensor.shape[:extra]):
        tensor = tensor.reshape(tensor.shape[extra:])
    try:
        return tensor.expand(normalized)
    except RuntimeError:
        raise ctx.unsupported(f"{what} of shape {list(tensor.shape)} (it must broadcast to the normalised dims "
                              f"{normalized} without adding dims to X)") from None


@register("LayerNormalization", since=17)
def convert_layer_norm(ctx: OpContext) -> Value:
    """LayerNormalization -> ``nn.LayerNorm`` over the static trailing dimensions from ``axis`` on (scale and
    bias constant), else ``F.layer_norm``.
    """
    if any(ctx.output_used(i) for i in (1, 2)):
        raise ctx.unsupported("Mean / InvStdDev outputs are used")
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    shape = ctx.shape(x)
    axis = _norm_axis(ctx.attr("axis", -1), len(shape), ctx)
    eps = ctx.attr("epsilon", 1e-5)
    normalized = shape[axis:]
    if not all_static(normalized):
        raise ctx.fail("LayerNormalization needs static sizes for the normalised dimensions")
    normalized = [static(d) for d in normalized]
    if isinstance(scale, Const) and (bias is None or isinstance(bias, Const)):
        module = nn.LayerNorm(normalized, eps=eps, elementwise_affine=True, bias=bias is not None)
        module.weight = nn.Parameter(_float(_layer_norm_param(ctx, scale.tensor, normalized, len(shape), "Scale")))
        if bias is not None:
            module.bias = nn.Parameter(_float(_layer_norm_param(ctx, bias.tensor, normalized, len(shape), "B")))
        out = ctx.call_module(module, x, name=ctx.param_name(1, 2))
    else:
        out = ctx.call_function(F.layer_norm, x, normalized, scale, bias, eps)
    return _same_shape(ctx, out, x)


@register("InstanceNormalization", since=6)
def convert_instance_norm(ctx: OpContext) -> Value:
    """InstanceNormalization -> ``F.instance_norm`` (a graded unit after conversion; torch's TorchScript exporter
    writes ``nn.GroupNorm`` as a reshape to ``[N, groups, -1]``, this op with unit scale, and the affine map).

    Over a single spatial element (``[N, C, 1, 1]`` after a global pool, or one element per group) every value is its
    mean, so the result is the bias; ``F.instance_norm`` refuses such an input at run time: ``x * 0 + bias`` instead
    (affine in x, so the batch and NaNs carry through as in onnxruntime). Where a spatial size is known only at run
    time (it may be 1 then): ``F.group_norm`` with one group per channel, the same normalisation, which takes a
    single element."""
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    if not isinstance(scale, Const) or not isinstance(bias, Const):
        raise ctx.fail("InstanceNormalization scale and bias must be constants")
    shape = ctx.shape_or_none(x)
    if shape is not None and len(shape) >= 2 and all(static(d) == 1 for d in shape[2:]):
        per_channel = bias.tensor.to(torch.float32).reshape(-1, *[1] * (len(shape) - 2))
        zero = ctx.call_function(operator.mul, x, 0.0)
        return _same_shape(ctx, ctx.call_function(operator.add, zero, Const(per_channel, bias.source)), x)
    plain = bool((scale.tensor == 1).all()) and not bool(bias.tensor.any())
    eps = float(ctx.attr("epsilon", 1e-5))
    affine = {} if plain else {"weight": scale, "bias": bias}
    channels = static(shape[1]) if shape is not None and len(shape) >= 3 else None
    if channels is not None and any(static(d) is None for d in shape[2:]):
        return _same_shape(ctx, ctx.call_function(F.group_norm, x, channels, scalars=False, eps=eps, **affine), x)
    return _same_shape(ctx, ctx.call_function(F.instance_norm, x, scalars=False, eps=eps, **affine), x)


@register("LRN", since=13)
def convert_lrn(ctx: OpContext) -> Value:
    """LRN (AlexNet, GoogLeNet, CaffeNet of the ONNX Model Zoo) -> ``nn.LocalResponseNorm`` (a graded unit after
    conversion). Its channel window ``[c - (size - 1) // 2, c + ceil((size - 1) / 2)]`` is PyTorch's for an odd
    ``size`` only (PyTorch puts the longer side first): an even size is unsupported."""
    size = int(ctx.attr("size"))
    if size % 2 == 0:
        raise ctx.unsupported(f"an even size ({size}): PyTorch's window is longer on the other side")
    module = nn.LocalResponseNorm(size, alpha=float(ctx.attr("alpha", 1e-4)), beta=float(ctx.attr("beta", 0.75)),
                                  k=float(ctx.attr("bias", 1.0)))
    return _same_shape(ctx, ctx.call_module(module, ctx.input(0)), ctx.input(0))
