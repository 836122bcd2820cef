"""Support check: an explicit allow-list; one error listing EVERY node the converter cannot handle.

A graph is convertible when every node is either a canonical ReLU (it becomes a spiking neuron) or an op that is
affine in its tensor inputs (conv, linear, batch norm, average pooling, add, concat, flatten, reshapes, scaling by
constants) or a max-pool (handled as a unit whose decoded output is the max-pool of its decoded input). Anything
else is listed in one ``UnsupportedOpError``, unless the node matches a pattern in ``cfg.allow_ann_ops`` (an
explicit opt-in to leave it analog, recorded in the report).
"""
from __future__ import annotations

import fnmatch
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.errors import UnsupportedNode, UnsupportedOpError
from snnconvert.convert.frontend import node_source
from snnconvert.convert.passes.normalize import is_canonical_relu
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

#: Modules whose output is affine in their input (or a max-pool), applied unchanged at every time step.
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d,
)
#: Functions that are affine in their tensor arguments (when the non-tensor arguments are constants).
SUPPORTED_FUNCTIONS = frozenset({
    operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.getitem,
    torch.add, torch.sub, torch.cat, torch.concat, torch.stack, torch.flatten, torch.reshape, torch.permute,
    torch.transpose, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum, torch.neg,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.conv1d, F.conv2d, F.linear, F.pad,
})
#: Tensor methods that only move, reshape or linearly combine data.
SUPPORTED_METHODS = frozenset({
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "size", "mean",
    "sum", "add", "add_", "sub", "neg", "expand", "expand_as", "view_as", "reshape_as", "unflatten", "chunk", "split",
    "dim", "float", "type_as",
})
#: Products / quotients are affine only when at most one factor depends on the input.
_SCALING_FUNCTIONS = frozenset({operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul,
                                torch.div})
_SCALING_METHODS = frozenset({"mul", "mul_", "div", "div_"})
_MAX_POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _depends_on_input(node, cache: dict) -> bool:
    """True when ``node`` is (transitively) computed from a placeholder."""
    if not isinstance(node, fx.Node):
        return False
    if node in cache:
        return cache[node]
    result = node.op == "placeholder" or any(_depends_on_input(a, cache) for a in node.all_input_nodes)
    cache[node] = result
    return result


def _target_name(node: fx.Node) -> str:
    if node.op == "call_function":
        module = getattr(node.target, "__module__", "") or ""
        return f"{module}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    return str(node.target)


def classify_node(gm: fx.GraphModule, node: fx.Node, cache: dict) -> str | None:
    """Return None when ``node`` is supported, else a short reason."""
    if node.op in ("placeholder", "output", "get_attr"):
        return None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if is_canonical_relu(gm, node) or isinstance(module, SUPPORTED_MODULES):
            if isinstance(module, _MAX_POOL_TYPES) and module.return_indices:
                return "max-pool with return_indices"
            return None
        return f"module {type(module).__name__} is not convertible"
    if node.op == "call_function":
        if node.target in SUPPORTED_FUNCTIONS:
            return None
        if node.target in _SCALING_FUNCTIONS:
            deps = [a for a in node.args if _depends_on_input(a, cache)]
            if len(deps) <= 1 and not (node.target in (operator.truediv, torch.div, operator.itruediv)
                                       and len(node.args) > 1 and _depends_on_input(node.args[1], cache)):
                return None
            return "product or quotient of two input-dependent tensors"
        return "function is not convertible"
    if node.op == "call_method":
        if node.target in SUPPORTED_METHODS:
            return None
        if node.target in _SCALING_METHODS:
            if not any(_depends_on_input(a, cache) for a in node.args[1:]):
                return None
            return "product or quotient of two input-dependent tensors"
        return "method is not convertible"
    return f"unknown node kind {node.op}"


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
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        reason = classify_node(gm, node, cache)
        if reason is None:
            continue
        if any(fnmatch.fnmatchcase(node.name, pat) for pat in cfg.allow_ann_ops):
            allowed.append(node.name)
            continue
        module_type = type(modules[node.target]).__name__ if node.op == "call_module" else None
        bad.append(UnsupportedNode(name=node.name, op=node.op, target=_target_name(node), module_type=module_type,
                                   source=node_source(node)))
    entry = PassEntry(name="check_supported", modified=False, counts={"analog": len(allowed)}, nodes=allowed)
    report.passes.append(entry)
    report.analog_nodes = allowed
    if bad:
        raise UnsupportedOpError(bad, hint=(
            "supported: ReLU (any spelling) and affine ops (conv, linear, batch norm, avg/max pooling, add, concat, "
            "reshapes); leave a node analog explicitly with allow_ann_ops=[<node name pattern>] (--allow-ann-op)"))
    return PassResult(gm, False)
