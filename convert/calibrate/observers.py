"""Activation observers: graph nodes that record statistics and return their input unchanged.

Statistics are exact over all calibration batches and independent of batch size and order:

- :class:`MaxObserver`: the true maximum per group.
- :class:`MomentObserver`: mean and population variance per group, pooled exactly in float64.
- :class:`PercentileObserver`: the exact p-th percentile per group (linear interpolation between order
  statistics, as ``torch.quantile``), found in two passes over the same data: (1) count, minimum and a per-group
  histogram over the float order (bins from the values' bit patterns: no range needed), (2) the values inside the
  bins that hold the wanted order statistics, sorted. Memory is O(groups x bins) plus the values of those bins;
  ``torch.quantile`` is never called on whole activations (it has an input-size limit).

- :class:`SelectPercentileObserver`: the same exact percentile for many small groups (``granularity="neuron"``),
  in two passes: (1) count, (2) a running selection of the few values at the percentile's end of each group.

A *group* is the whole tensor (``granularity="layer"``), one channel, dim 1 (``granularity="channel"``), or one
element of a sample, whose values are those of the calibration images (``granularity="neuron"``).
Activations are reduced where they are (CPU or GPU); the per-batch results (a few numbers per group, and the few
values kept by the percentile's last pass) are accumulated on the CPU, so thresholds are fitted there.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from snnconvert.convert.errors import CalibrationError


def _groups(x: torch.Tensor, granularity: str, channel_dim: int = 1) -> torch.Tensor:
    """Reshape ``x`` to ``[groups, values]``: one row per channel (``channel_dim``: 1, or -1 for the feature dim of
    a token tensor ``[B, N, C]``), one row per element of a sample (``"neuron"``: its values over the batch) or a
    single row."""
    x = x.detach()
    if granularity == "neuron":
        return x.reshape(x.shape[0], -1).transpose(0, 1)
    if granularity == "layer" or x.dim() < 2:
        return x.reshape(1, -1)
    return x.movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)


class ActivationObserver(nn.Module):
    """Base class: ``forward(x)`` updates statistics and returns ``x`` unchanged. With ``magnitude`` set, the
    statistics are those of ``|x|`` (both tails of a signed activation); ``channel_dim`` is the channel dimension
    (1, or -1 for the features of a token tensor)."""

    def __init__(self, granularity: str) -> None:
        super().__init__()
        self.granularity = granularity
        self.magnitude = False
        self.channel_dim = 1
        self.done = False  # set once the observer has seen every pass it needs (the others pass x through)
        self.count = 0
        self.ndim: int | None = None  # rank of the observed activation (batch dim included)
        self.sample_shape: tuple[int, ...] | None = None  # its shape without the batch dim
        self.nonfinite = 0  # NaN / inf values seen in the first pass (compute_thresholds refuses them)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - observers only observe
        if self.done:
            return x
        if self.granularity == "neuron" and self.sample_shape not in (None, tuple(x.shape[1:])):
            raise CalibrationError(f"observer saw samples of shape {tuple(x.shape[1:])} after {self.sample_shape}; "
                                   "per-neuron thresholds need calibration images of one size")
        self.ndim = x.dim()
        self.sample_shape = tuple(x.shape[1:])
        with torch.no_grad():
            if getattr(self, "phase", 0) == 0:  # a histogram or a max over NaN / inf would be silently wrong
                self.nonfinite += int(x.numel() - torch.isfinite(x).sum())  # counted, refused by compute_thresholds
            self.observe(_groups(x.abs() if self.magnitude else x, self.granularity, self.channel_dim))
        return x

    def observe(self, g: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def passes(self) -> int:
        """Calibration passes over the same data the observer needs (percentiles need more than one)."""
        return 1

    def next_phase(self) -> None:
        """Called after each pass the observer takes part in; multi-pass observers advance their phase."""

    def _check_groups(self, g: torch.Tensor, known: torch.Tensor | int | None) -> None:
        """``g`` must have as many groups as ``known`` (a per-group tensor or a count; None: the first batch)."""
        known = known.shape[0] if isinstance(known, torch.Tensor) else known
        if known is not None and known != g.shape[0]:
            what = "elements per sample" if self.granularity == "neuron" else "channels"
            raise CalibrationError(
                f"observer saw {g.shape[0]} {what} after {known}; calibration batches must share a shape")


class MaxObserver(ActivationObserver):
    """Maximum over every observed value, per group."""

    def __init__(self, granularity: str) -> None:
        super().__init__(granularity)
        self.max: torch.Tensor | None = None

    def observe(self, g: torch.Tensor) -> None:
        self._check_groups(g, self.max)
        m = g.float().amax(dim=1).cpu()
        self.max = m if self.max is None else torch.maximum(self.max, m)
        self.count += g.shape[1]

    @property
    def value(self) -> torch.Tensor:
        if self.max is None:
            raise CalibrationError("no calibration data reached this observer")
        return self.max.double()


def _quantile_ranks(q: float, n: int) -> tuple[int, int, float]:
    """The two 0-based order statistics the q-quantile of n values interpolates between, and the weight of the
    upper one (linear interpolation, as ``torch.quantile``)."""
    pos = q * (n - 1)
    low = int(pos // 1)
    return low, min(low + 1, n - 1), pos - low


def _row_quantile(g: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each row, from two ``kthvalue`` calls: no input-size limit."""
    low, high, frac = _quantile_ranks(q, g.shape[1])
    a = g.kthvalue(low + 1, dim=1).values
    b = g.kthvalue(high + 1, dim=1).values
    return a + (b - a) * frac


