"""ONNX converters of activations, element-wise ops and casts."""
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

from snnconvert.convert.onnx_ops.core import (
    Const,
    SymVec,
    Tensor,
    Value,
    _broadcast_lists,
    _same_shape,
    _scalarize,
    broadcast_shapes,
    make_vec,
    register,
    static,
    sym_div,
    sym_eq,
    to_int_list,
    vec_dtype,
)


# Activations (modules, as torch.fx tracing of a torchvision model would show them)
# --------------------------------------------------------------------------------------------------------------------
def _activation(ctx: OpContext, module: nn.Module, x: Value | None = None) -> Value:
    """An activation module applied to ``x`` (input 0 by default); the output keeps the input's shape."""
    x = ctx.input(0) if x is None else x
    return _same_shape(ctx, ctx.call_module(module, x), x)


@register("Relu", since=6)
def convert_relu(ctx: OpContext) -> Value:
    """Relu -> ``nn.ReLU`` (the form ``canonicalize_activations`` expects)."""
    return _activation(ctx, nn.ReLU())


@register("LeakyRelu", since=6)
def convert_leaky_relu(ctx: OpContext) -> Value:
    """LeakyRelu -> ``nn.LeakyReLU`` (a graded unit in the conversion); with ``alpha`` 0, a ReLU: ``nn.ReLU``."""
    alpha = float(ctx.attr("alpha", 0.01))
    return _activation(ctx, nn.ReLU() if alpha == 0 else nn.LeakyReLU(alpha))


@register("PRelu", since=9)
def convert_prelu(ctx: OpContext) -> Value:
    """PRelu -> ``nn.PReLU`` with one slope, or one per channel (dim 1; torch's exporters write ``nn.PReLU(C)`` as
    a ``[C, 1, 1]`` slope). Other slopes that broadcast (Keras' PReLU on an NHWC tensor: one per channel of the last
    dim, or one per element; a slope of higher rank than the input, which onnxruntime broadcasts) ->
    ``torch.where(x < 0, x * slope, x)``, one graded unit after the piecewise pass."""
    x, slope = ctx.input(0), ctx.const(1, "the PRelu slope")
    shape = ctx.shape_or_none(x)
    rank = len(shape) if shape is not None else 0
    padded = [1] * (rank - slope.dim()) + list(slope.shape)
    channels = static(shape[1]) if rank >= 2 else None
    if slope.numel() == 1 and slope.dim() <= rank:
        module = nn.PReLU(1)
    elif rank >= 2 and len(padded) == rank and padded[1] == channels \
            and all(d == 1 for i, d in enumerate(padded) if i != 1):
        module = nn.PReLU(channels)
    else:
        if shape is None or len(padded) < rank or any(
                p != 1 and static(d) is not None and p != static(d) for p, d in zip(padded[-rank:], shape)):
            raise ctx.unsupported(f"a slope of shape {list(slope.shape)} that does not broadcast to the input's")
        scaled = ctx.call_function(operator.mul, x, Const(slope.float(), (ctx.name, "PRelu")))
        negative = ctx.call_function(operator.lt, x, 0.0)
        out = ctx.call_function(torch.where, negative, scaled, x, scalars=False)
        if isinstance(out, Tensor):
            out.shape = (*(sympy.Integer(d) for d in padded[:len(padded) - rank]), *shape)
        return out
    with torch.no_grad():
        module.weight.copy_(slope.reshape(-1).float())
    return _activation(ctx, module)


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


#: ONNX's Selu defaults (float32 renderings of torch's SELU constants)
_SELU_ALPHA, _SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


@register("Selu", since=6)
def convert_selu(ctx: OpContext) -> Value:
    """Selu -> ``nn.SELU`` (its default constants); other constants -> gamma · ``nn.ELU(alpha)``."""
    alpha, gamma = float(ctx.attr("alpha", _SELU_ALPHA)), float(ctx.attr("gamma", _SELU_GAMMA))
    if math.isclose(alpha, _SELU_ALPHA, rel_tol=1e-6) and math.isclose(gamma, _SELU_GAMMA, rel_tol=1e-6):
        return _activation(ctx, nn.SELU())
    x = ctx.input(0)
    return _same_shape(ctx, ctx.call_function(operator.mul, ctx.call_module(nn.ELU(alpha), x), gamma), x)


@register("Celu", since=12)
def convert_celu(ctx: OpContext) -> Value:
    """Celu -> ``nn.CELU``."""
    return _activation(ctx, nn.CELU(float(ctx.attr("alpha", 1.0))))


