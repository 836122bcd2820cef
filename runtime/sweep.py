"""Accuracy against the number of time steps in one call, and the smallest T that reaches an accuracy target.

Choosing T is trial and error with the peer tools (users.md, complaint 2). :func:`sweep` evaluates the conversions
of :func:`snnconvert.convert.convert_sweep` (one calibration, thresholds per T) and recommends the smallest T whose
SNN accuracy after T steps is within ``target_gap_pp`` percentage points of the ANN (for a regression: whose mean
squared error is within ``target_gap_pp`` percent of the ANN's; for unlabelled images: whose output error against
the ANN is at most ``target_gap_pp`` percent, or for one class output whose agreement with the ANN's top class is
within ``target_gap_pp`` percentage points of 100 %).

When every T got the same thresholds (max and percentile thresholds do not depend on T), the networks differ only in
how long they run, and the SNN is causal: its first T steps are the same whatever it runs for afterwards. Then one
evaluation at the largest T gives every T (:func:`truncate`), not one evaluation per T.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from snnconvert.convert.errors import ConfigError
from snnconvert.runtime.evaluate import EvalReport, Headline, evaluate, headline

log = logging.getLogger(__name__)

__all__ = ["SweepReport", "sweep", "recommend_timesteps", "truncate", "choose"]


@dataclass
class SweepReport:
    """The evaluations of a T sweep and the recommendation.

    Attributes:
        target_gap_pp: the target: how much worse than the ANN the SNN after T steps may be, in percentage points of
            accuracy (pixel accuracy for segmentation), or for a regression in percent of the ANN's mean squared
            error (:class:`~snnconvert.runtime.evaluate.Headline`).
        evaluations: per T (ascending), the evaluation of the SNN converted for T, over its T steps; every one
            carries the ANN's figures on the same images.
        shared_run: True when one evaluation at the largest T gave every T (thresholds independent of T).
        recommended: the smallest T within the target, or None.
        chosen: ``recommended``, else the T with the best figure after T steps (the smaller T on a tie).
        fused_pairs: fused bounded-ReLU pairs in the compiled networks (``runtime/fuse.py``; the same for every T).
    """

    target_gap_pp: float
    evaluations: dict[int, EvalReport]
    shared_run: bool
    recommended: int | None
    chosen: int
    fused_pairs: int = 0

    @property
    def ann_scores(self) -> dict[str, Any]:
        """The ANN's figures on the sweep's images (``EvalReport.ann_scores``; the same in every evaluation)."""
        return next(iter(self.evaluations.values())).ann_scores()

    @property
    def ann_accuracy(self) -> float | None:
        """The ANN's accuracy on the sweep's images (None without an ANN, or for a regression)."""
        return self.ann_scores["ann_accuracy"]

    @property
    def headline(self) -> Headline:
        """The figure the sweep compared (accuracy, pixel accuracy or MSE) for the chosen T."""
        return headline(self.evaluations[self.chosen])

    def to_dict(self) -> dict[str, Any]:
        runs = []
        for T, ev in self.evaluations.items():
            runs.append({"timesteps": T, "snn_accuracy": ev.snn_accuracy, "snn_accuracy_top5": ev.snn_accuracy_top5,
                         **({"snn_miou": ev.snn_miou} if ev.snn_miou is not None else {}),
                         **({"snn_mse": ev.snn_mse, "snn_mae": ev.snn_mae} if ev.snn_mse is not None else {}),
                         **({"snn_agreement": ev.snn_agreement, "snn_output_error": ev.snn_output_error}
                            if ev.task == "fidelity" else {}),
                         "events_per_step": ev.events_per_step,
                         "energy_ratio_reference": ev.ops.get("energy_ratio_reference"),
                         "energy_ratio_extended": ev.ops.get("energy_ratio_extended")})
        ann = self.ann_scores
        return {"target_gap_pp": self.target_gap_pp, "ann_accuracy": ann["ann_accuracy"],
                "ann_accuracy_top5": ann["ann_accuracy_top5"],
                **({"ann_miou": ann["ann_miou"], "ann_iou": ann["ann_iou"]} if ann["ann_miou"] is not None else {}),
                **({"ann_mse": ann["ann_mse"], "ann_mae": ann["ann_mae"]} if ann["ann_mse"] is not None else {}),
                "shared_run": self.shared_run, "recommended_timesteps": self.recommended,
                "chosen_timesteps": self.chosen, "runs": runs}


def recommend_timesteps(at_T: dict[int, float], ann_value: float, target_gap_pp: float, *,
                        higher_is_better: bool = True) -> int | None:
    """The smallest T whose accuracy after T steps (``at_T``) is at least ``ann_value − target_gap_pp / 100``, or
    None. With ``higher_is_better=False`` the values are mean squared errors: the smallest T whose MSE is at most the
    ANN's times ``1 + target_gap_pp / 100``."""
    return _smallest_within(Headline("", [], ann_value, higher_is_better), at_T, target_gap_pp)


