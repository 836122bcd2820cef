"""Replace every canonical ReLU by the coding's spiking neuron and wrap the graph as a :class:`SpikingNetwork`."""
from __future__ import annotations

import torch
import torch.fx as fx

from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.passes.normalize import is_canonical_relu, set_module
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
    gm.recompile()
    report.passes.append(entry)
    return SpikingNetwork(gm, coding, cfg.timesteps, names)
