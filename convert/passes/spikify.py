"""Replace every canonical ReLU and identity site by the coding's spiking neuron, every max-pool, non-linear
function, element-wise and matrix product downstream of a neuron by a graded unit, and wrap the graph as a
:class:`SpikingNetwork`."""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn

from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.passes.identity import is_identity_site, is_neuron_site, relu_channel_dim
from snnconvert.convert.passes.normalize import UPPER_CLIP_ATTR, is_maxpool, set_module
from snnconvert.convert.passes.support import (
    MATMUL_METHODS,
    MATMULS,
    allowed_analog,
    bindable,
    graded_kind,
    input_dependent_args,
    is_matmul,
    returns_tuple,
    tuple_selection,
)
from snnconvert.convert.pipeline import ConversionReport, PassEntry
from snnconvert.convert.snn import SpikingNetwork


def replace_activations(
    gm: fx.GraphModule,
    thresholds: dict[str, torch.Tensor],
    coding,
    cfg: ConversionConfig,
    report: ConversionReport,
) -> SpikingNetwork:
    """Swap each ReLU module for ``coding.make_neuron(threshold, cfg)`` and each identity site for
    ``coding.make_neuron(threshold, cfg, identity=True)`` (signed, unconstrained, method.md §4.7); the module keeps
    the site's name.

    Before: ``y = relu_3(x)`` (``nn.ReLU``)  After: ``y = relu_3(x)`` (a spiking neuron with the site's threshold).

    Raises:
        ConfigError: a site has no threshold, or a threshold names no site (thresholds from another model or
            another ``identity_neurons`` setting).
    """
    memo: dict = {}
    sites = [n for n in gm.graph.nodes if is_neuron_site(gm, n, memo)]
    names = [n.target for n in sites]
    missing = sorted(set(names) - set(thresholds))
    extra = sorted(set(thresholds) - set(names))
    if missing or extra:
        raise ConfigError(f"thresholds do not match the model's neuron sites (missing: {missing}, unknown: {extra}); "
                          "they come from a different model, pipeline version or identity_neurons setting")
    entry = PassEntry(name="replace_activations", modified=bool(sites))
    for node in sites:
        identity = is_identity_site(gm, node)
        neuron = coding.make_neuron(thresholds[node.target], cfg, identity=identity)
        neuron.site = node.target
        if getattr(gm.get_submodule(node.target), UPPER_CLIP_ATTR, False):  # the ceiling of a bounded ReLU
            setattr(neuron, UPPER_CLIP_ATTR, True)
        set_module(gm, node.target, neuron)
        entry.nodes.append(node.target)
        kind = type(neuron).__name__ + ("(identity)" if identity else "")
        entry.counts[kind] = entry.counts.get(kind, 0) + 1
    units = wrap_units(gm, set(names), cfg, entry)
    gm.recompile()
    report.passes.append(entry)
    return SpikingNetwork(gm, coding, cfg.timesteps, names, units)


def check_threshold_shapes(gm: fx.GraphModule, thresholds: dict[str, torch.Tensor]) -> None:
    """Given thresholds have shapes calibration gives them: one value, one per channel along the site's channel dim
    (``[C, 1, 1]`` for a conv's ``[C, H, W]``, ``[C]`` for features last), or one per element of a sample. A hand-made
    ``[C]`` on a conv site broadcast along the width when C equalled it, silently. ``gm``: the prepared graph with
    fresh shapes (``annotate_shapes`` after the passes); sites without a shape are not checked.

    Raises:
        ConfigError: naming the site, the shape given and the shapes it may have.
    """
    memo: dict = {}
    for node in gm.graph.nodes:
        if not is_neuron_site(gm, node, memo) or node.target not in thresholds:
            continue
        meta = node.meta.get("tensor_meta")
        shape = tuple(getattr(thresholds[node.target], "shape", ()))
        if meta is None or not hasattr(meta, "shape") or len(meta.shape) < 2 or math.prod(shape) <= 1:
            continue
        sample = tuple(meta.shape[1:])
        identity = is_identity_site(gm, node)
        channel_dim = gm.get_submodule(node.target).channel_dim if identity else relu_channel_dim(gm, node)
        per_channel = (sample[-1],) if channel_dim == -1 else (sample[0],) + (1,) * (len(sample) - 1)
        token_rows = (sample[0],) + (1,) * (len(sample) - 1)  # token_channel "tokens": dim 1 of [B, N, C]
        if shape not in (sample, per_channel, token_rows):
            raise ConfigError(f"site {node.target}: threshold of shape {list(shape)} for its per-sample shape "
                              f"{list(sample)}; give one value, one per channel {list(per_channel)} or one per neuron "
                              f"{list(sample)}")


