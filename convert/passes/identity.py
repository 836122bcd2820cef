"""Identity-neuron sites (method.md §4.7, §6 "dispatch by structure"): where a Conv/Linear layer would read dense
values, a signed, unconstrained neuron in front of it turns them into events.

A tensor in the graph is one of three *streams*:

- ``"input"``: the network input, or computed from it alone without a Conv/Linear layer (normalisation, padding);
- ``"events"``: the output of a neuron (a ReLU site or an identity site), or linear structure over neuron outputs
  only (average pooling, flatten, concat, add, scaling, batch norm);
- ``"dense"``: the output of a Conv/Linear layer, of a non-linear function or product downstream of a layer (a
  graded unit after conversion, or a plain function in front of the first neuron), or anything mixing streams.

``identity_neurons="auto"`` puts one site on every ``"dense"`` tensor that a Conv/Linear layer or a matrix product
reads (both operands of an attention product); ``"all"`` also on the ``"input"`` tensors they read (the image is
spike-encoded). A tensor read by several layers gets one
site shared by them; its other consumers (a residual add, a graded unit) keep reading the exact dense value. A site
is an :class:`IdentitySite` module, which computes the identity until the conversion replaces it by a neuron; the
calibration observes it like a ReLU site.
"""
from __future__ import annotations

import logging

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.errors import UnsupportedOpError
from snnconvert.convert.frontend import depends_on_values
from snnconvert.convert.passes.normalize import is_canonical_relu, is_maxpool
from snnconvert.convert.passes.support import (
    allowed_analog,
    describe_node,
    graded_kind,
    input_dependent_args,
    is_matmul,
)
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

logger = logging.getLogger(__name__)

#: Layers whose inputs are synaptic (their SOPs are counted, method.md §8) and may get an identity site.
SYNAPTIC_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                                  nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_SYNAPTIC_FUNCTIONS = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear})

STREAMS = ("input", "events", "dense")


