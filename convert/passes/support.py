"""Support check: an explicit allow-list; one error listing EVERY node the converter cannot handle.

A graph is convertible when every node is either a canonical ReLU (it becomes a spiking neuron) or an op that is
affine in its tensor inputs (conv, linear, batch norm, average pooling, add, concat, flatten, reshapes, scaling by
constants) or a max-pool (handled as a unit whose decoded output is the max-pool of its decoded input), or a
known non-linear function, an element-wise product/quotient or a matrix product of two input-dependent tensors
(method.md §5.1/§5.2: each becomes a graded unit whose decoded output is exactly the function of its decoded
inputs, with dense float outputs; see :func:`graded_kind`). Arithmetic on shapes (``x.size(1) // groups``) is
static and supported. Anything else is listed in one ``UnsupportedOpError``, with the reason, unless the node
matches a pattern in ``cfg.allow_ann_ops`` (an explicit opt-in to leave it analog: it then also runs as a graded
unit, exact on decoded values, and is recorded in the report).
"""
from __future__ import annotations

import fnmatch
import logging
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata

from snnconvert.convert.errors import UnsupportedNode, UnsupportedOpError
from snnconvert.convert.frontend import depends_on_values, node_source, reads_metadata
from snnconvert.convert.passes.assign import assign
from snnconvert.convert.passes.attention import masked_softmax
from snnconvert.convert.passes.normalize import DROPOUT_FUNCTIONS, is_canonical_relu, nodes_in
from snnconvert.convert.passes.piecewise import PiecewiseFunction
from snnconvert.convert.passes.unpool import max_unpool_at
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

logger = logging.getLogger(__name__)

#: Modules whose output is affine in their input (or a max-pool), applied unchanged at every time step.
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d,
    # resampling and rearranging: every interpolation mode (nearest, (bi/tri)linear, bicubic, area) is linear
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle, nn.Unfold, nn.Fold,
)
#: Functions that are affine in their tensor arguments (when the non-tensor arguments are constants).
SUPPORTED_FUNCTIONS = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.getitem,
    torch.add, torch.sub, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.permute,
    torch.transpose, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum, torch.neg, torch.select, torch.narrow,
    torch.index_select,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.conv1d, F.conv2d, F.conv3d, F.linear, F.pad,
    # splitting, moving and resampling data (timm: split in MixConv / Res2Net, unbind of qkv, roll in Swin)
    torch.split, torch.chunk, torch.unbind, torch.tensor_split, torch.roll, torch.flip, torch.movedim,
    torch.swapaxes, torch.swapdims, torch.repeat_interleave, torch.pixel_shuffle, torch.pixel_unshuffle,
    torch.channel_shuffle, F.interpolate, F.upsample, F.pixel_shuffle, F.pixel_unshuffle, F.unfold, F.fold,
    # item assignment with a constant index, written out (assign.py): a selection between two tensors by a constant mask
    assign,
})
#: Functions linear in their first argument only while their other tensor arguments are constants: why not else.
_FIRST_ARG_LINEAR = {
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d, F.linear),
                    "weight or bias computed from the input (a dynamic kernel): not linear in the input"),
    torch.index_select: "indices computed from the input (a data-dependent selection): not linear in the input",
    torch.repeat_interleave: "repeats computed from the input (a data-dependent length): not linear in the input",
}
#: Element selection by a mask, ``torch.where(mask, a, b)`` and ``x.masked_fill(mask, value)``: linear in the values
#: while the mask is a constant (the dynamo exporter's adaptive pooling over unequal windows); position of the mask.
_MASK_SELECT = {torch.where: (0, "condition"), torch.masked_fill: (1, "mask"), "masked_fill": (1, "mask")}
_DYNAMIC_MASK = ("mask computed from the input (a data-dependent selection such as where(x > 0, x, -x)): not linear in "
                 "the input")
#: Comparisons of tensors: a 0/1 mask of the input is not linear in it (``x * (x > 0)`` is a ReLU, converted).
_COMPARISONS = frozenset({operator.gt, operator.ge, operator.lt, operator.le, operator.eq, operator.ne, torch.gt,
                          torch.ge, torch.lt, torch.le, torch.eq, torch.ne, "gt", "ge", "lt", "le", "eq", "ne"})
_COMPARISON = ("a comparison of activations (a 0/1 mask, not linear in the input); a ReLU written x * (x > 0) or "
               "where(x > 0, x, 0) is converted")
_TRAINING_DROPOUT = ("dropout with training=True (random at every call): pass training=self.training, or use "
                     "nn.Dropout; in eval mode it is removed")
