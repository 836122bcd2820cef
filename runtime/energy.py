"""Synaptic operations (SOP) and the energy metric (method.md §8).

Per real step t and Conv/ConvTranspose/Linear layer l (``F.conv*`` / ``F.linear`` calls with constant weights are
modules by then: ``functional_layers_to_modules``): ``SOP_l,t`` = Σ over the non-zero input entries of their fan-out:
the number of non-zero entries at each input position (summed over channels) weighted by the layer's spatial fan-out
map (padding and stride shape the fan-out at borders), the same integers as running the layer's geometry with
all-ones weights on the binary map ``[input != 0]``. ``TOT_l`` is the dense MAC count of the layer for one image
(the same with an all-ones input). The zero-input capture pass of differential coding is excluded.

Two energy figures are reported, with the constants printed next to them:

- ``reference``: every SNN operation is an AC (the paper's metric): ``E_AC·ΣSOP / (E_MAC·ΣTOT)``;
- ``extended``: layers whose input is analog (the first layer, a layer fed by a dense graded unit or directly by
  another layer) are counted as MACs; spike-fed layers as ACs.

Matrix-product units (attention's QKᵀ and A·V, method.md §5.2) are counted like layers: ``TOT`` is the dense
product's multiply-adds, ``SOP_t`` the multiply-adds of the step's three product terms (R_A∘δB, δA∘R_B, δA∘δB,
with R the running decoded operands before the step; rate coding adds R_A∘R_B from step 2) over their non-zero
patterns, i.e. the unit's own product applied to 0/1 masks; ACs when both operands are event streams, MACs
otherwise. Element-wise products and other graded units are not counted (non-linear units, method.md §8).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.passes.identity import SYNAPTIC_MODULES
from snnconvert.convert.passes.spikify import is_matmul_unit
from snnconvert.convert.snn import SpikingNetwork

#: pJ per operation, Horowitz (ISSCC 2014), 45 nm, fp32.
E_AC_PJ = 0.9
E_MAC_PJ = 4.6


def input_kinds(snn: SpikingNetwork) -> dict[str, str]:
    """For each Conv/Linear node target and matrix-product unit: ``"spike"`` when its inputs derive only from
    neurons through structural linear ops (pooling, add, concat, reshapes, scaling), ``"analog"`` when a dense value
    (the network input, a graded unit's output, another layer's output without a neuron in between) reaches one."""
    neurons = set(snn.neuron_names)
    kind: dict[fx.Node, str] = {}
    result = {}
    for node in snn.gm.graph.nodes:
        module = snn.gm.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            kind[node] = "analog"
        elif node.op == "get_attr":
            kind[node] = "const"
        elif module is not None and (node.target in neurons or getattr(module, "site_names", ())):
            kind[node] = "spike"  # a neuron, or a fused unit of neurons (runtime/fuse.py)
        elif isinstance(module, (GradedUnit, *SYNAPTIC_MODULES)):
            kind[node] = "analog"  # dense floats: a graded unit's output, a layer's weighted sums
        else:
            kinds = {kind.get(a, "const") for a in node.all_input_nodes}
            kind[node] = "analog" if "analog" in kinds else ("spike" if "spike" in kinds else "const")
        if isinstance(module, SYNAPTIC_MODULES):
            result[node.target] = kind[node.args[0]]
        elif module is not None and is_matmul_unit(module):
            result[node.target] = "analog" if any(kind.get(a) == "analog" for a in node.args) else "spike"
    return result


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@lru_cache(maxsize=256)
def _fanout_map(dims: int, kernel_size: tuple, stride: tuple, padding, dilation: tuple, spatial: tuple,
                device: str, output_padding: tuple | None = None, padding_mode: str = "zeros",
                padded: tuple | None = None) -> torch.Tensor:
    """Spatial fan-out of a convolution geometry: entry p is the number of (output position, kernel tap) pairs that
    read input position p, i.e. the gradient of Σ conv(x, all-ones kernel) w.r.t. x. Integers. Zero padding reads
    nothing; reflect, replicate and circular padding (``padding_mode``, with ``padded`` the module's ``F.pad``
    widths) read border entries again, so those count once per read. ``output_padding`` given: the geometry of a
    transposed convolution (taps landing in the cropped border of its output do not count)."""
    x = torch.ones(1, 1, *spatial, device=device, requires_grad=True)
    ones = torch.ones(1, 1, *kernel_size, device=device)
    with torch.enable_grad():
        if output_padding is None and padding_mode != "zeros":  # what nn.ConvNd does for these modes
            out = _CONV[dims](F.pad(x, padded, mode=padding_mode), ones, None, stride, 0, dilation)
        elif output_padding is None:
            out = _CONV[dims](x, ones, None, stride, padding, dilation)
        else:
            out = _CONV_TRANSPOSE[dims](x, ones, None, stride, padding, output_padding, 1, dilation)
        (grad,) = torch.autograd.grad(out.sum(), x)
    return grad[0, 0].detach()


def _fanout_count(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ over the non-zero entries of ``x`` (per sample) of their fan-out through ``layer``: ``[N]`` float64.

    Every input entry of a convolution reaches ``out_channels / groups`` output channels with a spatial fan-out that
    depends only on its position (padding and stride shape it at borders): so the non-zero entries are counted per
    position over the channels, weighted by the layer's fan-out map (:func:`_fanout_map`, computed once per layer
    geometry and input size) and summed, the same integers as convolving the 0/1 mask with an all-ones kernel
    without the convolution. Per-position counts and weights stay far below 2^24, so the products are exact in fp32;
    the per-sample total is summed in fp64.
    """
    if isinstance(layer, nn.Linear):
        return x.ne(0).flatten(1).sum(1, dtype=torch.float64) * layer.out_features
    per_position = x.ne(0).sum(1, dtype=torch.int32)  # [N, *spatial]; int32 sums are ~1.5x faster than fp32 here
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    weights = _fanout_map(x.dim() - 2, tuple(layer.kernel_size), tuple(layer.stride), layer.padding
                          if isinstance(layer.padding, str) else tuple(layer.padding), tuple(layer.dilation),
                          tuple(x.shape[2:]), str(x.device), tuple(layer.output_padding) if transposed else None,
                          layer.padding_mode, tuple(getattr(layer, "_reversed_padding_repeated_twice", ())) or None)
    weighted = per_position.to(torch.float32) * weights  # C times smaller than x: the cast is cheap
    return weighted.flatten(1).sum(1, dtype=torch.float64) * (layer.out_channels // layer.groups)


@dataclass
class OpCounts:
    """Per-layer SOPs per step (summed over images), dense MACs per image, and the input kind of each layer."""

    timesteps: int
    images: int = 0
    sop: dict[str, torch.Tensor] = field(default_factory=dict)
    tot: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Per-image figures: SOP per layer and step, TOT, rates, and the energy ratio after every step."""
        n = max(self.images, 1)
        tot = sum(self.tot.values())
        layers = {}
        for name, sop in self.sop.items():
            per_step = (sop / n).tolist()
            layers[name] = {"input": self.kinds.get(name, "spike"), "tot_macs": self.tot[name],
                            "sop_per_step": per_step, "sop_rate": sum(per_step) / (self.timesteps * self.tot[name])}
        ac = torch.zeros(self.timesteps, dtype=torch.float64)
        mac = torch.zeros(self.timesteps, dtype=torch.float64)
        for name, sop in self.sop.items():
            (mac if self.kinds.get(name) == "analog" else ac).add_(sop / n)
        cum_ac, cum_mac = ac.cumsum(0), mac.cumsum(0)
        return {
            "constants_pj": {"E_AC": E_AC_PJ, "E_MAC": E_MAC_PJ, "source": "Horowitz ISSCC 2014, 45 nm, fp32"},
            "ann_macs_per_image": tot,
            "sop_per_step": (ac + mac).tolist(),
            "energy_ratio_reference": (E_AC_PJ * (cum_ac + cum_mac) / (E_MAC_PJ * tot)).tolist() if tot else [],
            "energy_ratio_extended": ((E_AC_PJ * cum_ac + E_MAC_PJ * cum_mac) / (E_MAC_PJ * tot)).tolist()
            if tot else [],
            "layers": layers,
        }


def _pair_count(unit: GradedUnit, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multiply-adds of the unit's product with both factors non-zero, per sample: its function on 0/1 masks."""
    return unit.f(a.ne(0).float(), b.ne(0).float()).flatten(1).sum(1, dtype=torch.float64)


class SynapticOpCounter:
    """Forward hooks on every Conv/Linear and matrix-product unit of an SNN; counts SOPs per step in both step
    modes."""

    def __init__(self, snn: SpikingNetwork, timesteps: int) -> None:
        self.snn = snn
        self.counts = OpCounts(timesteps=timesteps, kinds=input_kinds(snn))
        self._step: dict[str, int] = {}
        self._running: dict[str, tuple] = {}  # matrix-product units in single-step mode: (R_A, R_B) before the step
        self.handles = []
        for name, module in snn.gm.named_modules():
            if isinstance(module, SYNAPTIC_MODULES) and name in self.counts.kinds:
                self.handles.append(module.register_forward_hook(self._hook(name)))
            elif is_matmul_unit(module) and name in self.counts.kinds:
                self.handles.append(module.register_forward_hook(self._product_hook(name)))

    def _hook(self, name: str):
        T = self.counts.timesteps

        def hook(module, args, out):
            if self.snn.capturing or getattr(self.snn, "analog_pass", False):
                return
            x = args[0]
            sop = self.counts.sop.setdefault(name, torch.zeros(T, dtype=torch.float64))
            if name not in self.counts.tot:
                self.counts.tot[name] = float(_fanout_count(module, torch.ones_like(x[:1]))[0])
            per_sample = _fanout_count(module, x)
            prefix = self.snn.prefix_phase
            if prefix is not None:  # a static-prefix layer (convert/static_prefix.py) in multi-step mode
                if prefix.phase == "rest":  # the one-sample input of steps 2..T, for each of the B images
                    sop[1:] += float(per_sample.sum()) * prefix.batch
                elif prefix.pattern == "once":  # the B images' step 1
                    sop[0] += float(per_sample.sum())
                else:  # the same input at every step
                    sop += float(per_sample.sum())
            elif self.snn.step_mode == "m":
                sop += per_sample.view(T, -1).sum(1).cpu()
            else:
                t = self._step.get(name, 0)
                sop[t % T] += float(per_sample.sum())
                self._step[name] = t + 1

        return hook

    def _product_hook(self, name: str):
        T = self.counts.timesteps

        def hook(unit, args, out):
            if self.snn.capturing or getattr(self.snn, "analog_pass", False):
                return
            sop = self.counts.sop.setdefault(name, torch.zeros(T, dtype=torch.float64))
            a, b = args
            if name not in self.counts.tot:
                self.counts.tot[name] = float(_pair_count(unit, torch.ones_like(a[:1]), torch.ones_like(b[:1]))[0])
            if self.snn.step_mode == "m":
                steps = list(zip(a.reshape(T, -1, *a.shape[1:]), b.reshape(T, -1, *b.shape[1:])))
                first, running = 1, None
            else:
                steps = [(a, b)]
                first = self._step.get(name, 0) % T + 1
                self._step[name] = first
                running = self._running.get(name) if first > 1 else None
            biases = unit.biases if unit.coding == "differential" else None
            for t, (x_a, x_b) in enumerate(steps, start=first):
                if running is None:
                    running = tuple(torch.zeros_like(x) if biases is None else bias.to(x.dtype).expand_as(x)
                                    for x, bias in zip((x_a, x_b), biases or (None, None)))
                r_a, r_b = running
                d_a, d_b = (x_a, x_b) if biases is None else (x_a - biases[0], x_b - biases[1])
                count = _pair_count(unit, r_a, d_b) + _pair_count(unit, d_a, r_b) + _pair_count(unit, d_a, d_b)
                if biases is None and t > 1:  # rate: t·f(S_t/t) − (t−1)·f(S_{t−1}/(t−1)) keeps an R_A∘R_B term
                    count = count + _pair_count(unit, r_a, r_b)
                sop[t - 1] += float(count.sum())
                # running decoded operands: R += δ/t (differential), the running mean (rate)
                running = (r_a + d_a / t, r_b + d_b / t) if biases is not None else (
                    r_a + (x_a - r_a) / t, r_b + (x_b - r_b) / t)
            if self.snn.step_mode != "m":
                self._running[name] = running

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
