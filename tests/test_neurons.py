"""Invariant tests of the reference spiking neurons (method.md §4, §10, §12 items 5–12).

Tolerances: fp32 results are checked to 1e-6·θ, fp64 results to 1e-12·θ (method.md §12), bit-exact where the
arithmetic is identical (single-step loop vs multi-step, dyadic inputs).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnconvert.convert.coding.neurons import (
    SpikingNeuron,
    if_diff_multistep_ref,
    if_fire,
    if_rate_multistep_ref,
    make_neuron,
    mt_diff_multistep_ref,
    mt_fire,
    mt_rate_multistep_ref,
)
from snnconvert.convert.errors import CalibrationError, ConfigError

FP32_TOL = 1e-6
FP64_TOL = 1e-12


def _steps(T: int, dtype=torch.float64) -> torch.Tensor:
    return torch.arange(1, T + 1, dtype=dtype)


def _decode_diff(d: torch.Tensor) -> torch.Tensor:
    """r_t = Σ_{τ≤t} d_τ/τ in fp64, for every t ([T, ...])."""
    t = _steps(d.shape[0]).reshape(-1, *([1] * (d.dim() - 1)))
    return (d.double() / t).cumsum(0)


def _decode_rate(s: torch.Tensor) -> torch.Tensor:
    """Running mean (1/t)·Σ_{τ≤t} s_τ in fp64."""
    t = _steps(s.shape[0]).reshape(-1, *([1] * (s.dim() - 1)))
    return s.double().cumsum(0) / t


def _diff_static_input(x: torch.Tensor, T: int) -> torch.Tensor:
    """Raw per-step input of a unit with a static input and zero bias: x at t = 1, 0 afterwards (§10)."""
    xs = torch.zeros(T, *x.shape, dtype=x.dtype)
    xs[0] = x
    return xs


# ---------------------------------------------------------------------------------------------------------------------
# §12.5 firing-rule tables
# ---------------------------------------------------------------------------------------------------------------------


def _expected_mt(m: float, c: float, levels: list[float], cuts: list[float], signed: bool, constrained: bool) -> float:
    """§4.4 written out literally: smallest i with m ≥ κ_i, else smallest i with m ≤ −κ_i (and C ≥ λ_i)."""
    for lam, cut in zip(levels, cuts):
        if m >= cut:
            return lam
    if signed:
        for lam, cut in zip(levels, cuts):
            if m <= -cut and (not constrained or c >= lam):
                return -lam
    return 0.0


@pytest.mark.parametrize("theta", [1.0, 0.37])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_mt_fire_table_at_every_cutoff(theta: float, n: int) -> None:
    f32 = np.float32
    levels = [f32(theta) * f32(2.0**-i) for i in range(n)]
    cuts = [lam * f32(0.75) for lam in levels]
    grid = {f32(0.0), f32(-0.0), f32(3.0 * theta), f32(-3.0 * theta)}
    for k in cuts + levels:
        for v in (k, -k):
            grid |= {v, np.nextafter(v, f32(np.inf)), np.nextafter(v, f32(-np.inf))}
    grid |= set(np.linspace(-2 * theta, 2 * theta, 101, dtype=np.float32))
    m_vals = np.array(sorted(grid), dtype=np.float32)
    c_grid = {f32(0.0), f32(10 * theta)}
    for lam in levels:
        c_grid |= {lam, np.nextafter(lam, f32(np.inf)), np.nextafter(lam, f32(-np.inf))}
    c_vals = np.array(sorted(c_grid), dtype=np.float32)
    mm, cc = np.meshgrid(m_vals, c_vals, indexing="ij")
    m_t, c_t = torch.from_numpy(mm.copy()), torch.from_numpy(cc.copy())
    th = torch.tensor(theta, dtype=torch.float32)
    allowed = {0.0} | {float(v) for lam in levels for v in (lam, -lam)}
    for signed, constrained in [(False, True), (True, True), (True, False)]:
        out = mt_fire(m_t, c_t, th, n, signed, constrained)
        assert out.dtype == torch.float32 and out.shape == m_t.shape
        expected = np.vectorize(lambda m, c, s=signed, k=constrained: _expected_mt(m, c, levels, cuts, s, k))(mm, cc)
        np.testing.assert_array_equal(out.numpy(), expected.astype(np.float32))
        assert set(np.unique(out.numpy()).tolist()) <= allowed  # one event of one level per element
    # spot checks written from §4.4 itself
    k0 = cuts[0]
    one = torch.ones(())
    assert mt_fire(one * k0, None, th, n, False, True) == levels[0]
    below = np.nextafter(k0, f32(-np.inf))
    assert mt_fire(one * below, None, th, n, False, True) == (levels[1] if n > 1 else 0.0)
    kmin = cuts[-1]
    assert mt_fire(one * np.nextafter(kmin, f32(-np.inf)), None, th, n, False, True) == 0.0  # dead zone
    assert mt_fire(one * np.nextafter(-kmin, f32(np.inf)), one * 10, th, n, True, True) == 0.0
    if n >= 2:  # §4.4: m = −θ with C = θ/2 gives −θ/2 under the constraint
        assert mt_fire(-one * theta, one * levels[1], th, n, True, True) == -levels[1]
        assert mt_fire(-one * theta, one * levels[1], th, n, True, False) == -levels[0]


def test_if_fire_table() -> None:
    f32 = np.float32
    theta = f32(0.6)
    th = torch.tensor(theta)
    below = np.nextafter(theta, f32(0))
    m = torch.tensor([-1.0, 0.0, np.nextafter(f32(0), f32(1)), 0.3, below, theta, 2.0], dtype=torch.float32)
    c_hi, c_lo = torch.full_like(m, float(theta)), torch.full_like(m, float(below))
    z, p = 0.0, float(theta)
    torch.testing.assert_close(if_fire(m, None, th, False, True), torch.tensor([z, z, z, z, z, p, p]))
    torch.testing.assert_close(if_fire(m, c_hi, th, True, True), torch.tensor([-p, -p, z, z, z, p, p]))
    torch.testing.assert_close(if_fire(m, c_lo, th, True, True), torch.tensor([z, z, z, z, z, p, p]))
    torch.testing.assert_close(if_fire(m, None, th, True, False), torch.tensor([-p, -p, z, z, z, p, p]))


# ---------------------------------------------------------------------------------------------------------------------
# §12.6 ReLU constraint
# ---------------------------------------------------------------------------------------------------------------------


def _adversarial_inputs(T: int, B: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(T, B, generator=g, dtype=torch.float64) * 1.5
    burst = torch.zeros(T, B, dtype=torch.float64)
    burst[: T // 4] = 2.0  # a strong positive phase, then strongly negative: forces negative events
    burst[T // 4 :] = -3.0
    alt = torch.tensor([3.0, -3.0], dtype=torch.float64).repeat(T // 2 + 1)[:T, None].expand(T, B)
    return torch.cat([noise, burst + 0.3 * noise, alt + 0.1 * noise], dim=1).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float64, FP64_TOL)])
def test_relu_constraint_keeps_decoded_output_non_negative(dtype, tol) -> None:
    T, theta = 40, 0.8
    x = _adversarial_inputs(T, 300, dtype)
    bias = torch.linspace(-1.0, 1.0, x.shape[1], dtype=dtype)
    cases = {
        "IF± rate": _decode_rate(if_rate_multistep_ref(x, theta, signed=True)),
        "MT± rate n=1": _decode_rate(mt_rate_multistep_ref(x, theta, n_levels=1, signed=True)),
        "MT± rate n=4": _decode_rate(mt_rate_multistep_ref(x, theta, n_levels=4, signed=True)),
        "MT-diff n=1": _decode_diff(mt_diff_multistep_ref(x, theta, bias, n_levels=1)),
        "MT-diff n=4": _decode_diff(mt_diff_multistep_ref(x, theta, bias, n_levels=4)),
        "IF-diff": _decode_diff(if_diff_multistep_ref(x, theta, bias)),
    }
    for name, r in cases.items():
        assert r.min() >= -tol * theta, f"{name}: decoded output {r.min():.3g} < 0"
    # the inputs are adversarial: without the constraint the same neurons do go negative
    assert _decode_diff(mt_diff_multistep_ref(x, theta, bias, n_levels=4, relu_constrained=False)).min() < -0.1
    assert _decode_rate(mt_rate_multistep_ref(x, theta, n_levels=4, signed=True, relu_constrained=False)).min() < -0.1


# ---------------------------------------------------------------------------------------------------------------------
# §12.8 rate IF bound, §12.9 MT-diff static bound
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [1.0, 0.3])
@pytest.mark.parametrize("T", [1, 2, 4, 7, 16, 64])
def test_rate_if_bound(theta: float, T: int) -> None:
    x = torch.linspace(0.0, theta, 513)
    s = if_rate_multistep_ref(x.expand(T, -1).contiguous(), theta)
    err = (s.double().mean(0) - x.double()).abs()
    assert err.max() <= theta / (2 * T) + FP32_TOL * theta
    assert set(torch.unique(s).tolist()) <= {0.0, float(torch.tensor(theta))}
    # saturation above θ and silence below 0 (§4.1)
    hi = if_rate_multistep_ref(torch.full((T, 5), 2.5 * theta), theta)
    assert torch.all(hi == torch.tensor(theta))
    assert torch.all(if_rate_multistep_ref(torch.full((T, 5), -0.1 * theta), theta) == 0)


T0 = {1: 1, 2: 1, 3: 2, 4: 3, 8: 6}
MAX_EVENTS_128 = {1: 5, 2: 5, 3: 6, 4: 6, 8: 8}
MEAN_EVENTS_128 = {1: 3.11, 2: 3.42, 3: 3.77, 4: 4.13, 8: 5.51}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float64, FP64_TOL)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_mt_diff_static_bound(n: int, dtype, tol) -> None:
    T, theta = 128, 1.0
    x = torch.linspace(0.0, theta, 10001, dtype=dtype)
    d = mt_diff_multistep_ref(_diff_static_input(x, T), theta, None, n_levels=n)
    err = (_decode_diff(d) - x.double()).abs()  # [T, X]
    bound = 0.75 * theta * 2.0 ** -(n - 1) / _steps(T)[:, None] + tol * theta
    holds = (err <= bound).all(dim=1)
    t0 = T0[n]
    assert holds[t0 - 1 :].all(), f"bound fails at t = {int((~holds[t0 - 1:]).nonzero()[0]) + t0}"
    if t0 > 1:  # t0 is tight: the bound does not hold one step earlier
        assert not holds[t0 - 2]
    events = (d != 0).sum(0).double()
    assert events.max() == MAX_EVENTS_128[n]
    assert abs(events.mean().item() - MEAN_EVENTS_128[n]) <= 0.05  # the grid of §10 is not specified


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_identity_neurons_represent_signed_values(n: int) -> None:
    """§4.7 / §4.2: without the ReLU constraint the neurons quantise y = x on [−θ, θ]. The MT-diff identity neuron
    meets the §12.9 bound |r_t − x| ≤ 0.75·λ_min/t from the same t0(n) on both signs with the same events as x
    (the rule is odd-symmetric); the signed rate IF neuron tracks its input within θ/(2T) (§12.8 on both signs)."""
    T, theta = 64, 1.0
    x = torch.linspace(-theta, theta, 4001, dtype=torch.float64)
    d = mt_diff_multistep_ref(_diff_static_input(x, T), theta, None, n_levels=n, relu_constrained=False)
    err = (_decode_diff(d) - x).abs()
    bound = 0.75 * theta * 2.0 ** -(n - 1) / _steps(T)[:, None] + FP64_TOL
    assert (err[T0[n] - 1:] <= bound[T0[n] - 1:]).all()
    torch.testing.assert_close(d, -d.flip(1), rtol=0, atol=0)  # x and −x: mirrored events
    if n == 1:  # the IF neuron has one level
        s = if_rate_multistep_ref(x.expand(T, -1).contiguous(), theta, signed=True, relu_constrained=False)
        assert (_decode_rate(s)[-1] - x).abs().max() <= theta / (2 * T) + FP64_TOL


def test_mt_diff_silent_unconstrained_step_bound() -> None:
    """§12.9: at a silent step where the constraint did not block an event, |R_in − R_out| < 0.75·λ_min/t."""
    g = torch.Generator().manual_seed(3)
    T, n, theta = 48, 4, 1.0
    x = (torch.randn(T, 4000, generator=g, dtype=torch.float64) * 0.7 + 0.2)
    d = mt_diff_multistep_ref(x, theta, None, n_levels=n)
    r_in, r_out = _decode_diff(x), _decode_diff(d)
    r_out_prev = torch.cat([torch.zeros_like(r_out[:1]), r_out[:-1]])
    t = _steps(T)[:, None]
    m = t * (r_in - r_out_prev)
    kmin = 0.75 * theta * 2.0 ** -(n - 1)
    blocked = m <= -kmin  # a negative event was due but the constraint held it back
    silent_free = (d == 0) & ~blocked
    assert silent_free.sum() > 1000 and blocked.sum() > 0
    gap = (r_in - r_out).abs()[silent_free]
    assert (gap < kmin / t.expand_as(d)[silent_free] + FP64_TOL).all()


# ---------------------------------------------------------------------------------------------------------------------
# §10 single-neuron tables
# ---------------------------------------------------------------------------------------------------------------------

# (n, T): (rate error, rate events, diff error, diff events), as printed in method.md §10 (strings keep the precision)
TABLE_MT = {
    (1, 4): ("0.076", 1.1, "0.067", 0.8),
    (1, 16): ("0.019", 5.3, "0.023", 1.3),
    (1, 64): ("0.0048", 22.1, "0.0067", 2.3),
    (4, 4): ("0.016", 3.5, "0.009", 1.7),
    (4, 16): ("0.0043", 14.2, "0.0029", 2.3),
    (4, 64): ("0.0011", 57.0, "0.0008", 3.3),
    (8, 4): ("0.015", 4.0, "0.0006", 3.0),
    (8, 16): ("0.0040", 15.9, "0.0002", 3.7),
    (8, 64): ("0.0010", 63.6, "0.0001", 4.7),
}
TABLE_IF = {4: ("0.062", 1.4, "0.083", 1.5), 16: ("0.0155", 5.6, "0.028", 8.6), 64: ("0.0039", 22.3, "0.0076", 38.9)}
N_SAMPLES = 20_000


def _error_tolerance(printed: str) -> float:
    """10 % relative, but never tighter than the printed precision (half a unit of the last printed digit)."""
    value = float(printed)
    decimals = len(printed.split(".")[1])
    return max(0.10 * value, 0.5 * 10.0**-decimals)


def _table_inputs(seed: int) -> torch.Tensor:
    """N_SAMPLES draws of x = clip(|N(0.3, 0.3²)|, 0, 1), stratified (one uniform per 1/N_SAMPLES stratum).

    Stratification keeps the sampling noise of the means far below the tolerance at this sample size; the noise is
    measured by drawing two independent stratified samples (seeds) and comparing their estimates.
    """
    g = torch.Generator().manual_seed(seed)
    u = (torch.arange(N_SAMPLES, dtype=torch.float64) + torch.rand(N_SAMPLES, generator=g, dtype=torch.float64))
    z = math.sqrt(2.0) * torch.erfinv(2.0 * u / N_SAMPLES - 1.0)
    return (0.3 + 0.3 * z).abs().clamp(0.0, 1.0).float()


def _check_cell(name: str, cells: list[tuple[float, float]], printed_err: str, printed_events: float) -> None:
    """cells: (mean error, mean events) from two independent samples."""
    (err_a, ev_a), (err_b, ev_b) = cells
    tol = _error_tolerance(printed_err)
    assert abs(err_a - err_b) <= 0.25 * tol, f"{name}: sampling noise {abs(err_a - err_b):.2g} vs tolerance {tol:.2g}"
    assert abs(ev_a - ev_b) <= 0.05, f"{name}: event sampling noise {abs(ev_a - ev_b):.3f}"
    assert abs(err_a - float(printed_err)) <= tol, f"{name}: error {err_a:.5f} vs {printed_err} (tol {tol:.2g})"
    assert abs(ev_a - printed_events) <= 0.2, f"{name}: events {ev_a:.2f} vs {printed_events}"


def _rate_cell(s: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    return (s.double().mean(0) - x).abs().mean().item(), (s != 0).sum(0).double().mean().item()


def _diff_cell(d: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    return (_decode_diff(d)[-1] - x).abs().mean().item(), (d != 0).sum(0).double().mean().item()


def test_table_10_multi_threshold() -> None:
    samples = [_table_inputs(seed) for seed in (2025, 2026)]
    for (n, T), (rate_err, rate_ev, diff_err, diff_ev) in TABLE_MT.items():
        rate = [
            _rate_cell(mt_rate_multistep_ref(x.expand(T, -1).contiguous(), 1.0, n_levels=n, signed=True), x)
            for x in samples
        ]
        _check_cell(f"rate n={n} T={T}", rate, rate_err, rate_ev)
        diff = [_diff_cell(mt_diff_multistep_ref(_diff_static_input(x, T), 1.0, None, n_levels=n), x) for x in samples]
        _check_cell(f"diff n={n} T={T}", diff, diff_err, diff_ev)


def test_table_10_single_threshold_if() -> None:
    samples = [_table_inputs(seed) for seed in (2025, 2026)]
    for T, (rate_err, rate_ev, diff_err, diff_ev) in TABLE_IF.items():
        rate = [_rate_cell(if_rate_multistep_ref(x.expand(T, -1).contiguous(), 1.0), x) for x in samples]
        _check_cell(f"IF rate T={T}", rate, rate_err, rate_ev)
        diff = [_diff_cell(if_diff_multistep_ref(_diff_static_input(x, T), 1.0, None), x) for x in samples]
        _check_cell(f"IF-diff T={T}", diff, diff_err, diff_ev)


# ---------------------------------------------------------------------------------------------------------------------
# §12.11 inputs above θ
# ---------------------------------------------------------------------------------------------------------------------


def test_inputs_above_threshold() -> None:
    expected = {
        1.2: [1.0, 1.25, 1.208, 1.208, 1.198, 1.201],
        2.0: [1.0, 1.5, 1.958, 2.008, 1.998, 2.001],
        3.0: [1.0, 1.5, 2.083, 2.718, 2.999, 2.999],
    }
    at = [1, 2, 4, 8, 16, 64]
    x = torch.tensor(list(expected))
    d = mt_diff_multistep_ref(_diff_static_input(x, 64), 1.0, None, n_levels=4)
    r = _decode_diff(d)
    for j, seq in enumerate(expected.values()):
        got = [r[t - 1, j].item() for t in at]
        np.testing.assert_allclose(got, seq, atol=1e-3, rtol=0)
    s = mt_rate_multistep_ref(x.expand(64, -1).contiguous(), 1.0, n_levels=4, signed=True)
    assert torch.all(_decode_rate(s) == 1.0)  # rate MT saturates at θ at every t
    # differential output is not clipped at θ, but each event is capped at θ: R_out,t ≤ θ·H_t
    big = torch.linspace(1.0, 20.0, 200)
    for theta in (1.0, 0.45):
        r_big = _decode_diff(mt_diff_multistep_ref(_diff_static_input(big, 64), theta, None, n_levels=4))
        harmonic = torch.cumsum(1.0 / _steps(64), 0)[:, None]
        assert (r_big <= theta * harmonic + FP32_TOL * theta).all()
        assert (r_big[1] > theta).any()  # the bound is reached above θ, not a clip at θ


# ---------------------------------------------------------------------------------------------------------------------
# §12.7 state identities: independent five-state fp64 reference form vs the reduced form
# ---------------------------------------------------------------------------------------------------------------------


def _five_state(x, b, theta, *, n, kind, constrained):
    """§4.6 lines 1–7 (§4.3 for IF) in fp64. Returns events, per-step membranes at the test and C at the test."""
    T = x.shape[0]
    r_in = b.expand(x.shape[1:]).clone()
    r_out = torch.zeros_like(r_in)
    m = torch.full_like(r_in, theta / 2 if kind == "if" else 0.0)
    c = torch.zeros_like(r_in)
    levels = [theta * 2.0**-i for i in range(n)]
    events, m_test, c_test = [], [], []
    for t in range(1, T + 1):
        u = x[t - 1] - b
        m = m + u + r_in - r_out
        c = c + r_out
        m_test.append(m.clone())
        c_test.append(c.clone())
        if kind == "if":
            d = theta * (m >= theta).double()
            neg = (m <= 0) & ((c >= theta) if constrained else True)
            d = torch.where(neg, -theta, d)
        else:
            d = torch.zeros_like(m)
            done = torch.zeros_like(m, dtype=torch.bool)
            for lam in levels:
                hit = ~done & (m >= 0.75 * lam)
                d, done = torch.where(hit, lam, d), done | hit
            for lam in levels:
                hit = ~done & (m <= -0.75 * lam) & ((c >= lam) if constrained else True)
                d, done = torch.where(hit, -lam, d), done | hit
        m = m - d
        c = c + d
        r_in = r_in + u / t
        r_out = r_out + d / t
        # identities after every step: m = t·(R_in − R_out) (+ θ/2 for IF), C = t·R_out
        off = theta / 2 if kind == "if" else 0.0
        scale = t * (1.0 + r_in.abs().max() + r_out.abs().max())
        assert (m - off - t * (r_in - r_out)).abs().max() <= 1e-12 * scale
        assert (c - t * r_out).abs().max() <= 1e-12 * scale
        events.append(d)
    return torch.stack(events), torch.stack(m_test), torch.stack(c_test)


@pytest.mark.parametrize("kind,n", [("mt", 1), ("mt", 4), ("mt", 8), ("if", 1)])
@pytest.mark.parametrize("constrained", [True, False])
def test_reduced_form_matches_five_state_reference(kind: str, n: int, constrained: bool) -> None:
    g = torch.Generator().manual_seed(11)
    T, B, theta = 32, 3000, 0.7
    b = torch.randn(B, generator=g, dtype=torch.float64) * 0.5
    x = b + torch.randn(T, B, generator=g, dtype=torch.float64) * 0.6 + 0.1
    ref, m_test, c_test = _five_state(x, b, theta, n=n, kind=kind, constrained=constrained)
    if kind == "if":
        got = if_diff_multistep_ref(x, theta, b, relu_constrained=constrained)
        cuts, negative = [theta, 0.0], [(theta, 0.0)]  # negative: (level, cut-off) pairs of the constrained branch
    else:
        got = mt_diff_multistep_ref(x, theta, b, n_levels=n, relu_constrained=constrained)
        cuts = [s * 0.75 * theta * 2.0**-i for i in range(n) for s in (1, -1)]
        negative = [(theta * 2.0**-i, -0.75 * theta * 2.0**-i) for i in range(n)]
    margin = 1e-9 * theta
    near = torch.zeros_like(m_test, dtype=torch.bool)
    for k in cuts:
        near |= (m_test - k).abs() < margin
    if constrained:
        # C = t·R_out often equals a level exactly (e.g. 2·λ_{i+1} = λ_i after one event), so the C ≥ λ_i test has
        # ties too; they matter only where that negative event is due (m ≤ −κ_i)
        for lam, cut in negative:
            near |= ((c_test - lam).abs() < margin) & (m_test <= cut + margin)
    tainted = near.cummax(dim=0).values  # after a near-tie the two forms may legitimately diverge
    assert tainted[-1].float().mean() < 0.10
    assert torch.equal(got[~tainted], ref[~tainted])
    assert (got != 0).sum() > T * B // 10  # the comparison covers many events


# ---------------------------------------------------------------------------------------------------------------------
# §12.12 single step == multi-step, module paths, θ = 0, capture
# ---------------------------------------------------------------------------------------------------------------------

COMBOS = [
    # kind, coding, n_levels, signed, relu_constrained
    ("if", "rate", 1, False, True),
    ("if", "rate", 1, True, True),
    ("if", "rate", 1, True, False),
    ("mt", "rate", 1, False, True),
    ("mt", "rate", 3, False, True),
    ("mt", "rate", 3, True, True),
    ("mt", "rate", 3, True, False),
    ("if", "differential", 1, True, True),
    ("if", "differential", 1, True, False),
    ("mt", "differential", 1, True, True),
    ("mt", "differential", 3, True, True),
    ("mt", "differential", 3, True, False),
]


def _functional(neuron: SpikingNeuron, x: torch.Tensor) -> torch.Tensor:
    if neuron.coding == "rate" and neuron.kind == "if":
        return if_rate_multistep_ref(
            x, neuron.threshold, signed=neuron.signed, relu_constrained=neuron.relu_constrained
        )
    if neuron.coding == "rate":
        return mt_rate_multistep_ref(
            x, neuron.threshold, n_levels=neuron.n_levels, signed=neuron.signed,
            relu_constrained=neuron.relu_constrained,
        )
    if neuron.kind == "if":
        return if_diff_multistep_ref(x, neuron.threshold, neuron.bias, relu_constrained=neuron.relu_constrained)
    return mt_diff_multistep_ref(
        x, neuron.threshold, neuron.bias, n_levels=neuron.n_levels, relu_constrained=neuron.relu_constrained
    )


@pytest.mark.parametrize("kind,coding,n,signed,constrained", COMBOS)
@pytest.mark.parametrize("layout", ["conv", "tokens"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_single_step_loop_equals_multistep(kind, coding, n, signed, constrained, layout, dtype) -> None:
    g = torch.Generator().manual_seed(5)
    T, B, C = 7, 2, 3
    if layout == "conv":  # [T, B, C, H, W] with a [C, 1, 1] threshold
        per_sample, channel_dim, threshold = (C, 4, 5), 2, torch.tensor([0.9, 0.0, 0.35]).reshape(C, 1, 1)
    else:  # token tensors [T, B, L, C] with a [C] threshold on the last dim
        per_sample, channel_dim, threshold = (6, C), 3, torch.tensor([0.9, 0.0, 0.35])
    neuron = make_neuron(
        threshold, coding=coding, kind=kind, n_levels=n, signed=signed, relu_constrained=constrained
    )
    x = (torch.randn(T, B, *per_sample, generator=g) * 0.8 + 0.2).to(dtype)
    if coding == "differential":
        neuron.bias = torch.randn(1, *per_sample, generator=g) * 0.3
        x = x + neuron.bias.to(dtype)
    y_multi = neuron.multistep(x)
    assert y_multi.dtype == dtype and y_multi.shape == x.shape
    assert torch.equal(y_multi, _functional(neuron, x))
    assert (y_multi != 0).any()

    neuron.step_mode = "s"
    for _ in range(2):  # reset() restores the initial state
        neuron.reset()
        y_single = torch.stack([neuron(x[t]) for t in range(T)])
        assert y_single.dtype == dtype
        assert torch.equal(y_single, y_multi)

    neuron.step_mode = "m"
    neuron.timesteps = T
    y_folded = neuron(x.reshape(T * B, *per_sample))
    assert torch.equal(y_folded, y_multi.reshape(T * B, *per_sample))
    assert torch.all(y_multi.select(channel_dim, 1) == 0)


@pytest.mark.parametrize("kind,coding,n,signed,constrained", COMBOS)
def test_zero_threshold_is_silent_and_finite(kind, coding, n, signed, constrained) -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(9, 4, 6, generator=g) * 5.0
    threshold = torch.tensor([0.0, 1.0, 0.0, -2.0, 0.5, 0.0])  # negative thresholds are clamped to 0
    neuron = SpikingNeuron(threshold, kind=kind, coding=coding, n_levels=n, signed=signed, relu_constrained=constrained)
    assert neuron.threshold.dtype == torch.float32 and neuron.threshold.min() == 0
    if coding == "differential":
        neuron.bias = torch.randn(1, 6, generator=g)
    y = neuron.multistep(x)
    assert torch.isfinite(y).all()
    silent = torch.tensor([True, False, True, True, False, True])
    assert torch.all(y[..., silent] == 0) and (y[..., ~silent] != 0).any()


def test_capture_stores_bias_and_outputs_zeros() -> None:
    g = torch.Generator().manual_seed(1)
    neuron = make_neuron(torch.tensor([1.0, 0.5]).reshape(2, 1), coding="differential", kind="mt", n_levels=4)
    b = torch.randn(1, 2, 3, generator=g).double()
    neuron.capture = True
    out = neuron(b)
    assert torch.equal(out, torch.zeros_like(b)) and out.dtype == torch.float64
    assert neuron.bias.dtype == torch.float32 and neuron.bias.shape == (1, 2, 3)
    assert torch.equal(neuron.bias, b.float())
    neuron.capture = False
    # a static input v on top of the bias: the raw input is b + v at t = 1, b afterwards (u = v, 0, 0, ...)
    v = torch.randn(5, 2, 3, generator=g)
    x = neuron.bias.expand(6, 5, 2, 3).clone()
    x[0] += v
    d = neuron.multistep(x)
    # no warm-up: at t = 1 the neuron emits the nearest level of the full pre-activation b + v (§4.6)
    th = neuron.threshold
    torch.testing.assert_close(d[0], mt_fire(x[0], torch.zeros_like(x[0]), th, 4, True, True), rtol=0, atol=0)
    assert torch.equal(d, mt_diff_multistep_ref(x, th, neuron.bias, n_levels=4))
    neuron.reset()
    assert torch.equal(neuron.bias, b.float())  # reset keeps the captured bias

    rate = make_neuron(1.0, coding="rate", kind="if", n_levels=1)
    rate.capture = True
    assert torch.equal(rate(b), torch.zeros_like(b)) and rate.bias is None


def test_configuration_errors_and_repr() -> None:
    with pytest.raises(ConfigError, match="kind"):
        SpikingNeuron(1.0, kind="lif", coding="rate")
    with pytest.raises(ConfigError, match="coding"):
        SpikingNeuron(1.0, kind="mt", coding="burst", n_levels=2)
    with pytest.raises(ConfigError, match="n_levels"):
        SpikingNeuron(1.0, kind="mt", coding="rate", n_levels=0)
    with pytest.raises(ConfigError, match="n_levels"):
        SpikingNeuron(1.0, kind="if", coding="rate", n_levels=4)
    with pytest.raises(ConfigError, match="threshold"):
        SpikingNeuron(torch.tensor([1.0, math.nan]), kind="mt", coding="rate", n_levels=2)
    with pytest.raises(ConfigError, match="threshold"):
        mt_rate_multistep_ref(torch.zeros(3, 2, 4), torch.ones(3), n_levels=2)
    neuron = SpikingNeuron(torch.ones(4, 1, 1), kind="mt", coding="differential", n_levels=4)
    with pytest.raises(ConfigError, match="timesteps"):
        neuron(torch.zeros(8, 4, 2, 2))
    neuron.timesteps = 3
    with pytest.raises(ConfigError, match="T=3"):
        neuron(torch.zeros(8, 4, 2, 2))
    with pytest.raises(CalibrationError, match="bias"):
        neuron.multistep(torch.zeros(2, 1, 4, 2, 2))
    neuron.step_mode = "x"
    with pytest.raises(ConfigError, match="step_mode"):
        neuron(torch.zeros(3, 4, 2, 2))
    text = repr(neuron)
    for part in ("kind=mt", "coding=differential", "n_levels=4", "signed=True", "relu_constrained=True", "(4, 1, 1)"):
        assert part in text


# ---------------------------------------------------------------------------------------------------------------------
# The module's fast path (vectorised, in place, chunked) == the readable functional twins, bit for bit
# ---------------------------------------------------------------------------------------------------------------------

FAST_COMBOS = COMBOS + [
    ("mt", "rate", 4, False, True),
    ("mt", "rate", 4, True, True),
    ("mt", "rate", 4, True, False),
    ("mt", "differential", 4, True, True),
    ("mt", "differential", 4, True, False),
    ("mt", "differential", 8, True, True),
]
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns (so that −0.0 ≠ +0.0 and NaN payloads count)."""
    return t.contiguous().view(_INT_VIEW[t.dtype])


