"""Values, the op registry, symbolic-dimension helpers and small helpers shared by the ONNX op converters
(:mod:`snnconvert.convert.onnx_ops`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy
import torch
from torch import fx

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from snnconvert.convert.onnx_ops.context import OpContext


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
    """A 0-d (``scalar``) or 1-d integer tensor whose entries are sympy expressions of dynamic dimensions; ``dtype``
    is what it holds when materialized (int64 as ``Shape`` gives it, another integer type after a ``Cast``)."""

    elems: tuple[sympy.Expr, ...]
    scalar: bool = False
    dtype: torch.dtype = torch.int64


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


def make_vec(elems: Sequence[Any], scalar: bool = False, source: tuple[str, str] = ("", "Shape"),
             dtype: torch.dtype = torch.int64) -> Value:
    """A Const when every entry is static, else a SymVec (of integer type ``dtype``)."""
    elems = [sympy.sympify(e) for e in elems]
    if all(static(e) is not None for e in elems):
        data = torch.tensor([int(e) for e in elems], dtype=dtype)
        return Const(data.reshape(()) if scalar else data, source)
    return SymVec(tuple(elems), scalar, dtype)


def vec_dtype(*values: Any) -> torch.dtype:
    """The integer type of the first shape value (SymVec or integer Const) among ``values``: what an op on shape
    values yields (ONNX gives both operands of a binary op the same type)."""
    for value in values:
        if isinstance(value, SymVec):
            return value.dtype
    for value in values:
        if isinstance(value, Const) and not value.tensor.dtype.is_floating_point and value.tensor.dtype != torch.bool:
            return value.tensor.dtype
    return torch.int64


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