@register("Mish", since=18)
def convert_mish(ctx: OpContext) -> Value:
    """Mish -> ``nn.Mish``."""
    return _activation(ctx, nn.Mish())


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
    """ONNX integer Div (truncation toward zero) of dimension expressions: ``sym_div`` floors, which is the same for
    a non-negative quotient; a quotient whose sign is known to be negative (``-batch / 2``) divides the magnitudes.
    Where the sign cannot be decided, the quotient is taken as non-negative (dimension arithmetic)."""
    a, b = sympy.sympify(a), sympy.sympify(b)
    if static(a) is not None and static(b) is not None:
        quotient = abs(static(a)) // abs(static(b))
        return sympy.Integer(quotient if (static(a) < 0) == (static(b) < 0) else -quotient)
    if a.is_nonpositive and b.is_positive:
        return -sym_div(-a, b)
    if a.is_nonnegative and b.is_negative:
        return -sym_div(a, -b)
    if a.is_nonpositive and b.is_negative:
        return sym_div(-a, -b)
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
    return make_vec(results, scalar=sa and sb, source=(ctx.name, op_type), dtype=vec_dtype(a, b))


def _binary(ctx: OpContext, op_type: str, a: Value, b: Value) -> Value:
    """One broadcasting binary op: symbolic for shape values, else an ``operator`` / ``torch`` call."""
    symbolic = _symbolic_binary(ctx, op_type, a, b)
    if symbolic is not None:
        return symbolic
    fn = _TORCH_BINARY[op_type]
    a_shape, b_shape = ctx.shape_or_none(a), ctx.shape_or_none(b)
    if op_type == "Div" and _is_integer(ctx, a):
        out = ctx.call_function(torch.div, a, b, rounding_mode="trunc", scalars=False)
    elif op_type == "Pow" and _is_integer(ctx, a) and (ctx.dtype_of(b) or torch.int64).is_floating_point:
        # ONNX's result has the base's type: onnxruntime raises in double precision and truncates
        power = ctx.call_function(fn, ctx.call_method("to", a, torch.float64), b)
        out = ctx.call_method("to", power, ctx.dtype_of(a))
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
    like ONNX, and an integer base raised to a floating exponent stays integer. On shape values (``Shape`` ->
    ``Gather`` -> ``Mul`` ...) the op is evaluated symbolically.
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
    """Max / Min / Sum / Mean over any number of inputs, as chains of binary ops; ``Max(x, 0)`` (either order, a
    constant zero that does not enlarge x by broadcasting) is a ReLU: ``nn.ReLU``."""
    values = [v for v in ctx.inputs() if v is not None]
    if ctx.op_type == "Max" and len(values) == 2:
        x = _relu_operand(ctx, *values) or _relu_operand(ctx, *reversed(values))
        if x is not None:
            return _activation(ctx, nn.ReLU(), x)
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


def _relu_operand(ctx: OpContext, x: Value, zero: Value) -> Value | None:
    """``x`` when ``Max(x, zero)`` is ReLU(x): ``zero`` a constant of zeros, of at most ``x``'s rank, whose dims are
    1 or x's (so the result has x's shape and dtype)."""
    if not isinstance(x, Tensor) or not isinstance(zero, Const) or bool(zero.tensor.any()):
        return None
    shape = ctx.shape_or_none(x)
    if shape is None or zero.tensor.dim() > len(shape) or not (x.dtype is None or x.dtype.is_floating_point):
        return None
    tail = list(shape)[len(shape) - zero.tensor.dim():] if zero.tensor.dim() else []
    return x if all(d == 1 or sym_eq(d, s) for d, s in zip(zero.tensor.shape, tail)) else None


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
        return make_vec([fn(e) for e in x.elems], x.scalar, (ctx.name, ctx.op_type), x.dtype)
    return _same_shape(ctx, ctx.call_function(_UNARY[ctx.op_type], x), x)


