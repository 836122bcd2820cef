"""Rate coding: the analog input is repeated at every step; outputs are decoded as the running mean."""
from __future__ import annotations

import torch

from snnconvert.convert.coding.neurons import make_neuron
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.outputs import map_outputs


class RateCoding:
    """Direct (analog) input at every step, IF or MT neurons with soft reset, mean decoding (method.md §2.1, §4)."""

    name = "rate"
    input_pattern = "repeat"  # how encode() looks over time (static_prefix.py)

    def encode(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """``[B, ...] -> [T, B, ...]``: the same analog input at every step."""
        return x.unsqueeze(0).expand(timesteps, *x.shape)

    def make_neuron(self, threshold: torch.Tensor, cfg: ConversionConfig, *, identity: bool = False
                    ) -> torch.nn.Module:
        """A ReLU-site neuron: rate IF (soft reset, v0 = θ/2) or rate MT with ``cfg.levels`` levels; an identity
        site's (``identity``): the signed, unconstrained variant (IF± / MT± identity, method.md §4.2, §4.5) with
        ``cfg.identity_n`` levels."""
        return make_neuron(threshold, coding="rate", kind=cfg.neuron, n_levels=cfg.identity_n if identity else
                           cfg.levels, signed=identity, relu_constrained=not identity)

    def prepare(self, snn, x: torch.Tensor) -> None:
        """Nothing to precompute: biases are meant to enter at every step in rate coding."""

    def decode(self, y_seq: torch.Tensor, snn=None) -> torch.Tensor:
        """``[T, B, ...]`` raw outputs -> decoded output after every step t (running mean of the raw outputs); each
        output of a model with several."""
        return map_outputs(self.decode_unit, y_seq)

    @staticmethod
    def decode_unit(y_seq: torch.Tensor) -> torch.Tensor:
        """A stateful unit's raw outputs ``[T, B, ...]`` -> its decoded value after every step (running mean)."""
        steps = torch.arange(1, y_seq.shape[0] + 1, dtype=y_seq.dtype, device=y_seq.device)
        return y_seq.cumsum(0) / steps.view(-1, *([1] * (y_seq.dim() - 1)))
