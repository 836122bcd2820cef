"""Reference spiking neurons: one composed family (method.md §4).

A neuron is *charge × fire × reset*, parametrised by

- ``kind``: ``"if"`` (one level θ, membrane offset θ/2, fire at m ≥ θ) or ``"mt"`` (n levels λ_i = θ·2^-i, cut-offs
  0.75·λ_i, no offset);
- ``coding``: ``"rate"`` (the membrane integrates the raw input) or ``"differential"`` (the membrane is rebuilt from
  the running decoded input and output averages, reduced canonical form of §4.6);
- ``signed``: whether negative events exist (rate coding only; differential neurons are always signed);
- ``relu_constrained``: whether a negative event needs enough cumulative output, so that the decoded value never
  drops below 0.

The nine reference classes of §4.9 are all points of this parameter space; there are no subclasses.

Every emitted value is in activation units (±θ·2^-i or 0), never a 0/1 spike. State is kept in at least fp32
(fp16/bf16 inputs run in fp32, fp64 inputs in fp64) and the output is cast back to the input dtype.

The firing rules and the functional ``*_multistep_ref`` twins live in ``rules.py`` (re-exported here): the twins take
a time-major input [T, *S] and are the readable references the Triton kernels (``runtime/kernels/neurons.py``) are
tested against. The :class:`SpikingNeuron` module runs a fast path
(:class:`FastPlan`, ``_fast_*``) that computes the same values with the same arithmetic per element but without
``torch.where`` chains and per-step temporaries; it is bit-identical to the twins (tests/test_neurons.py), in
multi-step and single-step mode, and falls back to the references where its preconditions do not hold.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from snnconvert.convert.coding.fastpath import (
    FastBuffers,
    FastPlan,
    fast_diff_multistep,
    fast_diff_step,
    fast_rate_multistep,
    fast_rate_step,
)
from snnconvert.convert.coding.rules import (
    CODINGS,
    KINDS,
    Coding,
    Kind,
    check_broadcast,
    check_levels,
    diff_init,
    diff_multistep,
    diff_step,
    if_diff_multistep_ref,
    if_fire,
    if_rate_multistep_ref,
    mt_diff_multistep_ref,
    mt_fire,
    mt_rate_multistep_ref,
    prepare_bias,
    prepare_input,
    rate_init,
    rate_multistep,
    rate_step,
    state_dtype,
)
from snnconvert.convert.coding.stepping import STEP_MODES, StepModule
from snnconvert.convert.errors import CalibrationError, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "CODINGS",
    "STEP_MODES",
    "mt_fire",
    "if_fire",
    "check_levels",
    "if_rate_multistep_ref",
    "mt_rate_multistep_ref",
    "mt_diff_multistep_ref",
    "if_diff_multistep_ref",
    "SpikingNeuron",
    "make_neuron",
]


# ---------------------------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------------------------


class SpikingNeuron(StepModule):
    """A reference spiking neuron of the composed family (method.md §4.9).

    Step modes:

    - ``"m"`` (default): ``forward`` receives [T·B, *S] with time folded into the batch, time-major; ``timesteps``
      must be set by the caller. Each call starts from the initial state.
    - ``"s"``: ``forward`` receives one step [B, *S] and keeps per-element state across calls (step counter t from 1)
      until :meth:`reset`.

    Capture mode (``capture = True``): the neuron outputs zeros. A differential neuron stores its input as the bias
    b (the caller runs the capture with a batch of one; the batch dim is kept). Rate neurons store nothing.

    Events are not counted here: the caller counts the non-zeros of the output.

    Args:
        threshold: θ, per layer (scalar), per channel ([C, 1, 1] or [C]) or per neuron; stored as fp32, clamped ≥ 0.
        kind: ``"if"`` or ``"mt"``.
        coding: ``"rate"`` or ``"differential"``.
        n_levels: number of levels n (1 for IF).
        signed: negative events in rate coding. Differential neurons are always signed, so it is set True for them.
        relu_constrained: negative events only undo earlier output, so the decoded value stays ≥ 0.

    Raises:
        ConfigError: an invalid field (kind, coding, n_levels, threshold).
    """

    #: Run the fast path (bit-identical to the ``*_multistep_ref`` twins); False runs the readable reference code.
    fast_path: bool = True

    def __init__(
        self,
        threshold: Tensor | float,
        *,
        kind: Kind,
        coding: Coding,
        n_levels: int = 1,
        signed: bool = False,
        relu_constrained: bool = True,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        if coding not in CODINGS:
            raise ConfigError(f"coding must be one of {CODINGS}, got {coding!r}")
        check_levels(kind, n_levels)
        th = torch.as_tensor(threshold).detach().to(torch.float32)
        n_bad = int((~torch.isfinite(th)).sum())
        if n_bad:
            raise ConfigError(f"threshold has {n_bad} non-finite value(s); thresholds must be finite and >= 0")
        self.kind = kind
        self.coding = coding
        self.n_levels = n_levels
        self.signed = True if coding == "differential" else bool(signed)
        self.relu_constrained = bool(relu_constrained)
        self.register_buffer("threshold", th.clamp(min=0.0).clone())
        # captured from the step-0 pass per input shape: state, not a parameter of the SNN (its state_dict keeps the
        # same keys before and after a call)
        self.register_buffer("bias", None, persistent=False)
        self.site: str | None = None  # the graph site it replaces (set by the conversion), named in its errors
        self._t = 0
        self.register_buffer("_m", None, persistent=False)
        self.register_buffer("_c", None, persistent=False)
        self.register_buffer("_r_in", None, persistent=False)
        self.register_buffer("_r_out", None, persistent=False)
        self._step_plan: FastPlan | None = None
        self._step_buffers: FastBuffers | None = None

    # -- public API ------------------------------------------------------------------------------------------------

    def site_label(self) -> str | None:
        return getattr(self, "site", None)  # None: built by hand, or pickled before sites were recorded

    def capture_input(self, x: Tensor) -> Tensor:
        """Capture mode: a differential neuron stores its input as the bias b; every neuron outputs zeros. A
        threshold that does not fit this input (per-neuron thresholds at another input size) fails here, before
        later layers trip over the size."""
        check_broadcast("threshold", self.threshold.shape, x.shape)
        if self.coding == "differential":
            self.bias = x.detach().to(torch.float32).clone()
            logger.debug("captured bias of shape %s", tuple(self.bias.shape))
        return torch.zeros_like(x)

    def analog_forward(self, x: Tensor) -> Tensor:
        """The function the neuron approximates: ReLU (ReLU-constrained or unsigned), identity (signed, unconstrained).
        """
        return torch.relu(x) if self.relu_constrained or not self.signed else x

    def multistep(self, x_seq: Tensor) -> Tensor:
        """Run T steps on a time-major input [T, B, *S] from the initial state; returns the emitted [T, B, *S].

        The module's single-step state is neither used nor changed. Runs the fast path (bit-identical to the
        ``*_multistep_ref`` twins) unless ``fast_path`` is False or its preconditions fail.
        """
        if self.coding == "rate":
            dtype, _, th = prepare_input(x_seq, self.threshold)
            plan = self._fast_plan(th, x_seq)
            if plan is not None:
                return fast_rate_multistep(x_seq, th, plan, kind=self.kind, dtype=dtype, init=rate_init)
            return rate_multistep(
                x_seq,
                self.threshold,
                kind=self.kind,
                n_levels=self.n_levels,
                signed=self.signed,
                relu_constrained=self.relu_constrained,
            )
        bias = self._require_bias()
        dtype, _, th = prepare_input(x_seq, self.threshold)
        plan = self._fast_plan(th, x_seq)
        if plan is not None:
            return fast_diff_multistep(x_seq, th, prepare_bias(x_seq, bias, dtype), plan, dtype=dtype,
                                       init=diff_init)
        return diff_multistep(
            x_seq,
            self.threshold,
            bias,
            kind=self.kind,
            n_levels=self.n_levels,
            relu_constrained=self.relu_constrained,
        )

    def single_step(self, x_t: Tensor) -> Tensor:
        """Run one step on [B, *S] and return the emitted value; state is created on the first call after reset()."""
        dtype = state_dtype(x_t.dtype)
        th = self.threshold.to(dtype)
        if self._t == 0:
            check_broadcast("threshold", th.shape, x_t.shape)
            if self.coding == "rate":
                self._m, self._c = rate_init(
                    x_t.shape, th, kind=self.kind, signed=self.signed, relu_constrained=self.relu_constrained
                )
            else:
                b = self._require_bias().to(dtype)
                check_broadcast("bias", b.shape, x_t.shape)
                self._r_in, self._r_out = diff_init(x_t.shape, b)
            self._step_plan = self._fast_plan(th, x_t)
            self._step_buffers = None
        self._t += 1
        if self._step_plan is not None and not (torch.is_grad_enabled() and x_t.requires_grad):
            return self._fast_single_step(x_t, th)
        if self.coding == "rate":
            s, self._m, self._c = rate_step(
                x_t.to(dtype),
                self._m,
                self._c,
                th,
                kind=self.kind,
                n_levels=self.n_levels,
                signed=self.signed,
                relu_constrained=self.relu_constrained,
            )
        else:
            s, self._r_in, self._r_out = diff_step(
                x_t.to(dtype),
                self._t,
                self._r_in,
                self._r_out,
                th,
                self._require_bias().to(dtype),
                kind=self.kind,
                n_levels=self.n_levels,
                relu_constrained=self.relu_constrained,
            )
        return s.to(x_t.dtype)

    def reset(self) -> None:
        """Clear the single-step state (threshold and captured bias are kept)."""
        self._t = 0
        self._m = None
        self._c = None
        self._r_in = None
        self._r_out = None
        self._step_plan = None
        self._step_buffers = None

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, coding={self.coding}, n_levels={self.n_levels}, signed={self.signed}, "
            f"relu_constrained={self.relu_constrained}, threshold_shape={tuple(self.threshold.shape)}"
        )

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _fast_plan(self, th: Tensor, x: Tensor) -> FastPlan | None:
        """The fast path's constants for θ (already in the state dtype), or None to run the reference: when
        ``fast_path`` is off, a precondition fails, or autograd records the call (the in-place updates would break
        it)."""
        if not self.fast_path or (torch.is_grad_enabled() and x.requires_grad):
            return None
        plan = FastPlan(
            th, kind=self.kind, n_levels=self.n_levels, signed=self.signed, relu_constrained=self.relu_constrained
        )
        return plan if plan.exact else None

    def _fast_single_step(self, x_t: Tensor, th: Tensor) -> Tensor:
        """One fast step on the module's state (same state tensors as the reference step, updated in place)."""
        dtype = th.dtype
        buf = self._step_buffers
        if buf is None or buf.m.shape != x_t.shape or buf.m.dtype != dtype or buf.m.device != x_t.device:
            self._step_buffers = FastBuffers(x_t.shape, dtype, x_t.device, self._step_plan)
        xs = x_t.to(dtype)
        out = torch.empty(x_t.shape, dtype=dtype, device=x_t.device)
        if self.coding == "rate":
            fast_rate_step(xs, self._m, self._c, self._step_plan, out, self._step_buffers)
        else:
            b = self._require_bias().to(dtype)
            fast_diff_step(xs, self._t, self._r_in, self._r_out, b, self._step_plan, out, self._step_buffers)
        return out.to(x_t.dtype)

    def _require_bias(self) -> Tensor:
        if self.bias is None:
            raise CalibrationError(
                "differential neuron has no captured bias: run the bias capture (capture=True, batch of one) first"
            )
        return self.bias


def make_neuron(
    threshold: Tensor | float,
    *,
    coding: Coding,
    kind: Kind,
    n_levels: int,
    signed: bool = False,
    relu_constrained: bool = True,
) -> SpikingNeuron:
    """Build a :class:`SpikingNeuron` from a threshold and the coding/neuron parameters.

    Args:
        threshold: θ (scalar, per channel or per neuron).
        coding: ``"rate"`` or ``"differential"``.
        kind: ``"if"`` or ``"mt"``.
        n_levels: number of levels (1 for IF).
        signed: negative events (rate coding; differential neurons are always signed).
        relu_constrained: keep the decoded value ≥ 0.

    Returns:
        The neuron, in step mode ``"m"`` with ``timesteps`` unset.

    Raises:
        ConfigError: an invalid parameter.
    """
    return SpikingNeuron(
        threshold, kind=kind, coding=coding, n_levels=n_levels, signed=signed, relu_constrained=relu_constrained
    )
