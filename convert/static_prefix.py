"""Static input prefix: compute the stateless layers in front of the first stateful unit once, not T times.

In multi-step mode the encoded input ``[T*B, ...]`` goes layer by layer through the graph. Both codings feed a
*static* pattern: rate coding repeats ``x`` at every step, differential coding sends ``x`` at step 1 and zeros
afterwards. Every layer that depends only on the network input through per-sample, stateless operations (the stem
convolution, a max-pool moved in front of the first neuron, input normalisation, precision casts) therefore sees
at most two distinct per-sample inputs. :class:`StaticPrefix` runs those layers on ``x`` (``[B, ...]``) and, for
differential coding, on one all-zero sample, and expands the results to ``[T*B, ...]`` where the rest of the graph
takes them over (:meth:`StaticPrefix.stream` does the same step by step in single-step mode). The values are the
ones the full run computes (the zero sample's layers see exactly zeros, so their outputs are bias maps, exact at
any batch size); only the repeated work goes.

Synaptic-operation counters see each prefix layer call with ``snn.prefix_phase`` set to a :class:`PrefixPhase`:
``"first"`` for the ``[B, ...]`` call (step 1 in differential coding, every step in rate coding) and ``"rest"`` for
the one-sample call that stands for steps 2..T of every image (differential coding only).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["INPUT_PATTERNS", "PrefixPhase", "StaticPrefix", "build_static_prefix"]

#: How a coding's encoded input looks over time: ``"repeat"`` (x at every step) or ``"once"`` (x, then zeros).
INPUT_PATTERNS = ("repeat", "once")

class PrefixPhase(NamedTuple):
    """What a prefix layer call stands for: ``phase`` "first" (the B images' input, ``[B, ...]``) or "rest" (the
    one-sample input of steps 2..T, shared by all B images), under the coding's input ``pattern``."""

    phase: str
    pattern: str
    batch: int


# Per-sample, stateless operations (no mixing across the batch dim, no use of the batch size).
_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
            nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
            nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.ZeroPad2d, nn.ConstantPad1d,
            nn.ConstantPad2d, nn.ConstantPad3d)
_EVAL_ONLY = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
              torch.mul, torch.div, torch.neg, F.conv1d, F.conv2d, F.conv3d, F.linear, F.max_pool1d, F.max_pool2d,
              F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
              F.adaptive_avg_pool3d, F.pad}
_METHODS = {"add", "sub", "mul", "div", "neg", "to", "float", "contiguous"}


def _flatten_keeps_batch(node: fx.Node, module: nn.Module | None = None) -> bool:
    start = module.start_dim if module is not None else node.kwargs.get(
        "start_dim", node.args[1] if len(node.args) > 1 else 0)
    return isinstance(start, int) and start >= 1


def _per_sample(node: fx.Node, gm: fx.GraphModule, stateful: set[str]) -> bool:
    """Whether ``node`` is a per-sample, stateless operation that a static prefix may contain."""
    if node.op == "call_module":
        if node.target in stateful:
            return False
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Flatten):
            return _flatten_keeps_batch(node, module)
        if isinstance(module, _EVAL_ONLY):
            return not module.training
        return type(module) in _MODULES
    if node.op == "call_function":
        if node.target is torch.flatten:
            return _flatten_keeps_batch(node)
        return node.target in _FUNCTIONS
    if node.op == "call_method":
        if node.target == "flatten":
            return _flatten_keeps_batch(node)
        return node.target in _METHODS
    return False


@dataclass
class StaticPrefix:
    """The prefix nodes (in graph order), the boundary nodes whose values the rest of the graph reads, and the rest
    of the graph as a GraphModule taking the boundary values ``[T*B, ...]`` as inputs (in ``boundary`` order)."""

    nodes: list[fx.Node]
    boundary: list[fx.Node]
    main: fx.GraphModule

    def values(self, snn, x: torch.Tensor, phase: PrefixPhase) -> list[torch.Tensor]:
        """The boundary values for the per-sample input ``x`` (one call of every prefix layer, in ``phase``)."""
        gm = snn.gm
        env: dict[fx.Node, object] = {self.nodes[0]: x}

        def value(n: fx.Node):  # a prefix node's value or a constant (get_attr)
            return env[n] if n in env else operator.attrgetter(n.target)(gm)

        snn.prefix_phase = phase
        try:
            for node in self.nodes[1:]:
                args, kwargs = fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)
                if node.op == "call_module":
                    env[node] = gm.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_function":
                    env[node] = node.target(*args, **kwargs)
                else:
                    env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        finally:
            snn.prefix_phase = None
        return [env[b] for b in self.boundary]

    def __call__(self, snn, x: torch.Tensor, timesteps: int, pattern: str) -> torch.Tensor:
        """The graph's output for the encoded input of ``x [B, ...]`` (``pattern`` as the coding encodes it),
        ``[T*B, ...]``; identical to running the whole graph on the encoded ``[T*B, ...]`` input."""
        T, B = timesteps, x.shape[0]
        first = self.values(snn, x, PrefixPhase("first", pattern, B))
        if pattern == "once":
            rest = self.values(snn, x.new_zeros((1, *x.shape[1:])), PrefixPhase("rest", pattern, B))
            inputs = [torch.cat([f, r.expand((T - 1) * B, *r.shape[1:])]) for f, r in zip(first, rest)]
        else:
            inputs = [f.unsqueeze(0).expand(T, *f.shape).reshape(T * B, *f.shape[1:]) for f in first]
        return self.main(*inputs)

    def stream(self, snn, x: torch.Tensor, timesteps: int, pattern: str) -> list[torch.Tensor]:
        """Single-step mode: the graph's raw output at each of the T steps (the stateful units must be in step
        mode "s" and reset); the prefix runs once on ``x`` and, for ``"once"``, once on the zero sample."""
        B = x.shape[0]
        first = self.values(snn, x, PrefixPhase("first", pattern, B))
        outs = [self.main(*first)]
        if timesteps > 1:
            if pattern == "once":
                rest = self.values(snn, x.new_zeros((1, *x.shape[1:])), PrefixPhase("rest", pattern, B))
                later = [r.expand(B, *r.shape[1:]).contiguous() for r in rest]
            else:
                later = first
            outs += [self.main(*later) for _ in range(timesteps - 1)]
        return outs


def build_static_prefix(gm: fx.GraphModule, stateful: set[str]) -> StaticPrefix | None:
    """Split ``gm`` into its static prefix and the rest, or None when the prefix holds no layer (or the graph has
    more than one input)."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    prefix = {placeholders[0]}
    order = [placeholders[0]]
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        inputs = node.all_input_nodes
        if inputs and all(n in prefix or n.op == "get_attr" for n in inputs) and any(n in prefix for n in inputs) \
                and _per_sample(node, gm, stateful):
            prefix.add(node)
            order.append(node)
    if len(order) == 1:
        return None
    boundary = [n for n in order if any(u not in prefix for u in n.users)]
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {b: new.placeholder(f"prefix_{b.name}") for b in boundary}
    for node in graph.nodes:
        if node in prefix or node.op == "placeholder":
            continue
        env[node] = new.node_copy(node, lambda n: env[n])
    main = fx.GraphModule(gm, new)
    main.graph.eliminate_dead_code()  # constants only the prefix read
    main.recompile()
    return StaticPrefix(order, boundary, main)
