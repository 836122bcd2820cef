"""Replace every canonical ReLU by the coding's spiking neuron and wrap the graph as a :class:`SpikingNetwork`."""
from __future__ import annotations

import importlib
from typing import NamedTuple

import torch
import torch.fx as fx

from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.passes.normalize import is_canonical_relu, is_maxpool, set_module
from snnconvert.convert.pipeline import ConversionReport, PassEntry
from snnconvert.convert.snn import SpikingNetwork


def replace_activations(
    gm: fx.GraphModule,
    thresholds: dict[str, torch.Tensor],
    coding,
    cfg: ConversionConfig,
    report: ConversionReport,
) -> SpikingNetwork:
    """Swap each ReLU module for ``coding.make_neuron(threshold, cfg)``; the module keeps the ReLU's name.

    Before: ``y = relu_3(x)`` (``nn.ReLU``)  After: ``y = relu_3(x)`` (a spiking neuron with the site's threshold).

    Raises:
        ConfigError: a ReLU site has no threshold, or a threshold names no ReLU site (thresholds from another model).
    """
    sites = [n for n in gm.graph.nodes if is_canonical_relu(gm, n)]
    names = [n.target for n in sites]
    missing = sorted(set(names) - set(thresholds))
    extra = sorted(set(thresholds) - set(names))
    if missing or extra:
        raise ConfigError(f"thresholds do not match the model's ReLU sites (missing: {missing}, unknown: {extra}); "
                          "they come from a different model or pipeline version")
    entry = PassEntry(name="replace_activations", modified=bool(sites))
    for node in sites:
        neuron = coding.make_neuron(thresholds[node.target], cfg)
        set_module(gm, node.target, neuron)
        entry.nodes.append(node.target)
        kind = type(neuron).__name__
        entry.counts[kind] = entry.counts.get(kind, 0) + 1
    units = wrap_maxpools(gm, set(names), cfg, entry)
    gm.recompile()
    report.passes.append(entry)
    return SpikingNetwork(gm, coding, cfg.timesteps, names, units)


class _ByName(NamedTuple):
    """A module-level function stored by where it lives (see :class:`_BoundPool`)."""

    module: str
    name: str


class _BoundPool:
    """A functional max-pool with its non-input arguments bound: ``f(x) = target(x, *args, **kwargs)``
    (``functools.partial`` would put the bound positional arguments before ``x``).

    Picklable (``torch.save`` of a whole SNN): ``F.max_pool2d`` and its siblings are closures made by torch's
    ``boolean_dispatch``, which pickle cannot store, so the target is stored by its module and name and looked up
    again on load.
    """

    def __init__(self, target, args: tuple, kwargs: dict) -> None:
        self.target, self.args, self.kwargs = target, tuple(args), dict(kwargs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        module, name = getattr(self.target, "__module__", None), getattr(self.target, "__name__", None)
        if module and name and getattr(importlib.import_module(module), name, None) is self.target:
            state["target"] = _ByName(module, name)
        return state

    def __setstate__(self, state: dict) -> None:
        target = state["target"]
        if isinstance(target, _ByName):
            state["target"] = getattr(importlib.import_module(target.module), target.name)
        self.__dict__.update(state)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"{getattr(self.target, '__name__', self.target)}(x, *{self.args}, **{self.kwargs})"


def wrap_maxpools(gm: fx.GraphModule, neuron_targets: set[str], cfg: ConversionConfig, entry: PassEntry) -> list[str]:
    """Turn every max-pool downstream of a neuron into a :class:`GradedUnit` (exact max-pool of the decoded input).

    A max-pool applied step by step to spike-driven inputs pools the wrong thing (the max of per-step values is not
    the max of their averages). Pools upstream of every neuron see the analog input layer and stay plain: their
    per-step inputs are constant (rate) or ``b + Wx, b, b, ...`` (differential), for which the plain pool is exact.

    Before: ``p = pool(conv(s))``  After: ``p = pool_unit(conv(s))`` with ``pool_unit = GradedUnit(pool)``.
    """
    spiking: set[fx.Node] = set()
    names = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in neuron_targets:
            spiking.add(node)
            continue
        if not any(a in spiking for a in node.all_input_nodes):
            continue
        spiking.add(node)
        if not is_maxpool(gm, node):
            continue
        if node.op == "call_module":
            name = f"{node.target.replace('.', '_')}_{node.name}_unit"
            f = gm.get_submodule(node.target)
        else:
            name = f"{node.name}_unit"
            f = _BoundPool(node.target, node.args[1:], node.kwargs)
        gm.add_submodule(name, GradedUnit(f, coding=cfg.coding))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        spiking.add(new)
        names.append(name)
        entry.counts["GradedUnit(max-pool)"] = entry.counts.get("GradedUnit(max-pool)", 0) + 1
    return names
