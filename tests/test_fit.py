"""Threshold fitting (method.md §7.6, §12 item 18).

Tolerances: the §7.6 table is compared at its printed precision (half a unit of the last printed digit), the
brute-force QE minimiser within 0.5 %, float64 re-computations of the same quantity to 1e-12 relative.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from snnconvert.convert.calibrate.fit import FitResult, fit_thresholds, k_ratio, qe
from snnconvert.convert.errors import CalibrationError, ConfigError

F64 = torch.float64

# (μ, σ, N): (printed root, printed 100-iteration reference value), method.md §7.6
TABLE = {
    (0.0, 1.0, 4): ("2.1353", "2.135"),
    (0.0, 1.0, 16): ("2.9330", "2.910"),
    (0.2, 0.5, 16): ("1.6127", "1.600"),
    (0.0, 1.0, 128): ("3.9239", "3.211"),
    (-0.5, 1.0, 64): ("3.2564", "2.874"),
    (0.1, 0.3, 256): ("1.3457", "1.092"),
    (0.1, 0.3, 1024): ("1.5108", "1.093"),
}


def _half_unit(printed: str) -> float:
    return 0.5 * 10.0 ** -len(printed.split(".")[1])


def _fit_table(method: str) -> tuple[dict, FitResult]:
    cases = list(TABLE)
    mean = torch.tensor([c[0] for c in cases], dtype=F64)
    var = torch.tensor([c[1] ** 2 for c in cases], dtype=F64)
    results = {}
    for N in sorted({c[2] for c in cases}):
        sel = [i for i, c in enumerate(cases) if c[2] == N]
        res = fit_thresholds(mean[sel], var[sel], N, method=method)
        for j, i in enumerate(sel):
            results[cases[i]] = (res.threshold[j].item(), res.n_iter[j].item(), bool(res.converged[j]),
                                 res.residual[j].item())
    return results, res


def _k_literal(theta: float, mu: float, sigma: float, N: int) -> float:
    """§7.6 update written literally with erf (no rewriting), for moderate arguments."""
    i = torch.arange(1, N + 1, dtype=F64)
    c = (2 * i - 1) * theta / (2 * N)
    z = (c - mu) / (math.sqrt(2) * sigma)
    A = torch.erf(z).sum() / N
    B = ((2 * i - 1) * torch.erf(z)).sum() / N**2
    C = torch.exp(-(z**2)).sum() / N
    return ((mu * (1 - A) + sigma * math.sqrt(2 / math.pi) * C) / (1 - B)).item() / theta


# ---------------------------------------------------------------------------------------------------------------------
# solve and reference against the §7.6 table
# ---------------------------------------------------------------------------------------------------------------------


def test_solve_reaches_table_roots() -> None:
    results, _ = _fit_table("solve")
    for key, (printed_root, _) in TABLE.items():
        theta, n_iter, converged, residual = results[key]
        assert converged, key
        assert abs(theta - float(printed_root)) <= _half_unit(printed_root), (key, theta, printed_root)
        assert 0 < n_iter <= 60 and residual < 1e-6
    # rtol is honoured: the default result lies within rtol of a much tighter solve
    mu, sigma, N = 0.1, 0.3, 1024
    loose = fit_thresholds(torch.tensor([mu], dtype=F64), torch.tensor([sigma**2], dtype=F64), N)
    tight = fit_thresholds(torch.tensor([mu], dtype=F64), torch.tensor([sigma**2], dtype=F64), N, rtol=1e-12)
    assert bool(tight.converged[0])
    assert abs(loose.threshold[0] / tight.threshold[0] - 1) <= 1e-6


def test_reference_reproduces_100_iteration_column() -> None:
    results, _ = _fit_table("reference")
    for key, (_, printed_ref) in TABLE.items():
        theta, n_iter, converged, residual = results[key]
        assert abs(theta - float(printed_ref)) <= 1e-3, (key, theta, printed_ref)
        assert n_iter == 100 and not converged
        assert residual == pytest.approx(abs(k_ratio(theta, *key).item() - 1), rel=1e-12, abs=1e-15)
    # §7.6: the 100-iteration result still has |k − 1| ≈ 1e-3 at N = 128, and is about 0.82 of the root
    theta_ref, _, _, residual = results[(0.0, 1.0, 128)]
    assert 5e-4 < residual < 2e-3
    assert theta_ref / 3.9239 == pytest.approx(0.82, abs=0.005)


def test_solve_does_not_stop_on_a_flat_k() -> None:
    """At N = 1024, |k − 1| < 5e-7 within ±1 % of the root (§7.6); the solver must still locate the root to rtol."""
    mu, sigma, N = 0.1, 0.3, 1024
    res = fit_thresholds(torch.tensor([mu], dtype=F64), torch.tensor([sigma**2], dtype=F64), N, rtol=1e-8)
    root = res.threshold[0].item()
    for f in (0.99, 1.01):
        assert abs(k_ratio(root * f, mu, sigma, N).item() - 1) < 5e-7
    assert k_ratio(root * 0.99, mu, sigma, N) > 1 > k_ratio(root * 1.01, mu, sigma, N)
    assert root == pytest.approx(1.5108, abs=5e-5)


# ---------------------------------------------------------------------------------------------------------------------
# brute force: the root is the QE minimiser
# ---------------------------------------------------------------------------------------------------------------------


def test_qe_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    for mu, sigma, N, theta in [(0.0, 1.0, 4, 2.0), (0.2, 0.5, 16, 1.6), (-0.5, 1.0, 64, 3.3)]:
        x = torch.randn(400_000, generator=g, dtype=F64) * sigma + mu
        f = (theta / N) * torch.clamp(torch.floor(N * x / theta + 0.5), 0, N)
        sq = (f - x.clamp(min=0)) ** 2
        se = sq.std().item() / math.sqrt(sq.numel())
        assert abs(qe(theta, mu, sigma, N).item() - sq.mean().item()) <= 4 * se
    # the quadrature has converged
    for args in [(2.1, 0.0, 1.0, 4), (1.5, 0.1, 0.3, 1024), (0.5, -0.5, 1.0, 64)]:
        assert qe(*args, n_nodes=16).item() == pytest.approx(qe(*args, n_nodes=32).item(), rel=1e-12)


def _brute_force_minimiser(mu: torch.Tensor, sigma: torch.Tensor, N: int) -> torch.Tensor:
    """Dense log-grid over θ, then golden-section search around the best grid point (vectorised over groups)."""
    scale = mu.abs() + sigma
    grid = torch.logspace(math.log10(0.05), math.log10(20.0), 80, dtype=F64)
    thetas = scale[:, None] * grid[None, :]
    values = qe(thetas, mu[:, None], sigma[:, None], N)
    best = values.argmin(dim=1)
    lo = thetas.gather(1, (best - 1).clamp(min=0)[:, None]).squeeze(1)
    hi = thetas.gather(1, (best + 1).clamp(max=grid.numel() - 1)[:, None]).squeeze(1)
    r = (math.sqrt(5) - 1) / 2
    for _ in range(45):
        a, b = hi - r * (hi - lo), lo + r * (hi - lo)
        left = qe(a, mu, sigma, N) < qe(b, mu, sigma, N)
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("N", [4, 16, 64, 256, 1024])
def test_solve_agrees_with_brute_force_qe_minimiser(N: int) -> None:
    mu = torch.tensor([-0.5, 0.0, 0.3, -0.5, 0.0, 0.3, 1.0], dtype=F64)
    sigma = torch.tensor([1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.5], dtype=F64)
    res = fit_thresholds(mu, sigma**2, N)
    assert res.converged.all()
    brute = _brute_force_minimiser(mu, sigma, N)
    rel = (res.threshold / brute - 1).abs()
    assert rel.max() <= 5e-3, rel
    # and the fitted θ is not worse than the brute-force one (up to the flatness of QE at the optimum)
    assert (qe(res.threshold, mu, sigma, N) <= qe(brute, mu, sigma, N) * (1 + 1e-6)).all()


# ---------------------------------------------------------------------------------------------------------------------
# k_ratio: the rewritten form, tails, chunking, sign property
# ---------------------------------------------------------------------------------------------------------------------


def test_k_ratio_equals_literal_formula() -> None:
    for theta, mu, sigma, N in [(1.0, 0.0, 1.0, 4), (2.5, 0.2, 0.5, 16), (3.0, -0.5, 1.0, 64), (1.2, 0.1, 0.3, 256)]:
        assert k_ratio(theta, mu, sigma, N).item() == pytest.approx(_k_literal(theta, mu, sigma, N), rel=1e-12)


def test_k_ratio_tails_against_high_precision() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50

    def k_mp(theta, mu, sigma, N):
        theta, mu, sigma = mpmath.mpf(theta), mpmath.mpf(mu), mpmath.mpf(sigma)
        num = den = mpmath.mpf(0)
        for i in range(1, N + 1):
            z = ((2 * i - 1) * theta / (2 * N) - mu) / (mpmath.sqrt(2) * sigma)
            num += mu * mpmath.erfc(z) + sigma * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-(z**2))
            den += (2 * i - 1) * mpmath.erfc(z)
        return float(N * num / den / theta)

    cases = [(0.5, -5.0, 0.1, 8), (60.0, 0.0, 1.0, 16), (1.0, -40.0, 1.0, 4), (0.05, 1.0, 0.001, 4)]
    for case in cases:
        got = k_ratio(*case).item()
        assert math.isfinite(got) and got == pytest.approx(k_mp(*case), rel=1e-9), case
    # the literal erf form breaks down there (cancellation / 0/0), which is why k_ratio is rewritten
    assert not math.isfinite(_k_literal(1.0, -40.0, 1.0, 4))


def test_chunked_equals_unchunked() -> None:
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(50, generator=g, dtype=F64)
    sigma = torch.rand(50, generator=g, dtype=F64) + 0.05
    theta = torch.rand(50, generator=g, dtype=F64) * 3 + 0.2
    full = k_ratio(theta, mu, sigma, 1024, chunk_size=1024)
    # only the summation order differs: fp64 agreement to 1e-12 (method.md §12 default)
    for chunk in (1, 37, 500):
        torch.testing.assert_close(k_ratio(theta, mu, sigma, 1024, chunk_size=chunk), full, rtol=1e-12, atol=0)
    torch.testing.assert_close(k_ratio(theta, mu, sigma, 1024), full, rtol=1e-12, atol=0)


def test_default_chunking_bounds_the_temporaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny element budget the default path must split the N terms and still give the same k."""
    from snnconvert.convert.calibrate import fit

    g = torch.Generator().manual_seed(6)
    mu, sigma = torch.randn(40, generator=g, dtype=F64), torch.rand(40, generator=g, dtype=F64) + 0.1
    theta = torch.full((40,), 1.7, dtype=F64)
    full = k_ratio(theta, mu, sigma, 1024, chunk_size=1024)
    sizes = []
    real_arange = torch.arange

    def spy(*args, **kwargs):
        out = real_arange(*args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(fit, "_CHUNK_ELEMENTS", 40 * 64)
    monkeypatch.setattr(fit.torch, "arange", spy)
    chunked = k_ratio(theta, mu, sigma, 1024)
    monkeypatch.undo()
    assert max(sizes) == 64 and sum(sizes) == 1024  # 16 chunks of 64 terms: [40, 64] temporaries
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=0)


