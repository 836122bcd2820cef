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
    """Exact-on-averages wrapper of a function ``f`` of one or more inputs (a module such as ``nn.MaxPool2d`` or
    ``nn.SiLU``, or a callable such as ``operator.mul`` for an element-wise product, method.md §5.2).

    Every input keeps its own running decoded value (and, in differential coding, its own captured bias); the
    output is emitted so that the decoded output after t steps is exactly ``f(decoded inputs)``. With two inputs and
    ``f = operator.mul`` this is the ⊙ product unit of method.md §5.2 (P_t = R_A,t ⊙ R_B,t, out_t = t·(P_t − P_{t−1}),
    biases captured on both operands).

    Args:
        f: the function applied to running averages.
        coding: ``"rate"`` or ``"differential"``.
        n_inputs: how many tensor inputs ``f`` takes (the unit is called with as many).
    """

    #: Multi-step mode runs the in-place loop (bit-identical to the ``_step`` reference); False runs the reference.
    fast_path: bool = True

    def __init__(self, f: Callable[..., torch.Tensor], *, coding: str, n_inputs: int = 1) -> None:
        super().__init__()
        if coding not in ("rate", "differential"):
            raise ConfigError(f"coding must be 'rate' or 'differential', got {coding!r}")
        if not isinstance(n_inputs, int) or n_inputs < 1:
            raise ConfigError(f"n_inputs must be a positive int, got {n_inputs!r}")
        self.f = f
        self.coding = coding
        self.n_inputs = n_inputs
        self.biases: tuple[torch.Tensor, ...] | None = None
        self._state: tuple[int, list[torch.Tensor], torch.Tensor | float] | None = None

    @property
    def biases(self) -> tuple[torch.Tensor, ...] | None:
        """The captured biases b, one per input (differential coding; None before the capture)."""
        return self._captured

    @biases.setter
    def biases(self, value: tuple[torch.Tensor, ...] | None) -> None:
        self._captured = value
        # an infinite b (an additive -inf attention mask in front of a softmax): x_t − b is then inf − inf where the
        # input equals it, which means "unchanged" (0), not NaN; checked once here, not at every step
        self._infinite_bias = value is not None and not all(bool(torch.isfinite(b).all()) for b in value)

    def _difference(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x_t − b, with 0 where both are the same infinity."""
        d = x - b
        return d.masked_fill_(x == b, 0.0) if self._infinite_bias else d

    @property
    def bias(self) -> torch.Tensor | None:
        """The captured bias b of a one-input unit (``biases[0]``)."""
        return None if self.biases is None else self.biases[0]

    @bias.setter
    def bias(self, value: torch.Tensor | None) -> None:
        self.biases = None if value is None else (value,)

    def extra_repr(self) -> str:
        return f"coding={self.coding}" + (f", n_inputs={self.n_inputs}" if self.n_inputs > 1 else "")

    def _check_arity(self, xs: tuple) -> None:
        if len(xs) != self.n_inputs:
            raise ConfigError(f"graded unit takes {self.n_inputs} input(s), got {len(xs)}")

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        self._check_arity(xs)
        return super().forward(*xs)

    def capture_input(self, *xs: torch.Tensor) -> torch.Tensor:
        """Capture mode: store each input as its bias b and output zeros."""
        self.biases = tuple(x.detach().float().clone() for x in xs)
        return torch.zeros_like(self.analog_forward(*xs))

    def analog_forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """The function itself, on analog inputs (computed at the state precision, like the steps)."""
        return self.f(*(x.to(_state_dtype(x.dtype)) for x in xs)).to(xs[0].dtype)

    def _biases(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.coding == "rate":
            return (torch.zeros((), dtype=torch.float32, device=like.device),) * self.n_inputs
        if self.biases is None:
            raise ConfigError("differential graded unit has no captured bias; run the capture pass first")
        return self.biases

    def _step(self, t: int, xs: list[torch.Tensor], accs: list[torch.Tensor], f_prev):
        """One step. ``accs``: each input's running sum (rate) or running mean R_in (diff); ``f_prev``: (t−1)·f
        (rate) or F_{t−1} (diff). Returns (out, accs, f_prev)."""
        if self.coding == "rate":
            accs = [acc + x_t for acc, x_t in zip(accs, xs)]
            f_scaled = t * self.f(*(acc / t for acc in accs))
            return f_scaled - f_prev, accs, f_scaled
        accs = [acc + self._difference(x_t, b) / t for acc, x_t, b in zip(accs, xs, self._biases(xs[0]))]
        f_now = self.f(*accs)
        return t * (f_now - f_prev), accs, f_now

    def _init(self, xs: list[torch.Tensor]):
        if self.coding == "rate":
            return [torch.zeros_like(x, dtype=_state_dtype(x.dtype)) for x in xs], 0.0
        return [b.expand_as(x).to(_state_dtype(x.dtype)) for x, b in zip(xs, self._biases(xs[0]))], 0.0

    def multistep(self, *x_seqs: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...]`` (one per input) ``-> [T, B, ...]`` from the initial state."""
        self._check_arity(x_seqs)
        if self.fast_path and not self._needs_autograd(*x_seqs):
            return self._multistep_fast(*x_seqs)
        accs, f_prev = self._init([x[0] for x in x_seqs])
        outs = []
        for t in range(1, x_seqs[0].shape[0] + 1):
            out, accs, f_prev = self._step(t, [x[t - 1].to(a.dtype) for x, a in zip(x_seqs, accs)], accs, f_prev)
            outs.append(out)
        return torch.stack(outs).to(x_seqs[0].dtype)

    def _multistep_fast(self, *x_seqs: torch.Tensor) -> torch.Tensor:
        """:meth:`_step` over T steps with the same operations in the same order, in place."""
        xs_all = [x if x.dtype == _state_dtype(x.dtype) else x.to(_state_dtype(x.dtype)) for x in x_seqs]
        biases = self._biases(xs_all[0][0])
        # the layout of f's input: channels-last for a CPU max-pool (see _channels_last_is_faster), else contiguous
        layout = torch.channels_last if _channels_last_is_faster(self.f, xs_all[0][0]) else torch.contiguous_format
        if self.coding == "rate":
            accs = [torch.zeros_like(xs[0]) for xs in xs_all]
        else:  # writable copies of _init's R_in (b broadcast)
            accs = [b.expand_as(xs[0]).to(xs.dtype).clone(memory_format=layout) for xs, b in zip(xs_all, biases)]
        scratch = [torch.empty_like(acc, memory_format=layout) for acc in accs]
        out: torch.Tensor | None = None
        f_prev: torch.Tensor | float = 0.0
        T = xs_all[0].shape[0]
        for t in range(1, T + 1):
            if self.coding == "rate":
                for acc, xs, sc in zip(accs, xs_all, scratch):
                    acc.add_(xs[t - 1])  # S_t = S_{t-1} + x_t
                    torch.div(acc, t, out=sc)
                f_scaled = self.f(*scratch) * t  # t·f(S_t/t) (f's output is used before scratch changes)
                out = self._out_buffer(out, f_scaled, T)
                torch.sub(f_scaled, f_prev, out=out[t - 1])
                f_prev = f_scaled
            else:
                for acc, xs, b, sc in zip(accs, xs_all, biases, scratch):
                    torch.sub(xs[t - 1], b, out=sc)
                    if self._infinite_bias:  # as _difference: 0 where x_t and b are the same infinity
                        sc.masked_fill_(xs[t - 1] == b, 0.0)
                    sc.div_(t)
                    acc.add_(sc)  # R_in += (x_t − b)/t
                f_now = self.f(*accs)
                if any(_shares_memory(f_now, acc) for acc in accs):  # f returned (a view of) an R_in, which
                    f_now = f_now.clone()  # changes in place next step
                out = self._out_buffer(out, f_now, T)
                torch.sub(f_now, f_prev, out=out[t - 1])
                out[t - 1].mul_(t)  # t·(f(R_in) − F_prev)
                f_prev = f_now
        return out.to(x_seqs[0].dtype)

    def _needs_autograd(self, *xs: torch.Tensor) -> bool:
        """True when autograd records this call (the in-place loop would break it): the reference runs then."""
        return torch.is_grad_enabled() and (any(x.requires_grad for x in xs)
                                            or any(p.requires_grad for p in self.parameters()))

    @staticmethod
    def _out_buffer(out: torch.Tensor | None, like: torch.Tensor, T: int) -> torch.Tensor:
        if out is None:
            out = torch.empty((T, *like.shape), dtype=like.dtype, device=like.device)
        return out

    def single_step(self, *xs: torch.Tensor) -> torch.Tensor:
        """One step with state kept between calls."""
        self._check_arity(xs)
        if self._state is None:
            self._state = (0, *self._init(list(xs)))
        t, accs, f_prev = self._state
        out, accs, f_prev = self._step(t + 1, [x.to(a.dtype) for x, a in zip(xs, accs)], accs, f_prev)
        self._state = (t + 1, accs, f_prev)
        return out.to(xs[0].dtype)

    def reset(self) -> None:
        """Clear the streaming state (keeps the captured biases)."""
        self._state = None
