"""NIR export of rate-coded spiking networks (the discrete-time runner that checks an export: ``nir_run.py``).

NIR 1.0 (``neuromorphs/NIR``, the exchange format of Norse, snnTorch, sinabs, Lava and several chips) has
integrate-and-fire neurons with a hard reset only and no graded (multi-level) events. A converted neuron resets by
subtraction and, with multi-threshold (MT) neurons, emits one of n levels. The export keeps those semantics exactly
by composing NIR primitives at every neuron site, levels i = 0..L-1::

    inputs ──► I (u) ──► Threshold(κ_i) ──► Scale(a_i) ──► the site's consumers
               ▲                        └──► Scale(-a_i) ──┐
               └──────────────── recurrent edge ───────────┘   (reset by subtraction)

- ``I`` integrates its summed inputs: u[t] = u[t-1] + dt·r·in[t] with r = 1/dt, so u[t] = u[t-1] + in[t];
- ``Threshold`` emits 1 where its input is > κ_i; the level amplitudes a_i telescope, so the sum of the L scaled
  outputs is exactly the converted neuron's event value;
- a recurrent edge (one that closes a cycle) carries the previous step's value, 0 at step 1.

Per neuron kind (method.md §4): rate IF, m_0 = θ/2 and firing at m ≥ θ, is held as u = m − θ/2 (u_0 = 0) with one
level κ = θ/2, a = θ; rate MT with levels λ_i = θ·2^-i has κ_i = 0.75·λ_i and a_i = λ_i − λ_{i+1} (λ_n = 0), so an
event of value λ_k shows as the populations i = k..n-1 firing together (one binary spike each). Signed, unconstrained
neurons (identity sites) add the mirrored levels on Scale(-1)(u). The rest maps one to one: Conv1d/Conv2d, Linear
(Affine), AvgPool2d (and AdaptiveAvgPool2d with whole windows), Flatten; a residual ``add`` becomes two edges into
the same node (NIR sums a node's inputs); biases apply at every step, as in rate coding.

NIR's Threshold fires on ``>`` where the converted neuron fires on ``>=``: the exported cut-off is the next float32
below the neuron's, which makes the two tests the same for every float32 membrane (a membrane exactly on a cut-off
fires in both). What is not bit-exact is rounding: NIR sums a node's inputs before the integrator adds them, and
the IF membrane is held shifted by θ/2, where the reference runtime computes ``(m + x) - s``; on data whose sums
are exact (dyadic values) the outputs are identical at every step (tested), on real images a rare spike moves by a
step. :func:`check_nir` measures the difference.

Not expressible, refused with every offending node listed: differential coding (its decoder weights steps by 1/t and
its offsets enter once, NIR has neither), graded units (max-pool over rates, products, non-ReLU functions),
ReLU-constrained signed neurons, constants, concatenation. ``host_prefix=True`` keeps the stateless layers in front
of the first neuron (a stem convolution and max-pool, say) on the host: the graph's input is then their output.
"""
from __future__ import annotations

import importlib.metadata
import logging
import operator
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.artifact import atomic_file
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.errors import ConfigError, ExportError, SnnConvertError, UnsupportedNode
from snnconvert.convert.frontend import depends_on_values
from snnconvert.convert.outputs import output_leaves
from snnconvert.convert.snn import SpikingNetwork
from snnconvert.convert.static_prefix import PrefixPhase
from snnconvert.runtime.nir_run import NirCheck, check_nir, run_nir

logger = logging.getLogger(__name__)

__all__ = ["NirCheck", "check_nir", "export_nir", "host_input", "require_nir", "run_nir", "to_nir",
           "write_nir"]

_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ARITH = {operator.add: "add", torch.add: "add", "add": "add", operator.sub: "sub", torch.sub: "sub", "sub": "sub",
          operator.mul: "mul", torch.mul: "mul", "mul": "mul", operator.truediv: "div", torch.div: "div",
          "div": "div", operator.neg: "neg", torch.neg: "neg", "neg": "neg"}


