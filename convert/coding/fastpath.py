"""Fast path of :class:`~snnconvert.convert.coding.neurons.SpikingNeuron` on CPU and GPU tensors.

The module's multi-step and single-step calls run these functions; they compute the reference neurons' values
(``neurons.py``: ``mt_fire``, ``if_fire``, ``_rate_step``, ``_diff_step``) with the same arithmetic per element but
without ``torch.where`` chains and per-step temporaries, bit-identical to the ``*_multistep_ref`` twins
(tests/test_neurons.py). The module falls back to the references where the preconditions below do not hold.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FAST_CHUNK_ELEMENTS", "FastPlan", "FastBuffers", "batch_chunks", "fast_fire", "fast_rate_step",
           "fast_diff_step", "fast_rate_multistep", "fast_diff_multistep"]

# ---------------------------------------------------------------------------------------------------------------------
# Fast path of the module: the references' arithmetic, vectorised, on preallocated buffers
# ---------------------------------------------------------------------------------------------------------------------
#
# The references pick a level with chains of ``torch.where``. On the CPU ``where`` with a data-dependent mask is a
# branchy scalar loop (about 20x the time of an add on random masks) and every step allocates some 30 temporaries.
# The fast path computes the same values per element with vectorised arithmetic into reused buffers:
#
# - a comparison written into a float buffer (``torch.ge(m, cut, out=f)``) is the exact indicator 1.0 / 0.0;
# - level of the smallest index passing a test: Σ_i δ_i·[test_i], summed from the smallest level up, with
#   δ_{n-1} = λ_{n-1} and δ_i = λ_{i+1}. The tests below are monotone in i (κ_i and λ_i decrease), so each partial
#   sum is +0 or exactly a level (λ_{i+1} + λ_{i+1} = λ_i) and the sum is λ_p for the smallest p that passes: the
#   value mt_fire's overwrite walk leaves. Products ind·δ are exact (0 or δ), so no multiply-add rounds;
# - MT positive events: mag = Σ δ_i·[|m| ≥ κ_i] gives λ_p for m > 0; for m < 0 it gives the level of the smallest i
#   with m ≤ −κ_i (|m| ≥ κ_i ⟺ m ≤ −κ_i there). Under the constraint, lim = Σ δ_i·[C ≥ λ_i] is the level of the
#   smallest i with C ≥ λ_i; both tests pass from the larger of the two indices on, so the negative level is
#   min(mag, lim). out = [m > 0]·mag − [m < 0]·level; for θ > 0 at most one term is non-zero (κ > 0), and
#   +0 + (−0) = +0 where none is;
# - IF: out = θ·[m ≥ θ] − θ·[m ≤ 0]·[C ≥ θ] (exclusive for θ > 0);
# - θ = 0 (silent unit): mt_fire / if_fire write −0.0 where the negative test holds (m ≤ 0, and C ≥ 0 under the
#   constraint) and +0.0 elsewhere; reproduced by a sign flip (a factor −1 or 1, exact), bits included.
#
# The levels, cut-offs and θ/2 are computed once per call with the references' expressions (same roundings); the
# state updates are the references' operations in the same order (``u/t`` stays a division by the Python int t,
# ``t·(...)`` a multiplication), in place. Preconditions, checked once per call (the reference runs otherwise): θ
# finite with no sign bit set (no −0.0), and for MT every positive θ has κ_{n−1} > 0 and levels that halve exactly
# (no underflow); no autograd recording. Multi-step calls process the batch in chunks (all T steps of one chunk
# before the next), so that the state and temporaries of a chunk stay in cache.

#: Elements per chunk and CPU thread of the multi-step fast path (a chunk is a slice of the batch dim; 0.5 MB per fp32
#: buffer and thread). Measured on 2 EPYC cores: 2^17 to 2^18 is best; no chunking is up to 2x slower at B = 128.
FAST_CHUNK_ELEMENTS = 1 << 17


class FastPlan:
    """Per-call constants of the fast path (hoisted out of the step loop).

    Attributes:
        terms: ``(delta, pos_cut, neg_cut, c_cut)`` per level, from the smallest level (i = n−1) to λ_0 = θ.
        signed / need_c: whether negative events exist / need C ≥ level.
        half: θ/2 for IF (the membrane offset), else None.
        zero: 1.0 where θ = 0 (broadcastable like θ) when the unit is signed and some θ is 0, else None.
        exact: False when a precondition fails (then the reference runs).
    """

    __slots__ = ("terms", "signed", "need_c", "half", "zero", "exact", "consts")

    def __init__(self, th: Tensor, *, kind: str, n_levels: int, signed: bool, relu_constrained: bool) -> None:
        self.signed = signed
        self.need_c = signed and relu_constrained
        self.half = th * 0.5 if kind == "if" else None
        self.exact = bool(torch.isfinite(th).all()) and not bool(torch.signbit(th).any())
        if kind == "if":
            self.terms = [(th, th, 0.0, th)]
        else:
            levels = [th * (2.0**-i) for i in range(n_levels)]  # exactly mt_fire's expressions
            cuts = [level * 0.75 for level in levels]
            positive = th > 0
            if self.exact:
                ok = (cuts[-1] > 0) | ~positive
                for i in range(n_levels - 1):
                    ok = ok & ((levels[i + 1] * 2 == levels[i]) | ~positive)
                self.exact = bool(ok.all())
            deltas = [levels[i + 1] if i + 1 < n_levels else levels[i] for i in range(n_levels)]
            self.terms = [(deltas[i], cuts[i], -cuts[i], levels[i]) for i in reversed(range(n_levels))]
        zero = th == 0
        self.zero = zero.to(th.dtype) if signed and bool(zero.any()) else None
        self.consts = [t for term in self.terms for t in term if isinstance(t, Tensor)]
        self.consts += [t for t in (self.half, self.zero) if t is not None]


class FastBuffers:
    """Reused temporaries of one step shape: membrane m, C, scratch u (also |m|), indicators, magnitude, limit."""

    __slots__ = ("m", "c", "u", "ind", "ind2", "mag", "lim")

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, plan: FastPlan) -> None:
        def new(needed: bool = True) -> Tensor | None:
            return torch.empty(shape, dtype=dtype, device=device) if needed else None

        self.m, self.u, self.ind = new(), new(), new()
        self.c = new(plan.need_c)
        self.ind2 = new(plan.need_c and plan.half is not None)
        self.mag = new(plan.signed and plan.half is None)
        self.lim = new(plan.need_c and plan.half is None)


def _level_chain(value: Tensor, plan: FastPlan, which: int, ind: Tensor, out: Tensor) -> Tensor:
    """``out`` ← Σ_i δ_i·[value ≥ cut_i], smallest level first; ``which`` picks the cut in each term (1: κ_i,
    3: λ_i). Each partial sum is exactly 0 or a level (module comment)."""
    for j, term in enumerate(plan.terms):
        torch.ge(value, term[which], out=ind)
        if j == 0:
            torch.mul(ind, term[0], out=out)
        else:
            out.addcmul_(ind, term[0])
    return out


def fast_fire(m: Tensor, c: Tensor | None, plan: FastPlan, out: Tensor, buf: FastBuffers) -> Tensor:
    """``out`` ← fire(m, C): bit-identical to :func:`mt_fire` / :func:`if_fire` when ``plan.exact``.

    ``buf.u`` is used as scratch (the callers do not need it during the firing test).
    """
    ind = buf.ind
    if plan.half is not None:  # IF: θ·[m ≥ θ] − θ·[m ≤ 0]·[C ≥ θ]
        theta, pos_cut, neg_cut, c_cut = plan.terms[0]
        torch.ge(m, pos_cut, out=ind)
        torch.mul(ind, theta, out=out)
        if plan.signed:
            torch.le(m, neg_cut, out=ind)
            if plan.need_c:
                torch.ge(c, c_cut, out=buf.ind2)
                ind.mul_(buf.ind2)
            out.addcmul_(ind, theta, value=-1)  # one of the two terms is 0 (θ > 0) or both are (θ = 0)
    elif not plan.signed:  # MT, positive events only: Σ δ_i·[m ≥ κ_i]
        return _level_chain(m, plan, 1, ind, out)
    else:
        # MT, signed: one chain on |m| gives λ_p for m > 0 and, for m < 0, the level of the smallest i with
        # m ≤ −κ_i (|m| ≥ κ_i ⟺ m ≤ −κ_i there); the constraint C ≥ λ_i caps it: the smallest i passing both tests
        # is the larger index, i.e. the smaller level, min(mag, lim).
        mag = _level_chain(torch.abs(m, out=buf.u), plan, 1, ind, buf.mag)
        neg_level = mag
        if plan.need_c:
            lim = _level_chain(c, plan, 3, ind, buf.lim)
            neg_level = torch.minimum(mag, lim, out=lim)
        torch.gt(m, 0.0, out=ind)
        torch.mul(ind, mag, out=out)  # positive events (+0 elsewhere)
        torch.lt(m, 0.0, out=ind)
        out.addcmul_(ind, neg_level, value=-1)  # negative events; +0 + (−0) keeps +0
    if plan.zero is not None:  # θ = 0: −0.0 where the negative test holds, as the references write it
        torch.le(m, 0.0, out=ind)
        if plan.need_c:
            torch.ge(c, 0.0, out=buf.u)
            ind.mul_(buf.u)
        ind.mul_(plan.zero).mul_(-2.0).add_(1.0)
        out.mul_(ind)
    return out


def fast_rate_step(x_t: Tensor, m: Tensor, c: Tensor | None, plan: FastPlan, out: Tensor, buf: FastBuffers) -> None:
    """:func:`_rate_step` in place: m ← m + x_t; out ← fire(m, C); m ← m − out; C ← C + out."""
    m.add_(x_t)
    fast_fire(m, c, plan, out, buf)
    m.sub_(out)
    if c is not None:
        c.add_(out)


def fast_diff_step(
    x_t: Tensor, t: int, r_in: Tensor, r_out: Tensor, bias: Tensor, plan: FastPlan, out: Tensor, buf: FastBuffers
) -> None:
    """:func:`_diff_step` in place (same operations, same order); the emitted d_t is written to ``out``."""
    u, m = buf.u, buf.m
    torch.sub(x_t, bias, out=u)
    u.div_(t)
    r_in.add_(u)  # R_in' = R_in + u/t
    torch.sub(r_in, r_out, out=m)
    m.mul_(t)  # m = t·(R_in' − R_out)
    if plan.need_c:
        torch.mul(r_out, t, out=buf.c)  # C = t·R_out
    if plan.half is not None:
        m.add_(plan.half)
    fast_fire(m, buf.c, plan, out, buf)
    torch.div(out, t, out=u)
    r_out.add_(u)  # R_out + d/t


def batch_chunks(x: Tensor, consts: list[Tensor]) -> list[slice]:
    """Slices of dim 1 of ``x`` [T, *S] (S[0] is the batch) such that a chunk holds about FAST_CHUNK_ELEMENTS
    elements per step and thread; one slice on a GPU, or when S[0] cannot be split (a constant varies along it) or
    is small."""
    if x.dim() < 2 or x.device.type != "cpu":
        return [slice(None)]
    n = x.shape[1]
    ndim = x.dim() - 1
    if any(c.dim() == ndim and c.shape[0] != 1 for c in consts):
        return [slice(None)]
    per = max(1, x[0, 0].numel())
    size = max(1, FAST_CHUNK_ELEMENTS * max(1, torch.get_num_threads()) // per)
    if size >= n:
        return [slice(None)]
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def fast_rate_multistep(
    x: Tensor, th: Tensor, plan: FastPlan, *, kind: str, dtype: torch.dtype, init: Callable
) -> Tensor:
    """All T steps of a rate neuron on ``x`` [T, *S], chunk by chunk; ``init`` is the reference's ``_rate_init``."""
    xs = x if x.dtype == dtype else x.to(dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    buf = None
    for sl in batch_chunks(xs, plan.consts):
        xc, oc = xs[:, sl], out[:, sl]
        shape = xc.shape[1:]
        m, c = init(shape, th, kind=kind, signed=plan.signed, relu_constrained=plan.need_c)
        if buf is None or buf.m.shape != shape:
            buf = FastBuffers(shape, dtype, x.device, plan)
        for t in range(xc.shape[0]):
            fast_rate_step(xc[t], m, c, plan, oc[t], buf)
    return out.to(x.dtype)


def fast_diff_multistep(
    x: Tensor, th: Tensor, b: Tensor, plan: FastPlan, *, dtype: torch.dtype, init: Callable
) -> Tensor:
    """All T steps of a differential neuron on ``x`` [T, *S], chunk by chunk; ``init`` is the reference's
    ``_diff_init``."""
    xs = x if x.dtype == dtype else x.to(dtype)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    buf = None
    for sl in batch_chunks(xs, plan.consts + [b]):
        xc, oc = xs[:, sl], out[:, sl]
        shape = xc.shape[1:]
        r_in, r_out = init(shape, b)
        if buf is None or buf.m.shape != shape:
            buf = FastBuffers(shape, dtype, x.device, plan)
        for t in range(xc.shape[0]):
            fast_diff_step(xc[t], t + 1, r_in, r_out, b, plan, oc[t], buf)
    return out.to(x.dtype)


