"""Per-op converters of the ONNX front end, registered by (domain, op_type, since_version).

Each converter receives an :class:`~snnconvert.convert.onnx_import.OpContext` for one ONNX node and returns one
value per node output. Values come in three kinds:

- :class:`Const`: a tensor known at import time (initializers, ``Constant`` nodes, anything folded from them);
- :class:`SymVec`: a 0-d or 1-d int64 "shape tensor" whose entries are sympy expressions of the input's dynamic
  dimensions (``Shape(x)`` of a ``[batch, 3, 224, 224]`` tensor is ``SymVec((batch, 3, 224, 224))``);
- :class:`Tensor`: an fx node computed at run time, with its shape as sympy expressions where known.

Shape sub-graphs (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` and friends) are therefore evaluated while
importing: a ``Reshape`` receives a target shape such as ``(batch, 768, 196)`` and emits ``reshape(x, [-1, 768, 196])``,
so the module keeps working for any batch size, including a ``[T*B, ...]`` input. Only when more than one entry of a
target shape is dynamic does the graph read ``x.size(i)`` at run time.

Weights become real modules (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``, ``nn.LayerNorm``, ...) so the passes
see the same graph as from ``torch.fx`` tracing; element-wise ops become ``call_function`` nodes on ``operator`` /
``torch`` functions, the same targets that tracing produces.

Converters raise ``ctx.unsupported(reason)`` for an attribute combination they cannot express (collected with the
unknown ops into one ``UnsupportedOpError``) and ``ctx.fail(message)`` (``OnnxImportError``) for a malformed model or
a dynamic shape that cannot be resolved.

What each op becomes (default domain, opsets 13-21):

=====================================================  ==============================================================
ONNX                                                   fx
=====================================================  ==============================================================
Conv / ConvTranspose (1-3 d)                           ``nn.ConvNd`` / ``nn.ConvTransposeNd`` (+ ``F.pad`` or a crop
                                                       for asymmetric pads)
Gemm, MatMul with a constant 2-d weight                ``nn.Linear`` (a following ``Add`` of a constant bias is
                                                       absorbed); otherwise ``torch.matmul``
BatchNormalization, LayerNormalization                 ``nn.BatchNormNd`` (eval), ``nn.LayerNorm``
InstanceNormalization                                  ``F.instance_norm``
MaxPool, AveragePool, GlobalAveragePool/MaxPool        ``nn.MaxPoolNd``, ``nn.AvgPoolNd``,
                                                       ``nn.AdaptiveAvgPoolNd(1)`` / ``nn.AdaptiveMaxPoolNd(1)``
ReduceMean over all spatial axes                       ``nn.AdaptiveAvgPoolNd(1)``
Relu, Clip [0, 6] / [0, inf), LeakyRelu, Sigmoid,      ``nn.ReLU``, ``nn.ReLU6`` / ``nn.ReLU``, ``nn.LeakyReLU``,
Tanh, Gelu, Softmax, LogSoftmax, HardSwish, Elu, ...   ``nn.Sigmoid``, ``nn.Tanh``, ``nn.GELU``, ``nn.Softmax``, ...
Add, Sub, Mul, Div, Pow, comparisons                   ``operator.add`` & co. (constants: scalars or buffers)
Sqrt, Erf, Exp, Where, Max, Min, Mod, Cast, ...        ``torch.sqrt`` & co., ``x.to(dtype)``
Reshape, Flatten, Transpose, Concat, Split, Slice,     ``torch.reshape`` (``-1`` for the dynamic entry),
Squeeze, Unsqueeze, Pad, Expand, Tile, Gather,        ``torch.flatten``, ``torch.permute``, ``torch.cat``, slicing, ...
GatherND (constant indices)                            (GatherND: ``torch.index_select`` of flattened leading dims)
Resize (spatial dims; nearest asymmetric + floor,      ``F.interpolate`` (``mode``, ``align_corners``, ``size`` or
linear / cubic half-pixel or align-corners)            ``scale_factor``)
Shape, Size, ConstantOfShape, Range, Constant          evaluated while importing (no fx node); ConstantOfShape /
                                                       Range of a dynamic size: ``torch.full`` / ``torch.arange``
Identity, Dropout (inference)                          nothing: the input is passed through
=====================================================  ==============================================================
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy
import torch
import torch.nn.functional as F
from torch import fx, nn

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_import import OpContext

DEFAULT_DOMAIN = ""
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Const:
    """A tensor known at import time; ``source`` is (name, op_type) of what produced it, for node metadata."""

    tensor: torch.Tensor
    source: tuple[str, str] = ("", "Constant")


@dataclass(eq=False)
class SymVec:
    """A 0-d (``scalar``) or 1-d int64 tensor whose entries are sympy expressions of dynamic dimensions."""

    elems: tuple[sympy.Expr, ...]
    scalar: bool = False


@dataclass(eq=False)
class Tensor:
    """A run-time value: an fx node, with its shape (sympy expressions, ``None`` where unknown) and dtype."""

    node: fx.Node
    shape: tuple[sympy.Expr | None, ...] | None = None
    dtype: torch.dtype | None = None


Value = Const | SymVec | Tensor
Converter = Callable[["OpContext"], Any]


class UnsupportedConfigError(Exception):
    """Raised by a converter for a node whose attributes cannot be expressed; collected, not fatal at once."""


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------
_REGISTRY: dict[tuple[str, str], list[tuple[int, Converter]]] = {}


def register(*op_types: str, since: int, domain: str = DEFAULT_DOMAIN) -> Callable[[Converter], Converter]:
    """Register a converter for ``op_types`` of ``domain`` valid from opset ``since`` on."""

    def wrap(fn: Converter) -> Converter:
        for op_type in op_types:
            entries = _REGISTRY.setdefault((_norm_domain(domain), op_type), [])
            entries.append((since, fn))
            entries.sort(key=lambda entry: entry[0])
        return fn

    return wrap


def lookup(domain: str, op_type: str, opset: int) -> Converter | None:
    """The converter of the highest since-version not above ``opset``, or ``None``."""
    best = None
    for since, fn in _REGISTRY.get((_norm_domain(domain), op_type), []):
        if since <= opset:
            best = fn
    return best


def supported_op_types(domain: str = DEFAULT_DOMAIN) -> list[str]:
    """Sorted op types that have a converter in ``domain``."""
    key = _norm_domain(domain)
    return sorted(op for dom, op in _REGISTRY if dom == key)


def _norm_domain(domain: str) -> str:
    """The registry's spelling of the default domain (``''``)."""
    return "" if domain in ("", "ai.onnx") else domain


