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

The functional ``*_multistep_ref`` twins take a time-major input [T, *S] and are the readable references the Triton
kernels (``runtime/kernels/neurons.py``) are tested against. The :class:`SpikingNeuron` module runs a fast path
(:class:`FastPlan`, ``_fast_*``) that computes the same values with the same arithmetic per element but without
``torch.where`` chains and per-step temporaries; it is bit-identical to the twins (tests/test_neurons.py), in
multi-step and single-step mode, and falls back to the references where its preconditions do not hold.
"""
from __future__ import annotations

import logging
from typing import Literal

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

KINDS = ("if", "mt")
CODINGS = ("rate", "differential")

Kind = Literal["if", "mt"]
Coding = Literal["rate", "differential"]


# ---------------------------------------------------------------------------------------------------------------------
# Firing rules
# ---------------------------------------------------------------------------------------------------------------------


def mt_fire(
    m: Tensor,
    C: Tensor | None,
    threshold: Tensor,
    n_levels: int,
    signed: bool,
    relu_constrained: bool,
) -> Tensor:
    """Multi-threshold firing rule (method.md §4.4): at most one event of value ±λ_k.

    Levels are λ_i = θ·2^-i and cut-offs κ_i = 0.75·λ_i, i = 0…n-1. A positive event takes the smallest i with
    m ≥ κ_i; a negative event (``signed`` only) the smallest i with m ≤ -κ_i and, if ``relu_constrained``, C ≥ λ_i.
    The cut-offs are tested with comparisons, largest level first, never with log2, so that boundary cases are exact.
    A unit with θ = 0 is silent.

    Args:
        m: membrane potential at the firing test.
        C: cumulative rate-equivalent output (t·R_out of the previous step); needed only when ``signed`` and
            ``relu_constrained``, otherwise ignored (may be None).
        threshold: θ ≥ 0, broadcastable to ``m`` (cast to the dtype of ``m``).
        n_levels: number of levels n ≥ 1.
        signed: allow negative events.
        relu_constrained: negative level λ_i needs C ≥ λ_i.

    Returns:
        The emitted value, same shape and dtype as ``m`` (0 where silent).
    """
    if n_levels < 1:
        raise ConfigError(f"n_levels must be an integer >= 1, got {n_levels}")
    need_c = signed and relu_constrained
    if need_c and C is None:
        raise ConfigError("mt_fire: C is required when signed=True and relu_constrained=True")
    threshold = torch.as_tensor(threshold, dtype=m.dtype, device=m.device)
    # Walk the levels from the smallest to the largest and overwrite: the last write is the smallest i whose test
    # holds, i.e. the largest level (two ops per level instead of a first-true mask). Positive and negative tests
    # exclude each other for θ > 0; for θ = 0 every level is 0, so the unit stays silent.
    out = torch.zeros_like(m)
    for i in reversed(range(n_levels)):
        level = threshold * (2.0**-i)  # exact power-of-two scaling
        cut = level * 0.75
        out = torch.where(m >= cut, level, out)
        if signed:
            neg = m <= -cut
            if need_c:
                neg = neg & (C >= level)
            out = torch.where(neg, -level, out)
    return out


def if_fire(
    m: Tensor,
    C: Tensor | None,
    threshold: Tensor,
    signed: bool,
    relu_constrained: bool,
) -> Tensor:
    """Single-threshold IF firing rule (method.md §4.1–§4.3), for a membrane that carries the θ/2 offset.

    s = θ·[m ≥ θ] − θ·[m ≤ 0]·[C ≥ θ]; the negative term exists only when ``signed`` and the [C ≥ θ] factor only when
    ``relu_constrained``. A unit with θ = 0 is silent.

    Args:
        m: membrane potential at the firing test (including the θ/2 offset).
        C: cumulative output; needed only when ``signed`` and ``relu_constrained`` (may be None otherwise).
        threshold: θ ≥ 0, broadcastable to ``m``.
        signed: allow negative spikes.
        relu_constrained: a negative spike needs C ≥ θ.

    Returns:
        The emitted value (θ, -θ or 0), same shape and dtype as ``m``.
    """
    need_c = signed and relu_constrained
    if need_c and C is None:
        raise ConfigError("if_fire: C is required when signed=True and relu_constrained=True")
    threshold = torch.as_tensor(threshold, dtype=m.dtype, device=m.device)
    # θ = 0 gives the value 0 (silent) on either branch
    out = torch.where(m >= threshold, threshold, 0.0).to(m.dtype)
    if signed:
        neg = m <= 0
        if need_c:
            neg = neg & (C >= threshold)
        out = torch.where(neg, -threshold, out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Shared per-step helpers (used by the functional twins and by the module; keep the arithmetic order identical)
# ---------------------------------------------------------------------------------------------------------------------


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """State precision: fp32 for fp32/fp16/bf16 inputs, fp64 for fp64 inputs (method.md §11.12)."""
    if not dtype.is_floating_point:
        raise ConfigError(f"neuron input must be a floating-point tensor, got {dtype}")
    return torch.promote_types(dtype, torch.float32)


def check_broadcast(name: str, shape: torch.Size, step_shape: torch.Size) -> None:
    """A per-element parameter of ``shape`` (a threshold, a captured bias) must broadcast to ``step_shape`` (one
    step of the batch) without growing it; ConfigError otherwise. Per-neuron values (more than one dim above 1) are
    tied to the per-sample shape they were calibrated at, and the message says so."""
    try:
        ok = torch.broadcast_shapes(shape, step_shape) == step_shape
    except RuntimeError:
        ok = False
    if ok:
        return
    if sum(n > 1 for n in shape) > 1:
        raise ConfigError(
            f"{name}: per-neuron values of shape {tuple(shape)} do not fit the per-step shape {tuple(step_shape)}: "
            "they hold for the input size they were calibrated at; convert again with inputs of this size, or use "
            "granularity channel or layer")
    raise ConfigError(f"{name} of shape {tuple(shape)} does not broadcast to the per-step shape {tuple(step_shape)}; "
                      "use a scalar, per-channel ([C, 1, 1] or [C]) or per-neuron threshold")


def check_levels(kind: str, n_levels: int) -> None:
    """``n_levels`` must be an int >= 1, and 1 for IF neurons (ConfigError otherwise)."""
    if not isinstance(n_levels, int) or isinstance(n_levels, bool) or n_levels < 1:
        raise ConfigError(f"n_levels must be an integer >= 1, got {n_levels!r}")
    if kind == "if" and n_levels != 1:
        raise ConfigError(f"n_levels must be 1 for kind='if', got {n_levels}; use kind='mt' for several levels")


def _needs_c(signed: bool, relu_constrained: bool) -> bool:
    return signed and relu_constrained


def _rate_init(
    shape: torch.Size, threshold: Tensor, *, kind: str, signed: bool, relu_constrained: bool
) -> tuple[Tensor, Tensor | None]:
    """Initial rate state: m_0 = θ/2 (IF) or 0 (MT); C_0 = 0 only where the constraint needs it."""
    m = torch.zeros(shape, dtype=threshold.dtype, device=threshold.device)
    if kind == "if":
        m = m + threshold * 0.5
    c = torch.zeros_like(m) if _needs_c(signed, relu_constrained) else None
    return m, c


def _rate_step(
    x_t: Tensor,
    m: Tensor,
    c: Tensor | None,
    threshold: Tensor,
    *,
    kind: str,
    n_levels: int,
    signed: bool,
    relu_constrained: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One rate-coded step (§4.1, §4.2, §4.5): charge, fire, reset by subtraction."""
    m = m + x_t
    if kind == "if":
        s = if_fire(m, c, threshold, signed, relu_constrained)
    else:
        s = mt_fire(m, c, threshold, n_levels, signed, relu_constrained)
    m = m - s
    if c is not None:
        c = c + s
    return s, m, c


