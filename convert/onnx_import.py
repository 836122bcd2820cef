"""ONNX front end: ``load_onnx(path) -> torch.fx.GraphModule``.

Steps (architecture.md §3):

1. **Load and check.** ``onnx.load`` (external data such as the dynamo exporter's ``model.onnx.data`` is read from
   next to the model), an opset check against ``MIN_OPSET..MAX_OPSET``, ``onnx.checker.check_model`` on the path
   (so models above 2 GiB work), then ``onnx.shape_inference`` on a weight-free copy of the graph.
2. **One pass over the nodes in topological order.** Each node is looked up in the registry of
   :mod:`snnconvert.convert.onnx_ops` by (domain, op_type) and the model's opset; its converter emits fx nodes
   through an :class:`OpContext`. Nodes whose op has no converter (or whose attributes a converter cannot express)
   are collected; the outputs of such a node are "poisoned" so the walk goes on, and one ``UnsupportedOpError``
   lists every offender at the end.
3. **Build the GraphModule.** Weights live in real modules (``nn.Conv2d``, ``nn.Linear``, ...), other constants in
   registered buffers read through ``get_attr``. Every fx node carries ``node.meta["onnx"] = {"name", "op_type",
   "opset"}`` and the module carries ``gm.meta["onnx"]`` with model-level facts.

Postconditions: the result is in eval mode, its parameters are float32, and it has exactly one placeholder (the
single graph input). A dynamic batch dimension stays dynamic: reshapes use ``-1`` (or ``x.size(0)`` arithmetic when
several entries are dynamic), so the module accepts any batch size, including a flattened ``[T*B, ...]`` input.

Dynamic shapes. The input's dim_params (``batch``) become sympy symbols; every run-time tensor carries a symbolic
shape, taken from the converters where they know it (reshape, transpose, convolution arithmetic, ...) and from ONNX
shape inference otherwise. ``Shape`` therefore yields a symbolic vector such as ``(batch, 768, 196)`` and the
exporters' ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains fold while importing. A dimension nobody
knows becomes a symbol bound to ``x.size(i)`` of the tensor it belongs to, computed at run time only if a reshape
needs it. A model exported with a static batch is imported with that batch freed (the first dim made a symbol) when
each sample is then still computed on its own (checked on random samples, ``onnx_model.takes_any_batch``);
otherwise, or when a converter needs the batch size, it keeps that batch. Either way a warning is logged.

Example::

    gm = load_onnx("resnet18.onnx")        # -> fx.GraphModule with nn.Conv2d / nn.ReLU / ... modules
    y = gm(torch.randn(8, 3, 224, 224))    # any batch size when the export had a dynamic batch axis
    gm.meta["onnx"]["input_shape"]         # [None, 3, 224, 224]
"""
from __future__ import annotations

import keyword
import logging
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import sympy
import torch
from torch import fx, nn

from snnconvert.convert import onnx_ops
from snnconvert.convert.errors import ConfigError, OnnxImportError, UnsupportedNode, UnsupportedOpError
from snnconvert.convert.onnx_layout import CHANNELS_FIRST, CHANNELS_LAST, INPUT_LAYOUTS, channels_first_input
from snnconvert.convert.onnx_model import (
    MAX_OPSET,
    MIN_OPSET,
    check_model,
    convert_opset,
    default_opset,
    free_static_batch,
    infer_shapes,
    load_external_data,
    one_line,
    parse_dim_param,
    read_model,
    restore_static_batch,
    sanitize,
    takes_any_batch,
)
from snnconvert.convert.onnx_ops import Const, SymVec, Tensor, UnsupportedConfigError, Value
from snnconvert.convert.onnx_ops.context import ONNX_DTYPES, OpContext, tensor_from_proto

__all__ = ["MAX_OPSET", "MIN_OPSET", "OpContext", "load_onnx", "supported_op_types"]

logger = logging.getLogger(__name__)

#: Names of ONNX element types in ``gm.meta["onnx"]["input_dtype"]`` (others: the ONNX name in lower case).
_DTYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}

#: Attributes every ``fx.GraphModule`` instance sets (``training``, ``meta``, ``_graph``...): an ONNX node or
#: initializer of such a name must not shadow them.
_GRAPH_MODULE_ATTRIBUTES = frozenset(vars(fx.GraphModule(nn.Module(), fx.Graph())))