def test_k_above_one_below_root_and_below_one_above() -> None:
    for mu, sigma, N in [(0.0, 1.0, 4), (-0.5, 1.0, 64), (0.1, 0.3, 256), (2.0, 0.5, 16)]:
        root = fit_thresholds(torch.tensor([mu], dtype=F64), torch.tensor([sigma**2], dtype=F64), N).threshold[0]
        factors = torch.logspace(-3, 3, 61, base=2, dtype=F64)
        k = k_ratio(root * factors, mu, sigma, N)
        assert (k[factors < 0.999] > 1).all() and (k[factors > 1.001] < 1).all()


# ---------------------------------------------------------------------------------------------------------------------
# policies, vectorisation, validation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["solve", "reference"])
def test_zero_variance_policy(method: str) -> None:
    mean = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.0], dtype=F64)
    var = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=F64)
    res = fit_thresholds(mean, var, 16, method=method)
    assert res.threshold[:4].tolist() == [2.0, 1.0, 1.0, 0.5]
    assert res.n_dead == 2 and res.n_nonfinite == 0
    assert res.converged[:4].all() and (res.residual[:4] == 0).all() and (res.n_iter[:4] == 0).all()
    alone = fit_thresholds(mean[4:], var[4:], 16, method=method)
    assert res.threshold[4] == alone.threshold[0]
    # a constant fp32 channel pooled over a data set has rounding-noise variance (found in torchvision's GoogLeNet:
    # μ = −0.215, σ² = 6.7e-18, where no bracket of the root exists): constant up to σ ≤ 1e-6·|μ|
    near = fit_thresholds(torch.tensor([-0.215, 0.3, 1.0], dtype=F64),
                          torch.tensor([6.7e-18, (0.3e-7) ** 2, (2e-6) ** 2], dtype=F64), 64, method=method)
    assert near.threshold[:2].tolist() == [1.0, 0.3] and near.n_dead == 1 and near.converged[:2].all()
    assert (near.n_iter[:2] == 0).all() and near.n_iter[2] > 0  # σ = 2e-6·μ is still fitted
    if method == "solve":
        assert near.converged[2]