class BatchMeanObserver(ActivationObserver):
    """The reference implementation's aggregation (method.md §7.8): the max or p-th percentile of each calibration
    batch, per group, averaged over the batches weighted by their size. Unlike :class:`MaxObserver` and
    :class:`PercentileObserver` the result depends on how the calibration data is batched."""

    def __init__(self, granularity: str, percentile: float | None = None) -> None:
        super().__init__(granularity)
        self.q = None if percentile is None else percentile / 100.0
        self.weighted: torch.Tensor | None = None

    def observe(self, g: torch.Tensor) -> None:
        self._check_groups(g, self.weighted)
        g = g.double()
        v = (g.amax(dim=1) if self.q is None else _row_quantile(g, self.q)).cpu() * g.shape[1]
        self.weighted = v if self.weighted is None else self.weighted + v
        self.count += g.shape[1]

    @property
    def value(self) -> torch.Tensor:
        if self.weighted is None:
            raise CalibrationError("no calibration data reached this observer")
        return self.weighted / self.count


class MomentObserver(ActivationObserver):
    """Mean and population variance per group, merged exactly across batches in float64."""

    def __init__(self, granularity: str) -> None:
        super().__init__(granularity)
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None  # sum of squared deviations

    def observe(self, g: torch.Tensor) -> None:
        self._check_groups(g, self.mean)
        g = g.double()
        n_b = g.shape[1]
        mean_b = g.mean(dim=1)
        m2_b = ((g - mean_b[:, None]) ** 2).sum(dim=1).cpu()
        mean_b = mean_b.cpu()
        if self.mean is None:
            self.mean, self.m2, self.count = mean_b, m2_b, n_b
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    @property
    def var(self) -> torch.Tensor:
        """Population variance per group."""
        if self.mean is None:
            raise CalibrationError("no calibration data reached this observer")
        return self.m2 / self.count


def _order_keys(g: torch.Tensor) -> torch.Tensor:
    """int32 keys that order like the float32 values of ``g``: the bit pattern, its magnitude bits flipped when
    negative; -0.0 gets +0.0's key."""
    key = (g.float() + 0.0).contiguous().view(torch.int32)
    return key ^ ((key >> 31) & 0x7FFFFFFF)


def _key_floats(keys: torch.Tensor) -> torch.Tensor:
    """The float32 values of order keys (int64 in the int32 range): :func:`_order_keys` inverted."""
    k = keys.to(torch.int32)
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _order_bins(g: torch.Tensor, bits: int) -> torch.Tensor:
    """The bin of every value of ``g`` (int32) in a histogram over the whole float32 line: the top ``bits`` bits of
    its order key (:func:`_order_keys`), so ``2**bits`` bins need no range and are finer near zero, like the floats.
    For 12 bits a bin spans an eighth of a binade (values within 6-12 % of each other share one). Float64 values are
    binned by their float32 rounding, which keeps their order (ties aside)."""
    return (_order_keys(g) >> (32 - bits)) + (1 << (bits - 1))


_KEY_MIN_INF, _KEY_PLUS_INF = -(0x7F800000) - 1, 0x7F800000  # the order keys of -inf and +inf


