"""Shared time-stepping contract of every stateful unit (spiking neurons and graded units).

A :class:`StepModule` runs in one of three ways, chosen by its attributes (set by ``SpikingNetwork``):

- capture (``capture = True``): the zero-input bias pass of differential coding; the unit stores its input as the
  bias b and outputs zeros;
- ``step_mode = "m"``: the input is ``[T*B, ...]`` (time folded into the batch, time-major) and ``timesteps`` is T;
  the unit runs its T-step loop from the initial state (:meth:`multistep` on ``[T, B, ...]``);
- ``step_mode = "s"``: one step ``[B, ...]`` per call with state kept until :meth:`reset`;
- analog (``analog = True``, set by ``SpikingNetwork.ann_forward``): no time steps, no state; the unit applies the
  function it approximates (:meth:`analog_forward`: ReLU for a ReLU-site neuron, f for a graded unit), so that the
  converted graph computes the ANN it came from.
"""
from __future__ import annotations

import torch
from torch import nn

from snnconvert.convert.errors import ConfigError

STEP_MODES = ("m", "s")


class StepModule(nn.Module):
    """Base class: the step-mode dispatch; subclasses implement ``capture_input``, ``multistep``, ``single_step``
    and ``reset``."""

    def __init__(self) -> None:
        super().__init__()
        self.step_mode: str = "m"
        self.timesteps: int | None = None
        self.capture: bool = False
        self.analog: bool = False

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Dispatch on the mode; ``xs`` is one tensor for a neuron, one per operand for a multi-input unit. A
        ConfigError raised on the way (an input that does not fit the thresholds) starts with the unit's site."""
        try:
            return self._dispatch(*xs)
        except ConfigError as err:
            label = self.site_label()
            if label is None:
                raise
            raise ConfigError(f"site {label}: {err}") from err

    def site_label(self) -> str | None:
        """The graph site(s) this unit stands for, named in its errors (None: unnamed)."""
        return None

    def _dispatch(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.analog:
            return self.analog_forward(*xs)
        if self.capture:
            return self.capture_input(*xs)
        if self.step_mode == "m":
            T = self.timesteps
            if not isinstance(T, int) or T < 1:
                raise ConfigError(f"timesteps must be a positive int in step_mode 'm', got {T!r}; set it first")
            for x in xs:
                if x.shape[0] % T:
                    raise ConfigError(
                        f"step_mode 'm' expects [T*B, ...] input with T={T}, got leading dim {x.shape[0]}")
            y = self.multistep(*(x.reshape(T, x.shape[0] // T, *x.shape[1:]) for x in xs))
            return y.reshape(T * y.shape[1], *y.shape[2:])
        if self.step_mode == "s":
            return self.single_step(*xs)
        raise ConfigError(f"step_mode must be one of {STEP_MODES}, got {self.step_mode!r}")

    def capture_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def analog_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def multistep(self, x_seq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def single_step(self, x_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError
