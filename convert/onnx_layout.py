"""Channels-last ONNX models (TF / Keras exported by tf2onnx) read channels-first data.

tf2onnx keeps a Keras model's input layout ``[N, H, W, C]`` and writes a Transpose to ``[N, C, H, W]`` right behind
it. Every data set here gives ``[N, C, H, W]`` (and so do the calibration loop, the evaluation, the NIR example input
and a saved folder's evaluation), so ``input_layout="channels-last"`` puts a transpose in front of the imported graph
instead: the network then takes channels-first data. Where the model's first node is that Transpose the two cancel
and the graph starts at its first layer (with one channel tf2onnx writes a Reshape instead, which cancels it too).
Elementwise ops with a constant in front of it (Keras' Rescaling and Normalization layers) run on the channels-first
input instead, their constants permuted alike, so the permute meets tf2onnx's transpose behind them; elsewhere the
one permute stays (a view, not counted as an operation).
"""
from __future__ import annotations

import operator
import os
from collections.abc import Sequence

import torch
from torch import fx

from snnconvert.convert.errors import ConfigError

CHANNELS_FIRST, CHANNELS_LAST = "channels-first", "channels-last"
INPUT_LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST)
#: elementwise ops the inserted permute moves behind when their other operand is a constant (Keras' Rescaling and
#: Normalization layers, which tf2onnx leaves in front of its transpose)
_ELEMENTWISE = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
                          torch.mul, torch.div})


def check_layout_applies(model: object, input_layout: str) -> None:
    """``input_layout="channels-last"`` is a property of an ONNX model's input: refuse it for anything else.

    Raises:
        ConfigError: a PyTorch module (not imported from ONNX) with a channels-last layout.
    """
    if input_layout == CHANNELS_FIRST or isinstance(model, (str, os.PathLike)):
        return
    if not (getattr(model, "meta", None) or {}).get("onnx"):
        raise ConfigError("input_layout='channels-last' applies to ONNX models (the import puts a transpose in front "
                          "of their input); a PyTorch module reads the layout its forward() reads: give it data in "
                          "that layout, or wrap it in a module that permutes its input")


#: layout ops an input may pass before its first arithmetic (the inserted permute, a Reshape that tf2onnx writes)
_LAYOUT_OPS = frozenset({torch.permute, torch.reshape, "permute", "reshape", "view", "contiguous"})


def pixel_scale(gm: fx.GraphModule) -> float | None:
    """The divisor an imported graph applies to its input before anything else, when it is one of pixel values:
    ``x · s`` or ``x / d`` with 1/s or d between 100 and 300 (Keras' ``Rescaling(1/255)`` or ``Rescaling(1/127.5,
    offset=-1)``, as ``keras.applications`` EfficientNet and MobileNetV3 have them), through layout ops only; else
    None. Such a model expects pixel values in [0, 255], not the [0, 1] images the data sets give."""
    node = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    while node is not None:
        users = [u for u in node.users if not (u.op == "call_method" and u.target == "size")]  # run-time sizes
        if len(users) != 1:
            return None
        user = users[0]
        if user.target in _LAYOUT_OPS and user.args and user.args[0] is node:
            node = user
            continue
        if user.op != "call_function" or len(user.args) != 2 or user.kwargs:
            return None
        other = user.args[1] if user.args[0] is node else user.args[0]
        if isinstance(other, fx.Node) and other.op == "get_attr":
            value = operator.attrgetter(other.target)(gm)
            first = value.flatten()[0] if isinstance(value, torch.Tensor) and value.numel() else None
            if first is None or not bool((value == first).all()):
                return None
            other = float(first)
        if not isinstance(other, (int, float)) or isinstance(other, bool) or other == 0:
            return None
        if user.target in (operator.mul, torch.mul):
            divisor = 1 / other
        elif user.target in (operator.truediv, torch.div) and user.args[0] is node:
            divisor = other
        else:
            return None
        return float(divisor) if 100 <= divisor <= 300 else None
    return None


def imported_layout(gm: fx.GraphModule) -> str:
    """The layout an ONNX-imported graph was imported for (``channels-first`` when the import did not say)."""
    return (gm.meta.get("onnx") or {}).get("input_layout") or CHANNELS_FIRST