# --------------------------------------------------------------------------------------------------------------------
# Symbolic dimension helpers
# --------------------------------------------------------------------------------------------------------------------
def static(dim: Any) -> int | None:
    """``dim`` as a Python int when it is a known integer, else ``None``."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return dim
    if isinstance(dim, sympy.Basic) and dim.is_Integer:
        return int(dim)
    return None


def all_static(dims: Sequence[Any] | None) -> bool:
    """Whether every entry of ``dims`` is a known integer."""
    return dims is not None and all(static(d) is not None for d in dims)


def sym_prod(dims: Sequence[Any]) -> sympy.Expr:
    """The expanded product of dimension expressions."""
    return sympy.expand(sympy.Mul(*[sympy.Integer(1), *dims]))


def sym_div(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """Integer division of non-negative dimension expressions (exact where possible, else floor)."""
    if static(b) == 0:
        raise ZeroDivisionError("division of a shape value by zero")
    quotient = sympy.cancel(sympy.sympify(a) / b)
    numer, denom = sympy.fraction(sympy.together(quotient))
    if static(denom) == 1 and _integer_polynomial(numer):
        return sympy.expand(numer)
    return sympy.floor(quotient)


def _integer_polynomial(expr: sympy.Expr) -> bool:
    """Whether ``expr`` is a polynomial with integer coefficients."""
    if expr.is_Integer:
        return True
    symbols = sorted(expr.free_symbols, key=str)
    if not expr.is_polynomial(*symbols):
        return False
    return all(c.is_Integer for c in sympy.Poly(expr, *symbols).coeffs())


def sym_eq(a: sympy.Expr, b: sympy.Expr) -> bool | None:
    """True/False when decidable from the dimensions being positive integers, else ``None``."""
    diff = sympy.expand(a - b)
    if diff == 0:
        return True
    if diff.is_nonzero or diff.is_positive or diff.is_negative:
        return False
    return None


def to_int_list(value: Value) -> tuple[list[sympy.Expr], bool] | None:
    """Entries of a 0-d / 1-d integer Const or a SymVec, with a flag for 0-d; ``None`` for anything else."""
    if isinstance(value, SymVec):
        return list(value.elems), value.scalar
    if isinstance(value, Const):
        tensor = value.tensor
        if tensor.ndim > 1 or tensor.dtype.is_floating_point or tensor.is_complex():
            return None
        return [sympy.Integer(int(v)) for v in tensor.reshape(-1).tolist()], tensor.ndim == 0
    return None


def make_vec(elems: Sequence[Any], scalar: bool = False, source: tuple[str, str] = ("", "Shape")) -> Value:
    """A Const when every entry is static, else a SymVec."""
    elems = [sympy.sympify(e) for e in elems]
    if all(static(e) is not None for e in elems):
        data = torch.tensor([int(e) for e in elems], dtype=torch.int64)
        return Const(data.reshape(()) if scalar else data, source)
    return SymVec(tuple(elems), scalar)


def _broadcast_lists(a: list, b: list, ctx: OpContext) -> tuple[list, list]:
    """Broadcast two 1-d shape value entry lists (length 1 against length n)."""
    if len(a) == len(b):
        return a, b
    if len(a) == 1:
        return a * len(b), b
    if len(b) == 1:
        return a, b * len(a)
    raise ctx.fail(f"cannot broadcast shape values of lengths {len(a)} and {len(b)}")


def broadcast_shapes(shapes: Sequence[Sequence[Any] | None]) -> tuple | None:
    """Numpy broadcasting of symbolic shapes; unknown entries (``None``) where not decidable."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Any] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        non_one = [d for d in dims if static(d) != 1]
        if not non_one:
            out.append(sympy.Integer(1))
            continue
        first = non_one[0]
        out.append(first if all(d is not None and sym_eq(d, first) for d in non_one) else None)
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------------------------------
def _norm_axis(axis: int, rank: int, ctx: OpContext) -> int:
    """``axis`` in ``[0, rank)``; an OnnxImportError when out of range."""
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX ``[b1..bn, e1..en]`` order to ``F.pad``'s last-dimension-first ``[bn, en, ..., b1, e1]``."""
    out: list[int] = []
    for b, e in zip(reversed(list(begin)), reversed(list(end)), strict=True):
        out += [int(b), int(e)]
    while len(out) > 2 and out[-1] == 0 and out[-2] == 0:
        out = out[:-2]
    return out


