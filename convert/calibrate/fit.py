"""Threshold fitting from moment statistics (method.md §7.6): pure float64 tensor maths, no modules.

Per group (layer, channel or neuron) the pre-activation is modelled as x ~ N(μ, σ²) and θ minimises the error of a
uniform N-level quantiser with rounding and clipping at θ,

    f(x; θ) = (θ/N)·clip(⌊N·x/θ + 1/2⌋, 0, N),    QE(θ) = E[(f(x; θ) − max(x, 0))²].

The stationarity condition gives the update θ ← θ·k(θ) of the reference (:func:`k_ratio`). ``fit_thresholds``
either finds the root of k(θ) = 1 with a safeguarded bracketing solver (``method="solve"``, the default) or runs
the reference's 100 fixed-point iterations from θ = 1 (``method="reference"``), which under-converges for large N.

N is T for IF neurons and T·2^n for MT neurons with n levels; thresholds must be refitted when T or n changes.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from snnconvert.convert.errors import CalibrationError, ConfigError

logger = logging.getLogger(__name__)

__all__ = ["FitResult", "fit_thresholds", "k_ratio", "qe", "METHODS", "NONFINITE_POLICIES", "REFERENCE_ITERATIONS"]

METHODS = ("solve", "reference")
NONFINITE_POLICIES = ("raise", "ignore")
REFERENCE_ITERATIONS = 100
#: σ ≤ CONSTANT_RTOL·|μ| counts as a constant group: the variance of a constant fp32 channel pooled over a data set is
#: rounding noise (σ ~ 1e-8·|μ|), for which N(μ, σ²) is degenerate and no bracket of the root exists in float64.
CONSTANT_RTOL = 1e-6
"""The reference applies θ ← θ·k(θ) exactly this many times, with no convergence test."""

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CHUNK_ELEMENTS = 1 << 19  # groups × N-terms per chunk: 512K float64 = 4 MiB per temporary (fastest on CPU)
_MAX_BRACKET_STEPS = 128  # ×2 / ×½ steps from the start value: 2^128 covers any sane scale
_ERFC_SCALE_LIMIT = 20.0  # below it erfc(z)·exp(zs²) is computed directly (exp(400) ≈ 5e173 is finite)


@dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit_thresholds`; every tensor has the shape of ``mean``.

    Attributes:
        threshold: fitted θ ≥ 0 (float64).
        n_iter: number of k(θ) evaluations per group (int64); ``method="reference"`` always uses 100, σ = 0 and
            skipped non-finite groups use 0.
        converged: per group; ``"solve"``: the relative bracket width reached ``rtol``; ``"reference"``: always False
            (the reference has no convergence test); σ = 0 groups are True, skipped non-finite groups False.
        residual: |k(θ) − 1| at the result (float64); 0 for σ = 0 groups, NaN for skipped non-finite groups.
        n_dead: constant groups (σ ≤ 1e-6·|μ|, see :data:`CONSTANT_RTOL`) with μ ≤ 0 (always silent; θ set to 1).
        n_nonfinite: groups with non-finite mean or variance (θ set to 1, only with ``nonfinite="ignore"``).
    """

    threshold: Tensor
    n_iter: Tensor
    converged: Tensor
    residual: Tensor
    n_dead: int
    n_nonfinite: int


def _as_f64(name: str, value) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64)  # Python floats go straight to float64
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{name} must be a tensor or number, got {type(value).__name__}") from exc


def _check_n(N) -> int:
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or int(N) < 1:
        raise ConfigError(f"N (number of quantiser levels) must be an integer >= 1, got {N!r}")
    return int(N)