def _bin_edges(first: torch.Tensor, last: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 interval ``[lower, upper]`` holding exactly the values binned in ``first..last`` (per group):
    NaN patterns beyond the infinities become -inf / +inf, and a range ending just below zero stops before -0.0
    (zeros of either sign are binned with +0.0)."""
    shift, half = 32 - bits, 1 << (bits - 1)
    lo_key = ((first.long() - half) << shift).clamp(min=_KEY_MIN_INF)
    hi_key = (((last.long() + 1 - half) << shift) - 1).clamp(max=_KEY_PLUS_INF)
    hi_key = torch.where(hi_key == -1, torch.full_like(hi_key, -2), hi_key)
    return _key_floats(lo_key), _key_floats(hi_key)


class PercentileObserver(ActivationObserver):
    """Exact p-th percentile per group over all observed values, in two passes over the same data: (1) the count,
    the minimum and a histogram over the float order (:func:`_order_bins`: no range needed, so an outlier does not
    coarsen it), (2) the values inside the bins that hold the wanted order statistics, sorted at the end.

    Call :meth:`next_phase` after each pass; the calibration driver does this. Each pass must see the same values
    (a deterministic ``forward_loop``); a different count, or other values in the selected bins, is raised as
    ``CalibrationError``.
    """

    def __init__(self, granularity: str, percentile: float, bins: int = 4096) -> None:
        super().__init__(granularity)
        if bins < 2 or bins & (bins - 1) or bins > 1 << 16:
            raise ValueError(f"bins must be a power of two in [2, 65536], got {bins}")
        self.q = percentile / 100.0
        self.bits = bins.bit_length() - 1
        self.bins = bins
        self.phase = 0
        self.lo: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None
        self.seen = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # per batch: the values kept, and how many per group
        self.n_at_min: torch.Tensor | None = None
        self.result: torch.Tensor | None = None
        self._ranks: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self._in_bins: torch.Tensor | None = None  # per group: the values the first pass counted in the wanted bins
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None
        self._min_in_range = False

    def observe(self, g: torch.Tensor) -> None:
        if self.phase == 0:
            self._check_groups(g, self.lo)
            lo = g.double().amin(dim=1).cpu()
            self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
            offsets = torch.arange(0, g.shape[0] * self.bins, self.bins, dtype=torch.int32, device=g.device)
            hist = torch.bincount((_order_bins(g, self.bits) + offsets[:, None]).reshape(-1),
                                  minlength=g.shape[0] * self.bins).view(g.shape[0], self.bins).cpu()
            self.hist = hist if self.hist is None else self.hist + hist
            self.count += g.shape[1]
            return
        self.seen += g.shape[1]
        lower, upper = (e.to(g.device)[:, None] for e in self._edges)
        v = g.float()
        keep = (v >= lower) & (v <= upper)
        if self._min_in_range:  # the minimum inside the bins (the zeros of a ReLU output): counted, not stored
            at_min = keep & (g == self.lo.to(g.device, g.dtype)[:, None])
            keep &= ~at_min
            self.n_at_min += at_min.count_nonzero(dim=1).cpu()
        self.kept.append((g[keep].double().cpu(), keep.count_nonzero(dim=1).cpu()))

    def next_phase(self) -> None:
        """Advance to the next pass (0 -> 1 -> done) and finalise when the last pass ended."""
        if self.phase == 0:
            if self.lo is None:
                raise CalibrationError("no calibration data reached this observer")
            low_rank, high_rank, frac = _quantile_ranks(self.q, self.count)
            cum = self.hist.cumsum(dim=1)
            lo_bin = torch.searchsorted(cum, torch.full((cum.shape[0], 1), low_rank + 1), right=False).squeeze(1)
            hi_bin = torch.searchsorted(cum, torch.full((cum.shape[0], 1), high_rank + 1), right=False).squeeze(1)
            below = torch.where(lo_bin > 0, cum.gather(1, (lo_bin - 1).clamp_min(0)[:, None]).squeeze(1),
                                torch.zeros_like(lo_bin))
            self._in_bins = cum.gather(1, hi_bin[:, None]).squeeze(1) - below
            self._edges = _bin_edges(lo_bin, hi_bin, self.bits)
            self._min_in_range = bool((self._edges[0].double() <= self.lo).any())
            self._ranks = (low_rank - below, high_rank - below, frac)
            self.n_at_min = torch.zeros(cum.shape[0], dtype=torch.long)
        else:
            if self.seen != self.count:
                raise CalibrationError(
                    f"forward_loop fed {self.seen} values in a later pass but {self.count} in the first; "
                    "percentile calibration needs the same data in every pass (a deterministic forward_loop)")
            low, high, frac = self._ranks
            groups = self._in_bins.shape[0]
            if self.nonfinite:  # NaN has no place in the order: compute_thresholds refuses the site, naming why
                self.result, self.kept = torch.full((groups,), float("nan"), dtype=torch.float64), []
                self.phase += 1
                return
            values = torch.cat([v for v, _ in self.kept]) if self.kept else torch.empty(0, dtype=torch.float64)
            counts = torch.stack([n for _, n in self.kept]) if self.kept else torch.zeros(1, groups, dtype=torch.long)
            owner = torch.cat([torch.repeat_interleave(torch.arange(groups), n) for _, n in self.kept]) \
                if self.kept else torch.empty(0, dtype=torch.long)
            # sort by value, then (stably) by group: every group's values in a row, ascending
            values, order = values.sort(stable=True)
            owner = owner[order]
            owner, order = owner.sort(stable=True)
            values = values[order]
            starts = torch.cumsum(counts.sum(dim=0), 0) - counts.sum(dim=0)
            if not torch.equal(counts.sum(dim=0) + self.n_at_min, self._in_bins):
                raise CalibrationError(
                    "forward_loop fed different values in the percentile passes (same count, other data: "
                    "random augmentation or sampling?); percentile calibration needs the same data in every "
                    "pass (a deterministic forward_loop)")
            out = torch.empty(groups, dtype=torch.float64)
            for c in range(groups):
                n_min = int(self.n_at_min[c])
                a, b = (self.lo[c] if r < n_min else values[int(starts[c]) + r - n_min]
                        for r in (int(low[c]), int(high[c])))
                out[c] = a + (b - a) * frac
            self.result = out
            self.kept = []
        self.phase += 1

    @property
    def passes(self) -> int:
        return 2

    @property
    def value(self) -> torch.Tensor:
        if self.result is None:
            raise CalibrationError("percentile observer has not finished its two passes")
        return self.result


class SelectPercentileObserver(ActivationObserver):
    """Exact p-th percentile per group (as :class:`PercentileObserver`) for many groups of few values each: one
    group per element of a sample (``granularity="neuron"``), whose values are the calibration images. A histogram
    per group would take groups x bins memory; instead two passes: (1) count the values, (2) keep, per group, the
    ``k`` values from the percentile's nearer end of the order (a running top-k: 6 values for 99.9 % of 5 000
    images). Memory O(groups x (k + batch)).

    Raises (at the end of the first pass) ``CalibrationError`` when groups x k exceeds ``max_values`` (a percentile
    far from both ends over many images).
    """

    def __init__(self, granularity: str, percentile: float, max_values: int = 1 << 26) -> None:
        super().__init__(granularity)
        self.q = percentile / 100.0
        self.max_values = max_values
        self.phase = 0
        self.groups: int | None = None
        self.seen = 0
        self.kept: torch.Tensor | None = None
        self.result: torch.Tensor | None = None

    @property
    def passes(self) -> int:
        return 2

    def observe(self, g: torch.Tensor) -> None:
        if self.phase == 0:
            self._check_groups(g, self.groups)
            self.groups = g.shape[0]
            self.count += g.shape[1]
            return
        self.seen += g.shape[1]
        values = g.double() if self.kept is None else torch.cat([self.kept, g.double()], dim=1)
        self.kept = values.topk(min(self.k, values.shape[1]), dim=1, largest=self.upper).values

    def next_phase(self) -> None:
        """Advance to the next pass (0 -> 1 -> done) and finalise when the last pass ended."""
        if self.phase == 0:
            if self.groups is None:
                raise CalibrationError("no calibration data reached this observer")
            n = self.count
            self._ranks = _quantile_ranks(self.q, n)
            self.upper = self.q >= 0.5
            self.k = n - self._ranks[0] if self.upper else self._ranks[1] + 1
            if self.groups * self.k > self.max_values:
                raise CalibrationError(
                    f"a per-neuron {100 * self.q:g}% percentile over {n} images keeps {self.k} values for each of "
                    f"{self.groups} neurons (more than {self.max_values}); use fewer calibration images, a "
                    "percentile nearer 0 or 100 %, max or iterate, or granularity channel")
        else:
            if self.seen != self.count:
                raise CalibrationError(
                    f"forward_loop fed {self.seen} values in a later pass but {self.count} in the first; "
                    "percentile calibration needs the same data in every pass (a deterministic forward_loop)")
            n = self.count
            low, high, frac = self._ranks
            kept = self.kept.cpu()
            # ascending rank r is kept[:, n - 1 - r] of the largest values (descending), kept[:, r] of the smallest
            a, b = (kept[:, n - 1 - r] if self.upper else kept[:, r] for r in (low, high))
            self.result = a + (b - a) * frac
            self.kept = None
        self.phase += 1

    @property
    def value(self) -> torch.Tensor:
        if self.result is None:
            raise CalibrationError("percentile observer has not finished its two passes")
        return self.result