def require_nir():
    try:
        import nir
    except ImportError as exc:  # an optional extra
        raise SnnConvertError("NIR export needs the 'nir' package: pip install 'snnconvert[nir]'") from exc
    return nir


def _version() -> str:
    try:
        return importlib.metadata.version("snnconvert")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight as the equal dense (block-diagonal) one: NIR 1.0 types a convolution's input
    as ``weight.shape[1]`` channels whatever its ``groups``, so a grouped one fails its type check on reading."""
    if groups == 1:
        return weight
    c_out, c_in_g = weight.shape[:2]
    out_g = c_out // groups
    dense = np.zeros((c_out, c_in_g * groups, *weight.shape[2:]), weight.dtype)
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = weight[g * out_g:(g + 1) * out_g]
    return dense


def _node_shapes(snn: SpikingNetwork, x: torch.Tensor) -> dict[fx.Node, tuple[int, ...]]:
    """Per-sample output shape of every tensor-valued node, from one analog pass on ``x[:1]``."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.dim() >= 1:
                shapes[n] = tuple(out.shape[1:])
            return out

    with torch.no_grad(), snn.analog_mode():
        _Shapes(snn.gm).run(x[:1].float())
    return shapes


@dataclass(frozen=True)
class _Level:
    cut: np.ndarray   # κ, per neuron
    amp: np.ndarray   # a, per neuron (negative for the mirrored levels)
    mirrored: bool    # tested on -u


def _levels(neuron: SpikingNeuron, shape: tuple[int, ...]) -> list[_Level]:
    th = torch.broadcast_to(neuron.threshold.float(), shape)
    if neuron.kind == "if":
        cuts, amps = [th * 0.5], [th]
    else:
        lam = [th * (2.0 ** -i) for i in range(neuron.n_levels)] + [torch.zeros_like(th)]
        cuts = [lam[i] * 0.75 for i in range(neuron.n_levels)]
        amps = [lam[i] - lam[i + 1] for i in range(neuron.n_levels)]
    levels = [_Level(_strict(_np(c), _np(a)), _np(a), False) for c, a in zip(cuts, amps)]
    if neuron.signed:
        levels += [_Level(_strict(_np(c), _np(a)), -_np(a), True) for c, a in zip(cuts, amps)]
    return levels


