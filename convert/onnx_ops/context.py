"""The per-node context an ONNX converter sees (:class:`OpContext`) and the tensor helpers it shares with the
importer (``onnx_import.py``)."""
from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import sympy
import torch
from onnx import numpy_helper
from torch import fx, nn

from snnconvert.convert import onnx_ops
from snnconvert.convert.errors import OnnxImportError
from snnconvert.convert.onnx_model import BATCH_PARAM
from snnconvert.convert.onnx_ops import Const, SymVec, Tensor, UnsupportedConfigError, Value
from snnconvert.convert.onnx_ops.core import static

if TYPE_CHECKING:
    from snnconvert.convert.onnx_import import _Importer

__all__ = ["ONNX_DTYPES", "OpContext", "attribute_value", "tensor_from_proto"]

PARAM_NAME = re.compile(r"^[A-Za-z_][\w.]*\.(weight|bias)$")

#: ONNX element types as the imported module holds them. Every floating type is float32: the module computes in
#: float32 (the SNN's precision is chosen at run time, ``--dtype``), so an fp16 / bf16 / fp64 file, or an fp16 body
#: between Casts (``keep_io_types``), imports with float32 weights and its float-to-float Casts are no-ops.
ONNX_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.FLOAT16: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float32,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BFLOAT16: torch.float32,
}

REQUIRED = object()