class IdentitySite(nn.Module):
    """Marker of an identity-neuron site: returns its input unchanged (the ANN is unchanged) until
    :func:`~snnconvert.convert.passes.spikify.replace_activations` puts a signed, unconstrained neuron in its place.

    ``channel_dim``: the dimension per-channel thresholds run along: -1 (the features of ``[B, N, C]`` token
    tensors, method.md §6) when only Linear layers read the site, else 1 (conv channels, attention heads).
    """

    def __init__(self, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return f"channel_dim={self.channel_dim}"


def is_identity_site(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a ``call_module`` node of an :class:`IdentitySite`."""
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), IdentitySite)


def is_neuron_site(gm: fx.GraphModule, node: fx.Node, memo: dict | None = None) -> bool:
    """A node that becomes a spiking neuron: a canonical ReLU or an identity site computed from the input (a ReLU on
    parameters alone, such as SwinV2's relative-position MLP on its coordinate table, is a constant: it stays a ReLU,
    the same at every step). ``memo``: :func:`depends_on_values`'s cache, shared over a pass."""
    return (is_canonical_relu(gm, node) or is_identity_site(gm, node)) and depends_on_values(
        node, {} if memo is None else memo)


def _is_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return is_synaptic_layer(gm, node) or (node.op == "call_function" and node.target in _SYNAPTIC_FUNCTIONS) or \
        is_matmul(node)


def _synaptic_inputs(gm: fx.GraphModule, node: fx.Node, cache: dict) -> list[fx.Node]:
    """The tensors ``node`` reads through synapses: a Conv/Linear module's (or ``F.conv2d`` / ``F.linear`` call's)
    input, every input-dependent operand of a matrix product (both operands of an attention product, method.md
    §4.7)."""
    if is_synaptic_layer(gm, node) or (node.op == "call_function" and node.target in _SYNAPTIC_FUNCTIONS):
        return [node.args[0]] if node.args else []
    if is_matmul(node):
        return input_dependent_args(node, cache)
    return []


def _feature_last(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A Linear layer (module or ``F.linear``): it reads the last dim, the features of a token tensor."""
    return (node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear)) or (
        node.op == "call_function" and node.target is F.linear)


def _features_dim(gm: fx.GraphModule, layers: list[fx.Node]) -> int:
    """-1 (the feature dim of a token tensor) when Linear layers alone read a tensor, else 1 (channels, heads)."""
    return -1 if layers and all(_feature_last(gm, n) for n in layers) else 1


def relu_channel_dim(gm: fx.GraphModule, relu: fx.Node) -> int:
    """The per-channel threshold dimension of a ReLU site: -1 (the features of a ``[B, N, C]`` token tensor, method.md
    §6, §7.8) when a Linear layer produced its input or only Linear layers read it, else 1 (conv channels). The two
    agree on ``[B, C]`` tensors."""
    source = relu.args[0] if relu.args else None
    if isinstance(source, fx.Node) and _feature_last(gm, source):
        return -1
    return _features_dim(gm, [u for u in relu.users if _is_layer(gm, u)])


def is_synaptic_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A Conv/Linear module call: the layers the energy metric counts and identity sites are put in front of."""
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), SYNAPTIC_MODULES)


def stream_kinds(gm: fx.GraphModule, cfg, cache: dict | None = None) -> dict[fx.Node, str]:
    """The stream (``"input"``, ``"events"``, ``"dense"``) of every input-dependent node, in graph order; constants
    (parameters, shapes) are absent. ``cfg.allow_ann_ops`` nodes count as graded units."""
    cache = {} if cache is None else cache
    kinds: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            kinds[node] = "input"
            continue
        if node.op in ("get_attr", "output"):
            continue
        if is_neuron_site(gm, node, cache):
            kinds[node] = "events"
            continue
        deps = [kinds[a] for a in input_dependent_args(node, cache) if a in kinds]
        if not deps:
            continue
        if _is_layer(gm, node):
            kinds[node] = "dense"
        elif all(k == "input" for k in deps):
            kinds[node] = "input"  # a function of the network input alone: part of the input encoding
        elif is_maxpool(gm, node) or graded_kind(gm, node, cache) or allowed_analog(node, cfg) or \
                any(k != "events" for k in deps):
            kinds[node] = "dense"
        else:
            kinds[node] = "events"
    return kinds


def _site_name(gm: fx.GraphModule, source: fx.Node) -> str:
    name = f"{source.name}_identity"
    i = 1
    while hasattr(gm, name):
        name = f"{source.name}_identity{i}"
        i += 1
    return name


def insert_identity_sites(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Put an :class:`IdentitySite` on every tensor a Conv/Linear layer reads that is not an event stream (see the
    module docstring), shared by the layers that read it.

    Before: ``h = hardswish(bn(conv1(x))); y = conv2(h) + h``
    After:  ``h = hardswish(...); h_identity = h_identity(h); y = conv2(h_identity) + h``

    Raises:
        UnsupportedOpError: the model has non-linear functions but would have no neuron at all (no ReLU, and no
            layer that reads a dense value, or ``identity_neurons="off"``): it would never spike.
    """
    entry = PassEntry(name="insert_identity_sites", modified=False)
    cache: dict = {}
    linear = not any(is_canonical_relu(gm, n) or graded_kind(gm, n, cache) for n in gm.graph.nodes)
    if linear and cfg.identity_neurons == "auto":  # the SNN equals the ANN at every step (method.md §12)
        logger.info("a linear model (no ReLU, no non-linear function): no identity neurons with identity_neurons="
                    "'auto', so the SNN reproduces the ANN at every step; 'all' spikes every layer's input")
    elif cfg.identity_neurons != "off":
        wanted = ("dense", "input") if cfg.identity_neurons == "all" else ("dense",)
        kinds = stream_kinds(gm, cfg, cache)
        readers: dict[fx.Node, list[fx.Node]] = {}
        for node in gm.graph.nodes:
            for source in _synaptic_inputs(gm, node, cache):
                if kinds.get(source) in wanted and node not in readers.get(source, []):
                    readers.setdefault(source, []).append(node)
        for source, layers in readers.items():
            name = _site_name(gm, source)
            gm.add_submodule(name, IdentitySite(_features_dim(gm, layers)))
            with gm.graph.inserting_after(source):
                site = gm.graph.call_module(name, (source,))
            site.meta = dict(source.meta)
            for layer in layers:
                layer.replace_input_with(source, site)
            entry.nodes.append(name)
            entry.counts[kinds[source]] = entry.counts.get(kinds[source], 0) + 1
        entry.modified = bool(readers)
        if readers:
            gm.recompile()
    report.passes.append(entry)
    _check_spiking(gm, cfg, cache)
    return PassResult(gm, entry.modified)


def _check_spiking(gm: fx.GraphModule, cfg, cache: dict) -> None:
    """A model with non-linear functions and no neuron site would run as a dense ANN and emit no spike: refuse."""
    if any(is_neuron_site(gm, n, cache) for n in gm.graph.nodes):
        return
    graded = [describe_node(gm, n) for n in gm.graph.nodes
              if n.op not in ("placeholder", "output", "get_attr") and graded_kind(gm, n, cache)]
    if not graded:
        return  # a linear model: exact at every step, nothing to spike
    why = ("identity_neurons is 'off'" if cfg.identity_neurons == "off"
           else "no Conv/Linear layer reads a dense value")
    raise UnsupportedOpError(graded, hint=(
        f"the model has no ReLU and {why}: every non-linearity above would stay a dense analog unit and the network "
        "would emit no spike; use identity_neurons='auto' or 'all' (--identity-neurons), which put signed neurons "
        "in front of the linear layers (method.md §4.7)"))