def supported_op_types() -> list[str]:
    """Op types of the default ONNX domain that :func:`load_onnx` converts."""
    return onnx_ops.supported_op_types()


def load_onnx(path: str | os.PathLike[str] | onnx.ModelProto, *, input_layout: str = CHANNELS_FIRST
              ) -> fx.GraphModule:
    """Import an ONNX model as a ``torch.fx.GraphModule``.

    Args:
        path: an ``.onnx`` file (external data files are read from its folder), or an in-memory ``ModelProto``.
        input_layout: the layout of the model's input: ``"channels-first"`` or ``"channels-last"`` (``[N, *spatial,
            C]``, TF / Keras through tf2onnx: the module then takes channels-first input, see
            :mod:`snnconvert.convert.onnx_layout`).

    Returns:
        A GraphModule in eval mode with float32 parameters and one input. ``gm.meta["onnx"]`` holds ``path``,
        ``opset`` (the one imported), ``opset_converted_from`` (the file's, where it was outside
        ``MIN_OPSET..MAX_OPSET`` and ``onnx.version_converter`` converted it; else ``None``), ``producer``,
        ``input_name``, ``input_shape`` (``None`` for dynamic dimensions; channels-first, what the module takes),
        ``input_layout`` (the file's), ``input_dtype`` (as declared:
        ``float32``, ``float16``, ``uint8``...; floating values are imported as float32),
        ``static_batch`` (the batch size the file fixed, else ``None``), ``batch_freed`` (whether the import
        made it dynamic: :func:`free_static_batch`; not where the graph merges it with other dimensions)
        and ``metadata_props``; every fx node holds ``node.meta["onnx"] = {"name", "op_type", "opset"}``.

    Raises:
        OnnxImportError: the file is missing, not ONNX, truncated, fails the checker, has an opset outside
            ``MIN_OPSET..MAX_OPSET`` that ``onnx.version_converter`` cannot convert, has more or fewer than one
            input, or has a dynamic shape that cannot be resolved.
        UnsupportedOpError: once, listing every node whose op type (or attribute combination) has no converter.
    """
    if input_layout not in INPUT_LAYOUTS:
        raise ConfigError(f"input_layout {input_layout!r} is not valid; choose one of: {', '.join(INPUT_LAYOUTS)}")
    model, label, check_target = read_model(path)
    model, converted_from = convert_opset(model, label)
    opset = default_opset(model, label)
    check_model(model if converted_from is not None else check_target, label, model)
    if isinstance(path, (str, os.PathLike)):
        load_external_data(model, Path(path), label)
    model, freed = free_static_batch(model, copy=isinstance(path, onnx.ModelProto))
    importer = _Importer(model, opset, infer_shapes(model, label), label,
                         static_batch=None if freed is None else freed.batch)
    try:
        gm = importer.run()
    except OnnxImportError:
        if freed is None:
            raise
        gm = None  # a shape the freed batch leaves unresolved: imported as the file fixed it below
    except UnsupportedOpError:
        if freed is None or not importer.converter_refused:
            raise  # only ops without a converter: refused at any batch size
        gm = None  # a converter may need the batch size (GatherND indexing it): imported as the file fixed it below
    batch_freed = gm is not None and freed is not None and takes_any_batch(gm, model, freed)
    if freed is not None and not batch_freed:  # the batch was merged into other dims: the file stays as it is
        restore_static_batch(model, freed)
        # what this import raises is the file's own list of problems (every node it cannot import at its batch size)
        gm = _Importer(model, opset, infer_shapes(model, label), label).run()
        logger.warning("%s: the input has a static batch size %d (exported without a dynamic batch axis) that the "
                       "graph merges with other dimensions or reads as data; imported as it is: the module takes "
                       "batches of %d only (export with a dynamic batch axis to convert it)", label, freed.batch,
                       freed.batch)
    elif freed is not None:
        nodes = importer.batch_nodes
        logger.warning("%s: the input has a static batch size %d (exported without a dynamic batch axis); imported "
                       "with a dynamic one%s", label, freed.batch, f" (nodes whose constants held the batch size now "
                       f"read it at run time: {', '.join(dict.fromkeys(nodes))})" if nodes else "")
    graph_input = gm.meta["onnx"]
    gm.meta["onnx"] = {
        "path": None if isinstance(path, onnx.ModelProto) else str(path),
        "opset": opset,
        "opset_converted_from": converted_from,
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "input_name": graph_input["input_name"],
        "input_shape": graph_input["input_shape"],
        "input_dtype": graph_input["input_dtype"],
        "static_batch": None if freed is None else freed.batch,
        "batch_freed": batch_freed,
        "metadata_props": {prop.key: prop.value for prop in model.metadata_props},
        "input_layout": CHANNELS_FIRST,
    }
    if input_layout == CHANNELS_LAST:
        channels_first_input(gm, label)
    n_modules = sum(1 for node in gm.graph.nodes if node.op == "call_module")
    logger.info("imported %s: opset %d, %d ONNX nodes -> %d fx nodes (%d modules)", label, opset,
                len(model.graph.node), len(gm.graph.nodes), n_modules)
    return gm