#: Tensor methods that only move, reshape or linearly combine data.
SUPPORTED_METHODS = frozenset({
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "size", "mean",
    "sum", "add", "sub", "neg", "expand", "expand_as", "view_as", "reshape_as", "unflatten", "chunk", "split",
    "dim", "float", "type_as", "select", "narrow", "unbind", "tensor_split", "roll", "flip", "repeat",
    "movedim", "swapaxes", "swapdims", "clone", "repeat_interleave", "unfold", "detach",
})
#: Products / quotients are affine only when at most one factor depends on the input.
_SCALING_FUNCTIONS = frozenset({operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul,
                                torch.div})
_SCALING_METHODS = frozenset({"mul", "div"})
_POOL_WITH_INDICES = frozenset({F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices})
_POOL_INDICES = ("max-pool with return_indices, its indices read other than by a max_unpool (SegNet's decoder "
                 "converts: the pool's values and each max_unpool of its indices)")
_MAX_POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                   nn.AdaptiveMaxPool3d)

#: Non-linear modules that become graded units (method.md §5.1, §6): element-wise activations and normalisations.
GRADED_MODULES: tuple[type[nn.Module], ...] = (
    nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU,
    nn.PReLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.LogSigmoid,
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.Softmax, nn.LogSoftmax,
    # clipping other than a bounded ReLU (those are rewritten into two neurons first), e.g. Hardtanh(-1, 1); max-pools
    # over adaptive windows (a global max-pool: ONNX GlobalMaxPool)
    nn.Hardtanh, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    # element-wise functions written with a selection (piecewise.py), and other deterministic ones in eval mode
    PiecewiseFunction, nn.Threshold, nn.RReLU, nn.Softmax2d,
)
#: The same as functions (the ONNX importer emits these) ...
GRADED_FUNCTIONS = frozenset({
    F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, torch.sigmoid, F.tanh, torch.tanh, F.elu, F.celu, F.selu,
    F.leaky_relu, F.prelu, F.mish, F.softplus, F.softsign, F.logsigmoid, F.layer_norm, F.group_norm,
    F.instance_norm, F.local_response_norm, F.softmax,
    torch.softmax, F.log_softmax, torch.log_softmax, torch.erf, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.abs, torch.square, torch.reciprocal, torch.pow, operator.pow,
    F.hardtanh, torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.sin, torch.cos, masked_softmax,
    torch.nan_to_num,
    # reductions over a sample's dims (CBAM's channel max, L2 normalisation, statistics): a reduction over the batch
    # dim is refused by the per-sample check; torch.max(x, dim) returns (values, indices): its values become the unit
    torch.amax, torch.amin, torch.max, torch.min, F.normalize, torch.var, torch.std, torch.logsumexp, torch.norm,
    torch.linalg.vector_norm, torch.maximum, torch.minimum,
    # max-unpooling at the maxima of the pool's input (unpool.py): a function of the values and that input
    max_unpool_at,
})
#: graded functions of two input-dependent tensors (element-wise), next to products and quotients
_BINARY_GRADED = frozenset({torch.maximum, torch.minimum, torch.max, torch.min, "maximum", "minimum", "max", "min",
                            max_unpool_at})
#: ... and as tensor methods.
GRADED_METHODS = frozenset({"sigmoid", "tanh", "softmax", "log_softmax", "erf", "exp", "log", "sqrt", "rsqrt", "abs",
                            "square", "reciprocal", "pow", "clamp", "clip", "clamp_min", "clamp_max", "sin",
                            "cos", "amax", "amin", "max", "min", "var", "std", "logsumexp", "norm", "maximum",
                            "minimum"})
_GRAPH_ARGUMENTS = ("a known function, but with other arguments computed in the graph (dim=x.dim() - 1, "
                    "torch.full_like(x, c)) or several input-dependent tensors: give those arguments as constants "
                    "(dim=-1, a number)")
_WRITE_ATTENTION_OUT = ("write the attention out as matmul -> softmax -> matmul, whose products become units "
                        "(method.md §5.2, §6)")
#: Matrix products: linear with one input-dependent operand, a product unit (method.md §5.2) with two.
MATMULS = frozenset({operator.matmul, torch.matmul, torch.bmm, torch.mm, torch.einsum})
MATMUL_METHODS = frozenset({"matmul", "bmm", "mm"})
#: Pure-Python arithmetic that, on shape values, computes shapes (``n // groups``); never a tensor op.
_SHAPE_ARITHMETIC = frozenset({operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
                               operator.mod, operator.neg, operator.getitem, getattr})