def _smallest_within(head: Headline, at_T: dict[int, float], target_gap: float) -> int | None:
    """The smallest T whose figure after T steps (``at_T``) is within ``target_gap`` of the ANN's (``head``), or
    None."""
    passing = [T for T, value in at_T.items() if head.within(value, target_gap)]
    return min(passing) if passing else None


def _cut_counts(entry: dict, T: int, images: int, keys: tuple[str, str, str, str]) -> dict:
    """One site's (or unit's) counts over the first ``T`` steps; ``keys``: its per-step list (per image), total,
    rate per element and elements-per-image fields."""
    per_step_key, total_key, rate_key, size_key = keys
    per_step = entry[per_step_key][:T]
    total = sum(per_step) * images
    return {**entry, total_key: total, rate_key: total / (entry[size_key] * images), per_step_key: per_step}


def truncate(report: EvalReport, T: int) -> EvalReport:
    """The evaluation of the first ``T`` steps of ``report`` (whose network ran ``report.timesteps`` ≥ T steps):
    every per-step list cut to T entries and the totals and rates over those steps."""
    if not 1 <= T <= report.timesteps:
        raise ConfigError(f"cannot cut an evaluation of {report.timesteps} steps to {T}")
    images = report.images
    sites = {name: _cut_counts(site, T, images, ("events_per_step", "events", "events_per_neuron", "neurons_per_image"))
             for name, site in report.site_events.items()}
    ops = copy.deepcopy(report.ops)
    for key in ("sop_per_step", "energy_ratio_reference", "energy_ratio_extended"):
        if key in ops:
            ops[key] = ops[key][:T]
    for layer in ops.get("layers", {}).values():
        layer["sop_per_step"] = layer["sop_per_step"][:T]
        layer["sop_rate"] = sum(layer["sop_per_step"]) / (T * layer["tot_macs"])
    def cut_errors(errors: dict) -> dict:
        return {name: {**e, **{k: e[k][:T] for k in ("relative_error", "agreement") if e.get(k) is not None}}
                for name, e in errors.items()}

    units = {name: _cut_counts(unit, T, images, ("nonzero_per_step", "nonzero", "nonzero_per_output",
                                                  "outputs_per_image"))
             for name, unit in report.unit_outputs.items()}

    def cut(values):
        return None if values is None else values[:T]

    return replace(report, timesteps=T, snn_accuracy=report.snn_accuracy[:T],
                   snn_accuracy_top5=cut(report.snn_accuracy_top5), snn_miou=cut(report.snn_miou),
                   snn_iou=cut(report.snn_iou), snn_mse=cut(report.snn_mse), snn_mae=cut(report.snn_mae),
                   snn_agreement=cut(report.snn_agreement), snn_output_error=cut(report.snn_output_error),
                   output_errors=None if report.output_errors is None else cut_errors(report.output_errors),
                   events_per_step=report.events_per_step[:T], site_events=sites, seconds=dict(report.seconds),
                   ops=ops, layer_errors=cut_errors(report.layer_errors), unit_outputs=units)


def _same_thresholds(results) -> bool:
    first = next(iter(results.values())).thresholds
    return all(r.thresholds.keys() == first.keys() and all(torch.equal(r.thresholds[k], first[k]) for k in first)
               for r in results.values())