def test_nonfinite_policy() -> None:
    mean = torch.tensor([0.0, math.nan, 0.2, 1.0], dtype=F64)
    var = torch.tensor([1.0, 1.0, math.inf, 0.25], dtype=F64)
    with pytest.raises(CalibrationError, match=r"^2 of 4 group\(s\)"):
        fit_thresholds(mean, var, 16)
    res = fit_thresholds(mean, var, 16, nonfinite="ignore")
    assert res.n_nonfinite == 2 and res.n_dead == 0
    assert res.threshold[1:3].tolist() == [1.0, 1.0] and not res.converged[1:3].any()
    clean = fit_thresholds(mean[[0, 3]], var[[0, 3]], 16)
    torch.testing.assert_close(res.threshold[[0, 3]], clean.threshold, rtol=0, atol=0)
    with pytest.raises(CalibrationError, match="negative variance"):
        fit_thresholds(torch.zeros(3, dtype=F64), torch.tensor([1.0, -1e-3, 1.0], dtype=F64), 16)


@pytest.mark.parametrize("method", ["solve", "reference"])
def test_vectorised_equals_per_group(method: str) -> None:
    g = torch.Generator().manual_seed(8)
    C = 12
    mean = torch.randn(C, 1, 1, generator=g, dtype=F64) * 0.5
    var = (torch.rand(C, 1, 1, generator=g, dtype=F64) + 0.05) ** 2
    var[3] = 0.0  # a constant channel inside the batch of groups
    res = fit_thresholds(mean, var, 64, method=method, rtol=1e-10)
    assert res.threshold.shape == (C, 1, 1) and res.threshold.dtype == F64
    for field in ("n_iter", "converged", "residual"):
        assert getattr(res, field).shape == (C, 1, 1)
    for c in range(C):
        one = fit_thresholds(mean[c].reshape(()).item(), var[c].reshape(()).item(), 64, method=method, rtol=1e-10)
        assert one.threshold.shape == ()
        assert one.threshold.item() == pytest.approx(res.threshold[c].item(), rel=2e-10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n_dead = 3  # type: ignore[misc]


def test_extreme_groups_converge() -> None:
    # nearly dead (μ = −40σ), nearly constant (σ = μ/1000) and a wide group; float32 statistics are accepted
    mean = torch.tensor([-4.0, 1.0, 0.0], dtype=torch.float32)
    var = torch.tensor([0.01, 1e-6, 100.0], dtype=torch.float32)
    res = fit_thresholds(mean, var, 128)
    assert res.threshold.dtype == F64 and res.converged.all() and torch.isfinite(res.threshold).all()
    assert (res.threshold > 0).all()
    assert res.residual.max() < 1e-5
    # |k − 1| says little where k is flat (§7.6): the result must bracket the root, k > 1 just below, < 1 just above
    mu, sigma = mean.double(), var.double().sqrt()
    assert (k_ratio(res.threshold * (1 - 1e-4), mu, sigma, 128) > 1).all()
    assert (k_ratio(res.threshold * (1 + 1e-4), mu, sigma, 128) < 1).all()


def test_invalid_arguments() -> None:
    m, v = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    with pytest.raises(ConfigError, match="method"):
        fit_thresholds(m, v, 8, method="newton")
    with pytest.raises(ConfigError, match="nonfinite"):
        fit_thresholds(m, v, 8, nonfinite="zero")
    with pytest.raises(ConfigError, match="N "):
        fit_thresholds(m, v, 0)
    with pytest.raises(ConfigError, match="same shape"):
        fit_thresholds(m, torch.ones(3, dtype=F64), 8)
    with pytest.raises(ConfigError, match="rtol"):
        fit_thresholds(m, v, 8, rtol=0.0)
    with pytest.raises(ConfigError, match="max_iter"):
        fit_thresholds(m, v, 8, max_iter=0)