@register("Where", since=9)
def convert_where(ctx: OpContext) -> Value:
    """Where -> ``torch.where``; evaluated at import time when it selects between shape values. The exporters' NaN
    guard after a masked softmax, ``Where(IsNaN(y), c, y)``, is ``torch.nan_to_num(y, nan=c)`` (infinities kept):
    one element-wise function of y (a graded unit behind neurons) instead of a selection by a mask computed from
    the input; only where c cannot broadcast y to more dims. A constant condition that is all true (or all false)
    selects its operand when that has the result's shape; otherwise a 0-d constant condition stays a tensor
    (``torch.where`` takes no Python bool for it)."""
    cond, a, b = ctx.input(0), ctx.input(1), ctx.input(2)
    b_shape = ctx.shape_or_none(b)
    if isinstance(cond, Tensor) and isinstance(b, Tensor) and isinstance(a, Const) and a.tensor.numel() == 1 \
            and b_shape is not None and a.tensor.dim() <= len(b_shape) \
            and cond.node.op == "call_function" and cond.node.target is torch.isnan and cond.node.args[0] is b.node:
        out = ctx.call_function(torch.nan_to_num, b, nan=float(a.tensor), posinf=float("inf"), neginf=float("-inf"))
        return _same_shape(ctx, out, b)
    if isinstance(cond, Const) and (isinstance(a, SymVec) or isinstance(b, SymVec)):
        la, lb = to_int_list(a), to_int_list(b)
        flags = cond.tensor.reshape(-1).tolist()
        if la is not None and lb is not None and cond.tensor.ndim <= 1:
            ea, eb = _broadcast_lists(la[0], lb[0], ctx)
            ea, flags = _broadcast_lists(ea, flags, ctx)
            eb, _ = _broadcast_lists(eb, ea, ctx)
            return make_vec([x if f else y for f, x, y in zip(flags, ea, eb)], la[1] and lb[1], (ctx.name, "Where"),
                            vec_dtype(a, b))
    out_shape = broadcast_shapes([ctx.shape_or_none(cond), ctx.shape_or_none(a), b_shape])
    if isinstance(cond, Const) and cond.tensor.numel() and (bool(cond.tensor.all()) or not bool(cond.tensor.any())):
        chosen = a if bool(cond.tensor.reshape(-1)[0]) else b
        chosen_shape = ctx.shape_or_none(chosen)
        if out_shape is not None and chosen_shape is not None and len(chosen_shape) == len(out_shape) \
                and all(d is not None and e is not None and sym_eq(d, e) is True
                        for d, e in zip(chosen_shape, out_shape)):
            return chosen
    out = ctx.call_function(torch.where, cond, a, b,
                            scalars=not (isinstance(cond, Const) and cond.tensor.dim() == 0))
    if isinstance(out, Tensor):
        out.shape = out_shape
    return out


@register("Trilu", since=14)
def convert_trilu(ctx: OpContext) -> Value:
    """Trilu -> ``torch.triu`` / ``torch.tril`` (attribute ``upper``, default 1) with the diagonal offset ``k``
    (input 1, default 0); the causal masks of exported attention."""
    x = ctx.input(0)
    k = ctx.input(1)
    offset = 0 if k is None else int(ctx.elems(1)[0])
    fn = torch.triu if ctx.attr("upper", 1) else torch.tril
    if isinstance(x, Const):
        return Const(fn(x.tensor, offset), (ctx.name, "Trilu"))
    return _same_shape(ctx, ctx.call_function(fn, x, offset), x)


# --------------------------------------------------------------------------------------------------------------------
# Casts
# --------------------------------------------------------------------------------------------------------------------
@register("Cast", since=13)
def convert_cast(ctx: OpContext) -> Value:
    """Cast -> ``x.to(dtype)``; on shape values cast to another integer type, only the type they are materialized
    with changes (they stay symbolic)."""
    return _cast(ctx, ctx.input(0), ctx.onnx_dtype(ctx.attr("to")))


@register("CastLike", since=15)
def convert_cast_like(ctx: OpContext) -> Value:
    """CastLike -> ``x.to(dtype of the second input)``."""
    dtype = ctx.dtype_of(ctx.input(1))
    if dtype is None:
        raise ctx.fail("CastLike target has an unknown dtype")
    return _cast(ctx, ctx.input(0), dtype)


def _cast(ctx: OpContext, x: Value, dtype: torch.dtype) -> Value:
    """``x.to(dtype)`` unless ``x`` already has that dtype; an integer shape value keeps its entries."""
    if isinstance(x, SymVec) and not dtype.is_floating_point and dtype != torch.bool:
        return x if x.dtype == dtype else SymVec(x.elems, x.scalar, dtype)
    if isinstance(x, Tensor) and x.dtype == dtype:
        return x
    out = ctx.call_method("to", x, dtype)
    if isinstance(out, Tensor):
        out.shape, out.dtype = ctx.shape_or_none(x), dtype
    return out


# --------------------------------------------------------------------------------------------------------------------