# --------------------------------------------------------------------------------------------------------------------
# The importer: graph walk and fx construction
# --------------------------------------------------------------------------------------------------------------------
class _Importer:
    """One import: the fx graph under construction, the value of every ONNX tensor name, and the symbol tables.

    ``values`` maps ONNX names to Const / SymVec / Tensor (or the poison marker); ``symbol_source`` says which fx
    node and dimension a symbol can be read from at run time, ``size_nodes`` caches those ``x.size(i)`` nodes.
    """

    def __init__(self, model: onnx.ModelProto, opset: int, inferred: dict, label: str,
                 static_batch: int | None = None) -> None:
        self.model = model
        self.static_batch = static_batch  # the batch size a freed static batch had (free_static_batch)
        self.batch_nodes: list[str] = []  # nodes whose constants held it, now read from the run-time batch
        self.opset = opset
        self.inferred = inferred
        self.label = label
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.used_names: set[str] = set()
        self.values: dict[str, Any] = {}
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.graph_outputs = {out.name for out in model.graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self._find_consumers(model.graph)
        self.fused: dict[int, Value] = {}
        self.symbols: dict[str, sympy.Symbol] = {}
        self.symbol_source: dict[sympy.Symbol, tuple[fx.Node, int]] = {}
        self.size_nodes: dict[sympy.Symbol, fx.Node] = {}
        self.runtime_symbols: dict[tuple[fx.Node, int], sympy.Symbol] = {}
        self.lifted: dict[int, tuple[Const, fx.Node]] = {}
        self.meta: dict[str, Any] = {}
        self.poisoned: set[str] = set()  # outputs of unconverted nodes and of nodes reading them
        self.converter_refused = False  # whether a converter refused its node (not only ops without one)
        self.standin: fx.Node | None = None  # the dummy fx node those values stand on
        self.unsupported: list[UnsupportedNode] = []  # collected over the walk, raised once
        self.reasons: list[str] = []
        self.errors: list[OnnxImportError] = []

    def _find_consumers(self, graph: onnx.GraphProto, owner: onnx.NodeProto | None = None) -> None:
        """Record the readers of every tensor name, into subgraphs (an If branch reading a tensor of the outer graph
        makes the If node, ``owner``, one of its readers too)."""
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
                    if owner is not None:
                        self.consumers[name].append(owner)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    self._find_consumers(sub, owner or node)
            if owner is not None:  # a subgraph's outputs are read by its owner
                for out in graph.output:
                    self.consumers.setdefault(out.name, []).append(owner)

    # ---- values ---------------------------------------------------------------------------------------------------
    def value(self, name: str) -> Any:
        """The value of tensor ``name``; initializers are converted on first use."""
        if name in self.values:
            return self.values[name]
        if name in self.initializers:
            tensor = tensor_from_proto(self.initializers[name])
            self.values[name] = Const(tensor, (name, "Initializer"))
            return self.values[name]
        raise OnnxImportError(f"{self.label}: tensor '{name}' is used before it is defined; the graph is malformed")

    def runtime_symbol(self, node: fx.Node, dim: int) -> sympy.Symbol:
        """The symbol of dimension ``dim`` of fx ``node`` (one per node and dimension)."""
        key = (node, dim)
        if key not in self.runtime_symbols:
            symbol = sympy.Symbol(f"_dim{len(self.runtime_symbols)}", integer=True, positive=True)
            self.runtime_symbols[key] = symbol
            self.symbol_source[symbol] = key
        return self.runtime_symbols[key]

    def _declared_dim(self, dim: int | str | None, node: fx.Node, index: int) -> sympy.Expr | None:
        """A declared / inferred dimension as a sympy expression (dim_params become shared symbols)."""
        if isinstance(dim, int):
            return sympy.Integer(dim)
        if not dim:
            return None
        if dim in self.symbols:
            return self.symbols[dim]
        if dim.isidentifier():
            symbol = sympy.Symbol(dim, integer=True, positive=True)
            self.symbols[dim] = symbol
            self.symbol_source[symbol] = (node, index)
            return symbol
        return parse_dim_param(dim, self.symbols)

    def _finish_tensor(self, value: Tensor, name: str) -> Tensor:
        """Fill in a converter output's unknown shape entries and dtype from the inferred value info."""
        elem_type, dims = self.inferred.get(name, (0, None))
        if value.dtype is None and elem_type in ONNX_DTYPES:
            value.dtype = ONNX_DTYPES[elem_type]
        if dims is None:
            return value
        inferred = tuple(self._declared_dim(d, value.node, i) for i, d in enumerate(dims))
        if value.shape is None:
            value.shape = inferred
        elif len(value.shape) == len(inferred):
            value.shape = tuple(d if d is not None else inf for d, inf in zip(value.shape, inferred))
        else:
            logger.debug("shape of %s: converter gives rank %d, inference %d", name, len(value.shape), len(inferred))
        return value

    # ---- fx emission ----------------------------------------------------------------------------------------------
    def _create(self, op: str, target: Any, args: tuple, kwargs: dict, meta: dict | None = None) -> fx.Node:
        """Create an fx node carrying ``meta['onnx']`` of the ONNX node being converted."""
        node = self.graph.create_node(op, target, args, kwargs)
        node.meta["onnx"] = dict(meta or self.meta)
        return node

    def unique_name(self, candidate: str) -> str:
        """A sanitised attribute name not used yet (nor by ``fx.GraphModule`` itself: its methods and the
        attributes every instance sets, such as ``meta`` and ``training``)."""
        base = sanitize(candidate)
        name, k = base, 0
        while (name in self.used_names or keyword.iskeyword(name) or hasattr(fx.GraphModule, name)
               or name in _GRAPH_MODULE_ATTRIBUTES):
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def lift(self, const: Const) -> fx.Node:
        """A get_attr node reading ``const`` from a registered buffer (one buffer per constant)."""
        key = id(const)
        if key not in self.lifted or self.lifted[key][0] is not const:
            name = self.unique_name(const.source[0] or "constant")
            self.root.register_buffer(name, const.tensor.detach().clone().contiguous())
            meta = {"name": const.source[0], "op_type": const.source[1], "opset": self.opset}
            self.lifted[key] = (const, self._create("get_attr", name, (), {}, meta))
        return self.lifted[key][1]

    def materialize(self, expr: Any, ctx: OpContext) -> int | fx.Node:
        """An fx argument for a dimension expression: an int, or nodes computing it from ``x.size(i)``."""
        expr = sympy.sympify(expr)
        if expr.is_Integer:
            return int(expr)
        if expr.is_Symbol:
            if expr not in self.size_nodes:
                if expr not in self.symbol_source:
                    raise ctx.fail(f"dimension '{expr}' cannot be computed at run time")
                node, dim = self.symbol_source[expr]
                self.size_nodes[expr] = self._create("call_method", "size", (node, dim), {})
            return self.size_nodes[expr]

        def combine(fn: Any, a: Any, b: Any) -> Any:
            if isinstance(a, int) and isinstance(b, int):
                return fn(a, b)
            return self._create("call_function", fn, (a, b), {})

        if isinstance(expr, sympy.Add):
            terms = [self.materialize(t, ctx) for t in expr.args]
            result = terms[0]
            for term in terms[1:]:
                result = combine(operator.add, result, term)
            return result
        if isinstance(expr, sympy.Mul):
            coeff, rest = expr.as_coeff_Mul()
            if coeff.is_Rational and not coeff.is_Integer:
                return combine(operator.floordiv, self.materialize(coeff.p * rest, ctx), int(coeff.q))
            factors = [self.materialize(f, ctx) for f in expr.args]
            result = factors[0]
            for factor in factors[1:]:
                result = combine(operator.mul, result, factor)
            return result
        if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
            base = self.materialize(expr.base, ctx)
            result = base
            for _ in range(int(expr.exp) - 1):
                result = combine(operator.mul, result, base)
            return result
        if isinstance(expr, sympy.floor):
            numer, denom = sympy.fraction(sympy.together(expr.args[0]))
            return combine(operator.floordiv, self.materialize(numer, ctx), self.materialize(denom, ctx))
        if isinstance(expr, sympy.Mod):
            return combine(operator.mod, self.materialize(expr.args[0], ctx), self.materialize(expr.args[1], ctx))
        if isinstance(expr, (sympy.Max, sympy.Min)):
            fn = max if isinstance(expr, sympy.Max) else min
            items = [self.materialize(a, ctx) for a in expr.args]
            result = items[0]
            for item in items[1:]:
                result = combine(fn, result, item)
            return result
        raise ctx.fail(f"cannot compute the dynamic dimension {expr} at run time")

    def _runtime_arg(self, value: Any, ctx: OpContext, scalars: bool) -> Any:
        """Replace values by fx arguments: nodes, lifted buffers, scalars or materialized shape tensors."""
        if isinstance(value, Tensor):
            return value.node
        if isinstance(value, Const):
            if scalars and value.tensor.ndim == 0:
                return value.tensor.item()
            return self.lift(value)
        if isinstance(value, SymVec):
            items = [self.materialize(e, ctx) for e in value.elems]
            return self._create("call_function", torch.tensor, (items[0] if value.scalar else items,),
                                {"dtype": value.dtype})
        if isinstance(value, (list, tuple)):
            return type(value)(self._runtime_arg(v, ctx, scalars) for v in value)
        if isinstance(value, dict):
            return {k: self._runtime_arg(v, ctx, scalars) for k, v in value.items()}
        return value

    @staticmethod
    def _has_runtime(value: Any) -> bool:
        """Whether an argument structure contains a run-time value."""
        if isinstance(value, (Tensor, SymVec, fx.Node)):
            return True
        if isinstance(value, (list, tuple)):
            return any(_Importer._has_runtime(v) for v in value)
        if isinstance(value, dict):
            return any(_Importer._has_runtime(v) for v in value.values())
        return False

    @staticmethod
    def _static_arg(value: Any) -> Any:
        """Replace constants by their tensors, for folding."""
        if isinstance(value, Const):
            return value.tensor
        if isinstance(value, (list, tuple)):
            return type(value)(_Importer._static_arg(v) for v in value)
        if isinstance(value, dict):
            return {k: _Importer._static_arg(v) for k, v in value.items()}
        return value

    def _wrap_static(self, result: Any, ctx: OpContext) -> Any:
        """Wrap a folded result as constants."""
        if isinstance(result, torch.Tensor):
            return Const(result, (ctx.name, ctx.op_type))
        if isinstance(result, (tuple, list)):
            return tuple(self._wrap_static(r, ctx) for r in result)
        return Const(torch.tensor(result), (ctx.name, ctx.op_type))

    def emit(self, op: str, target: Any, args: tuple, kwargs: dict, ctx: OpContext, *, scalars: bool) -> Any:
        """Fold the call when every argument is known, else add a ``call_function`` / ``call_method`` node."""
        if not self._has_runtime(args) and not self._has_runtime(kwargs):
            static_args, static_kwargs = self._static_arg(args), self._static_arg(kwargs)
            with torch.no_grad():
                if op == "call_method":
                    result = getattr(static_args[0], target)(*static_args[1:], **static_kwargs)
                else:
                    result = target(*static_args, **static_kwargs)
            return self._wrap_static(result, ctx)
        fx_args = self._runtime_arg(args, ctx, scalars)
        if op == "call_method" and isinstance(args[0], Const):  # the receiver stays a tensor (0.5.expand(...))
            fx_args = (self.lift(args[0]), *fx_args[1:])
        fx_kwargs = self._runtime_arg(kwargs, ctx, scalars)
        return Tensor(self._create(op, target, fx_args, fx_kwargs))

    def emit_module(self, module: nn.Module, args: tuple, ctx: OpContext, name: str | None) -> Any:
        """Fold a module call on constants, else register the module and add a ``call_module`` node."""
        module.eval()
        if not self._has_runtime(args):
            with torch.no_grad():
                return self._wrap_static(module(*self._static_arg(args)), ctx)
        target = self.unique_name(name or ctx.name)
        self.root.add_module(target, module)
        return Tensor(self._create("call_module", target, self._runtime_arg(args, ctx, scalars=False), {}))

    # ---- the walk -------------------------------------------------------------------------------------------------
    def _placeholder(self) -> dict[str, Any]:
        """Create the single placeholder; returns the input's metadata for ``gm.meta['onnx']``."""
        graph = self.model.graph
        inputs = [value for value in graph.input if value.name not in self.initializers]
        if len(inputs) != 1:
            names = ", ".join(repr(v.name) for v in inputs) or "none"
            raise OnnxImportError(
                f"{self.label} has {len(inputs)} graph inputs ({names}); exactly one input is supported, "
                "re-export the model with a single input tensor"
            )
        graph_input = inputs[0]
        self.meta = {"name": graph_input.name, "op_type": "Input", "opset": self.opset}
        node = self._input_placeholder(graph_input.name)
        node.meta["onnx"] = dict(self.meta)
        elem_type, dims = self.inferred.get(graph_input.name, (graph_input.type.tensor_type.elem_type, None))
        shape = None
        if dims is not None:
            shape = tuple(
                self._declared_dim(d, node, i) if d is not None else self.runtime_symbol(node, i)
                for i, d in enumerate(dims)
            )
        dtype = ONNX_DTYPES.get(elem_type)
        self.values[graph_input.name] = Tensor(node, shape, dtype)
        return {
            "input_name": graph_input.name,
            "input_shape": None if dims is None else [d if isinstance(d, int) else None for d in dims],
            "input_dtype": _DTYPE_NAMES.get(elem_type, onnx.TensorProto.DataType.Name(elem_type).lower())
            if elem_type else None,
        }

    def _input_placeholder(self, onnx_name: str) -> fx.Node:
        """The placeholder of the graph input. Its target is ``forward``'s parameter name: a keyword or ``self``
        cannot be one (see :meth:`_unshadowed_input` for a global the generated code reads)."""
        name = sanitize(onnx_name)
        if keyword.iskeyword(name) or name == "self":
            name += "_"
        return self.graph.placeholder(name)

    def _unshadowed_input(self) -> None:
        """An input named like a global the generated ``forward`` reads (``torch``, ``getattr``) would hide it: such a
        parameter takes fx's renamed node name. Other names stay as they are (``input``, which fx renames too, keeps
        its parameter name: saved networks' graph digests include it)."""
        used = self.graph.python_code("self").globals
        for node in self.graph.find_nodes(op="placeholder"):
            if node.target in used:
                node.target = node.name

    def run(self) -> fx.GraphModule:
        """Convert every node, raise the collected unsupported nodes once, and build the GraphModule."""
        input_meta = self._placeholder()
        for index, node in enumerate(self.model.graph.node):
            self._convert(node, index)
        if self.unsupported:
            self.converter_refused = bool(self.reasons or self.errors)
            raise UnsupportedOpError(self.unsupported, hint=self._hint(self.reasons, self.errors))
        if self.errors:
            raise self.errors[0]
        self._output()
        self._eliminate_dead_code()
        self._unshadowed_input()
        gm = fx.GraphModule(self.root, self.graph, class_name="OnnxGraphModule")
        gm.graph.lint()
        gm.eval()
        gm.meta["onnx"] = input_meta
        return gm

    def inline(self, graph: onnx.GraphProto, owner: OpContext) -> list[Any]:
        """Import the nodes of ``graph`` (an If branch taken at import) in place, and return the values of its
        outputs; its nodes' problems are collected with the others."""
        self.initializers.update((init.name, init) for init in graph.initializer)
        for index, node in enumerate(graph.node):
            self._convert(node, index, prefix=f"{owner.name}/")
        self.meta = {"name": owner.name, "op_type": owner.op_type, "opset": self.opset}
        if any(out.name in self.poisoned for out in graph.output):  # a node of the branch is listed: the If is not
            self.poisoned.update(name for name in owner.node.output if name)
        return [self.value(out.name) for out in graph.output]

    def _convert(self, node: onnx.NodeProto, index: int, prefix: str = "") -> None:
        """Convert one node (its outputs get values) or record why not (its outputs get stand-ins)."""
        ctx = OpContext(self, node, index, prefix)
        self.meta = {"name": ctx.name, "op_type": node.op_type, "opset": self.opset}
        if id(node) in self.fused:
            self._store(node, [self.fused[id(node)]], ctx)
            return
        domain = node.domain or "ai.onnx"
        version = self.opset if domain == "ai.onnx" else self._domain_opset(node.domain)
        converter = onnx_ops.lookup(node.domain, node.op_type, version)
        target = f"{domain}::{node.op_type} (opset {version})"
        offender = UnsupportedNode(name=ctx.name, op=node.op_type, target=target)
        if converter is None:
            self.unsupported.append(offender)
            self._poison(node)
            return
        tainted = any(name in self.poisoned for name in node.input)
        try:
            result = converter(ctx)
        except UnsupportedConfigError as exc:
            self.unsupported.append(offender)
            self.reasons.append(f"{ctx.name} ({node.op_type}): {exc}")
            self._poison(node)
            return
        except Exception as exc:  # noqa: BLE001 - collected: every problem of the file is reported at once
            if tainted:  # an input standing in for an unconverted node's output can cause anything
                pass
            elif isinstance(exc, OnnxImportError):
                self.errors.append(exc)
            else:
                self.errors.append(OnnxImportError(
                    f"cannot import node '{ctx.name}' ({node.op_type}, opset {self.opset}): {one_line(exc)}"))
                self.errors[-1].__cause__ = exc
            self._poison(node)
            return
        self._store(node, result if isinstance(result, (list, tuple)) else [result], ctx)
        if tainted:
            self.poisoned.update(name for name in node.output if name)

    def _domain_opset(self, domain: str) -> int:
        """The opset version imported for a non-default domain."""
        return next((imp.version for imp in self.model.opset_import if imp.domain == domain), 1)

    def _hint(self, reasons: list[str], errors: Sequence[OnnxImportError] = ()) -> str:
        """The hint of the UnsupportedOpError: supported op types, the reasons for rejected attributes and the
        other nodes that cannot be imported (malformed, or with shapes that cannot be resolved)."""
        lines = [f"Supported op types (ai.onnx, opset {MIN_OPSET}-{MAX_OPSET}): {', '.join(supported_op_types())}."]
        if reasons:
            lines.append("Unsupported attributes: " + "; ".join(reasons) + ".")
        if errors:
            lines.append("Not importable either: " + "; ".join(str(exc) for exc in errors) + ".")
        lines.append("Replace or remove these ops before export, or export the PyTorch model with torch.fx instead.")
        return "\n".join(lines)

    def _poison(self, node: onnx.NodeProto) -> None:
        """Give the outputs of a node that could not be converted stand-in values (their inferred shapes, on a dummy
        fx node), so that the walk goes on and lists every other unsupported node; the graph is not built then."""
        if self.standin is None:
            self.standin = self.graph.placeholder("unconverted_standin")
        for name in node.output:
            if name:
                self.values[name] = self._finish_tensor(Tensor(self.standin, None, None), name)
                self.poisoned.add(name)

    def _store(self, node: onnx.NodeProto, results: Sequence[Any], ctx: OpContext) -> None:
        """Record a converter's results for the node's outputs (shapes completed from inference)."""
        for i, name in enumerate(node.output):
            if not name:
                continue
            value = results[i] if i < len(results) else None
            if value is None:
                if ctx.output_used(i):
                    raise ctx.fail(f"output {i} is used but the converter does not produce it")
                continue
            if isinstance(value, Tensor):
                value = self._finish_tensor(Tensor(value.node, value.shape, value.dtype), name)
            self.values[name] = value

    def _output(self) -> None:
        """Emit the graph output (a tuple for several outputs)."""
        self.meta = {"name": "output", "op_type": "Output", "opset": self.opset}
        ctx = OpContext(self, onnx.helper.make_node("Identity", [], [], name="output"), -1)
        outputs = [self._runtime_arg(self.value(out.name), ctx, scalars=False) for out in self.model.graph.output]
        node = self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        node.meta["onnx"] = dict(self.meta)

    def _eliminate_dead_code(self) -> None:
        """Drop nodes without users (folded shape chains leave none; fused or unused ones may)."""
        for node in reversed(list(self.graph.nodes)):
            if node.op not in ("placeholder", "output") and not node.users:
                self.graph.erase_node(node)
