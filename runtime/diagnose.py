"""Per-unit ANN↔SNN error: where along the network the spiking approximation departs from the ANN.

For every stateful unit the graph calls (spiking neurons, graded units, fused bounded-ReLU pairs) and for
the network output, the decoded value after each step t is compared with the same node's value in the ANN, over
every element of every evaluated image:

    relative_error[t-1] = sqrt( Σ (r_t − a)² / Σ a² )

``a`` is the unit's output in :meth:`SpikingNetwork.ann_forward` (the converted graph with every unit analog: the ANN
after BN folding and max-pool reordering, the network that calibration observed); ``r_t`` is the unit's decoded
output after t steps (rate coding: the running mean of its outputs; differential coding: Σ_τ out_τ/τ, the unit's
R_out), and for the network output the decoded logits (for a model with several outputs, each output on its own:
``output.<key>``). A unit's error includes what it inherits from upstream, so
the first unit whose error is large is where the approximation breaks (a threshold too low clips, too high wastes
steps). Both step modes give the same figures up to the rounding of the decoding's running sums (tested).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from snnconvert.convert.errors import ConfigError
from snnconvert.convert.outputs import output_leaves
from snnconvert.convert.snn import SpikingNetwork

__all__ = ["OUTPUT", "ErrorMeter", "RelativeError", "output_name"]

#: the key of the network output in the per-unit errors (``output.<key>`` per output of a model with several)
OUTPUT = "output"


def output_name(path: str) -> str:
    """The report's name of the network output at leaf path ``path`` (``convert.outputs.output_leaves``):
    ``output``, ``output.cls``, ``output.1``."""
    return f"{OUTPUT}.{path}" if path else OUTPUT


class RelativeError:
    """The relative error sqrt(Σ(r_t − a)² / Σa²) of one value's decoded SNN output r_t after every step t against
    its reference a, accumulated over batches (float64 sums)."""

    def __init__(self, timesteps: int) -> None:
        self.err = torch.zeros(timesteps, dtype=torch.float64)  # Σ (r_t − a)² per step
        self.ref = 0.0  # Σ a²
        self.count = 0  # elements per step

    def reference(self, a: torch.Tensor) -> None:
        """Count the reference values ``a`` [B, ...] of a batch."""
        self.ref += float(a.double().square().sum())
        self.count += a.numel()

    def add(self, decoded: torch.Tensor, a: torch.Tensor, first_step: int = 0) -> None:
        """Squared errors of the decoded values [S, B, ...] of steps first_step+1 … against ``a`` [B, ...]."""
        diff = decoded - a.unsqueeze(0)
        self.err[first_step:first_step + decoded.shape[0]] += diff.double().square().flatten(1).sum(1).cpu()

    def result(self) -> dict[str, object]:
        """``ann_rms`` (RMS of the reference) and ``relative_error`` (list over t; None when the reference is all
        zero: nothing to compare with)."""
        rel = None if self.ref == 0 else [math.sqrt(e / self.ref) for e in self.err.tolist()]
        return {"ann_rms": math.sqrt(self.ref / self.count) if self.count else 0.0, "relative_error": rel}


class ErrorMeter:
    """Forward hooks that accumulate each unit's squared error against its ANN value, per step.

    Use: ``meter.begin(x)`` before the SNN runs a batch (runs the analog pass), then the SNN call, then
    ``meter.output(decoded)``; ``meter.result()`` at the end; ``meter.close()`` removes the hooks.
    """

    def __init__(self, snn: SpikingNetwork, timesteps: int) -> None:
        self.snn = snn
        self.T = timesteps
        self.coding = snn.coding.name
        self.decode = snn.coding.decode_unit  # the coding's own decoding, without the network output's offset
        stateful = dict(snn.stateful())
        called = [n.target for n in snn.gm.graph.nodes if n.op == "call_module" and n.target in stateful]
        shared = sorted({name for name in called if called.count(name) > 1})
        if shared:  # conversion gives every call site its own unit; a hand-edited graph may not
            raise ConfigError(f"unit(s) {', '.join(shared)} are called at several places of the graph; per-unit "
                              "errors need one call per unit")
        self.names = list(called)  # the output(s) are added by the first batch
        self.errors = {name: RelativeError(timesteps) for name in self.names}
        self._ann: dict[str, torch.Tensor] = {}
        self._running: dict[str, tuple[int, torch.Tensor]] = {}  # single-step mode: (steps done, Σ so far)
        self.handles = [stateful[name].register_forward_hook(self._hook(name)) for name in self.names]

    def begin(self, x: torch.Tensor) -> None:
        """Run the analog pass on the batch ``x`` [B, ...]: every unit's and the output's ANN value."""
        self._ann = {}
        self._running = {}
        for path, out in output_leaves(self.snn.ann_forward(x)):
            name = output_name(path)
            if name not in self.errors:
                self.names.append(name)
                self.errors[name] = RelativeError(self.T)
            self._keep(name, out)

    def _keep(self, name: str, a: torch.Tensor) -> None:
        a = a.detach().float()
        self._ann[name] = a
        self.errors[name].reference(a)

    def _add(self, name: str, decoded: torch.Tensor, first_step: int) -> None:
        """Squared errors of the decoded values [S, B, ...] of steps first_step+1 … against the ANN value."""
        self.errors[name].add(decoded, self._ann[name], first_step)

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args, out: torch.Tensor) -> None:
            if module.capture:
                return
            if module.analog:
                self._keep(name, out)
                return
            if module.step_mode == "m":
                self._add(name, self.decode(out.reshape(self.T, -1, *out.shape[1:]).float()), 0)
                return
            # single-step mode: step t + 1 of the batch; keep the running Σ out/τ (differential) or Σ out (rate)
            t, acc = self._running.get(name, (0, 0.0))
            out = out.float()
            acc = acc + (out / (t + 1) if self.coding == "differential" else out)
            self._running[name] = (t + 1, acc)
            self._add(name, (acc if self.coding == "differential" else acc / (t + 1)).unsqueeze(0), t)

        return hook

    def output(self, decoded: torch.Tensor) -> None:
        """The network's decoded output [T, B, ...] of the batch (per output for a model with several)."""
        for path, out in output_leaves(decoded):
            self._add(output_name(path), out.float(), 0)

    def result(self) -> dict[str, dict[str, object]]:
        """Per unit (graph order, then ``"output"``): ``ann_rms`` (RMS of the ANN value) and ``relative_error``
        (list over t). A unit whose ANN value is all zero has ``relative_error`` None (nothing to compare with)."""
        return {name: self.errors[name].result() for name in self.names}

    def close(self) -> None:
        for h in self.handles:
            h.remove()
