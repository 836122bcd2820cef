"""Recognising the spellings of one operation in a traced graph: the forms of a ReLU and of a bounded ReLU.

``relu_spelling`` names the form a node uses (``"F.relu"``, ``"x * (x > 0)"``, ...), ``relu_input`` the tensor it
rectifies; ``bounded_relu_ceiling`` recognises ``min(max(x, 0), a)``. The passes in ``normalize`` rewrite them.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

RELU_FUNCTIONS = {F.relu: "F.relu", torch.relu: "torch.relu", torch.relu_: "torch.relu_", F.relu_: "F.relu_"}
RELU_METHODS = {"relu": "Tensor.relu", "relu_": "Tensor.relu_"}
INPLACE_SPELLINGS = {"torch.relu_", "F.relu_", "Tensor.relu_", "nn.ReLU(inplace)", "F.relu(inplace)",
                     "nn.Hardtanh(0, inf, inplace)", "F.hardtanh(0, inf, inplace)", "nn.Threshold(0, 0, inplace)",
                     "F.threshold(0, 0, inplace)", "nn.LeakyReLU(0, inplace)", "F.leaky_relu(0, inplace)"}
CLAMP_FUNCTIONS = {torch.clamp: "torch.clamp", torch.clip: "torch.clip", torch.clamp_min: "torch.clamp_min"}
CLAMP_METHODS = {"clamp": "Tensor.clamp", "clip": "Tensor.clip", "clamp_min": "Tensor.clamp_min"}


def arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def first_input(node: fx.Node):
    """A call's first argument, given by position or as ``input=`` (``self=`` for a tensor method)."""
    return node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))