def is_matmul(node: fx.Node) -> bool:
    """A matrix-product call (``@``, ``torch.matmul``, ``bmm``, ``mm``, ``einsum``, ``x.matmul(y)``)."""
    return (node.op == "call_function" and node.target in MATMULS) or (
        node.op == "call_method" and node.target in MATMUL_METHODS)


def _is_shape_value(node, cache: dict) -> bool:
    """True when ``node`` computes a shape (``x.size()``, ``x.shape[1]``, ``x.dim()``, arithmetic on those) or reads
    other metadata (``x.device``, ``x.dtype``): static for a given input shape, so not input *data*
    (``x.view(n, c // g, ...)`` stays a reshape)."""
    if not isinstance(node, fx.Node):
        return False
    key = ("shape", node)
    if key in cache:
        return cache[key]
    if reads_metadata(node):
        result = True
    elif node.op == "call_function" and node.target is getattr:
        result = False
    elif node.op == "call_function" and node.target in _SHAPE_ARITHMETIC:
        inputs = node.all_input_nodes
        result = bool(inputs) and all(_is_shape_value(a, cache) for a in inputs)
    else:
        result = False
    cache[key] = result
    return result


#: whether a node is (transitively) computed from a placeholder's data; shape values do not count (frontend.py)
_depends_on_input = depends_on_values


def input_dependent_args(node: fx.Node, cache: dict) -> list[fx.Node]:
    """The node's arguments (positional, then keyword, in order, without repeats) that carry input data."""
    seen: list[fx.Node] = []
    for a in node.all_input_nodes:
        if _depends_on_input(a, cache) and a not in seen:
            seen.append(a)
    return seen


def bindable(node: fx.Node, deps: list[fx.Node]) -> bool:
    """Whether ``node`` can run as a unit of ``deps``: its other graph arguments are constants (``get_attr``)."""
    if node.op == "call_module":
        return list(node.args) == deps and not node.kwargs
    return all(a in deps or a.op == "get_attr" for a in node.all_input_nodes)


def allowed_analog(node: fx.Node, cfg) -> bool:
    """Whether ``cfg.allow_ann_ops`` (glob patterns on node names) lets ``node`` stay analog; a selection from an
    allowed node's tuple output (``torch.sort(x).values``, ``torch.max(x, 1)[0]``) belongs to it."""
    source = tuple_selection(node)
    return any(fnmatch.fnmatchcase(n.name, pat) for n in (node, source) if n is not None for pat in cfg.allow_ann_ops)


def returns_tuple(node: fx.Node) -> bool:
    """Whether the traced call returned several values (``torch.sort``, ``torch.max(x, dim)``, ``split``)."""
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata)  # the latter: a NamedTuple


def tuple_selection(node: fx.Node) -> fx.Node | None:
    """The call whose tuple output ``node`` selects one value of (``out[0]``, ``out.values``), else None."""
    if node.op != "call_function" or node.target not in (operator.getitem, getattr) or len(node.args) != 2:
        return None
    source, key = node.args
    if not isinstance(source, fx.Node) or not isinstance(key, (int, str)) or not returns_tuple(source):
        return None
    return source


def graded_kind(gm: fx.GraphModule, node: fx.Node, cache: dict) -> str | None:
    """``"function"`` for a known non-linear function of one input-dependent tensor, ``"product"`` for an
    element-wise product or quotient or a matrix product of two input-dependent tensors, else None. Both become
    graded units (method.md §5.1, §5.2): the decoded output is the function of the decoded inputs, exactly."""
    if node.op == "call_module":
        graded = isinstance(gm.get_submodule(node.target), GRADED_MODULES)
        return "function" if graded and len(node.args) == 1 and not node.kwargs else None
    deps = input_dependent_args(node, cache)
    if not bindable(node, deps):
        return None
    if node.op == "call_function":
        if node.target in GRADED_FUNCTIONS:
            return "function" if len(deps) == 1 or (len(deps) == 2 and node.target in _BINARY_GRADED) else None
        if node.target in _SCALING_FUNCTIONS:
            return _product_kind(node, deps, cache)
        if node.target in MATMULS:
            return "product" if len(deps) == 2 else None
        return None
    if node.op == "call_method":
        if node.target in GRADED_METHODS:
            if len(deps) == 2 and node.target in _BINARY_GRADED:
                return "function"
            return "function" if len(deps) == 1 and node.args[0] is deps[0] else None
        if node.target in _SCALING_METHODS:
            return _product_kind(node, deps, cache)
        if node.target in MATMUL_METHODS:
            return "product" if len(deps) == 2 else None
    return None


