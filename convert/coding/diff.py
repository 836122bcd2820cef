"""Differential coding (method.md §2-§3): send the input once, emit changes of running averages.

- ``encode``: ``[x, 0, 0, ...]``, so the decoded input is exactly ``x`` at every step.
- Biases: every stateful unit subtracts its captured step-0 input b and seeds its running input with b, so each
  affine offset enters each running average exactly once. b is input-independent (weights and per-sample shape
  only): it is precomputed once per (per-sample shape, dtype, device) with a batch of one zeros while every
  stateful unit outputs zeros (capture mode), never from the ANN. The output offset y0 is captured the same way.
- ``decode``: ``r_t = r_{t-1} + (y_t - y0)/t`` with ``r_0 = y0``.
"""
from __future__ import annotations

import torch

from snnconvert.convert.coding.neurons import make_neuron
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.outputs import map_outputs


class DiffCoding:
    """Differential coding with multi-threshold (or IF) differential neurons, ReLU-constrained."""

    name = "differential"
    input_pattern = "once"  # how encode() looks over time (static_prefix.py)

    def encode(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """``[B, ...] -> [T, B, ...]``: ``x`` at step 1, zeros afterwards."""
        seq = x.new_zeros((timesteps, *x.shape))
        seq[0] = x
        return seq

    def make_neuron(self, threshold: torch.Tensor, cfg: ConversionConfig, *, identity: bool = False
                    ) -> torch.nn.Module:
        """The differential neuron of a ReLU site: MT-diff (ReLU) with ``cfg.levels`` levels, or IF-diff; of an
        identity site (``identity``): the same without the ReLU constraint (MT-diff identity, method.md §4.7) and
        with ``cfg.identity_n`` levels."""
        return make_neuron(threshold, coding="differential", kind=cfg.neuron,
                           n_levels=cfg.identity_n if identity else cfg.levels, relu_constrained=not identity)

    @staticmethod
    def capture_key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape[1:]), x.dtype, x.device)

    def prepare(self, snn, x: torch.Tensor) -> None:
        """Capture every unit's bias b and the output offset y0 for ``x``'s per-sample shape (cached; captured again
        when a layer's weights change: :meth:`SpikingNetwork.weights_key`).

        The capture runs on one zero sample, so every b has a batch dim of 1 and broadcasts over any batch. A graph
        that moves data into the batch dim (Swin's window partition: ``[B·windows, tokens, C]``) gives some unit a
        b whose first dim is not 1; such a network (``snn.batch_folded``) is captured at the batch size it runs at
        (one zero batch per batch size), so that b has the per-step shape of its unit.
        """
        batch = x.shape[0] if snn.batch_folded else 1
        weights = snn.weights_key()
        key = (*self.capture_key(x), batch, weights)
        if snn.capture_cache_key == key:
            return
        snn.capture_offsets(torch.zeros((batch, *x.shape[1:]), dtype=x.dtype, device=x.device))
        if batch == 1 and x.shape[0] > 1 and _folds_batch(snn):
            snn.batch_folded = True
            batch = x.shape[0]
            key = (*self.capture_key(x), batch, weights)
            snn.capture_offsets(torch.zeros((batch, *x.shape[1:]), dtype=x.dtype, device=x.device))
        snn.capture_cache_key = key

    def decode(self, y_seq: torch.Tensor, snn) -> torch.Tensor:
        """Raw outputs ``[T, B, ...]`` -> decoded ``r_t`` after every step (method.md §2.6); each output of a
        model with several, with its own offset."""
        return map_outputs(lambda y, y0: y0.to(y.dtype) + self.decode_unit(y - y0.to(y.dtype)), y_seq,
                           snn.output_offset)

    @staticmethod
    def decode_unit(y_seq: torch.Tensor) -> torch.Tensor:
        """A stateful unit's raw outputs ``[T, B, ...]`` (silent in the capture, so no offset) -> its decoded value
        after every step, ``Σ_τ≤t y_τ/τ``."""
        steps = torch.arange(1, y_seq.shape[0] + 1, dtype=y_seq.dtype, device=y_seq.device)
        return (y_seq / steps.view(-1, *([1] * (y_seq.dim() - 1)))).cumsum(0)


def _folds_batch(snn) -> bool:
    """Whether a unit captured a bias whose first (batch) dim is not 1 in a capture on one sample (the neurons of a
    fused pair are among ``stateful()`` themselves)."""
    for _, unit in snn.stateful():
        captured = [getattr(unit, "bias", None), *(getattr(unit, "biases", None) or ())]
        if any(isinstance(b, torch.Tensor) and b.dim() > 0 and b.shape[0] != 1 for b in captured):
            return True
    return False