def _strict(cut: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """The NIR Threshold (fires on ``u > t``) equal to the neuron's ``u >= cut`` in float32: t is the next float
    below the cut. A silent level (amplitude 0, θ = 0) gets the largest float, so it never fires."""
    t = np.nextafter(cut.astype(np.float32), np.float32(-np.inf))
    return np.where(amp == 0, np.finfo(np.float32).max, t).astype(np.float32)


def _neuron_problem(neuron: SpikingNeuron) -> str | None:
    if neuron.coding != "rate":
        return f"{neuron.coding} coding (NIR has no 1/t decoder and no one-shot offsets)"
    if neuron.signed and neuron.relu_constrained:
        return "signed ReLU-constrained neuron (needs its cumulative output)"
    return None


class _Builder:
    """Walks the SNN's graph in order and collects NIR nodes, edges and the nodes it cannot express."""

    def __init__(self, snn: SpikingNetwork, shapes: dict[fx.Node, tuple[int, ...]], dt: float) -> None:
        self.snn, self.shapes, self.dt = snn, shapes, dt
        self.nir = require_nir()
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.sources: dict[fx.Node, list[str]] = {}
        self.bad: list[UnsupportedNode] = []
        self.sites = 0

    def refuse(self, node: fx.Node, reason: str, module: nn.Module | None = None) -> None:
        self.bad.append(UnsupportedNode(node.name, node.op, str(getattr(node.target, "__name__", node.target)),
                                        type(module).__name__ if module is not None else None, reason=reason))
        self.sources[node] = []

    def add(self, name: str, nir_node, inputs: list[str]) -> None:
        self.nodes[name] = nir_node
        self.edges += [(s, name) for s in inputs]

    def inputs_of(self, node: fx.Node) -> list[str]:
        args = [a for a in node.all_input_nodes]
        return [s for a in args for s in self.sources.get(a, [])]

    def input_shape(self, node: fx.Node) -> tuple[int, ...]:
        return self.shapes[node.all_input_nodes[0]]

    def neuron(self, node: fx.Node, neuron: SpikingNeuron) -> None:
        problem = _neuron_problem(neuron)
        if problem:
            return self.refuse(node, problem, neuron)
        nir, shape, name = self.nir, self.shapes[node], node.name
        self.sites += 1
        u = f"{name}.u"
        self.add(u, nir.I(r=np.full(shape, 1.0 / self.dt, np.float32)), self.inputs_of(node))
        outs = []
        if neuron.signed:
            self.add(f"{name}.neg", nir.Scale(scale=np.full(shape, -1.0, np.float32)), [u])
        for i, lv in enumerate(_levels(neuron, shape)):
            tag = f"{i % neuron.n_levels}{'n' if lv.mirrored else ''}"
            fire, out, reset = f"{name}.fire{tag}", f"{name}.out{tag}", f"{name}.reset{tag}"
            self.add(fire, nir.Threshold(threshold=lv.cut), [f"{name}.neg" if lv.mirrored else u])
            self.add(out, nir.Scale(scale=lv.amp), [fire])
            self.add(reset, nir.Scale(scale=-lv.amp), [fire])
            self.edges.append((reset, u))
            outs.append(out)
        self.sources[node] = outs

    def module(self, node: fx.Node, m: nn.Module) -> None:
        nir, name, ins = self.nir, node.name, self.inputs_of(node)
        if isinstance(m, SpikingNeuron):
            return self.neuron(node, m)
        if isinstance(m, _PASS_THROUGH):
            self.sources[node] = ins
            return
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode == "zeros":
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
            self.conv(node, _dense(_np(m.weight), m.groups), bias, m.stride, m.padding, m.dilation, ins)
        elif isinstance(m, nn.Linear) and len(self.input_shape(node)) == 1:
            w = _np(m.weight)
            self.add(name, nir.Affine(weight=w, bias=_np(m.bias)) if m.bias is not None else nir.Linear(weight=w),
                     ins)
            self.sources[node] = [name]
        elif isinstance(m, nn.AvgPool2d):
            return self.avgpool(node, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.divisor_override, ins)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive(node, ins)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, m.start_dim, m.end_dim)
        else:
            f = getattr(m, "f", None)
            reason = ("no NIR primitive" if f is None else
                      f"graded unit of {getattr(f, '__name__', type(f).__name__)}: no NIR primitive")
            if isinstance(m, nn.Linear):
                reason = f"Linear on a {len(self.input_shape(node))}-d sample (NIR's Affine takes vectors)"
            return self.refuse(node, reason, m)

    def conv(self, node: fx.Node, weight: np.ndarray, bias: np.ndarray, stride, padding, dilation, inputs) -> None:
        """A Conv1d/Conv2d node (groups = 1: ``weight`` is dense, see :func:`_dense`)."""
        two_d = weight.ndim == 4
        spatial = self.input_shape(node)[1:]

        def unpack(v):
            v = tuple(np.broadcast_to(np.asarray(v), (weight.ndim - 2,)).tolist())
            return v if two_d else v[0]

        cls = self.nir.Conv2d if two_d else self.nir.Conv1d
        pad = padding if isinstance(padding, str) else unpack(padding)
        self.add(node.name, cls(input_shape=tuple(spatial) if two_d else spatial[0], weight=weight,
                                stride=unpack(stride), padding=pad, dilation=unpack(dilation), groups=1, bias=bias),
                 inputs)
        self.sources[node] = [node.name]

    def avgpool(self, node: fx.Node, kernel, stride, padding, ceil_mode: bool, divisor, inputs) -> None:
        if ceil_mode or divisor is not None or any(np.atleast_1d(padding)):
            return self.refuse(node, "average pool with padding, ceil_mode or a divisor override")
        k = np.broadcast_to(np.asarray(kernel), (2,)).copy()
        s = np.broadcast_to(np.asarray(stride if stride else kernel), (2,)).copy()
        self.add(node.name, self.nir.AvgPool2d(kernel_size=k, stride=s, padding=np.zeros(2, np.int64)), inputs)
        self.sources[node] = [node.name]

    def adaptive(self, node: fx.Node, inputs) -> None:
        (h, w), (oh, ow) = self.input_shape(node)[1:], self.shapes[node][1:]
        if h % oh or w % ow:
            return self.refuse(node, f"adaptive average pool {h}x{w} -> {oh}x{ow} has uneven windows")
        k = (h // oh, w // ow)
        self.avgpool(node, k, k, 0, False, None, inputs)

    def flatten(self, node: fx.Node, start: int, end: int) -> None:
        rank = len(self.input_shape(node)) + 1
        start, end = start % rank, end % rank
        if start < 1:
            return self.refuse(node, "flatten over the batch dim")
        self.add(node.name, self.nir.Flatten(input_type={"input": np.array(self.input_shape(node))},
                                             start_dim=start - 1, end_dim=end - 1 if end < rank - 1 else -1),
                 self.inputs_of(node))
        self.sources[node] = [node.name]

    def scale(self, name: str, shape: tuple[int, ...], factor: float, inputs: list[str]) -> list[str]:
        self.add(name, self.nir.Scale(scale=np.full(shape, factor, np.float32)), inputs)
        return [name]

    def offset(self, node: fx.Node, value: float, inputs: list[str]) -> None:
        """x + c as NIR can hold it: a unit-weight depthwise 1x1 convolution (or identity Affine) with bias c."""
        shape, name = self.shapes[node], node.name
        bias = np.full(shape[0], value, np.float32)
        if len(shape) == 1:
            self.add(name, self.nir.Affine(weight=np.eye(shape[0], dtype=np.float32), bias=bias), inputs)
        elif len(shape) in (2, 3):
            eye = np.eye(shape[0], dtype=np.float32).reshape(shape[0], shape[0], *[1] * (len(shape) - 1))
            return self.conv(node, eye, bias, 1, 0, 1, inputs)
        else:
            return self.refuse(node, f"a constant added to a {len(shape)}-d sample")
        self.sources[node] = [name]

    def arithmetic(self, node: fx.Node) -> bool:
        """add / sub / mul / div / neg with node or number operands; False when the pattern is not one of them."""
        fn, args = node.target, node.args
        if node.kwargs or fn not in _ARITH:
            return False
        kind = _ARITH[fn]
        nodes = [a for a in args if isinstance(a, fx.Node)]
        nums = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if len(nodes) + len(nums) != len(args) or not nodes:
            return False
        shape, srcs = self.shapes[node], [self.sources.get(a, []) for a in nodes]
        if kind == "neg" and len(args) == 1:
            self.sources[node] = self.scale(node.name, shape, -1.0, srcs[0])
        elif kind in ("add", "sub") and len(nodes) == 2:
            if nodes[0] is nodes[1]:
                self.refuse(node, "x + x or x - x (NIR edges cannot be doubled)")
                return True
            other = self.scale(f"{node.name}.neg", shape, -1.0, srcs[1]) if kind == "sub" else srcs[1]
            self.sources[node] = srcs[0] + other
        elif kind in ("add", "sub") and len(nums) == 1:
            sign = -1.0 if kind == "sub" and args[1] is nums[0] else 1.0
            if kind == "sub" and args[0] is nums[0]:  # c - x
                srcs[0] = self.scale(f"{node.name}.neg", shape, -1.0, srcs[0])
            self.offset(node, sign * float(nums[0]), srcs[0])
        elif kind == "mul" and len(nums) == 1:
            self.sources[node] = self.scale(node.name, shape, float(nums[0]), srcs[0])
        elif kind == "div" and len(nums) == 1 and args[1] is nums[0] and nums[0] != 0:
            self.sources[node] = self.scale(node.name, shape, 1.0 / float(nums[0]), srcs[0])
        else:
            return False
        return True

    def function(self, node: fx.Node) -> None:
        if self.arithmetic(node):
            return
        elif node.target is F.adaptive_avg_pool2d:
            self.adaptive(node, self.inputs_of(node))
        elif node.target is F.avg_pool2d:
            a = dict(zip(("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                          "divisor_override"), node.args), **node.kwargs)
            self.avgpool(node, a["kernel_size"], a.get("stride"), a.get("padding", 0), a.get("ceil_mode", False),
                         a.get("divisor_override"), self.inputs_of(node))
        elif (node.target is torch.flatten or node.op == "call_method" and node.target == "flatten") and isinstance(
                node.args[0], fx.Node):
            a = dict(zip(("input", "start_dim", "end_dim"), node.args), **node.kwargs)
            self.flatten(node, a.get("start_dim", 0), a.get("end_dim", -1))
        elif node.op == "call_method" and node.target in ("view", "reshape") and len(self.shapes.get(node, ())) == 1:
            self.flatten(node, 1, -1)
        elif node.op == "call_method" and node.target == "contiguous":
            self.sources[node] = self.inputs_of(node)
        else:
            self.refuse(node, "no NIR primitive")


#: how a graph exported with ``host_prefix=True`` describes its input (metadata ``input``)
_HOST_INPUT = "output of the host prefix"


def _guard_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The tracer's shape guards (``torch._assert`` nodes) and the shape arithmetic only they read."""
    guards: set[fx.Node] = set()
    memo: dict = {}
    for node in reversed(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch._assert:
            guards.add(node)
        elif node.op in ("call_function", "call_method") and node.users and all(u in guards for u in node.users) \
                and not depends_on_values(node, memo):
            guards.add(node)
    return guards


def to_nir(snn: SpikingNetwork, example_input: torch.Tensor, *, dt: float = 1e-4, host_prefix: bool = False):
    """A rate-coded converted network as a NIR graph (``nir.NIRGraph``); see the module docstring for the mapping.

    Args:
        snn: the reference spiking network (``ConversionResult.snn``), rate coding.
        example_input: a batch of the network's input ``[B, ...]`` (one sample is used to infer shapes).
        dt: the step NIR's continuous-time integrators are written for (r = 1/dt gives one input per step).
        host_prefix: keep the stateless layers in front of the first neuron on the host; the graph's input is
            their output (see :func:`host_input`).

    Returns:
        The graph; ``graph.metadata`` records the coding, T, dt, the decoding and what the input is.

    Raises:
        ConfigError: not rate coding, a bad ``dt``, or ``host_prefix`` without a prefix.
        ExportError: every node NIR cannot express, listed at once.
    """
    if not (dt > 0 and np.isfinite(dt)):
        raise ConfigError(f"dt must be a positive number, got {dt}")
    coding = getattr(snn.coding, "name", "?")
    if coding != "rate":
        raise ConfigError(f"NIR export needs rate coding, got {coding!r}: NIR has no decoder that weights step t by "
                          "1/t and no offsets that enter once; convert with --coding rate")
    builder = _Builder(snn, _node_shapes(snn, example_input), dt)
    prefix_nodes: set[fx.Node] = set()
    if host_prefix:
        prefix = snn.static_prefix()
        if prefix is None:
            raise ConfigError("host_prefix: no stateless layer precedes the first neuron; export without it")
        if len(prefix.boundary) != 1:
            raise ConfigError(f"host_prefix: the prefix feeds the graph through {len(prefix.boundary)} tensors; "
                              "NIR export supports one")
        prefix_nodes = set(prefix.nodes)
    nir, gm = builder.nir, snn.gm
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    guards = _guard_nodes(gm)
    for node in gm.graph.nodes:
        if node in guards:  # checks of the input's shape (torch._assert): the NIR graph has a fixed input shape
            continue
        if node in prefix_nodes:
            if host_prefix and node in prefix.boundary:
                builder.add("input", nir.Input(input_type={"input": np.array(builder.shapes[node])}), [])
                builder.sources[node] = ["input"]
            continue
        if node.op == "placeholder":
            if len(placeholders) > 1:
                builder.refuse(node, "a second graph input")
                continue
            builder.add("input", nir.Input(input_type={"input": np.array(builder.shapes[node])}), [])
            builder.sources[node] = ["input"]
        elif node.op == "call_module":
            builder.module(node, gm.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            builder.function(node)
        elif node.op == "get_attr":
            builder.refuse(node, "a constant tensor")
        elif node.op == "output":  # one Output node per tensor output: "output", or "output.<path>" per head
            heads = output_leaves(node.args[0], fx.Node)
            for path, out in heads:
                builder.add(f"output.{path}" if path else "output",
                            nir.Output(output_type={"output": np.array(builder.shapes[out])}),
                            builder.sources.get(out, []))
    if builder.bad:
        raise ExportError(builder.bad, what="node(s) that NIR cannot express",
                          hint="NIR export covers rate-coded IF/MT neurons, Conv1d/2d, Linear, average pools, "
                               "flatten and residual adds (host_prefix=True, --nir-host-prefix on the command line, "
                               "keeps the layers in front of the first neuron on the host, e.g. a stem max-pool)")
    metadata = {
        "generator": f"snnconvert {_version()}", "nir_version": str(nir.version), "coding": "rate",
        "timesteps": int(snn.timesteps), "dt": float(dt),
        "input": f"{_HOST_INPUT}: " + ", ".join(n.name for n in prefix.nodes[1:]) if host_prefix
        else "the analog input, the same at every step",
        "decode": "running mean of the output over the steps",
        "neuron_sites": builder.sites,
        "semantics": "I + Threshold + Scale per level, reset by subtraction through a recurrent edge that carries "
                     "the previous step's value",
    }
    graph = nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata=metadata)
    logger.info("NIR graph: %d nodes, %d edges, %d neuron sites", len(graph.nodes), len(graph.edges), builder.sites)
    return graph


def host_input(snn: SpikingNetwork, x: torch.Tensor) -> torch.Tensor:
    """The input of a graph exported with ``host_prefix=True``: the prefix layers run on ``x [B, ...]``."""
    prefix = snn.static_prefix()
    if prefix is None:
        raise ConfigError("this network has no host prefix")
    with torch.no_grad():
        return prefix.values(snn, x.float(), PrefixPhase("first", "repeat", x.shape[0]))[0]


def write_nir(graph, path: str | os.PathLike):
    """Write ``graph`` to ``path`` (HDF5, ``nir.write``) atomically and return the graph read back from the file
    (``nir.read``, type-checked): a write that fails or does not read back leaves no file behind (a missing folder is
    created, as for the reports)."""
    nir = require_nir()
    with atomic_file(path) as tmp:
        nir.write(tmp, graph)
        back = nir.read(tmp)
    return back


def export_nir(snn: SpikingNetwork, example_input: torch.Tensor, path: str | os.PathLike, *, dt: float = 1e-4,
               host_prefix: bool = False):
    """:func:`to_nir` then :func:`write_nir`, in the call form NIR exporters use (``(net, example_input, path,
    dt)``); returns the graph read back from ``path``."""
    return write_nir(to_nir(snn, example_input, dt=dt, host_prefix=host_prefix), path)