class _ByName(NamedTuple):
    """A module-level function stored by where it lives (see :class:`_BoundCall`)."""

    module: str
    name: str


@dataclass(frozen=True)
class _Slot:
    """Placeholder for the unit's ``index``-th input in a bound call's argument template (not a tuple: fx's
    ``map_aggregate`` would descend into it)."""

    index: int


@dataclass(frozen=True)
class _Const:
    """Placeholder for a constant tensor (a ``get_attr`` argument), kept as a buffer of the bound call."""

    name: str


class _BoundCall(nn.Module):
    """A graph call with everything but its input-dependent tensors bound: ``f(*inputs)`` runs ``target`` with the
    node's arguments, input ``i`` in the place of the node's ``i``-th input-dependent argument (a max-pool's ``x``,
    both factors of a product, ``F.layer_norm``'s input with its weight and bias). ``kind`` is ``"call_function"`` or
    ``"call_method"`` (the method is looked up on the first argument). Constant tensors of the graph become buffers
    (they follow ``.to(device)``).

    Picklable (``torch.save`` of a whole SNN): ``F.max_pool2d`` and its siblings are closures made by torch's
    ``boolean_dispatch``, which pickle cannot store, so a function target is stored by its module and name and looked
    up again on load.
    """

    def __init__(self, kind: str, target, args: tuple, kwargs: dict, consts: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.kind, self.target, self.args, self.kwargs = kind, target, tuple(args), dict(kwargs)
        for name, value in consts.items():
            self.register_buffer(name, value)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        target = self.target
        module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
        if self.kind == "call_function" and module and name and \
                getattr(importlib.import_module(module), name, None) is target:
            state["target"] = _ByName(module, name)
        return state

    def __setstate__(self, state: dict) -> None:
        target = state["target"]
        if isinstance(target, _ByName):
            state["target"] = getattr(importlib.import_module(target.module), target.name)
        super().__setstate__(state)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        def fill(a):
            if isinstance(a, _Slot):
                return inputs[a.index]
            if isinstance(a, _Const):
                return getattr(self, a.name)
            return a

        args, kwargs = fx.node.map_aggregate((self.args, self.kwargs), fill)
        if self.kind == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{getattr(self.target, '__name__', self.target)}{self.args}, **{self.kwargs}"


def is_matmul_unit(module: nn.Module) -> bool:
    """A graded unit whose function is a matrix product of its two inputs (an attention product, method.md §5.2)."""
    f = getattr(module, "f", None)
    return isinstance(module, GradedUnit) and isinstance(f, _BoundCall) and (
        f.target in MATMULS if f.kind == "call_function" else f.target in MATMUL_METHODS)


def _bind(gm: fx.GraphModule, node: fx.Node, deps: list[fx.Node]) -> nn.Module:
    """The function a unit for ``node`` applies to its inputs ``deps``."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        shared = any(n is not node and n.op == "call_module" and n.target == node.target for n in gm.graph.nodes)
        # a module also called elsewhere (a shared ``self.act``) gets its own copy: units keep fp32 parameters,
        # while a plain call site in front of the first neuron is cast with the layers (``compile(dtype=...)``)
        return copy.deepcopy(module) if shared else module
    consts: dict[str, torch.Tensor] = {}

    def template(a):
        if isinstance(a, fx.Node):
            if a in deps:
                return _Slot(deps.index(a))
            name = f"const{len(consts)}"
            owner, _, leaf = a.target.rpartition(".")
            consts[name] = getattr(gm.get_submodule(owner), leaf)
            return _Const(name)
        return a

    args, kwargs = fx.node.map_aggregate((tuple(node.args), dict(node.kwargs)), template)
    return _BoundCall(node.op, node.target, args, kwargs, consts)


def _unit_kind(gm: fx.GraphModule, node: fx.Node, graded: str | None) -> str:
    """The report's name for a unit: ``product``, ``matmul`` or the function's (module class or function) name."""
    if graded == "product":
        return "matmul" if is_matmul(node) else "product"
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return str(getattr(node.target, "__name__", node.target))


def wrap_units(gm: fx.GraphModule, neuron_targets: set[str], cfg: ConversionConfig, entry: PassEntry) -> list[str]:
    """Turn every max-pool, known non-linear function, element-wise product and explicitly allowed analog node
    downstream of a neuron into a :class:`GradedUnit` (its decoded output is exactly the function of its decoded
    inputs, method.md §5.1-§5.3).

    A non-linear function applied step by step to spike-driven inputs computes the wrong thing (the max of per-step
    values is not the max of their averages; SiLU of a difference is not a difference of SiLUs). Nodes upstream of
    every neuron see the analog input layer and stay plain: their per-step inputs are constant (rate) or
    ``b + Wx, b, b, ...`` (differential, and the next unit captures the output for ``b``), for which the plain
    function is exact.

    Before: ``p = pool(conv(s))``  After: ``p = pool_unit(conv(s))`` with ``pool_unit = GradedUnit(pool)``;
    ``y = x * g`` becomes ``y = mul_unit(x, g)`` with ``GradedUnit(operator.mul, n_inputs=2)``.

    Raises:
        ConfigError: an allowed analog node has graph-computed non-tensor arguments (it cannot run as a unit).
    """
    spiking: set[fx.Node] = set()
    cache: dict = {}
    names = []
    tuples: dict[fx.Node, list[fx.Node]] = {}  # an allowed call returning several values -> its inputs
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in neuron_targets:
            spiking.add(node)
            continue
        if not any(a in spiking for a in node.all_input_nodes):
            continue
        spiking.add(node)
        source = tuple_selection(node)
        if source in tuples and not node.users:  # a value nobody reads (`values, _ = torch.max(x, 1)`)
            gm.graph.erase_node(node)
            continue
        if source in tuples:  # one value of it: a unit of the call and the selection together
            fn, deps, kind = _select_unit(gm, node, source, tuples[source])
        else:
            pool = is_maxpool(gm, node)
            graded = None if pool else graded_kind(gm, node, cache)
            if not (pool or graded or allowed_analog(node, cfg)):
                continue
            deps = [node.args[0]] if pool else input_dependent_args(node, cache)
            if not pool and not bindable(node, deps):
                raise ConfigError(f"node {node.name} is allowed to stay analog, but its arguments are computed in "
                                  "the graph, so it cannot run exactly on decoded values; remove it from "
                                  "--allow-ann-op")
            if not pool and returns_tuple(node):
                tuples[node] = deps  # its selections become the units
                continue
            fn, kind = _bind(gm, node, deps), ("max-pool" if pool else _unit_kind(gm, node, graded))
        name = f"{node.target.replace('.', '_')}_{node.name}_unit" if node.op == "call_module" else f"{node.name}_unit"
        gm.add_submodule(name, GradedUnit(fn, coding=cfg.coding, n_inputs=len(deps)))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, tuple(deps))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        spiking.add(new)
        names.append(name)
        entry.counts[f"GradedUnit({kind})"] = entry.counts.get(f"GradedUnit({kind})", 0) + 1
    for node in tuples:
        if node.users:
            raise ConfigError(f"node {node.name} returns several values and is allowed to stay analog, but "
                              f"{', '.join(u.name for u in node.users)} use(s) the whole tuple; a graded unit "
                              "outputs one tensor: select the value you need (e.g. torch.sort(x).values)")
        gm.graph.erase_node(node)
    return names


class _Selected(nn.Module):
    """One value of a call that returns several (``torch.sort(x).values``): ``call(*xs)[key]``."""

    def __init__(self, call: nn.Module, key: int | str) -> None:
        super().__init__()
        self.call, self.key = call, key

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.call(*xs)
        return getattr(out, self.key) if isinstance(self.key, str) else out[self.key]


def _select_unit(gm: fx.GraphModule, node: fx.Node, source: fx.Node, deps: list[fx.Node]
                 ) -> tuple[nn.Module, list[fx.Node], str]:
    """The function, inputs and report kind of a unit for ``node``, which selects one value of ``source``."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not getattr(meta, "dtype", torch.float32).is_floating_point:
        raise ConfigError(f"node {node.name} takes {node.args[1]!r} of {source.name}, not a float tensor (e.g. "
                          "sort or max indices): a graded unit's output is a running average of float values; "
                          "use only the values, or keep this part of the model outside the converted network")
    return _Selected(_bind(gm, source, deps), node.args[1]), deps, _unit_kind(gm, source, None)
