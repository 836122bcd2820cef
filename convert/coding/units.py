"""Non-spiking stateful units (method.md §5): a graded unit that makes any function ``f`` exact on averages.

A :class:`GradedUnit` wraps a non-linear ``f`` that cannot be applied step by step to a spike train (max-pool fed
by spikes, later GELU, LayerNorm, Softmax). Its decoded output after t steps is exactly ``f(decoded input)``:

- rate coding ("expectation compensation"): with ``S_t`` the running input sum, emit
  ``out_t = t·f(S_t/t) − (t−1)·f(S_{t−1}/(t−1))``, so that ``Σ out = t·f(mean input)``;
- differential coding (§5.1): ``u = x_t − b``, ``R_in += u/t`` (seeded with the captured b),
  ``out_t = t·(f(R_in) − F_prev)``, so that ``Σ out_τ/τ = f(R_in,t)``.

The output is a dense float, not a spike; state is kept in fp32. Same step modes as the neurons: ``"m"``
(``[T*B, ...]`` input, time folded into the batch), ``"s"`` (one step per call, ``reset()`` between samples) and
capture mode (outputs zeros, stores the input as b).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.errors import ConfigError


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 state for fp32 and lower precisions; fp64 inputs keep fp64 (used by exactness tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class GradedUnit(StepModule):
    """Exact-on-averages wrapper of a function ``f`` (a module such as ``nn.MaxPool2d``, or a callable).

    Args:
        f: the function applied to running averages.
        coding: ``"rate"`` or ``"differential"``.
    """

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], *, coding: str) -> None:
        super().__init__()
        if coding not in ("rate", "differential"):
            raise ConfigError(f"coding must be 'rate' or 'differential', got {coding!r}")
        self.f = f
        self.coding = coding
        self.bias: torch.Tensor | None = None
        self._state: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"coding={self.coding}"

    def capture_input(self, x: torch.Tensor) -> torch.Tensor:
        """Capture mode: store the input as the bias b and output zeros."""
        self.bias = x.detach().float().clone()
        return torch.zeros_like(self.f(x))

    def _bias(self, like: torch.Tensor) -> torch.Tensor:
        if self.coding == "rate":
            return torch.zeros((), dtype=torch.float32, device=like.device)
        if self.bias is None:
            raise ConfigError("differential graded unit has no captured bias; run the capture pass first")
        return self.bias

    def _step(self, t: int, x_t: torch.Tensor, acc: torch.Tensor, f_prev: torch.Tensor):
        """One step. ``acc``: running input sum (rate) or running mean R_in (diff); ``f_prev``: (t−1)·f (rate) or
        F_{t−1} (diff). Returns (out, acc, f_prev)."""
        if self.coding == "rate":
            acc = acc + x_t
            f_scaled = t * self.f(acc / t)
            return f_scaled - f_prev, acc, f_scaled
        acc = acc + (x_t - self._bias(x_t)) / t
        f_now = self.f(acc)
        return t * (f_now - f_prev), acc, f_now

    def _init(self, x_t: torch.Tensor):
        dtype = _state_dtype(x_t.dtype)
        if self.coding == "rate":
            return torch.zeros_like(x_t, dtype=dtype), 0.0
        return self._bias(x_t).expand_as(x_t).to(dtype), 0.0

    def multistep(self, x_seq: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...] -> [T, B, ...]`` from the initial state."""
        acc, f_prev = self._init(x_seq[0])
        outs = []
        for t in range(1, x_seq.shape[0] + 1):
            out, acc, f_prev = self._step(t, x_seq[t - 1].to(acc.dtype), acc, f_prev)
            outs.append(out)
        return torch.stack(outs).to(x_seq.dtype)

    def single_step(self, x_t: torch.Tensor) -> torch.Tensor:
        """One step with state kept between calls."""
        if self._state is None:
            self._state = (0, *self._init(x_t))
        t, acc, f_prev = self._state
        out, acc, f_prev = self._step(t + 1, x_t.to(acc.dtype), acc, f_prev)
        self._state = (t + 1, acc, f_prev)
        return out.to(x_t.dtype)

    def reset(self) -> None:
        """Clear the streaming state (keeps the captured bias)."""
        self._state = None