def _product_kind(node: fx.Node, deps: list[fx.Node], cache: dict) -> str | None:
    """A binary ``*`` / ``/``: ``"product"`` of two input-dependent operands, ``"function"`` for a constant divided
    by one (``1 / x``) or one operand twice (``x * x``), None when affine (one input-dependent factor, constant
    divisor) or not binary."""
    if len(node.args) != 2 or node.kwargs:
        return None
    if len(deps) == 2:
        return "product"
    divides = node.target in ("div", "div_", operator.truediv, operator.itruediv, torch.div)
    if deps and _depends_on_input(node.args[1], cache) and (divides or _depends_on_input(node.args[0], cache)):
        return "function"  # 1 / x, or x * x and x / x: a function of the one input
    return None


def _target_name(node: fx.Node) -> str:
    if node.op == "call_function":
        module = getattr(node.target, "__module__", "") or ""
        return f"{module}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    return str(node.target)


def classify_node(gm: fx.GraphModule, node: fx.Node, cache: dict, opaque: dict | None = None) -> str | None:
    """Return None when ``node`` is supported, else a short reason. ``opaque``: wrapped functions the front end
    could not trace through, with why (``ConversionReport.opaque_functions``)."""
    opaque = opaque or {}
    if node.op in ("placeholder", "output", "get_attr"):
        return None
    if "snnconvert_inplace_why" in node.meta:  # convert/passes/assign.py, out_of_place_methods
        return f"{node.meta['snnconvert_inplace_why']}: not followed; write it out (e.g. h[:, :2] = F.relu(h[:, :2]))"
    if node.op in ("call_function", "call_method") and not _depends_on_input(node, cache):
        return None  # a constant (computed from parameters or shapes alone): like a bias, the same at every step
    if node.op in ("call_function", "call_method") and node.target in _COMPARISONS:
        return _COMPARISON
    if node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
        return _TRAINING_DROPOUT  # eval-mode dropout is gone (drop_dropout_and_identity)
    if node.op in ("call_function", "call_method") and node.target in _MASK_SELECT:
        if len(node.args) + len(node.kwargs) != 3:  # torch.where(x): the indices of the non-zeros
            return "function is not convertible"
        position, name = _MASK_SELECT[node.target]
        mask = node.args[position] if len(node.args) > position else node.kwargs.get(name)
        return _DYNAMIC_MASK if _depends_on_input(mask, cache) else None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, GRADED_MODULES) and not graded_kind(gm, node, cache):
            return f"module {type(module).__name__} called with more than its input"
        if is_canonical_relu(gm, node) or isinstance(module, SUPPORTED_MODULES + GRADED_MODULES):
            if isinstance(module, _MAX_POOL_TYPES) and module.return_indices:
                return _POOL_INDICES
            return None
        if isinstance(module, nn.MultiheadAttention):
            return f"module MultiheadAttention is not convertible: {_WRITE_ATTENTION_OUT}"
        return f"module {type(module).__name__} is not convertible"
    if tuple_selection(node) is not None:
        return None  # one value of a call returning several (`torch.max(x, 1).values`): the call is what is listed
    if node.op == "call_function":
        if node.target is operator.setitem:
            return f"item assignment on an activation: {node.meta.get('snnconvert_why', 'not written out')}"
        if node.target in _POOL_WITH_INDICES:
            return _POOL_INDICES
        if node.target in _FIRST_ARG_LINEAR and _dynamic_operand(node, cache):
            return _FIRST_ARG_LINEAR[node.target]
        if node.target in SUPPORTED_FUNCTIONS or _is_shape_value(node, cache) or graded_kind(gm, node, cache):
            return None
        if node.target in _SCALING_FUNCTIONS:
            deps = [a for a in node.args if _depends_on_input(a, cache)]
            if len(deps) <= 1 and not (node.target in (operator.truediv, torch.div, operator.itruediv)
                                       and len(node.args) > 1 and _depends_on_input(node.args[1], cache)):
                return None
            return "product or quotient of input-dependent tensors in an unsupported form"
        if node.target in MATMULS:
            return None if len(input_dependent_args(node, cache)) == 1 else (
                "matrix product of input-dependent tensors in an unsupported form")
        if node.target is F.scaled_dot_product_attention:
            return f"fused attention is not convertible: {_WRITE_ATTENTION_OUT}"
        if isinstance(node.target, type) and issubclass(node.target, tuple) and hasattr(node.target, "_fields"):
            return ("a NamedTuple built in the graph (not only returned, or returned inside a dict): return it as "
                    "the output, or inside a tuple or list")
        why = opaque.get(node.target)
        if why is not None:
            return f"a function registered with torch.fx.wrap, kept as one call: tracing through it failed ({why})"
        return _GRAPH_ARGUMENTS if node.target in GRADED_FUNCTIONS else "function is not convertible"
    if node.op == "call_method":
        if node.target in SUPPORTED_METHODS or graded_kind(gm, node, cache) or _float_cast(node):
            return None
        if node.target in MATMUL_METHODS and len(input_dependent_args(node, cache)) == 1:
            return None  # x.matmul(W): linear in x
        if node.target in _SCALING_METHODS:
            if not any(_depends_on_input(a, cache) for a in node.args[1:]):
                return None
            return "product or quotient of input-dependent tensors in an unsupported form"
        return _GRAPH_ARGUMENTS if node.target in GRADED_METHODS else "method is not convertible"
    return f"unknown node kind {node.op}"


def _float_cast(node: fx.Node) -> bool:
    """``x.to(...)`` to a floating dtype, a device, or another tensor's dtype and device (``out.to(dtype=x.dtype)``
    in timm's rotary embeddings): the values pass unchanged (up to the dtype's rounding), like ``x.float()``."""
    if node.target not in ("to", "type") or (node.target == "type" and len(node.args) + len(node.kwargs) < 2):
        return False  # x.type() alone returns the type's name
    for arg in (*node.args[1:], *node.kwargs.values()):
        if isinstance(arg, torch.dtype) and not arg.is_floating_point:
            return False  # a cast to integers rounds: not linear
        if not isinstance(arg, (torch.dtype, torch.device, str, bool, fx.Node)):
            return False
    return True


def _dynamic_operand(node: fx.Node, cache: dict) -> bool:
    """A call (``F.conv*``, ``F.linear``, ``torch.index_select``) with an input-dependent argument other than its
    first (the weight, bias or indices)."""
    others = (node.args[1:], {k: v for k, v in node.kwargs.items() if k != "input"})
    return any(_depends_on_input(a, cache) for a in nodes_in(others))


def describe_node(gm: fx.GraphModule, node: fx.Node, reason: str | None = None) -> UnsupportedNode:
    """A node as an error lists it: name, op, target, module type, source line and why."""
    module_type = type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else None
    return UnsupportedNode(name=node.name, op=node.op, target=_target_name(node), module_type=module_type,
                           source=node_source(node), reason=reason)


def check_supported(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Raise ONE ``UnsupportedOpError`` listing every unsupported node; never modifies the graph.

    Nodes matched by ``cfg.allow_ann_ops`` (glob patterns on node names) are allowed to stay analog and listed in
    ``report.analog_nodes``.

    Raises:
        UnsupportedOpError: with each node's name, op, target, module type and source line.
    """
    cache: dict = {}
    bad: list[UnsupportedNode] = []
    allowed: list[str] = []
    n_graded = 0
    fused = next((e.skipped for e in report.passes if e.name == "write_out_attention"), {})
    for node in gm.graph.nodes:
        n_graded += bool(graded_kind(gm, node, cache))
        reason = classify_node(gm, node, cache, report.opaque_functions)
        if reason is None:
            continue
        if node.name in fused:  # why the attention pass left it fused comes first
            reason = f"{fused[node.name]}: {reason}"
        if allowed_analog(node, cfg):
            allowed.append(node.name)
            continue
        bad.append(describe_node(gm, node, reason))
    names = [node.name for node in gm.graph.nodes]
    for pattern in cfg.allow_ann_ops:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):  # a typo would go unnoticed otherwise
            logger.warning("allow_ann_ops (--allow-ann-op) pattern %r matches no node of the graph (patterns are "
                           "globs on node names, e.g. 'cumsum*'; the names: the report's ops_before, or the "
                           "UnsupportedOpError listing)", pattern)
    entry = PassEntry(name="check_supported", modified=False,
                      counts={"analog": len(allowed), "graded": n_graded}, nodes=allowed)
    report.passes.append(entry)
    report.analog_nodes = allowed
    if bad:
        raise UnsupportedOpError(bad, hint=(
            "supported: ReLU (any spelling), affine ops (conv, linear, batch norm, avg/max pooling, add, concat, "
            "reshapes), common activations and normalisations (SiLU, GELU, sigmoid, LayerNorm, ...) and element-wise "
            "and matrix products as graded units; leave a node analog explicitly with allow_ann_ops, glob patterns "
            "on the node names listed here (e.g. allow_ann_ops='cumsum*')"))
    return PassResult(gm, False)