def sweep(
    results: dict,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    ann: torch.nn.Module | None = None,
    target_gap_pp: float = 0.5,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    mode: str = "multi",
    layer_errors: bool = False,
    progress: Callable[[int], Callable[[int], None] | None] | None = None,
    ann_scores: dict[str, Any] | None = None,
    output: int | str | None = None,
    ignore_index: int | None = 255,
) -> SweepReport:
    """Evaluate the conversions ``{T: ConversionResult}`` (from ``convert_sweep``) and recommend a T.

    Args:
        results: the conversions, keyed by T.
        batches: returns a fresh iterable of ``(images, labels)`` per call (one call per evaluation), or a list /
            DataLoader of them.
        ann: the ANN (its figures computed once, on the first evaluation's images; for unlabelled images it runs in
            every evaluation, as the reference); without it nothing is recommended.
        target_gap_pp: how far below the ANN (percentage points of accuracy) the SNN after T steps may be; for a
            regression (float targets), how much larger than the ANN's its mean squared error may be, in percent;
            for unlabelled images, how large its output error may be, in percent (one class output compared: how
            far below 100 % its agreement with the ANN may be, in percentage points).
        backend, device, dtype: as :func:`snnconvert.runtime.compile`.
        mode, layer_errors, output, ignore_index: as :func:`snnconvert.runtime.evaluate`.
        progress: called with T before each evaluation; returns the per-batch callback of that evaluation.
        ann_scores: the ANN's figures on these images when already known (``SweepReport.ann_scores`` of another
            sweep over the same images, ``EvalReport.ann_scores()``): the ANN is not evaluated again.

    Raises:
        ConfigError: no conversions, or a negative or infinite target.
    """
    from snnconvert.runtime import compile
    from snnconvert.runtime.fuse import fused_pairs

    _check_keyed_by_T(results)
    if isinstance(target_gap_pp, bool) or not isinstance(target_gap_pp, (int, float)) or \
            not 0 <= target_gap_pp < float("inf"):
        raise ConfigError(f"the target gap must be a finite number >= 0 percentage points, got {target_gap_pp}")
    if not callable(batches):
        if not isinstance(batches, Iterable) or iter(batches) is batches:  # a generator would be used up at once
            raise ConfigError(f"batches must be a function returning fresh (images, labels) batches, or a list / "
                              f"DataLoader of them (read once per evaluation); got {type(batches).__name__}")
        data = batches
        batches = lambda: data  # noqa: E731 - the same re-iterable data for every evaluation
    steps = sorted(results)
    shared = len(steps) > 1 and _same_thresholds(results)
    evaluations: dict[int, EvalReport] = {}
    pairs = 0
    for T in ([steps[-1]] if shared else steps):
        program = compile(results[T].snn, backend, device=device, dtype=dtype)
        pairs = fused_pairs(program)
        ev = evaluate(program, batches(), ann=ann, score_ann=ann_scores is None, timesteps=T, mode=mode,
                      device=device, progress=progress(T) if progress is not None else None,
                      layer_errors=layer_errors, output=output, ignore_index=ignore_index)
        if ann_scores is None:
            ann_scores = ev.ann_scores()
        evaluations[T] = replace(ev, **ann_scores)
    if shared:
        evaluations = {T: truncate(evaluations[steps[-1]], T) for T in steps}
    heads = {T: headline(ev) for T, ev in evaluations.items()}
    at_T = {T: head.snn[-1] for T, head in heads.items()}
    first = heads[steps[0]]
    recommended = _smallest_within(first, at_T, target_gap_pp)
    chosen = recommended if recommended is not None else max(steps, key=lambda T: (_signed(heads[T]), -T))
    if len(steps) > 1:
        log.info("T sweep %s: %s after T steps %s; recommended T=%s", steps, first.name,
                 {T: round(a, 6) for T, a in at_T.items()}, recommended)
    return SweepReport(target_gap_pp=float(target_gap_pp), evaluations=evaluations, shared_run=shared,
                       recommended=recommended, chosen=chosen, fused_pairs=pairs)


def _check_keyed_by_T(results) -> None:
    """``results`` is ``{T: ConversionResult}`` with each result's thresholds fitted for its key where they depend on
    T (threshold iteration) and several T are compared: one fitted for another T would be reported as that T's
    figures. (One conversion alone may run for another T than it was fitted for: a saved SNN evaluated at ``-T``.)

    Raises:
        ConfigError: another structure, a key that is not a positive integer, or a result fitted for another T.
    """
    if not isinstance(results, dict):
        raise ConfigError(f"the sweep takes {{T: ConversionResult}} (convert_sweep's), got a {type(results).__name__}; "
                          "for convert_grid's list, key its results by T: {r.config.timesteps: r for r in grid} (one "
                          "sweep per setting of the other fields)")
    if not results:
        raise ConfigError("the sweep needs at least one conversion")
    for T, result in results.items():
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"the sweep's keys are numbers of time steps T >= 1, got {T!r}")
        config = getattr(result, "config", None)
        if config is None:
            raise ConfigError(f"the sweep's value for T = {T} is a {type(result).__name__}, not a ConversionResult")
        if len(results) > 1 and config.threshold.statistic == "moments" and config.timesteps != T:
            raise ConfigError(f"the conversion under T = {T} was fitted for T = {config.timesteps} (threshold "
                              "iteration fits to T): key each conversion by its T (convert_sweep does)")


def _signed(head: Headline) -> float:
    """The figure after the last step, larger is better (an MSE negated)."""
    return head.snn[-1] if head.higher_is_better else -head.snn[-1]


def _cost(ev: EvalReport) -> float:
    """What a run of T steps costs per image: its extended energy ratio when synaptic operations were counted,
    else its events."""
    energy = ev.ops.get("energy_ratio_extended")
    return energy[-1] if energy else sum(ev.events_per_step)


def choose(reports: list[SweepReport]) -> int:
    """The index of the sweep whose chosen T is best among sweeps of different conversions (e.g. one per threshold
    rule) over the same images and target: the smallest recommended T; between sweeps that recommend the same T,
    the cheaper run (extended energy ratio after T steps, else events per image). When no sweep reaches the target:
    the most accurate chosen run (the lowest MSE for a regression; then the smaller T, then the cheaper).

    Raises:
        ConfigError: no sweeps, or sweeps with different targets.
    """
    if not reports:
        raise ConfigError("nothing to choose from: give at least one sweep")
    if len({r.target_gap_pp for r in reports}) > 1:
        raise ConfigError("the sweeps to choose from have different accuracy targets")
    passing = [i for i, r in enumerate(reports) if r.recommended is not None]

    def run(i: int) -> EvalReport:
        return reports[i].evaluations[reports[i].chosen]

    if passing:
        return min(passing, key=lambda i: (reports[i].chosen, _cost(run(i)), i))
    return min(range(len(reports)), key=lambda i: (-_signed(headline(run(i))), reports[i].chosen, _cost(run(i)), i))
