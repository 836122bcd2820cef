"""Functional neuron rules (method.md §4): the firing rules, the per-step charge / fire / reset helpers shared by
the reference module (``neurons.py``), the fused pairs (``runtime/fuse.py``) and the inductor loops, and the
functional ``*_multistep_ref`` twins (time-major input [T, *S]) that the kernels are tested against. State is kept in
at least fp32; every emitted value is in activation units (±θ·2^-i or 0)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from snnconvert.convert.errors import ConfigError

__all__ = ["CODINGS", "KINDS", "Coding", "Kind", "check_broadcast", "check_levels", "diff_init", "diff_multistep",
           "diff_step", "if_diff_multistep_ref", "if_fire", "if_rate_multistep_ref", "mt_diff_multistep_ref",
           "mt_fire", "mt_rate_multistep_ref", "needs_c", "prepare_bias", "prepare_input", "rate_init",
           "rate_multistep", "rate_step", "state_dtype"]


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


def state_dtype(dtype: torch.dtype) -> torch.dtype:
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
    raise ConfigError(f"{name} of shape {tuple(shape)} does not broadcast to the per-step shape {tuple(step_shape)}: "
                      "values per token (token_channel 'tokens') hold for the sequence length they were calibrated "
                      "at, so convert again with inputs of this size or use token_channel 'features'; values given "
                      "by hand must be a scalar, one per channel shaped to broadcast (e.g. [C, 1, 1] for a conv's "
                      "[C, H, W] output, [C] for a linear one) or one per neuron")


def check_levels(kind: str, n_levels: int) -> None:
    """``n_levels`` must be an int >= 1, and 1 for IF neurons (ConfigError otherwise)."""
    if not isinstance(n_levels, int) or isinstance(n_levels, bool) or n_levels < 1:
        raise ConfigError(f"n_levels must be an integer >= 1, got {n_levels!r}")
    if kind == "if" and n_levels != 1:
        raise ConfigError(f"n_levels must be 1 for kind='if', got {n_levels}; use kind='mt' for several levels")


def needs_c(signed: bool, relu_constrained: bool) -> bool:
    return signed and relu_constrained


def rate_init(
    shape: torch.Size, threshold: Tensor, *, kind: str, signed: bool, relu_constrained: bool
) -> tuple[Tensor, Tensor | None]:
    """Initial rate state: m_0 = θ/2 (IF) or 0 (MT); C_0 = 0 only where the constraint needs it."""
    m = torch.zeros(shape, dtype=threshold.dtype, device=threshold.device)
    if kind == "if":
        m = m + threshold * 0.5
    c = torch.zeros_like(m) if needs_c(signed, relu_constrained) else None
    return m, c


def rate_step(
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


def diff_init(shape: torch.Size, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Initial reduced differential state: R_in = b (broadcast), R_out = 0."""
    r_out = torch.zeros(shape, dtype=bias.dtype, device=bias.device)
    r_in = r_out + bias
    return r_in, r_out


def diff_step(
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


def prepare_input(x: Tensor, threshold: Tensor | float) -> tuple[torch.dtype, torch.Size, Tensor]:
    """Validate a time-major input [T, *S]; return the state dtype, S and θ cast to the state dtype."""
    if not isinstance(x, Tensor):
        raise ConfigError(f"x must be a torch.Tensor of shape [T, *S], got {type(x).__name__}")
    if x.dim() < 1:
        raise ConfigError("x must have shape [T, *S], got a 0-dim tensor")
    dtype = state_dtype(x.dtype)
    step_shape = x.shape[1:]
    th = torch.as_tensor(threshold, dtype=dtype, device=x.device)
    check_broadcast("threshold", th.shape, step_shape)
    return dtype, step_shape, th


def prepare_bias(x: Tensor, bias: Tensor | float | None, dtype: torch.dtype) -> Tensor:
    """Cast the captured bias (None means 0) to the state dtype and check that it broadcasts to S."""
    b = torch.as_tensor(0.0 if bias is None else bias, dtype=dtype, device=x.device)
    check_broadcast("bias", b.shape, x.shape[1:])
    return b


# ---------------------------------------------------------------------------------------------------------------------
# Functional multi-step references (same signatures as the Triton launch wrappers)
# ---------------------------------------------------------------------------------------------------------------------


def rate_multistep(x, threshold, *, kind, n_levels, signed, relu_constrained) -> Tensor:
    dtype, step_shape, th = prepare_input(x, threshold)
    m, c = rate_init(step_shape, th, kind=kind, signed=signed, relu_constrained=relu_constrained)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for t in range(x.shape[0]):
        s, m, c = rate_step(
            x[t].to(dtype), m, c, th, kind=kind, n_levels=n_levels, signed=signed, relu_constrained=relu_constrained
        )
        out[t] = s
    return out.to(x.dtype)


def diff_multistep(x, threshold, bias, *, kind, n_levels, relu_constrained) -> Tensor:
    dtype, step_shape, th = prepare_input(x, threshold)
    b = prepare_bias(x, bias, dtype)
    r_in, r_out = diff_init(step_shape, b)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for t in range(x.shape[0]):
        d, r_in, r_out = diff_step(
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
    return rate_multistep(x, threshold, kind="if", n_levels=1, signed=signed, relu_constrained=relu_constrained)


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
    return rate_multistep(
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
    return diff_multistep(x, threshold, bias, kind="mt", n_levels=n_levels, relu_constrained=relu_constrained)


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
    return diff_multistep(x, threshold, bias, kind="if", n_levels=1, relu_constrained=relu_constrained)