def is_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def is_inf(value) -> bool:
    """+inf: a bound that bounds nothing (``F.hardtanh(x, 0, inf)`` and ``clamp(x, 0, inf)`` are ReLUs)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == float("inf")


def _zeros_of(value, x) -> bool:
    """Whether ``value`` is ``torch.zeros_like(x)`` (x's shape, all zeros)."""
    return isinstance(value, fx.Node) and value.op == "call_function" and value.target is torch.zeros_like and \
        arg(value, 0, "input") is x and not value.kwargs.get("dtype")


def _maximum_with_zeros(node: fx.Node) -> fx.Node | None:
    """x for ``torch.maximum(x, torch.zeros_like(x))`` (also ``torch.max``, ``x.maximum``, either order), else
    None."""
    functional = node.op == "call_function" and node.target in (torch.maximum, torch.max)
    if not (functional or (node.op == "call_method" and node.target == "maximum")) or len(node.args) != 2:
        return None
    a, b = node.args
    return a if _zeros_of(b, a) else b if _zeros_of(a, b) else None


_SIGN_TESTS = {operator.gt: ">", operator.ge: ">=", torch.gt: ">", torch.ge: ">="}
_SIGN_TEST_METHODS = {"gt": ">", "ge": ">="}


def _sign_mask(value, x) -> list[fx.Node] | None:
    """The nodes of ``(x > 0)`` / ``(x >= 0)``, also cast to a float (``.float()``, ``.type_as(x)``,
    ``.to(torch.float32)``), output first; None when ``value`` is not such a mask of ``x``."""
    if not isinstance(value, fx.Node):
        return None
    chain = []
    if value.op == "call_method" and len(value.args) == 2 and not value.kwargs and (
            (value.target == "type_as" and value.args[1] is x)
            or (value.target == "to" and isinstance(value.args[1], torch.dtype) and value.args[1].is_floating_point)) \
            or value.op == "call_method" and value.target == "float" and len(value.args) == 1 and not value.kwargs:
        chain.append(value)
        value = value.args[0]
        if not isinstance(value, fx.Node):
            return None
    test = _SIGN_TESTS.get(value.target) if value.op == "call_function" else \
        _SIGN_TEST_METHODS.get(value.target) if value.op == "call_method" else None
    if test is None or len(value.args) != 2 or value.kwargs or value.args[0] is not x or not is_zero(value.args[1]):
        return None
    return chain + [value]


def masked_by_sign(node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """``(x, mask nodes)`` for ``x * (x > 0)`` (also ``>=``, either order, ``torch.mul`` / ``x.mul``) and
    ``torch.where(x > 0, x, 0)``, else None."""
    if node.op == "call_function" and node.target is torch.where and len(node.args) == 3 and not node.kwargs:
        cond, x, other = node.args
        chain = _sign_mask(cond, x) if isinstance(x, fx.Node) and is_zero(other) else None
        return (x, chain) if chain and len(chain) == 1 else None
    product = (node.op == "call_function" and node.target in (operator.mul, torch.mul)) or (
        node.op == "call_method" and node.target == "mul")
    if not product or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    for x, mask in ((a, b), (b, a)):
        chain = _sign_mask(mask, x) if isinstance(x, fx.Node) else None
        if chain is not None:
            return x, chain
    return None


def relu_input(node: fx.Node):
    """The tensor a ReLU spelling (:func:`relu_spelling`) rectifies: its first argument, or x of
    ``torch.maximum(zeros_like(x), x)`` and ``x * (x > 0)``."""
    masked = masked_by_sign(node)
    return masked[0] if masked else _maximum_with_zeros(node) or first_input(node)


def relu_spelling(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Name of the ReLU spelling ``node`` uses (``"F.relu"``, ``"nn.ReLU(inplace)"``, ...), or None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if type(module) is nn.ReLU:
            return "nn.ReLU(inplace)" if module.inplace else "nn.ReLU"
        if type(module) is nn.Hardtanh and module.min_val == 0 and is_inf(module.max_val):
            return "nn.Hardtanh(0, inf, inplace)" if module.inplace else "nn.Hardtanh(0, inf)"
        if type(module) is nn.Threshold and module.threshold == 0 and module.value == 0:
            return "nn.Threshold(0, 0, inplace)" if module.inplace else "nn.Threshold(0, 0)"
        if type(module) is nn.LeakyReLU and module.negative_slope == 0:
            return "nn.LeakyReLU(0, inplace)" if module.inplace else "nn.LeakyReLU(0)"
        return None
    if node.op == "call_function" and node.target is F.leaky_relu:
        if is_zero(arg(node, 1, "negative_slope", 0.01)):
            return "F.leaky_relu(0, inplace)" if arg(node, 2, "inplace", False) else "F.leaky_relu(0)"
        return None
    if _maximum_with_zeros(node) is not None:
        return "torch.maximum(x, zeros_like(x))"
    if masked_by_sign(node) is not None:
        return "torch.where(x > 0, x, 0)" if node.target is torch.where else "x * (x > 0)"
    if node.op == "call_function" and node.target is F.threshold:
        if is_zero(arg(node, 1, "threshold")) and is_zero(arg(node, 2, "value")):
            return "F.threshold(0, 0, inplace)" if arg(node, 3, "inplace", False) else "F.threshold(0, 0)"
        return None
    if node.op == "call_function" and node.target is F.hardtanh:
        if is_zero(arg(node, 1, "min_val", -1.0)) and is_inf(arg(node, 2, "max_val", 1.0)):
            return "F.hardtanh(0, inf, inplace)" if arg(node, 3, "inplace", False) else "F.hardtanh(0, inf)"
        return None
    if node.op == "call_function" and node.target in RELU_FUNCTIONS:
        name = RELU_FUNCTIONS[node.target]
        return "F.relu(inplace)" if name == "F.relu" and arg(node, 1, "inplace", False) else name
    if node.op == "call_method" and node.target in RELU_METHODS:
        return RELU_METHODS[node.target]
    clamp = CLAMP_FUNCTIONS.get(node.target) if node.op == "call_function" else None
    clamp = clamp or (CLAMP_METHODS.get(node.target) if node.op == "call_method" else None)
    if clamp:
        low = arg(node, 1, "min")
        high = None if clamp.endswith("clamp_min") else arg(node, 2, "max")
        if is_zero(low) and (high is None or is_inf(high)):
            return f"{clamp}(min=0)" if high is None else f"{clamp}(0, inf)"
    return None


def bounded_relu_ceiling(gm: fx.GraphModule, node: fx.Node) -> tuple[str, float] | None:
    """``(spelling, a)`` when ``node`` computes ``min(max(x, 0), a)`` with a constant a > 0: ``nn.ReLU6``,
    ``nn.Hardtanh(0, a)``, ``F.relu6``, ``F.hardtanh(x, 0, a)``, ``clamp(x, 0, a)`` / ``clip`` (function or method)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if type(module) is nn.ReLU6:
            return "nn.ReLU6", 6.0
        if type(module) is nn.Hardtanh and module.min_val == 0 and 0 < module.max_val < float("inf"):
            return "nn.Hardtanh(0, a)", float(module.max_val)
        return None
    if node.op == "call_function" and node.target is F.relu6:
        return "F.relu6", 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        low, high = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
        ok = is_zero(low) and isinstance(high, (int, float)) and 0 < high < float("inf")
        return ("F.hardtanh(0, a)", float(high)) if ok else None
    clamp = CLAMP_FUNCTIONS.get(node.target) if node.op == "call_function" else None
    clamp = clamp or (CLAMP_METHODS.get(node.target) if node.op == "call_method" else None)
    if clamp and not clamp.endswith("clamp_min"):
        low, high = arg(node, 1, "min"), arg(node, 2, "max")
        if is_zero(low) and isinstance(high, (int, float)) and not isinstance(high, bool) and 0 < high < float("inf"):
            return f"{clamp}(0, a)", float(high)
    return None