def _diff_init(shape: torch.Size, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Initial reduced differential state: R_in = b (broadcast), R_out = 0."""
    r_out = torch.zeros(shape, dtype=bias.dtype, device=bias.device)
    r_in = r_out + bias
    return r_in, r_out


def _diff_step(
    x_t: Tensor,
    t: int,
    r_in: Tensor,
    r_out: Tensor,
    threshold: Tensor,
    bias: Tensor,
    *,
    kind: str,
    n_levels: int,
    relu_constrained: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One differential step in the reduced canonical form (§4.6; §4.3 for IF).

    u = x_t − b; R_in' = R_in + u/t; m = t·(R_in' − R_out) (+ θ/2 for IF); C = t·R_out; d = fire(m, C);
    R_out ← R_out + d/t; R_in ← R_in'.
    """
    u = x_t - bias
    r_in_new = r_in + u / t
    m = t * (r_in_new - r_out)
    c = t * r_out if relu_constrained else None
    if kind == "if":
        m = m + threshold * 0.5
        d = if_fire(m, c, threshold, True, relu_constrained)
    else:
        d = mt_fire(m, c, threshold, n_levels, True, relu_constrained)
    r_out = r_out + d / t
    return d, r_in_new, r_out


def _prepare(x: Tensor, threshold: Tensor | float) -> tuple[torch.dtype, torch.Size, Tensor]:
    """Validate a time-major input [T, *S]; return the state dtype, S and θ cast to the state dtype."""
    if not isinstance(x, Tensor):
        raise ConfigError(f"x must be a torch.Tensor of shape [T, *S], got {type(x).__name__}")
    if x.dim() < 1:
        raise ConfigError("x must have shape [T, *S], got a 0-dim tensor")
    dtype = _state_dtype(x.dtype)
    step_shape = x.shape[1:]
    th = torch.as_tensor(threshold, dtype=dtype, device=x.device)
    check_broadcast("threshold", th.shape, step_shape)
    return dtype, step_shape, th


def _prepare_bias(x: Tensor, bias: Tensor | float | None, dtype: torch.dtype) -> Tensor:
    """Cast the captured bias (None means 0) to the state dtype and check that it broadcasts to S."""
    b = torch.as_tensor(0.0 if bias is None else bias, dtype=dtype, device=x.device)
    check_broadcast("bias", b.shape, x.shape[1:])
    return b


# ---------------------------------------------------------------------------------------------------------------------
# Functional multi-step references (same signatures as the Triton launch wrappers)
# ---------------------------------------------------------------------------------------------------------------------


def _rate_multistep(x, threshold, *, kind, n_levels, signed, relu_constrained) -> Tensor:
    dtype, step_shape, th = _prepare(x, threshold)
    m, c = _rate_init(step_shape, th, kind=kind, signed=signed, relu_constrained=relu_constrained)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for t in range(x.shape[0]):
        s, m, c = _rate_step(
            x[t].to(dtype), m, c, th, kind=kind, n_levels=n_levels, signed=signed, relu_constrained=relu_constrained
        )
        out[t] = s
    return out.to(x.dtype)


def _diff_multistep(x, threshold, bias, *, kind, n_levels, relu_constrained) -> Tensor:
    dtype, step_shape, th = _prepare(x, threshold)
    b = _prepare_bias(x, bias, dtype)
    r_in, r_out = _diff_init(step_shape, b)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for t in range(x.shape[0]):
        d, r_in, r_out = _diff_step(
            x[t].to(dtype), t + 1, r_in, r_out, th, b, kind=kind, n_levels=n_levels, relu_constrained=relu_constrained
        )
        out[t] = d
    return out.to(x.dtype)


def if_rate_multistep_ref(
    x: Tensor, threshold: Tensor | float, *, signed: bool = False, relu_constrained: bool = True
) -> Tensor:
    """Rate-coded IF neuron over T steps (method.md §4.1; signed variants §4.2).

    m_0 = θ/2; per step m ← m + x_t, s = θ·[m ≥ θ] (− θ·[m ≤ 0]·[C ≥ θ] if signed), m ← m − s, C ← C + s.

    Args:
        x: raw input, time-major [T, *S].
        threshold: θ ≥ 0, broadcastable to S.
        signed: emit negative spikes (``IF_with_neg``); ``relu_constrained=False`` drops the C ≥ θ condition
            (``IF_with_neg_line``). Ignored when ``signed`` is False.

    Returns:
        Emitted values [T, *S] (0 or ±θ) in the dtype of ``x``.

    Raises:
        ConfigError: bad shapes or a non-floating input.
    """
    return _rate_multistep(x, threshold, kind="if", n_levels=1, signed=signed, relu_constrained=relu_constrained)


def mt_rate_multistep_ref(
    x: Tensor,
    threshold: Tensor | float,
    *,
    n_levels: int,
    signed: bool = False,
    relu_constrained: bool = True,
) -> Tensor:
    """Rate-coded multi-threshold neuron over T steps (method.md §4.5).

    m_0 = 0, C_0 = 0; per step m ← m + x_t, d = MT(m; C) (:func:`mt_fire`), m ← m − d, C ← C + d.

    Args:
        x: raw input, time-major [T, *S].
        threshold: θ ≥ 0, broadcastable to S.
        n_levels: number of levels n ≥ 1.
        signed: emit negative events (``MTH_with_neg``/``MTH_with_neg_line``).
        relu_constrained: negative level λ_i needs C ≥ λ_i; ignored when ``signed`` is False.

    Returns:
        Emitted values [T, *S] in the dtype of ``x``.

    Raises:
        ConfigError: bad shapes, ``n_levels`` < 1 or a non-floating input.
    """
    check_levels("mt", n_levels)
    return _rate_multistep(
        x, threshold, kind="mt", n_levels=n_levels, signed=signed, relu_constrained=relu_constrained
    )


def mt_diff_multistep_ref(
    x: Tensor,
    threshold: Tensor | float,
    bias: Tensor | float | None,
    *,
    n_levels: int,
    relu_constrained: bool = True,
) -> Tensor:
    """Differential multi-threshold neuron over T real steps, reduced canonical form (method.md §4.6, §4.7).

    State R_in = b, R_out = 0. For t = 1…T: u = x_t − b; R_in' = R_in + u/t; m = t·(R_in' − R_out);
    d = MT(m; C = t·R_out) (signed; ReLU-constrained if ``relu_constrained``); R_out ← R_out + d/t; R_in ← R_in'.

    Args:
        x: RAW per-step input x_t (bias included), time-major [T, *S]; step 0 (the bias capture) is not part of it.
        threshold: θ ≥ 0, broadcastable to S.
        bias: captured step-0 input b, broadcastable to S; None means 0.
        n_levels: number of levels n ≥ 1.
        relu_constrained: True for ``MTH_diff`` (decoded output ≥ 0), False for the identity ``MTH_diff_line``.

    Returns:
        Emitted differences d_t [T, *S] in the dtype of ``x``; the decoded value is R_out = Σ_τ d_τ/τ.

    Raises:
        ConfigError: bad shapes, ``n_levels`` < 1 or a non-floating input.
    """
    check_levels("mt", n_levels)
    return _diff_multistep(x, threshold, bias, kind="mt", n_levels=n_levels, relu_constrained=relu_constrained)


def if_diff_multistep_ref(
    x: Tensor,
    threshold: Tensor | float,
    bias: Tensor | float | None,
    *,
    relu_constrained: bool = True,
) -> Tensor:
    """Differential IF neuron over T real steps, reduced form (method.md §4.3).

    As :func:`mt_diff_multistep_ref`, but the firing test uses m = θ/2 + t·(R_in' − R_out) and the IF rule
    s = θ·[m ≥ θ] − θ·[m ≤ 0]·[C ≥ θ] with C = t·R_out.

    Args:
        x: RAW per-step input x_t, time-major [T, *S].
        threshold: θ ≥ 0, broadcastable to S.
        bias: captured step-0 input b, broadcastable to S; None means 0.
        relu_constrained: a negative spike needs C ≥ θ.

    Returns:
        Emitted differences [T, *S] (0 or ±θ) in the dtype of ``x``.

    Raises:
        ConfigError: bad shapes or a non-floating input.
    """
    return _diff_multistep(x, threshold, bias, kind="if", n_levels=1, relu_constrained=relu_constrained)


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
        self.register_buffer("bias", None)
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
            dtype, _, th = _prepare(x_seq, self.threshold)
            plan = self._fast_plan(th, x_seq)
            if plan is not None:
                return fast_rate_multistep(x_seq, th, plan, kind=self.kind, dtype=dtype, init=_rate_init)
            return _rate_multistep(
                x_seq,
                self.threshold,
                kind=self.kind,
                n_levels=self.n_levels,
                signed=self.signed,
                relu_constrained=self.relu_constrained,
            )
        bias = self._require_bias()
        dtype, _, th = _prepare(x_seq, self.threshold)
        plan = self._fast_plan(th, x_seq)
        if plan is not None:
            return fast_diff_multistep(x_seq, th, _prepare_bias(x_seq, bias, dtype), plan, dtype=dtype,
                                       init=_diff_init)
        return _diff_multistep(
            x_seq,
            self.threshold,
            bias,
            kind=self.kind,
            n_levels=self.n_levels,
            relu_constrained=self.relu_constrained,
        )

    def single_step(self, x_t: Tensor) -> Tensor:
        """Run one step on [B, *S] and return the emitted value; state is created on the first call after reset()."""
        dtype = _state_dtype(x_t.dtype)
        th = self.threshold.to(dtype)
        if self._t == 0:
            check_broadcast("threshold", th.shape, x_t.shape)
            if self.coding == "rate":
                self._m, self._c = _rate_init(
                    x_t.shape, th, kind=self.kind, signed=self.signed, relu_constrained=self.relu_constrained
                )
            else:
                b = self._require_bias().to(dtype)
                check_broadcast("bias", b.shape, x_t.shape)
                self._r_in, self._r_out = _diff_init(x_t.shape, b)
            self._step_plan = self._fast_plan(th, x_t)
            self._step_buffers = None
        self._t += 1
        if self._step_plan is not None and not (torch.is_grad_enabled() and x_t.requires_grad):
            return self._fast_single_step(x_t, th)
        if self.coding == "rate":
            s, self._m, self._c = _rate_step(
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
            s, self._r_in, self._r_out = _diff_step(
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
