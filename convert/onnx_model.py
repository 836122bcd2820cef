"""Reading an ONNX file for the importer (``onnx_import.py``): load with external data, check the opset and the
model, infer shapes on a weight-free copy, and parse symbolic dimensions. Every failure is an ``OnnxImportError``
that names the file and says what to do."""
from __future__ import annotations

import ast
import logging
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
import sympy
import torch
import torch.fx

from snnconvert.convert import onnx_ops
from snnconvert.convert.errors import OnnxImportError

logger = logging.getLogger(__name__)

__all__ = ["BATCH_PARAM", "MAX_OPSET", "MIN_OPSET", "check_model", "convert_opset", "default_opset", "FreedBatch",
           "free_static_batch", "infer_shapes", "load_external_data", "one_line", "parse_dim_param", "read_model",
           "restore_static_batch", "sanitize", "shape_only_copy", "takes_any_batch"]

MIN_OPSET = 13
MAX_OPSET = 21
# Initializers up to this many elements stay in the copy used for shape inference (shape constants need their
# values for data propagation); larger ones are replaced by typed graph inputs so inference never copies weights.
_INFERENCE_KEEP_NUMEL = 1024


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for error messages."""
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_model(path: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str, Any]:
    """Load the protobuf without external data: (model, label for messages, what the checker gets)."""
    if isinstance(path, onnx.ModelProto):
        return path, "<ModelProto>", path
    file = Path(path)
    if not file.is_file():
        raise OnnxImportError(f"ONNX file not found: {file}; check the path")
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise OnnxImportError(
            f"{file} is not a readable ONNX model ({one_line(exc)}); the file may be truncated or not ONNX, "
            "re-export it"
        ) from exc
    return model, str(file), str(file)


def default_opset(model: onnx.ModelProto, label: str) -> int:
    """The default-domain opset (an OnnxImportError when the file declares none)."""
    versions = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None:
        raise OnnxImportError(
            f"{label} declares no opset for the default ONNX domain; the file is not a valid ONNX model, re-export it"
        )
    return opset


def convert_opset(model: onnx.ModelProto, label: str) -> tuple[onnx.ModelProto, int | None]:
    """A model whose default-domain opset is outside ``MIN_OPSET..MAX_OPSET`` converted with
    ``onnx.version_converter`` to the nearest supported one (older files, e.g. the ONNX Model Zoo's opset-7 to -12
    CNNs, to 13; newer ones to 21), with a warning: ``(model, the file's opset)``; an opset in range:
    ``(model, None)``. A conversion the converter cannot do (an op without an adapter) is an OnnxImportError."""
    opset = default_opset(model, label)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model, None
    target = min(max(opset, MIN_OPSET), MAX_OPSET)
    old_resizes = _old_resize_semantics(model, label) if opset < 11 else {}
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter's C++ errors (no adapter for an op, ...)
        raise OnnxImportError(
            f"{label} uses opset {opset}, outside the supported range {MIN_OPSET}-{MAX_OPSET}, and "
            f"onnx.version_converter cannot convert it to opset {target} ({one_line(exc)}); re-export the model at an "
            f"opset in {MIN_OPSET}-{MAX_OPSET}"
        ) from exc
    # IR < 4 lists initializers as graph inputs: initializers the converter adds would fail the checker; so would
    # the shapeless value_info it writes for tensors it adds (shape inference gives them their shapes)
    converted.ir_version = max(converted.ir_version,
                               onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)]))
    shaped = [v for v in converted.graph.value_info if v.type.tensor_type.HasField("shape")]
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(shaped)
    for node in converted.graph.node:
        if node.op_type == "Resize" and node.output[0] in old_resizes:
            kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in old_resizes[node.output[0]].items())
    logger.warning("%s: opset %d converted to opset %d with onnx.version_converter (the importer reads opsets %d-%d)",
                   label, opset, target, MIN_OPSET, MAX_OPSET)
    return converted, opset


def _old_resize_semantics(model: onnx.ModelProto, label: str) -> dict[str, dict[str, str]]:
    """The sampling of the opset-7/9 ``Upsample`` and opset-10 ``Resize`` nodes, by first output, as Resize-11
    attributes. onnx.version_converter turns them into Resize nodes with the Resize-11 defaults (``half_pixel``
    coordinates, ``round_prefer_floor`` rounding), which the old operators did not have: they sample at
    ``asymmetric`` coordinates (x_in = x_out / scale), and their nearest rounding, in onnxruntime, truncates when a
    dimension is enlarged and rounds up when it is shrunk. A nearest resize whose scales are not constant or that
    enlarges some dimensions and shrinks others has no Resize-11 equivalent: an ``OnnxImportError``."""
    constants = {init.name: init for init in model.graph.initializer}
    constants.update({node.output[0]: attr.t for node in model.graph.node if node.op_type == "Constant"
                      for attr in node.attribute if attr.name == "value"})
    semantics = {}
    for node in model.graph.node:
        if node.op_type not in ("Upsample", "Resize"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        semantics[node.output[0]] = {"coordinate_transformation_mode": "asymmetric"}
        if mode != "nearest":
            continue
        scales = attrs.get("scales")
        if scales is None and len(node.input) > 1 and node.input[1] in constants:
            try:
                scales = onnx.numpy_helper.to_array(constants[node.input[1]]).tolist()
            except Exception:  # external data not read yet
                scales = None
        changed = [] if scales is None else [s for s in scales if s != 1]
        if node.op_type == "Upsample" or (scales is not None and all(s > 1 for s in changed)):
            semantics[node.output[0]]["nearest_mode"] = "floor"  # Upsample's scales are >= 1 (its spec)
        elif scales is not None and all(s < 1 for s in changed):
            semantics[node.output[0]]["nearest_mode"] = "ceil"
        else:
            what = "scales computed at run time" if scales is None else f"scales {scales}"
            raise OnnxImportError(
                f"{label}: the opset-10 Resize node {node.name or node.output[0]!r} (nearest, {what}) rounds "
                "differently along enlarged and shrunk dimensions, which one later Resize cannot express for these "
                f"scales; re-export the model at an opset in {MIN_OPSET}-{MAX_OPSET}")
    return semantics


def check_model(target: Any, label: str, model: onnx.ModelProto) -> None:
    """Run ``onnx.checker`` (on the path when there is one, so large models work).

    The ONNX IR lets a graph output declare a type without a shape (the checker does not: onnx/onnx#2932); such
    outputs are checked with the shapes inference gives them. A graph input without a shape is refused (the
    importer needs its rank)."""
    try:
        onnx.checker.check_model(target)
    except Exception as exc:
        if not _checks_with_inferred_outputs(model, label):
            raise OnnxImportError(f"{label} fails the ONNX checker ({one_line(exc)}); re-export the model or repair "
                                  "it with the onnx tools") from exc


def _shapeless(infos) -> set[str]:
    """The names of the graph inputs or outputs ``infos`` declared as tensors without a shape."""
    return {info.name for info in infos
            if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape")}


def _checks_with_inferred_outputs(model: onnx.ModelProto, label: str) -> bool:
    """Whether the model passes the checker once its shape-less outputs carry their inferred shapes (False: it has
    none, or they do not help); an input without a shape is an ``OnnxImportError``."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = sorted(_shapeless(model.graph.input) - initializers)
    shapeless = _shapeless(model.graph.output)
    if inputs:
        raise OnnxImportError(f"{label}: graph input {', '.join(map(repr, inputs))} declares no shape; the importer "
                              "needs its rank and sizes: export the model with an example input of the right shape")
    if not shapeless:
        return False
    light = shape_only_copy(model)
    inferred, _ = _inferred(light)
    shapes = {} if inferred is None else {
        info.name: info.type.tensor_type.shape for info in (*inferred.graph.value_info, *inferred.graph.output)
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")}
    unknown = []
    for info in light.graph.output:
        if info.name in shapeless:
            if info.name in shapes:
                info.type.tensor_type.shape.CopyFrom(shapes[info.name])
            else:  # an op inference does not know (a custom domain's): the import computes shapes itself
                info.type.tensor_type.shape.SetInParent()
                unknown.append(info.name)
    try:
        onnx.checker.check_model(light)
    except Exception:
        return False
    logger.info("%s: output(s) %s declare no shape (the ONNX IR allows it, the checker does not): checked with the "
                "inferred shapes%s", label, ", ".join(sorted(shapeless)),
                f" ({', '.join(unknown)}: none inferred, checked without)" if unknown else "")
    return True


def load_external_data(model: onnx.ModelProto, file: Path, label: str) -> None:
    """Read external tensors (``model.onnx.data``) from the model's folder."""
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(file.parent))
    except Exception as exc:
        raise OnnxImportError(
            f"cannot read the external data of {label} ({one_line(exc)}); keep the .data file next to the model"
        ) from exc


def shape_only_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without large initializers (replaced by typed inputs), cheap to run shape inference on."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        numel = int(np.prod(init.dims)) if init.dims else 1
        if numel <= _INFERENCE_KEEP_NUMEL and init.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def _inferred(light: onnx.ModelProto) -> tuple[onnx.ModelProto | None, list[str]]:
    """ONNX shape inference on a weight-free copy, with data propagation, else without; None and the errors when
    both fail."""
    errors: list[str] = []
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(light, data_prop=data_prop), errors
        except Exception as exc:  # noqa: BLE001 - onnx raises several types; reported by the caller
            errors.append(one_line(exc))
    return None, errors


def infer_shapes(model: onnx.ModelProto, label: str) -> dict[str, tuple[int, list[int | str | None]]]:
    """name -> (elem_type, dims) from declared and inferred value infos (dims: int, dim_param or None)."""
    inferred, errors = _inferred(shape_only_copy(model))
    if inferred is None:
        raise OnnxImportError(f"ONNX shape inference fails on {label} ({errors[-1]}); check the model with onnx tools")
    table: dict[str, tuple[int, list[int | str | None]]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            if info.type.HasField("tensor_type"):
                table.setdefault(info.name, (tensor_type.elem_type, None))
            continue
        dims: list[int | str | None] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        table[info.name] = (tensor_type.elem_type, dims)
    return table


def sanitize(name: str) -> str:
    """An identifier from an ONNX name: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1_layer1_0_conv1_Conv``."""
    text = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")
    text = re.sub(r"_+", "_", text)
    if not text:
        return "node"
    return f"n_{text}" if text[0].isdigit() else text


def parse_dim_param(text: str, symbols: dict[str, sympy.Symbol]) -> sympy.Expr | None:
    """A dim_param such as ``batch`` or ``197*batch`` over known symbols; never ``eval``s the text."""
    if len(text) > 200:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> sympy.Expr:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return sympy.Integer(node.value)
        if isinstance(node, ast.Name) and node.id in symbols:
            return symbols[node.id]
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
            if type(node.op) in ops:
                return ops[type(node.op)](walk(node.left), walk(node.right))
            if isinstance(node.op, ast.FloorDiv):
                return onnx_ops.sym_div(walk(node.left), walk(node.right))
        raise ValueError(text)

    try:
        return sympy.expand(walk(tree))
    except (ValueError, ZeroDivisionError):
        return None


#: The dim_param a static batch dimension is renamed to by :func:`free_static_batch`.
BATCH_PARAM = "snnconvert_batch"


@dataclass
class FreedBatch:
    """What :func:`free_static_batch` changed: the batch size the file fixed, the graph input, the outputs that led
    with it, and the declarations it replaced (to put back with :func:`restore_static_batch`)."""

    batch: int
    input_name: str
    outputs: list[str]
    saved: tuple[list, list, list]


def free_static_batch(model: onnx.ModelProto, *, copy: bool) -> tuple[onnx.ModelProto, FreedBatch | None]:
    """Make a static batch dimension dynamic: ``torch.onnx.export`` without dynamic axes (both exporters' default)
    fixes the batch size of its example input.

    The input's first dimension (and each output's, where it equals it) becomes the dim_param ``BATCH_PARAM``; the
    exporter's intermediate value infos are dropped (shape inference redoes them). The batch size is also written
    into constants (``x.view(x.size(0), -1)`` becomes ``Reshape(x, [1, 784])``): the importer's converters read it
    from the run-time batch there (``OpContext.static_batch_target``, ``OpContext.batch_constant``), and checks
    that the outputs still lead with the batch (``restore_static_batch`` otherwise).

    Returns:
        (model, freed): the model itself and ``None`` when its batch is already dynamic (or it has no single input
        of rank >= 1); otherwise the freed model (a copy with ``copy=True``, else the argument, modified) and what
        was changed.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.shape.dim:
        return model, None
    first = inputs[0].type.tensor_type.shape.dim[0]
    if not first.HasField("dim_value") or first.dim_value < 1:
        return model, None
    batch = first.dim_value
    free = model
    if copy:
        free = onnx.ModelProto()
        free.CopyFrom(model)
    graph = free.graph
    saved = tuple([_copy(v) for v in values] for values in (graph.input, graph.output, graph.value_info))
    del graph.value_info[:]
    outputs = []
    for value in [*(v for v in graph.input if v.name == inputs[0].name), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = BATCH_PARAM
            if value.name != inputs[0].name:
                outputs.append(value.name)
    return free, FreedBatch(batch, inputs[0].name, outputs, saved)


def restore_static_batch(model: onnx.ModelProto, freed: FreedBatch) -> None:
    """Put back the declarations :func:`free_static_batch` replaced (the batch stays as the file fixed it)."""
    for field, values in zip((model.graph.input, model.graph.output, model.graph.value_info), freed.saved):
        del field[:]
        field.extend(values)


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    clone = onnx.ValueInfoProto()
    clone.CopyFrom(value)
    return clone


def takes_any_batch(gm: torch.fx.GraphModule, model: onnx.ModelProto, freed: FreedBatch) -> bool:
    """Whether a graph whose static batch was freed computes each sample on its own at another batch size: run on
    three random samples together and on each alone, the outputs that led with the batch must agree (a graph that
    merges the batch into other dimensions, e.g. a Reshape to ``[-1]`` followed by constant indices, fails or
    differs; three, not two: a slice ``[-2:2]`` of the batch axis or a lower triangle two rows down keeps two
    samples intact). Without static sample dimensions to draw inputs from, the symbolic import is trusted. Integer and
    boolean outputs must be equal; float ones close, NaN where the other has NaN (``Log`` of the random input)."""
    from snnconvert.convert.onnx_ops.context import ONNX_DTYPES  # (context imports this module)

    graph_input = next(v for v in model.graph.input if v.name == freed.input_name)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim][1:]
    if None in dims:
        return True
    dtype = ONNX_DTYPES.get(graph_input.type.tensor_type.elem_type, torch.float32)
    generator = torch.Generator().manual_seed(0)
    batch = 3
    x = torch.rand(batch, *dims, generator=generator)
    x = x if dtype.is_floating_point else (x * 100).to(dtype)
    names = [out.name for out in model.graph.output]
    try:
        with torch.no_grad():  # forward(), not __call__: fx's __call__ prints a failing line's code to stderr
            together, alone = gm.forward(x), [gm.forward(x[i:i + 1]) for i in range(batch)]
    except Exception:  # noqa: BLE001 - the graph cannot run at batch 3 or 1: it holds the batch size somewhere
        return False
    together, alone = _as_list(together), [_as_list(out) for out in alone]
    for k, name in enumerate(names):
        if name not in freed.outputs:
            continue
        every = together[k]
        if not isinstance(every, torch.Tensor) or every.dim() == 0 or every.shape[0] != batch:
            return False
        for i in range(batch):
            if not _same_sample(every[i:i + 1], alone[i][k]):
                return False
    return True


def _same_sample(pair: torch.Tensor, one: Any) -> bool:
    """Whether one sample's output computed in a batch equals it computed alone (see ``takes_any_batch``)."""
    if not isinstance(one, torch.Tensor) or one.shape != pair.shape or one.dtype != pair.dtype:
        return False
    if not one.dtype.is_floating_point:
        return torch.equal(pair, one)
    finite = one[torch.isfinite(one)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return torch.allclose(pair, one, rtol=1e-4, atol=1e-5 * scale + 1e-12, equal_nan=True)


def _as_list(out: Any) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]
