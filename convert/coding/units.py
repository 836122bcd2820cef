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

:meth:`GradedUnit._step` is the readable reference of one step. Multi-step mode runs the same operations in the same
order with the running state updated in place and each step written straight into the output (no per-step
temporaries of the input size, no final stack), so the results are bit-identical; ``fast_path = False``, or a call
that autograd records, runs the reference loop.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.errors import ConfigError


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 state for fp32 and lower precisions; fp64 inputs keep fp64 (used by exactness tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _channels_last_is_faster(f, x: torch.Tensor) -> bool:
    """Whether to feed ``f`` channels-last tensors: an ``nn.MaxPool2d`` on a 4-D CPU tensor. PyTorch's NCHW CPU
    max-pool is a scalar loop, the channels-last one is vectorised over channels (about 10x faster here); both scan
    each window in the same order with the same test (``val > max || isnan(val)``), so the values, signed zeros and
    NaNs included, are identical (checked bit for bit in tests/test_neurons.py). Only the memory layout changes."""
    return isinstance(f, nn.MaxPool2d) and not f.return_indices and x.dim() == 4 and x.device.type == "cpu"


class GradedUnit(StepModule):
    """Exact-on-averages wrapper of a function ``f`` (a module such as ``nn.MaxPool2d``, or a callable).

    Args:
        f: the function applied to running averages.
        coding: ``"rate"`` or ``"differential"``.
    """

    #: Multi-step mode runs the in-place loop (bit-identical to the ``_step`` reference); False runs the reference.
    fast_path: bool = True

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

    def analog_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The function itself, on an analog input."""
        return self.f(x)

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
        if self.fast_path and not self._needs_autograd(x_seq):
            return self._multistep_fast(x_seq)
        acc, f_prev = self._init(x_seq[0])
        outs = []
        for t in range(1, x_seq.shape[0] + 1):
            out, acc, f_prev = self._step(t, x_seq[t - 1].to(acc.dtype), acc, f_prev)
            outs.append(out)
        return torch.stack(outs).to(x_seq.dtype)

    def _multistep_fast(self, x_seq: torch.Tensor) -> torch.Tensor:
        """:meth:`_step` over T steps with the same operations in the same order, in place."""
        dtype = _state_dtype(x_seq.dtype)
        xs = x_seq if x_seq.dtype == dtype else x_seq.to(dtype)
        bias = self._bias(xs[0])
        # the layout of f's input: channels-last for a CPU max-pool (see _channels_last_is_faster), else contiguous
        layout = torch.channels_last if _channels_last_is_faster(self.f, xs[0]) else torch.contiguous_format
        if self.coding == "rate":
            acc = torch.zeros_like(xs[0])
        else:  # a writable copy of _init's R_in (b broadcast)
            acc = bias.expand_as(xs[0]).to(dtype).clone(memory_format=layout)
        scratch = torch.empty_like(acc, memory_format=layout)
        out: torch.Tensor | None = None
        f_prev: torch.Tensor | float = 0.0
        for t in range(1, xs.shape[0] + 1):
            if self.coding == "rate":
                acc.add_(xs[t - 1])  # S_t = S_{t-1} + x_t
                torch.div(acc, t, out=scratch)
                f_scaled = self.f(scratch) * t  # t·f(S_t/t) (f's output is used before scratch changes)
                out = self._out_buffer(out, f_scaled, xs.shape[0])
                torch.sub(f_scaled, f_prev, out=out[t - 1])
                f_prev = f_scaled
            else:
                torch.sub(xs[t - 1], bias, out=scratch)
                scratch.div_(t)
                acc.add_(scratch)  # R_in += (x_t − b)/t
                f_now = self.f(acc)
                if _shares_memory(f_now, acc):  # f returned (a view of) acc, which changes in place next step
                    f_now = f_now.clone()
                out = self._out_buffer(out, f_now, xs.shape[0])
                torch.sub(f_now, f_prev, out=out[t - 1])
                out[t - 1].mul_(t)  # t·(f(R_in) − F_prev)
                f_prev = f_now
        return out.to(x_seq.dtype)

    def _needs_autograd(self, x: torch.Tensor) -> bool:
        """True when autograd records this call (the in-place loop would break it): the reference runs then."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    @staticmethod
    def _out_buffer(out: torch.Tensor | None, like: torch.Tensor, T: int) -> torch.Tensor:
        if out is None:
            out = torch.empty((T, *like.shape), dtype=like.dtype, device=like.device)
        return out

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