def _chunk_size(n_groups: int, N: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(int(chunk_size), N)
    return max(1, min(N, _CHUNK_ELEMENTS // max(1, n_groups)))


def k_ratio(theta, mu, sigma, N: int, *, chunk_size: int | None = None) -> Tensor:
    """Ratio k(θ) = θ_new/θ of the §7.6 update, float64, vectorised over groups and chunked over the N terms.

    With c_i = (2i − 1)·θ/(2N) and z_i = (c_i − μ)/(√2·σ), i = 1…N, the update is

        θ_new = [μ·(1 − A) + σ·√(2/π)·C] / (1 − B),
        A = (1/N)·Σ erf(z_i),  B = (1/N²)·Σ (2i − 1)·erf(z_i),  C = (1/N)·Σ exp(−z_i²).

    It is evaluated in the algebraically identical complementary form (1 − A = (1/N)·Σ erfc(z_i),
    1 − B = (1/N²)·Σ (2i − 1)·erfc(z_i)) with every term scaled by exp(max(z_1, 0)²) (through ``erfcx`` where that
    factor would overflow), so that far tails (θ ≫ root, or μ ≪ −σ) neither cancel in 1 − erf nor underflow.

    Args:
        theta: θ > 0, broadcastable with ``mu`` and ``sigma``.
        mu: group means.
        sigma: group standard deviations, > 0 (σ = 0 gives NaN; :func:`fit_thresholds` handles it separately).
        N: number of quantiser levels.
        chunk_size: number of i-terms per chunk (default: about 512K group × term elements per temporary).

    Returns:
        k(θ) with the broadcast shape of the inputs (float64).
    """
    N = _check_n(N)
    theta, mu, sigma = torch.broadcast_tensors(_as_f64("theta", theta), _as_f64("mu", mu), _as_f64("sigma", sigma))
    shape = theta.shape
    theta, mu, sigma = theta.reshape(-1, 1), mu.reshape(-1, 1), sigma.reshape(-1, 1)
    scale = 1.0 / (_SQRT2 * sigma)
    slope = theta * scale / (2 * N)  # z_i = (2i − 1)·slope − offset
    offset = mu * scale
    zs = (slope - offset).clamp(min=0.0)  # max(z_1, 0): every term is scaled by exp(zs²), which cancels below
    far = (zs >= _ERFC_SCALE_LIMIT).reshape(-1)
    any_far = bool(far.any())
    boost = torch.exp(zs**2)  # finite for zs < 26; the rows with zs ≥ _ERFC_SCALE_LIMIT use erfcx instead
    s_w = torch.zeros_like(theta)  # Σ erfc(z_i)·e^{zs²}
    s_iw = torch.zeros_like(theta)  # Σ (2i − 1)·erfc(z_i)·e^{zs²}
    s_e = torch.zeros_like(theta)  # Σ exp(zs² − z_i²)
    step = _chunk_size(theta.shape[0], N, chunk_size)
    for start in range(0, N, step):
        odd = torch.arange(2 * start + 1, 2 * min(N, start + step), 2, dtype=torch.float64, device=theta.device)
        z = torch.addcmul(-offset, slope, odd)  # [G, chunk]
        e = torch.exp(-(z - zs) * (z + zs))
        w = torch.special.erfc(z).mul_(boost)
        if any_far:  # there z ≥ zs ≥ limit > 0, and erfc(z)·e^{zs²} = erfcx(z)·e^{zs² − z²} without underflow
            w[far] = torch.special.erfcx(z[far]) * e[far]
        s_w += w.sum(dim=1, keepdim=True)
        s_iw += (w @ odd).unsqueeze(1)
        s_e += e.sum(dim=1, keepdim=True)
    theta_new = N * (mu * s_w + sigma * _SQRT_2_OVER_PI * s_e) / s_iw
    return (theta_new / theta).reshape(shape)


def qe(theta, mu, sigma, N: int, *, n_nodes: int = 16) -> Tensor:
    """Expected quantisation error QE(θ) = E[(f(x; θ) − max(x, 0))²] for x ~ N(μ, σ²), float64.

    The integral is split at 0 and at the rounding midpoints c_i = (2i − 1)·θ/(2N); each finite piece is
    integrated with ``n_nodes``-point Gauss–Legendre quadrature (the integrand is smooth there), the clipped tail
    [c_N, ∞) in closed form. Meant for tests and brute-force checks: the cost is O(groups·N·n_nodes).

    Args:
        theta: θ > 0, broadcastable with ``mu`` and ``sigma``.
        mu: group means.
        sigma: group standard deviations, > 0.
        N: number of quantiser levels.
        n_nodes: quadrature nodes per interval.

    Returns:
        QE with the broadcast shape of the inputs (float64).
    """
    N = _check_n(N)
    theta, mu, sigma = torch.broadcast_tensors(_as_f64("theta", theta), _as_f64("mu", mu), _as_f64("sigma", sigma))
    shape = theta.shape
    theta, mu, sigma = theta.reshape(-1, 1, 1), mu.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    nodes = torch.as_tensor(nodes, dtype=torch.float64).reshape(1, 1, -1)
    weights = torch.as_tensor(weights, dtype=torch.float64).reshape(1, 1, -1)
    # intervals [a_j, b_j) with quantised value q_j: [0, c_1) → 0, [c_i, c_{i+1}) → iθ/N, i = 1…N−1
    idx = torch.arange(0, N, dtype=torch.float64).reshape(1, -1, 1)
    a = torch.where(idx == 0, torch.zeros_like(idx), (2 * idx - 1)) * theta / (2 * N)
    b = (2 * idx + 1) * theta / (2 * N)
    q = idx * theta / N
    half = (b - a) / 2
    x = a + half * (nodes + 1)
    pdf = torch.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    finite = (half * weights * (x - q) ** 2 * pdf).sum(dim=(1, 2))
    # tail [c_N, ∞) quantised to θ: E[(x − θ)²; x ≥ c_N] = σ²·M2 + 2σd·M1 + d²·M0 with d = μ − θ
    cn = (2 * N - 1) * theta / (2 * N)
    alpha = ((cn - mu) / sigma).reshape(-1)
    s, d = sigma.reshape(-1), (mu - theta).reshape(-1)
    phi = torch.exp(-0.5 * alpha**2) / math.sqrt(2 * math.pi)
    m0 = 0.5 * torch.special.erfc(alpha / _SQRT2)
    m1 = phi
    m2 = m0 + alpha * phi
    tail = s**2 * m2 + 2 * s * d * m1 + d**2 * m0
    return (finite + tail).reshape(shape)


def _log_k(theta: Tensor, mu: Tensor, sigma: Tensor, N: int) -> Tensor:
    k = k_ratio(theta, mu, sigma, N)
    return torch.where(k > 0, torch.log(k.clamp(min=torch.finfo(torch.float64).tiny)), torch.full_like(k, -math.inf))


def _solve(mu: Tensor, sigma: Tensor, N: int, rtol: float, max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Root of g(log θ) = log k(θ) per group (1-D inputs). Returns (θ, n_evaluations, converged)."""
    G = mu.shape[0]
    n_eval = torch.zeros(G, dtype=torch.int64)
    start = mu.abs() + sigma  # > 0; the root lies within a few factors of 2 of it in practice
    # -- bracket: lo with g > 0, hi with g < 0, one factor of 2 apart -------------------------------------------
    g_start = _log_k(start, mu, sigma, N)
    n_eval += 1
    exact = g_start == 0
    lo, hi, g_lo, g_hi = start.clone(), start.clone(), g_start.clone(), g_start.clone()
    todo = ~(g_lo > 0) & ~exact
    for _ in range(_MAX_BRACKET_STEPS):
        if not todo.any():
            break
        hi[todo], g_hi[todo] = lo[todo], g_lo[todo]
        lo[todo] = lo[todo] * 0.5
        g_lo[todo] = _log_k(lo[todo], mu[todo], sigma[todo], N)
        n_eval[todo] += 1
        todo = todo & ~(g_lo > 0)
    todo = ~(g_hi < 0) & ~exact
    for _ in range(_MAX_BRACKET_STEPS):
        if not todo.any():
            break
        lo[todo], g_lo[todo] = hi[todo], g_hi[todo]
        hi[todo] = hi[todo] * 2.0
        g_hi[todo] = _log_k(hi[todo], mu[todo], sigma[todo], N)
        n_eval[todo] += 1
        todo = todo & ~(g_hi < 0)
    ok = exact | ((g_lo > 0) & (g_hi < 0))
    a, b = torch.log(lo), torch.log(hi)
    # -- Anderson–Björck false position on log θ, safeguarded -----------------------------------------------------
    # A false-position point is kept at least `step_min` inside the bracket, so that once one end is within rtol of
    # the root the next point lands just across it and closes the bracket; if the bracket has not halved in three
    # consecutive steps, the next step is a bisection.
    width_tol = -math.log1p(-rtol)  # (hi − lo)/hi ≤ rtol  ⇔  log(hi/lo) ≤ −log(1 − rtol)
    step_min = 0.4 * width_tol
    ga, gb = g_lo, g_hi
    side = torch.zeros(G, dtype=torch.int8)  # +1: a moved last, −1: b moved last
    slow = torch.zeros(G, dtype=torch.int8)  # consecutive steps that did not halve the bracket
    done = ~ok | ((b - a) <= width_tol)
    for _ in range(max_iter):
        act = ~done
        if not act.any():
            break
        idx = act.nonzero().squeeze(1)
        a_i, b_i, ga_i, gb_i = a[idx], b[idx], ga[idx], gb[idx]
        width = b_i - a_i
        x = b_i - gb_i * width / (gb_i - ga_i)
        bisect = ~torch.isfinite(x) | (slow[idx] >= 3)
        x = torch.where(bisect, 0.5 * (a_i + b_i), x)
        x = torch.minimum(torch.maximum(x, a_i + step_min), b_i - step_min)
        gx = _log_k(torch.exp(x), mu[idx], sigma[idx], N)
        n_eval[idx] += 1
        bad = ~torch.isfinite(gx)
        pos, neg, zero = (gx > 0) & ~bad, (gx < 0) & ~bad, (gx == 0)
        s_i = side[idx]
        # the same end moves twice in a row: scale the stale end's g by m = 1 − g(x)/g(replaced end), or ½
        m_b = 1.0 - gx / ga_i
        m_a = 1.0 - gx / gb_i
        gb_new = torch.where(pos & (s_i == 1), gb_i * torch.where(m_b > 0, m_b, 0.5), gb_i)
        ga_new = torch.where(neg & (s_i == -1), ga_i * torch.where(m_a > 0, m_a, 0.5), ga_i)
        a_new = torch.where(pos | zero, x, a_i)
        b_new = torch.where(neg | zero, x, b_i)
        ga_new = torch.where(pos, gx, ga_new)
        gb_new = torch.where(neg, gx, gb_new)
        side[idx] = torch.where(pos, 1, torch.where(neg, -1, 0)).to(torch.int8)
        halved = (b_new - a_new) <= 0.5 * width
        slow[idx] = torch.where(halved, 0, slow[idx] + 1).to(torch.int8)
        a[idx], b[idx], ga[idx], gb[idx] = a_new, b_new, ga_new, gb_new
        ok[idx] = ok[idx] & ~bad
        done[idx] = bad | ((b_new - a_new) <= width_tol)
    converged = ok & ((b - a) <= width_tol)
    theta = torch.exp(0.5 * (a + b))
    theta = torch.where(ok, theta, start)
    return theta, n_eval, converged


def _reference(mu: Tensor, sigma: Tensor, N: int) -> Tensor:
    """The reference iteration: θ = 1, θ ← θ·k(θ) 100 times, NaN → 1, clamp ≥ 0."""
    theta = torch.ones_like(mu)
    for _ in range(REFERENCE_ITERATIONS):
        theta = theta * k_ratio(theta, mu, sigma, N)
    n_nan = int(torch.isnan(theta).sum())
    if n_nan:
        logger.info("reference threshold iteration: replacing %d NaN threshold(s) by 1", n_nan)
    theta = torch.where(torch.isnan(theta), torch.ones_like(theta), theta)
    return theta.clamp(min=0.0)


def fit_thresholds(
    mean,
    var,
    N: int,
    *,
    method: str = "solve",
    rtol: float = 1e-6,
    max_iter: int = 200,
    nonfinite: str = "raise",
) -> FitResult:
    """Fit per-group thresholds to N(mean, var) statistics by threshold iteration (method.md §7.6).

    Policies applied with both methods:

    - constant groups, σ ≤ 1e-6·|μ| (σ² = 0, or fp32 rounding noise of a constant channel, e.g. a BatchNorm with
      zero scale): θ = μ if μ > 0 (represents the value exactly); otherwise θ = 1 and the group counts in
      ``n_dead``.
    - non-finite mean or variance: raise, or with ``nonfinite="ignore"`` set θ = 1 and count in ``n_nonfinite``.

    Args:
        mean: per-group means (any shape).
        var: per-group population variances, same shape as ``mean``, ≥ 0.
        N: number of quantiser levels (T for IF neurons, T·2^n for MT neurons).
        method: ``"solve"``: safeguarded root finding of log k = 0 on log θ (bracket by halving/doubling, then
            Illinois false position with a bisection fallback) until the relative bracket width is ≤ ``rtol``.
            It never stops on |k − 1| < ε: k is extremely flat near the root for large N.
            ``"reference"``: the published algorithm, θ = 1 then exactly 100 updates θ ← θ·k(θ), NaN → 1,
            clamp ≥ 0 (``rtol`` and ``max_iter`` are not used).
        rtol: relative bracket width at which ``"solve"`` stops.
        max_iter: maximum number of refinement steps of ``"solve"`` after bracketing.
        nonfinite: ``"raise"`` or ``"ignore"``.

    Returns:
        A :class:`FitResult` whose tensors have the shape of ``mean``, on the device of ``mean`` (the fit itself runs
        in float64 on the CPU).

    Raises:
        ConfigError: an invalid argument.
        CalibrationError: non-finite statistics with ``nonfinite="raise"``, or negative variances.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    if not (0.0 < rtol < 1.0):
        raise ConfigError(f"rtol must be in (0, 1), got {rtol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    N = _check_n(N)
    mean = _as_f64("mean", mean)
    var = _as_f64("var", var)
    if mean.shape != var.shape:
        raise ConfigError(f"mean and var must have the same shape, got {tuple(mean.shape)} and {tuple(var.shape)}")
    shape = mean.shape
    mu, v = mean.reshape(-1).cpu(), var.reshape(-1).cpu()

    bad = ~(torch.isfinite(mu) & torch.isfinite(v))
    n_nonfinite = int(bad.sum())
    if n_nonfinite and nonfinite == "raise":
        raise CalibrationError(
            f"{n_nonfinite} of {mu.numel()} group(s) have non-finite mean or variance; "
            "check the calibration data or pass nonfinite='ignore'"
        )
    n_negative = int(((v < 0) & ~bad).sum())
    if n_negative:
        raise CalibrationError(f"{n_negative} group(s) have a negative variance; variances must be >= 0")
    const = ~bad & (v <= (CONSTANT_RTOL * mu.abs()) ** 2)
    dead = const & (mu <= 0)
    live = ~bad & ~const

    theta = torch.ones_like(mu)
    n_iter = torch.zeros(mu.shape, dtype=torch.int64)
    converged = const.clone()
    residual = torch.zeros_like(mu)
    residual[bad] = math.nan
    theta[const & ~dead] = mu[const & ~dead]

    if live.any():
        mu_l, sd_l = mu[live], torch.sqrt(v[live])
        if method == "solve":
            th_l, it_l, conv_l = _solve(mu_l, sd_l, N, rtol, max_iter)
        else:
            th_l = _reference(mu_l, sd_l, N)
            it_l = torch.full(mu_l.shape, REFERENCE_ITERATIONS, dtype=torch.int64)
            conv_l = torch.zeros(mu_l.shape, dtype=torch.bool)
        safe = th_l > 0
        res_l = torch.full_like(th_l, math.nan)
        if safe.any():
            res_l[safe] = (k_ratio(th_l[safe], mu_l[safe], sd_l[safe], N) - 1.0).abs()
        theta[live], n_iter[live], converged[live], residual[live] = th_l, it_l, conv_l, res_l

    n_dead = int(dead.sum())
    n_fail = int((live & ~converged).sum()) if method == "solve" else 0
    logger.debug(
        "fit_thresholds(%s, N=%d): %d group(s), %d dead, %d non-finite, %d not converged",
        method, N, mu.numel(), n_dead, n_nonfinite, n_fail,
    )
    if n_fail:
        logger.warning("fit_thresholds: %d group(s) did not converge to rtol=%g", n_fail, rtol)
    dev = mean.device
    return FitResult(
        threshold=theta.reshape(shape).to(dev),
        n_iter=n_iter.reshape(shape).to(dev),
        converged=converged.reshape(shape).to(dev),
        residual=residual.reshape(shape).to(dev),
        n_dead=n_dead,
        n_nonfinite=n_nonfinite,
    )