class OpContext:
    """What a converter sees of one ONNX node, and the builder it emits fx nodes through.

    Values passed to the ``call_*`` methods may be :class:`Const`, :class:`SymVec` or :class:`Tensor` (nested in
    lists, tuples or dicts) or plain Python values. When no argument is a run-time value the call is evaluated at
    import time and returns a :class:`Const` (constant folding); otherwise it adds an fx node and returns a
    :class:`Tensor`.
    """

    def __init__(self, importer: _Importer, node: onnx.NodeProto, index: int, prefix: str = "") -> None:
        self._importer = importer
        self.node = node
        self.index = index
        self.op_type = node.op_type
        self.opset = importer.opset
        self.name = node.name or f"{prefix}{node.op_type}_{index}"
        self.attrs = {attr.name: attribute_value(attr) for attr in node.attribute}

    # ---- inputs, attributes, errors -----------------------------------------------------------------------------
    def attr(self, name: str, default: Any = REQUIRED) -> Any:
        """Attribute ``name``; without a default a missing attribute is an OnnxImportError."""
        if name in self.attrs:
            return self.attrs[name]
        if default is REQUIRED:
            raise self.fail(f"required attribute '{name}' is missing")
        return default

    def input(self, i: int) -> Value | None:
        """The value of input ``i``, ``None`` for an absent optional input."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self._importer.value(self.node.input[i])

    def inputs(self) -> list[Value | None]:
        """The values of all inputs (``None`` for absent optional ones)."""
        return [self.input(i) for i in range(len(self.node.input))]

    def value_by_name(self, name: str) -> Value | None:
        """The value of a tensor by name if it is already known (for look-ahead fusions), else ``None``."""
        values = self._importer.values
        if name in values:
            return values[name]
        return self._importer.value(name) if name in self._importer.initializers else None

    def const(self, i: int, what: str) -> torch.Tensor:
        """Input ``i`` as a tensor; an OnnxImportError naming ``what`` when it is not known at import time."""
        value = self.input(i)
        if not isinstance(value, Const):
            raise self.fail(f"{what} (input {i}) must be a constant or initializer")
        return value.tensor

    def elems(self, i: int) -> list[sympy.Expr]:
        """Entries of a shape-like input (a static int tensor or a shape value derived from ``Shape``)."""
        value = self.input(i)
        items = None if value is None else onnx_ops.to_int_list(value)
        if items is None:
            raise self.fail(
                f"input {i} must be static or computed from tensor shapes; a data-dependent shape cannot be imported"
            )
        return list(items[0])

    # ---- a static batch made dynamic (free_static_batch) ---------------------------------------------------------
    def batch_symbol(self) -> sympy.Symbol | None:
        """The batch dimension's symbol where the import made a static batch dynamic, else ``None``."""
        return self._importer.symbols.get(BATCH_PARAM) if self._importer.static_batch is not None else None

    def is_batch(self, dim: Any) -> bool:
        """Whether a dimension expression is the (freed) batch dimension."""
        symbol = self.batch_symbol()
        return symbol is not None and dim is not None and sympy.simplify(dim - symbol) == 0

    def static_batch_target(self, target: list, in_shape: tuple | None) -> bool:
        """Whether a constant target shape's first entry is the static batch size while the reshaped tensor's first
        dimension is the batch: then it copies it (the exporter wrote ``x.view(x.size(0), -1)`` as ``[1, 784]``).
        Both then lead with the batch, so the other entries hold one sample's elements, whatever the batch size."""
        if not target or static(target[0]) != self._importer.static_batch or not in_shape \
                or not self.is_batch(in_shape[0]):
            return False
        self._importer.batch_nodes.append(self.name)
        return True

    def batch_constant(self, value: Value, rank: int) -> Value:
        """A constant operand whose first dimension is the static batch size, broadcast to the run-time batch where
        it meets batch tensors (a class token the exporter folded from ``token.expand(x.size(0), -1, -1)``); its
        samples must be equal. Other values are returned as they are."""
        symbol = self.batch_symbol()
        if symbol is None or not isinstance(value, Const) or value.tensor.dim() != rank or rank < 1 \
                or value.tensor.shape[0] != self._importer.static_batch \
                or not bool((value.tensor == value.tensor[:1]).all()):
            return value
        out = self.call_method("expand", Const(value.tensor[:1].clone(), value.source), self.dim_arg(symbol),
                               *[-1] * (rank - 1))
        if isinstance(out, Tensor):
            out.shape = (symbol, *(sympy.Integer(d) for d in value.tensor.shape[1:]))
            out.dtype = value.tensor.dtype
        self._importer.batch_nodes.append(self.name)
        return out

    def unsupported(self, reason: str) -> UnsupportedConfigError:
        """An exception to raise for attributes the converter cannot express (collected, reported once)."""
        return UnsupportedConfigError(reason)

    def fail(self, message: str) -> OnnxImportError:
        """An OnnxImportError naming this node, for malformed models and unresolvable shapes."""
        return OnnxImportError(f"cannot import node '{self.name}' ({self.op_type}, opset {self.opset}): {message}")

    def output_used(self, i: int) -> bool:
        """Whether output ``i`` is read by another node or is a graph output."""
        if i >= len(self.node.output) or not self.node.output[i]:
            return False
        name = self.node.output[i]
        return bool(self._importer.consumers.get(name)) or name in self._importer.graph_outputs

    def consumers(self, i: int) -> list[onnx.NodeProto]:
        """The nodes that read output ``i``."""
        return list(self._importer.consumers.get(self.node.output[i], []))

    def is_graph_output(self, i: int) -> bool:
        """Whether output ``i`` is a graph output."""
        return self.node.output[i] in self._importer.graph_outputs

    def inline(self, graph: onnx.GraphProto) -> list[Value]:
        """Import the nodes of subgraph ``graph`` in place of this node; the values of its outputs."""
        return self._importer.inline(graph, self)

    def fuse(self, later: onnx.NodeProto, value: Value) -> None:
        """Let ``later`` (a consumer absorbed by this converter) produce ``value`` without a converter of its own."""
        self._importer.fused[id(later)] = value

    def tensor_from_proto(self, proto: onnx.TensorProto) -> torch.Tensor:
        """A TensorProto (for example a Constant's ``value``) as a torch tensor."""
        return tensor_from_proto(proto)

    def onnx_dtype(self, elem_type: int) -> torch.dtype:
        """The torch dtype of an ONNX element type."""
        if elem_type not in ONNX_DTYPES:
            raise self.unsupported(f"element type {onnx.TensorProto.DataType.Name(elem_type)}")
        return ONNX_DTYPES[elem_type]

    def dtype_of(self, value: Value | None) -> torch.dtype | None:
        """The dtype of a value where known."""
        if isinstance(value, Const):
            return value.tensor.dtype
        if isinstance(value, SymVec):
            return value.dtype
        if isinstance(value, Tensor):
            return value.dtype
        return None

    # ---- shapes ---------------------------------------------------------------------------------------------------
    def shape_or_none(self, value: Value | None) -> tuple | None:
        """The shape of a value as sympy expressions (entries or the whole shape may be ``None``)."""
        if isinstance(value, Const):
            return tuple(sympy.Integer(d) for d in value.tensor.shape)
        if isinstance(value, SymVec):
            return () if value.scalar else (sympy.Integer(len(value.elems)),)
        if isinstance(value, Tensor):
            return value.shape
        return None

    def shape(self, value: Value | None) -> tuple:
        """The shape of ``value``; unknown entries become symbols read with ``x.size(i)`` at run time."""
        shape = self.shape_or_none(value)
        if shape is None:
            raise self.fail("an input has an unknown rank; run onnx shape inference or export with static shapes")
        if isinstance(value, Tensor) and any(d is None for d in shape):
            value.shape = shape = tuple(
                self.runtime_dim(value, i) if d is None else d for i, d in enumerate(shape)
            )
        return shape

    def runtime_dim(self, value: Value, i: int) -> sympy.Symbol:
        """A symbol for dimension ``i`` of a run-time tensor, read with ``x.size(i)`` when needed."""
        if not isinstance(value, Tensor):
            raise self.fail("a dimension of a non-tensor value is unknown")
        return self._importer.runtime_symbol(value.node, i)

    def dim_arg(self, dim: sympy.Expr) -> int | fx.Node:
        """A dimension as an fx argument: an int, or nodes computing it from ``x.size(i)`` calls."""
        return self._importer.materialize(dim, self)

    def dims_arg(self, dims: Sequence[sympy.Expr]) -> list[int | fx.Node]:
        """Several dimensions as fx arguments (see :meth:`dim_arg`)."""
        return [self.dim_arg(d) for d in dims]

    # ---- naming ---------------------------------------------------------------------------------------------------
    def param_name(self, *indices: int) -> str | None:
        """A module name from the first input named like a torch parameter (``layer1.0.conv1.weight``)."""
        for i in indices:
            if i < len(self.node.input) and self.node.input[i]:
                name = self.param_name_of(self.node.input[i])
                if name:
                    return name
        return None

    def param_name_of(self, tensor_name: str) -> str | None:
        """``layer1.0.conv1`` for a tensor named ``layer1.0.conv1.weight``, else ``None``."""
        if PARAM_NAME.match(tensor_name):
            return tensor_name.rsplit(".", 1)[0]
        return None

    # ---- emission -------------------------------------------------------------------------------------------------
    def call_function(self, fn: Any, *args: Any, scalars: bool = True, **kwargs: Any) -> Any:
        """Emit (or fold) ``fn(*args, **kwargs)``; ``scalars`` turns 0-d constants into Python numbers."""
        return self._importer.emit("call_function", fn, args, kwargs, self, scalars=scalars)

    def call_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Emit (or fold) ``args[0].method(*args[1:], **kwargs)``."""
        return self._importer.emit("call_method", method, args, kwargs, self, scalars=True)

    def call_module(self, module: nn.Module, *args: Any, name: str | None = None) -> Any:
        """Register ``module`` (named ``name`` or after the node) and emit a call to it, or fold it."""
        return self._importer.emit_module(module, args, self, name)

    def getitem(self, value: Any, i: int) -> Any:
        """Item ``i`` of a multi-output result."""
        if isinstance(value, (tuple, list)):
            return value[i]
        return self.call_function(operator.getitem, value, i)


def attribute_value(attr: onnx.AttributeProto) -> Any:
    """An attribute's Python value, with strings decoded."""
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def tensor_from_proto(proto: onnx.TensorProto, base_dir: str | None = None) -> torch.Tensor:
    """A TensorProto as a torch tensor (a copy; every floating type as float32, see ``ONNX_DTYPES``)."""
    array = numpy_helper.to_array(proto, base_dir or "")
    if proto.data_type == onnx.TensorProto.BFLOAT16 or array.dtype.kind == "f":
        return torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
    if array.dtype.kind not in "biu":
        raise OnnxImportError(f"tensor '{proto.name}' has unsupported element type {array.dtype}")
    return torch.from_numpy(np.array(array, copy=True))