def _float(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy for module parameters."""
    return tensor.detach().to(torch.float32).clone()


def _same_shape(ctx: OpContext, value: Value, like: Value) -> Value:
    """Give ``value`` the shape of ``like`` (element-wise ops and activations)."""
    if isinstance(value, Tensor) and isinstance(like, Tensor):
        value.shape = like.shape
    return value


def _scalarize(value: Value, other_rank: int | None) -> Any:
    """A one-element Const as a Python number when broadcasting with it cannot change the other operand's rank."""
    if isinstance(value, Const) and value.tensor.numel() == 1 and other_rank is not None:
        if value.tensor.ndim == 0 or value.tensor.ndim <= other_rank:
            return value.tensor.reshape(()).item()
    return value


# --------------------------------------------------------------------------------------------------------------------
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
    out = ctx.call_function(torch.arange, *ctx.dims_arg(bounds), dtype=torch.int64)
    out.shape, out.dtype = (sympy.Max(sympy.ceiling((limit - start) / delta), 0),), torch.int64
    return out


# --------------------------------------------------------------------------------------------------------------------
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
        eff = (kernel[i] - 1) * dilations[i] + 1
        if strides[i] == 1:
            total = eff - 1
        else:
            n = static(spatial[i]) if spatial is not None and i < len(spatial) else None
            if n is None:
                raise ctx.fail("auto_pad SAME with stride > 1 needs static spatial input sizes")
            out = -(-n // strides[i])
            total = max((out - 1) * strides[i] + eff - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin, end


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
    begin, end = _resolve_pads(ctx, spatial, kernel, strides, dilations)
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
        dims = [_window_out(spatial[i], kernel[i], strides[i], dilations[i], begin[i] + end[i], False, begin[i])
                if spatial else None for i in range(nd)]
        out.shape = (batch[0] if batch else None, w_shape[0], *dims)
    return out


@register("ConvTranspose", since=11)
def convert_conv_transpose(ctx: OpContext) -> Value:
    """ConvTranspose -> ``nn.ConvTranspose1d/2d/3d``.

    ``output_shape`` / ``auto_pad`` are turned into pads (static spatial sizes needed); asymmetric pads use the common
    part as ``padding`` and crop the rest with a slice after the module.
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
        if spatial is None or not all_static(spatial):
            raise ctx.fail("ConvTranspose with output_shape or auto_pad SAME needs static spatial input sizes")
        if output_shape is not None:
            target = list(output_shape)[-nd:]
        else:
            target = [static(s) * st for s, st in zip(spatial, strides)]
        begin, end = [], []
        for i in range(nd):
            full = strides[i] * (static(spatial[i]) - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
            total = full - target[i]
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
        module.weight = nn.Parameter(_float(scale.tensor.expand(normalized)))
        if bias is not None:
            module.bias = nn.Parameter(_float(bias.tensor.expand(normalized)))
        out = ctx.call_module(module, x, name=ctx.param_name(1, 2))
    else:
        out = ctx.call_function(F.layer_norm, x, normalized, scale, bias, eps)
    return _same_shape(ctx, out, x)


@register("InstanceNormalization", since=6)
def convert_instance_norm(ctx: OpContext) -> Value:
    """InstanceNormalization -> ``F.instance_norm`` (a graded unit after conversion; torch's TorchScript exporter
    writes ``nn.GroupNorm`` as a reshape to ``[N, groups, -1]``, this op with unit scale, and the affine map)."""
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    if not isinstance(scale, Const) or not isinstance(bias, Const):
        raise ctx.fail("InstanceNormalization scale and bias must be constants")
    plain = bool((scale.tensor == 1).all()) and not bool(bias.tensor.any())
    kwargs = {"eps": float(ctx.attr("epsilon", 1e-5))}
    if not plain:
        kwargs.update(weight=scale, bias=bias)
    return _same_shape(ctx, ctx.call_function(F.instance_norm, x, scalars=False, **kwargs), x)


# --------------------------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------------------------
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
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
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in _MAX_POOL:
        raise ctx.unsupported(f"{nd}-d max pooling")
    strides = list(ctx.attr("strides", [1] * nd))
    dilations = list(ctx.attr("dilations", [1] * nd))
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    begin, end = _resolve_pads(ctx, _spatial(ctx, x, nd), kernel, strides, dilations)
    shape_begin, shape_end = begin, end
    padding: Any = tuple(begin)
    too_wide = any(p > ((k - 1) * d + 1) // 2 for p, k, d in zip(begin, kernel, dilations))
    if begin != end or too_wide:
        x = ctx.call_function(F.pad, x, _torch_pads(begin, end), value=float("-inf"))
        padding = 0
    module = _MAX_POOL[nd](tuple(kernel), stride=tuple(strides), padding=padding, dilation=tuple(dilations),
                           ceil_mode=ceil_mode)
    out = ctx.call_module(module, x)
    return _pool_out_shape(ctx, ctx.input(0), out, kernel, strides, dilations, shape_begin, shape_end, ceil_mode)


@register("AveragePool", since=11)
def convert_average_pool(ctx: OpContext) -> Value:
    """AveragePool -> ``nn.AvgPool1d/2d/3d`` with ``count_include_pad`` and ``ceil_mode``.

    Asymmetric pads need ``count_include_pad=1`` (explicit zero padding); dilations are unsupported.
    """
    x = ctx.input(0)
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in _AVG_POOL:
        raise ctx.unsupported(f"{nd}-d average pooling")
    strides = list(ctx.attr("strides", [1] * nd))
    dilations = list(ctx.attr("dilations", [1] * nd))
    if any(d != 1 for d in dilations):
        raise ctx.unsupported(f"dilations={dilations}")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_include_pad = bool(ctx.attr("count_include_pad", 0))
    begin, end = _resolve_pads(ctx, _spatial(ctx, x, nd), kernel, strides, dilations)
    padding: Any = tuple(begin)
    too_wide = any(p > k // 2 for p, k in zip(begin, kernel))
    if begin != end or too_wide:
        if not count_include_pad and any(begin + end):
            raise ctx.unsupported("asymmetric or oversized pads with count_include_pad=0")
        x = ctx.call_function(F.pad, x, _torch_pads(begin, end))
        padding = 0
    module = _AVG_POOL[nd](tuple(kernel), stride=tuple(strides), padding=padding, ceil_mode=ceil_mode,
                           count_include_pad=count_include_pad)
    out = ctx.call_module(module, x)
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


# --------------------------------------------------------------------------------------------------------------------
# Activations (modules, as torch.fx tracing of a torchvision model would show them)
# --------------------------------------------------------------------------------------------------------------------
def _activation(ctx: OpContext, module: nn.Module) -> Value:
    """An activation module applied to input 0; the output keeps the input's shape."""
    x = ctx.input(0)
    return _same_shape(ctx, ctx.call_module(module, x), x)


@register("Relu", since=6)
def convert_relu(ctx: OpContext) -> Value:
    """Relu -> ``nn.ReLU`` (the form ``canonicalize_activations`` expects)."""
    return _activation(ctx, nn.ReLU())


@register("LeakyRelu", since=6)
def convert_leaky_relu(ctx: OpContext) -> Value:
    """LeakyRelu -> ``nn.LeakyReLU`` (importable; the conversion's allow-list rejects it later)."""
    return _activation(ctx, nn.LeakyReLU(ctx.attr("alpha", 0.01)))


@register("Sigmoid", since=13)
def convert_sigmoid(ctx: OpContext) -> Value:
    """Sigmoid -> ``nn.Sigmoid``."""
    return _activation(ctx, nn.Sigmoid())


@register("Tanh", since=13)
def convert_tanh(ctx: OpContext) -> Value:
    """Tanh -> ``nn.Tanh``."""
    return _activation(ctx, nn.Tanh())


@register("Gelu", since=20)
def convert_gelu(ctx: OpContext) -> Value:
    """Gelu (opset 20) -> ``nn.GELU`` with the same ``approximate``."""
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"approximate={approximate}")
    return _activation(ctx, nn.GELU(approximate=approximate))


@register("HardSwish", since=14)
def convert_hard_swish(ctx: OpContext) -> Value:
    """HardSwish -> ``nn.Hardswish``."""
    return _activation(ctx, nn.Hardswish())


@register("HardSigmoid", since=6)
def convert_hard_sigmoid(ctx: OpContext) -> Value:
    """HardSigmoid -> ``nn.Hardsigmoid`` for torch's alpha=1/6, beta=0.5, else ``clamp(alpha*x+beta, 0, 1)``."""
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return _activation(ctx, nn.Hardsigmoid())
    scaled = ctx.call_function(operator.add, ctx.call_function(operator.mul, ctx.input(0), alpha), beta)
    return _same_shape(ctx, ctx.call_function(torch.clamp, scaled, 0.0, 1.0), ctx.input(0))


@register("Elu", since=6)
def convert_elu(ctx: OpContext) -> Value:
    """Elu -> ``nn.ELU``."""
    return _activation(ctx, nn.ELU(ctx.attr("alpha", 1.0)))


@register("Softplus", since=1)
def convert_softplus(ctx: OpContext) -> Value:
    """Softplus -> ``nn.Softplus``."""
    return _activation(ctx, nn.Softplus())


@register("Softmax", since=13)
def convert_softmax(ctx: OpContext) -> Value:
    """Softmax (opset 13 semantics: along ``axis``) -> ``nn.Softmax``."""
    return _activation(ctx, nn.Softmax(dim=ctx.attr("axis", -1)))


@register("LogSoftmax", since=13)
def convert_log_softmax(ctx: OpContext) -> Value:
    """LogSoftmax -> ``nn.LogSoftmax``."""
    return _activation(ctx, nn.LogSoftmax(dim=ctx.attr("axis", -1)))


@register("Clip", since=13)
def convert_clip(ctx: OpContext) -> Value:
    """Clip (min/max as inputs since opset 11): [0, 6] -> ``nn.ReLU6``, [0, inf) -> ``nn.ReLU``, no bounds ->
    pass-through, other constant bounds -> ``torch.clamp``.
    """
    x, low, high = ctx.input(0), ctx.input(1), ctx.input(2)
    if (low is not None and not isinstance(low, Const)) or (high is not None and not isinstance(high, Const)):
        return _same_shape(ctx, ctx.call_function(torch.clamp, x, low, high, scalars=False), x)
    lo = None if low is None else low.tensor.item()
    hi = None if high is None else high.tensor.item()
    if lo == 0 and hi == 6:
        return _activation(ctx, nn.ReLU6())
    if lo == 0 and hi is None:
        return _activation(ctx, nn.ReLU())
    if lo is None and hi is None:
        return x
    return _same_shape(ctx, ctx.call_function(torch.clamp, x, min=lo, max=hi), x)


# --------------------------------------------------------------------------------------------------------------------
# Element-wise ops
# --------------------------------------------------------------------------------------------------------------------
def _sym_mod(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """ONNX Mod (fmod=0) of dimension expressions."""
    return sympy.Mod(a, b)


def _sym_div_trunc(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """ONNX integer Div (truncation) of dimension expressions."""
    if static(a) is not None and static(b) is not None:
        return sympy.Integer(int(static(a) / static(b)))
    return sym_div(a, b)


_SYM_BINARY: dict[str, Callable[[sympy.Expr, sympy.Expr], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": _sym_div_trunc,
    "Mod": _sym_mod,
    "Max": sympy.Max,
    "Min": sympy.Min,
    "Equal": sym_eq,
}

_TORCH_BINARY: dict[str, Callable] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
    "Pow": operator.pow,
    "Equal": operator.eq,
    "Less": operator.lt,
    "LessOrEqual": operator.le,
    "Greater": operator.gt,
    "GreaterOrEqual": operator.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
}


def _symbolic_binary(ctx: OpContext, op_type: str, a: Value, b: Value) -> Value | None:
    """Evaluate a binary op on shape values (Const / SymVec) while importing; ``None`` when not applicable."""
    if not (isinstance(a, SymVec) or isinstance(b, SymVec)) or op_type not in _SYM_BINARY:
        return None
    la, lb = to_int_list(a), to_int_list(b)
    if la is None or lb is None:
        return None
    (ea, sa), (eb, sb) = la, lb
    ea, eb = _broadcast_lists(ea, eb, ctx)
    results = [_SYM_BINARY[op_type](x, y) for x, y in zip(ea, eb)]
    if op_type == "Equal":
        if any(r is None for r in results):
            raise ctx.fail("cannot decide an Equal between dynamic shape values")
        data = torch.tensor(results, dtype=torch.bool)
        return Const(data.reshape(()) if sa and sb else data, (ctx.name, op_type))
    return make_vec(results, scalar=sa and sb, source=(ctx.name, op_type))


def _binary(ctx: OpContext, op_type: str, a: Value, b: Value) -> Value:
    """One broadcasting binary op: symbolic for shape values, else an ``operator`` / ``torch`` call."""
    symbolic = _symbolic_binary(ctx, op_type, a, b)
    if symbolic is not None:
        return symbolic
    fn = _TORCH_BINARY[op_type]
    a_shape, b_shape = ctx.shape_or_none(a), ctx.shape_or_none(b)
    if op_type == "Div" and _is_integer(ctx, a):
        out = ctx.call_function(torch.div, a, b, rounding_mode="trunc", scalars=False)
    elif op_type in ("And", "Or", "Xor", "BitwiseAnd", "BitwiseOr"):
        out = ctx.call_function(fn, a, b, scalars=False)
    else:
        b_arg = _scalarize(b, len(a_shape) if a_shape is not None else None) if isinstance(a, Tensor) else b
        a_arg = _scalarize(a, len(b_shape) if b_shape is not None else None) if isinstance(b, Tensor) else a
        out = ctx.call_function(fn, a_arg, b_arg)
    if isinstance(out, Tensor):
        out.shape = broadcast_shapes([a_shape, b_shape])
    return out


def _is_integer(ctx: OpContext, value: Value) -> bool:
    """Whether ``value`` has an integer (non-bool) dtype."""
    dtype = ctx.dtype_of(value)
    return dtype is not None and not dtype.is_floating_point and dtype != torch.bool


@register("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or",
          "Xor", "BitwiseAnd", "BitwiseOr", since=7)
def convert_binary(ctx: OpContext) -> Value:
    """Add, Sub, Mul, Div, Pow, comparisons and logical ops -> ``operator.add`` & co. (the targets tracing gives).

    One-element constants become Python scalars when that cannot change the result's rank; integer Div truncates
    like ONNX. On shape values (``Shape`` -> ``Gather`` -> ``Mul`` ...) the op is evaluated symbolically.
    """
    return _binary(ctx, ctx.op_type, ctx.input(0), ctx.input(1))


@register("Mod", since=13)
def convert_mod(ctx: OpContext) -> Value:
    """Mod -> ``torch.remainder`` (``fmod=0``, sign of the divisor) or ``torch.fmod``; symbolic on shape values."""
    a, b = ctx.input(0), ctx.input(1)
    fmod = ctx.attr("fmod", 0)
    if not fmod:
        symbolic = _symbolic_binary(ctx, "Mod", a, b)
        if symbolic is not None:
            return symbolic
    return ctx.call_function(torch.fmod if fmod else torch.remainder, a, b, scalars=False)


@register("Max", "Min", "Sum", "Mean", since=13)
def convert_variadic(ctx: OpContext) -> Value:
    """Max / Min / Sum / Mean over any number of inputs, as chains of binary ops."""
    values = [v for v in ctx.inputs() if v is not None]
    result = values[0]
    for value in values[1:]:
        if ctx.op_type in ("Sum", "Mean"):
            result = _binary(ctx, "Add", result, value)
            continue
        symbolic = _symbolic_binary(ctx, ctx.op_type, result, value)
        fn = torch.maximum if ctx.op_type == "Max" else torch.minimum
        result = symbolic if symbolic is not None else ctx.call_function(fn, result, value, scalars=False)
    if ctx.op_type == "Mean" and len(values) > 1:
        result = _binary(ctx, "Div", result, Const(torch.tensor(float(len(values)))))
    return result


_UNARY: dict[str, Callable] = {
    "Sqrt": torch.sqrt,
    "Erf": torch.erf,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": operator.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Not": torch.logical_not,
    "Softsign": F.softsign,
    "IsNaN": torch.isnan,
}


@register(*_UNARY, since=13)
def convert_unary(ctx: OpContext) -> Value:
    """Element-wise unary ops (Sqrt, Erf, Exp, Log, Neg, Abs, ...) -> the matching torch function."""
    x = ctx.input(0)
    if isinstance(x, SymVec) and ctx.op_type in ("Neg", "Abs"):
        fn = operator.neg if ctx.op_type == "Neg" else sympy.Abs
        return make_vec([fn(e) for e in x.elems], x.scalar, (ctx.name, ctx.op_type))
    return _same_shape(ctx, ctx.call_function(_UNARY[ctx.op_type], x), x)


@register("Where", since=9)
def convert_where(ctx: OpContext) -> Value:
    """Where -> ``torch.where``; evaluated at import time when it selects between shape values."""
    cond, a, b = ctx.input(0), ctx.input(1), ctx.input(2)
    if isinstance(cond, Const) and (isinstance(a, SymVec) or isinstance(b, SymVec)):
        la, lb = to_int_list(a), to_int_list(b)
        flags = cond.tensor.reshape(-1).tolist()
        if la is not None and lb is not None and cond.tensor.ndim <= 1:
            ea, eb = _broadcast_lists(la[0], lb[0], ctx)
            ea, flags = _broadcast_lists(ea, flags, ctx)
            eb, _ = _broadcast_lists(eb, ea, ctx)
            return make_vec([x if f else y for f, x, y in zip(flags, ea, eb)], la[1] and lb[1], (ctx.name, "Where"))
    out = ctx.call_function(torch.where, cond, a, b)
    if isinstance(out, Tensor):
        out.shape = broadcast_shapes([ctx.shape_or_none(cond), ctx.shape_or_none(a), ctx.shape_or_none(b)])
    return out


# --------------------------------------------------------------------------------------------------------------------
# Casts
# --------------------------------------------------------------------------------------------------------------------
@register("Cast", since=13)
def convert_cast(ctx: OpContext) -> Value:
    """Cast -> ``x.to(dtype)``; a no-op on shape values cast to another integer type."""
    return _cast(ctx, ctx.input(0), ctx.onnx_dtype(ctx.attr("to")))


@register("CastLike", since=15)
def convert_cast_like(ctx: OpContext) -> Value:
    """CastLike -> ``x.to(dtype of the second input)``."""
    dtype = ctx.dtype_of(ctx.input(1))
    if dtype is None:
        raise ctx.fail("CastLike target has an unknown dtype")
    return _cast(ctx, ctx.input(0), dtype)


def _cast(ctx: OpContext, x: Value, dtype: torch.dtype) -> Value:
    """``x.to(dtype)`` unless ``x`` already has that dtype (or is an integer shape value)."""
    if isinstance(x, SymVec) and not dtype.is_floating_point and dtype != torch.bool:
        return x
    if isinstance(x, Tensor) and x.dtype == dtype:
        return x
    out = ctx.call_method("to", x, dtype)
    if isinstance(out, Tensor):
        out.shape, out.dtype = ctx.shape_or_none(x), dtype
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
        return SymVec(x.elems, scalar=not target)
    in_shape = ctx.shape_or_none(x)
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
        return make_vec([e for elems, _ in lists for e in elems], source=(ctx.name, "Concat"))
    shapes = [ctx.shape_or_none(v) for v in values]
    values = [v for v, s in zip(values, shapes) if s is None or static(s[axis]) != 0 or len(values) == 1]
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


def _slice_bound(value: int, default_none: bool) -> int | None:
    """A slice bound for Python slicing: ``None`` for open ends and ONNX's INT32/INT64 sentinels."""
    if default_none or value >= 2**31 - 1 or value <= -(2**31):
        return None
    return value


@register("Slice", since=13)
def convert_slice(ctx: OpContext) -> Value:
    """Slice -> Python slicing (``operator.getitem``) for positive steps, ``index_select`` for negative ones.

    Bounds may be constants or shape values; huge ONNX sentinels (INT64_MAX/MIN) become open ends.
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
        return make_vec(vec[0][slice(start, end, step)], source=(ctx.name, "Slice"))
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
            return SymVec(x.elems, scalar=True)
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
            return SymVec(x.elems, scalar=False)
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


@register("Pad", since=13)
def convert_pad(ctx: OpContext) -> Value:
    """Pad (pads as input, ``axes`` since 18) -> ``F.pad`` with mode constant / reflect / replicate / circular."""
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
    if mode != "constant":
        kwargs["mode"] = _PAD_MODES[mode]
    out = ctx.call_function(F.pad, x, _torch_pads(begin, end), **kwargs)
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

    Output sizes come from ``sizes`` (static, or computed from shapes: ``F.interpolate(x, size=y.shape[2:])``) or
    from constant ``scales`` (``scale_factor``: PyTorch maps coordinates with 1/scale, as ONNX does). Other modes,
    antialiasing, ``exclude_outside``, ``axes`` and resizing of the batch or channel dims are unsupported.
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
    out = ctx.call_function(F.interpolate, x, **kwargs)
    if isinstance(out, Tensor):
        out.shape = (*shape[:2], *(sympy.Integer(d) if isinstance(d, int) else d for d in out_spatial))
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
    """Gather: picks entries of shape values at import time; on tensors a scalar constant index ->
    ``torch.select``, a 1-d one -> ``torch.index_select`` (an N-d one adds a reshape).
    """
    data, indices = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis", 0)
    if isinstance(data, SymVec) and isinstance(indices, Const):
        idx = indices.tensor.reshape(-1).tolist()
        picked = [data.elems[i] for i in idx]
        return make_vec(picked, scalar=indices.tensor.ndim == 0, source=(ctx.name, "Gather"))
    shape = ctx.shape(data)
    axis = _norm_axis(axis, len(shape), ctx)
    if not isinstance(indices, Const):
        index_shape = ctx.shape(indices)
        flat = ctx.call_function(torch.reshape, indices, (-1,))
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
    traced model.
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
        return make_vec([combine], scalar=not keepdims, source=(ctx.name, ctx.op_type))
    shape = ctx.shape(x)
    rank = len(shape)
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(rank))
    axes = sorted(_norm_axis(a, rank, ctx) for a in axes)
    out_shape = tuple(sympy.Integer(1) if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)
    if ctx.op_type == "ReduceMean" and rank >= 3 and axes == list(range(2, rank)) and rank - 2 in _ADAPTIVE_AVG:
        out = ctx.call_module(_ADAPTIVE_AVG[rank - 2](1), x)
        if not keepdims:
            out = ctx.call_function(torch.flatten, out, 1)
    elif ctx.op_type == "ReduceProd":
        out = x
        for axis in reversed(axes):
            out = ctx.call_function(torch.prod, out, axis, keepdim=keepdims)
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