def channels_first_input(gm: fx.GraphModule, label: str) -> None:
    """Make an imported channels-last graph take channels-first input, in place: ``x.permute(0, 2, ..., 1)`` in
    front of every use of the input. A following permute that undoes it is removed with it, and run-time size reads
    of the input read the channels-first input's matching dimension. ``gm.meta["onnx"]["input_shape"]`` becomes the
    channels-first shape; ``["input_layout"]`` records ``"channels-last"``.

    Raises:
        ConfigError: the input's rank is unknown or below 3 (no channel and spatial axes to move).
    """
    meta = gm.meta["onnx"]
    shape = meta.get("input_shape")
    if shape is None or len(shape) < 3:
        has = "an unknown rank" if shape is None else f"rank {len(shape)}"
        raise ConfigError(f"{label}: input_layout='channels-last' needs an image-like input [N, *spatial, C] of rank "
                          f">= 3; the input '{meta.get('input_name')}' has {has}: convert it with "
                          "input_layout='channels-first'")
    rank = len(shape)
    to_last = (0, *range(2, rank), 1)  # channels-first -> the layout the graph reads
    graph = gm.graph
    placeholder = next(node for node in graph.nodes if node.op == "placeholder")
    with graph.inserting_after(placeholder):
        permuted = graph.create_node("call_function", torch.permute, (placeholder, to_last), {},
                                     name="channels_last_input")
    permuted.meta["onnx"] = {**placeholder.meta.get("onnx", {}), "op_type": "Transpose"}
    placeholder.replace_all_uses_with(permuted, delete_user_cb=lambda user: user is not permuted)
    for user in list(permuted.users):  # run-time sizes: read from the channels-first input
        if (user.op == "call_method" and user.target == "size" and len(user.args) == 2 and not user.kwargs
                and isinstance(user.args[1], int)):
            user.args = (placeholder, to_last[user.args[1] % rank])
    source = placeholder
    while (step := _constant_elementwise(gm, permuted, rank)) is not None:  # the permute moves behind it
        op, other = step
        with graph.inserting_before(op):
            moved = _channels_first_constant(gm, other, rank)
        op.args = tuple(source if a is permuted else moved if a is other else a for a in op.args)
        graph.erase_node(permuted)  # ``op`` was its only user
        if isinstance(other, fx.Node) and not other.users:
            graph.erase_node(other)
            if "." not in other.target and not any(n.op == "get_attr" and n.target == other.target
                                                   for n in graph.nodes):
                delattr(gm, other.target)
        with graph.inserting_after(op):
            permuted = graph.create_node("call_function", torch.permute, (op, to_last), {}, name="channels_last_input")
        op.replace_all_uses_with(permuted, delete_user_cb=lambda user, p=permuted: user is not p)
        permuted.meta["onnx"] = {**op.meta.get("onnx", {}), "op_type": "Transpose"}
        source = op
    channels_first = [shape[0], shape[-1], *shape[1:-1]]
    for user in list(permuted.users):
        if _undoes(user, to_last) or (shape[-1] == 1 and _reshapes_to(user, channels_first)):
            user.replace_all_uses_with(source)
            graph.erase_node(user)
    if not permuted.users:
        graph.erase_node(permuted)
    graph.lint()
    gm.recompile()
    meta["input_shape"] = channels_first
    meta["input_layout"] = CHANNELS_LAST


def _constant_elementwise(gm: fx.GraphModule, permuted: fx.Node, rank: int) -> tuple[fx.Node, object] | None:
    """The permute's only user when it is an elementwise op of it and a constant (a number, or a buffer of rank <= the
    input's) and the constant's other operand; else None."""
    users = list(permuted.users)
    if len(users) != 1:
        return None
    op = users[0]
    if op.op != "call_function" or op.target not in _ELEMENTWISE or op.kwargs or len(op.args) != 2 \
            or sum(a is permuted for a in op.args) != 1:
        return None
    other = op.args[1] if op.args[0] is permuted else op.args[0]
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return op, other
    if isinstance(other, fx.Node) and other.op == "get_attr":
        value = operator.attrgetter(other.target)(gm)
        if isinstance(value, torch.Tensor) and value.dim() <= rank:
            return op, other
    return None


def _channels_first_constant(gm: fx.GraphModule, other: object, rank: int) -> object:
    """``other`` as it broadcasts against the channels-first input: a number as it is; a buffer padded to the input's
    rank with leading ones and permuted like the input, registered as a new buffer (the old one may have other
    readers) and read by a new get_attr node (created at the graph's insertion point)."""
    if not isinstance(other, fx.Node):
        return other
    value = operator.attrgetter(other.target)(gm)
    padded = value.reshape(*[1] * (rank - value.dim()), *value.shape)
    name = f"{other.target.replace('.', '_')}_channels_first"
    gm.register_buffer(name, padded.permute(0, rank - 1, *range(1, rank - 1)).contiguous())
    node = gm.graph.get_attr(name)
    node.meta.update(other.meta)
    return node


def _reshapes_to(node: fx.Node, shape: Sequence[int | None]) -> bool:
    """Whether ``node`` reshapes a tensor to the channels-first ``shape`` (the batch as -1 or its size). With one
    channel, the permute in front of it keeps the elements' order, so the two together leave the input as it is:
    tf2onnx writes such a Reshape instead of a Transpose behind a one-channel input."""
    if node.op != "call_function" or node.target is not torch.reshape or len(node.args) != 2 or node.kwargs:
        return False
    dims = node.args[1]
    return (isinstance(dims, (tuple, list)) and len(dims) == len(shape) and all(isinstance(d, int) for d in dims)
            and dims[0] in (-1, shape[0]) and all(d == s for d, s in zip(dims[1:], shape[1:])))


def _undoes(node: fx.Node, perm: Sequence[int]) -> bool:
    """Whether ``node`` is a permute that brings a tensor permuted by ``perm`` back to its original order."""
    if node.op != "call_function" or node.target is not torch.permute or len(node.args) != 2 or node.kwargs:
        return False
    dims = node.args[1]
    if not isinstance(dims, (tuple, list)) or len(dims) != len(perm) or not all(isinstance(d, int) for d in dims):
        return False
    rank = len(perm)
    return all(perm[dims[i] % rank] == i for i in range(rank))