def _fast_case(inputs: str, layout: str, T: int, g: torch.Generator, silent: bool):
    """(threshold, per-sample shape, raw input [T, 6, *S] in fp32, bias [1, *S])."""
    B = 6
    dyadic = inputs == "dyadic"
    # ``silent``: a zero (silent) channel, which takes other code paths; dyadic thresholds put the cut-offs
    # 0.75·θ·2^-i on the 1/64 grid of the inputs
    theta = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.75] if dyadic else [0.9, 0.0, 0.35, 1.7, 0.123456789])
    if not silent:
        theta[1] = 0.25
    if layout == "conv-channel":
        per_sample, threshold = (5, 3, 4), theta.reshape(5, 1, 1)
    elif layout == "conv-neuron":
        per_sample = (5, 3, 4)
        threshold = theta.reshape(5, 1, 1) * torch.tensor([1.0, 0.5, 0.25, 2.0]).reshape(1, 1, 4)
        threshold = threshold.expand(5, 3, 4).clone()
    else:  # tokens [B, L, C], threshold [C]
        per_sample, threshold = (4, 5), theta
    if dyadic:
        x = torch.randint(-160, 161, (T, B, *per_sample), generator=g) / 64.0
        bias = torch.randint(-32, 33, (1, *per_sample), generator=g) / 32.0
    else:
        x = torch.randn(T, B, *per_sample, generator=g) * 1.5 + 0.1
        bias = torch.randn(1, *per_sample, generator=g) * 0.5
        flat = x.view(-1)
        flat[::13], flat[5::17] = 0.0, -0.0
        if inputs == "special":
            flat[3::19], flat[7::23], flat[11::29] = math.inf, -math.inf, math.nan
    return threshold, per_sample, x, bias


def _check_fast_path(kind, coding, n, signed, constrained, inputs, layout, dtype, device, monkeypatch) -> None:
    from snnconvert.convert.coding import fastpath as fastpath_module

    g = torch.Generator().manual_seed(17)
    for T, silent in ((1, True), (3, False), (8, True), (8, False)):
        threshold, per_sample, x, bias = _fast_case(inputs, layout, T, g, silent)
        neuron = make_neuron(
            threshold, coding=coding, kind=kind, n_levels=n, signed=signed, relu_constrained=constrained
        ).to(device)
        if coding == "differential":
            neuron.bias = bias.to(device)
            x = x + bias
        x = x.to(device=device, dtype=dtype)
        expected = _functional(neuron, x)
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        assert neuron._fast_plan(neuron.threshold.to(state_dtype), x) is not None  # the fast path does run
        # one chunk, chunks of one sample and uneven chunks (the state of each chunk runs all T steps on its own);
        # chunk sizes scale with the thread count: the uneven case asks for 4 of the 6 samples per chunk
        per, threads = x[0, 0].numel(), max(1, torch.get_num_threads())
        for chunk, pieces in ((1 << 17, [6]), (1, [1] * 6), (-(-4 * per // threads), [4, 2])):
            monkeypatch.setattr(fastpath_module, "FAST_CHUNK_ELEMENTS", chunk)
            if device == "cpu":
                assert [len(range(6)[sl]) for sl in fastpath_module.batch_chunks(x, [])] == pieces
            y = neuron.multistep(x)
            assert y.dtype == dtype and y.shape == x.shape
            assert torch.equal(_bits(y), _bits(expected)), f"chunk={chunk}, T={T}"
        neuron.step_mode = "s"
        neuron.reset()
        y_single = torch.stack([neuron(x[t]) for t in range(T)])
        neuron.reset()
        assert torch.equal(_bits(y_single), _bits(expected)), f"single-step, T={T}"
        neuron.fast_path = False  # the module passes its attributes to the reference functions as the twin does
        assert torch.equal(_bits(neuron.multistep(x)), _bits(expected))


@pytest.mark.parametrize("kind,coding,n,signed,constrained", FAST_COMBOS)
@pytest.mark.parametrize("inputs", ["random", "dyadic", "special"])
@pytest.mark.parametrize("layout", ["conv-channel", "conv-neuron", "tokens"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_fast_path_is_bit_identical_to_functional_twin(kind, coding, n, signed, constrained, inputs, layout, dtype,
                                                       monkeypatch) -> None:
    _check_fast_path(kind, coding, n, signed, constrained, inputs, layout, dtype, "cpu", monkeypatch)


@pytest.mark.gpu
def test_fast_path_is_bit_identical_to_functional_twin_on_cuda(monkeypatch) -> None:
    for combo in FAST_COMBOS:
        for inputs in ("random", "dyadic", "special"):
            for layout in ("conv-channel", "tokens"):
                for dtype in (torch.float32, torch.float64, torch.bfloat16):
                    _check_fast_path(*combo, inputs, layout, dtype, "cuda", monkeypatch)


def test_fast_path_falls_back_where_its_preconditions_fail() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 3, generator=g) * 1e-44
    cases = [
        (torch.tensor([1e-44, 1.0, 0.5]), "mt", 4),  # subnormal θ: the levels do not halve exactly
        (torch.tensor([-0.0, 1.0, 0.5]), "mt", 4),  # −0.0 survives clamp(min=0): sign bit set
        (torch.tensor([-0.0, 1.0, 0.5]), "if", 1),
    ]
    for threshold, kind, n in cases:
        neuron = make_neuron(threshold, coding="rate", kind=kind, n_levels=n, signed=True)
        assert neuron._fast_plan(neuron.threshold, x) is None
        expected = _functional(neuron, x)
        assert torch.equal(_bits(neuron.multistep(x)), _bits(expected))
    neuron = make_neuron(torch.ones(3), coding="rate", kind="mt", n_levels=4)
    assert neuron._fast_plan(neuron.threshold, x.requires_grad_()) is None  # autograd records: reference path


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_graded_unit_fast_loop_is_bit_identical_to_reference(coding, dtype) -> None:
    """The in-place loop (max-pools run on channels-last copies on the CPU) == the reference loop, bit for bit."""
    import torch.nn as nn

    from snnconvert.convert.coding.units import GradedUnit

    g = torch.Generator().manual_seed(23)
    functions = [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                 nn.MaxPool2d(3, stride=1, padding=1, dilation=2), nn.Identity(), nn.Flatten(), nn.GELU()]
    C = 35  # two 16-lane vectors and a tail in the channels-last max-pool kernel
    for f in functions:
        for T in (1, 3, 8):
            unit = GradedUnit(f, coding=coding)
            unit.bias = torch.randint(-4, 5, (1, C, 7, 7), generator=g) / 4.0
            x = torch.randint(-8, 9, (T, 2, C, 7, 7), generator=g) / 4.0  # ties inside the pooling windows
            x = x + torch.randn(x.shape, generator=g) * (torch.rand(x.shape, generator=g) < 0.5)
            flat = x.view(-1)
            flat[::7], flat[1::11] = 0.0, -0.0
            flat[2::97], flat[3::101], flat[4::103] = math.inf, -math.inf, math.nan
            x = x.to(dtype)
            with torch.no_grad():
                fast = unit.multistep(x)
                unit.fast_path = False
                reference = unit.multistep(x)
            assert fast.dtype == reference.dtype and fast.shape == reference.shape
            assert torch.equal(_bits(fast), _bits(reference)), f"{f}, T={T}"
