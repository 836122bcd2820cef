"""What the ``snnconvert`` command prints and writes: the tables (accuracy and events after every step, T sweep,
per-unit errors), the summary lines and the JSON / Markdown reports of one evaluation (:func:`present`)."""
from __future__ import annotations

import itertools
import json
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from snnconvert.convert.artifact import atomic_file

if TYPE_CHECKING:  # pragma: no cover
    from snnconvert.cli.main import RunOptions

out = Console(soft_wrap=True)  # a line is not broken at 80 columns (inside a number) when output is piped

#: ``--report -`` / ``--markdown -``: that report goes to standard output (and what the command prints to stderr)
STDOUT = Path("-")


@contextmanager
def atomic_write(path: Path):
    """Yield a text file to write ``path`` through (``convert.artifact.atomic_file``: renamed over ``path`` only
    when the block succeeds, with a plainly created file's permissions)."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        yield f


def _accuracy_table(ev) -> Table:
    """Accuracy, gap to the ANN, top-5 accuracy (more than 5 classes; segmentation: pixel accuracy and mean IoU;
    regression: MSE, its change against the ANN's and MAE), cumulative events and energy ratio (method.md §8, both
    metrics) after each step of the evaluation ``ev``."""
    from snnconvert.runtime.evaluate import headline
    from snnconvert.runtime.scores import only_agreement

    head, events, ops = headline(ev), ev.events_per_step, ev.ops
    if ev.task == "regression":
        extra, extra_name = ev.snn_mae, "SNN MAE"
    elif ev.task == "segmentation":
        extra, extra_name = [100 * v for v in ev.snn_miou or []], "mIoU %"
    elif ev.task == "fidelity" and head.name == "agreement":
        extra, extra_name = [100 * v for v in ev.snn_output_error], "output error %"
    elif ev.task == "fidelity":
        extra, extra_name = [100 * v for v in only_agreement(ev.output_errors) or []], "agreement %"
    else:
        extra, extra_name = [100 * v for v in ev.snn_accuracy_top5 or []], "top-5 %"
    table = Table(title=f"{head.name} vs time step")
    table.add_column("t", justify="right")
    table.add_column(_figure_column(head), justify="right")
    if not head.against_ann:  # an output error is its own gap to the ANN
        table.add_column(f"gap to ANN ({head.gap_unit})", justify="right")
    if extra:
        table.add_column(extra_name, justify="right")
    table.add_column("events/img (cum.)", justify="right")
    energy_ref, energy_ext = ops.get("energy_ratio_reference"), ops.get("energy_ratio_extended")
    if energy_ref and energy_ext:
        table.add_column("energy ratio ref/ext", justify="right")
    T = len(head.snn)
    shown = sorted({t for t in range(1, T + 1) if t <= 8 or (t & (t - 1)) == 0 or t == T})
    cums = list(itertools.accumulate(events))
    for t in shown:
        value, gap = head.snn[t - 1], head.gap(head.snn[t - 1])
        row = [str(t), head.text(value).removesuffix(" %"),
               *([] if head.against_ann else ["" if gap is None else f"{gap:+.2f}"]),
               *([f"{extra[t - 1]:.4g}" if ev.task == "regression" else f"{extra[t - 1]:.2f}"] if extra else []),
               f"{cums[t - 1]:.0f}" if cums else ""]
        if energy_ref and energy_ext:
            row.append(f"{energy_ref[t - 1]:.3f} / {energy_ext[t - 1]:.3f}")
        table.add_row(*row)
    return table


def _figure_column(head, suffix: str = "") -> str:
    """The headline's column: ``SNN acc %``, ``SNN pixel acc %``, ``SNN MSE``, ``agreement %``, ``output error %``
    (``suffix`` appended before the unit)."""
    name = {"MSE": "SNN MSE", "accuracy": "SNN acc", "output error": "output error",
            "agreement": "agreement"}.get(head.name, "SNN pixel acc")
    return name + suffix + ("" if head.name == "MSE" else " %")


def _energy_line(ops: dict) -> str | None:
    """The energy ratio after the last step with the constants it uses, or None when operations were not counted."""
    if not ops.get("energy_ratio_reference"):
        return None
    c = ops["constants_pj"]
    left_out = ops.get("not_in_energy") or {}
    not_priced = (f"; not priced: {left_out['neuron_updates_per_step']:.0f} neuron updates and "
                  f"{left_out['graded_unit_outputs_per_step']:.0f} graded-unit evaluations per image and step"
                  if left_out else "")
    return (f"energy vs ANN after T steps: {ops['energy_ratio_reference'][-1]:.3f} (reference metric: every SNN "
            f"operation an AC), {ops['energy_ratio_extended'][-1]:.3f} (extended: analog-input layers as MACs); "
            f"E_AC {c['E_AC']} pJ, E_MAC {c['E_MAC']} pJ ({c['source']}){not_priced}")


def _units_output_line(units: dict, timesteps: int) -> str:
    """How many dense values the graded units emit (they are not events and not in the events column)."""
    nonzero = sum(sum(u["nonzero_per_step"]) for u in units.values())
    outputs = sum(u["outputs_per_image"] for u in units.values()) * timesteps
    return (f"graded units: {nonzero:.0f} non-zero dense values per image over {timesteps} steps "
            f"({100 * nonzero / outputs:.1f} % of their outputs; not counted as events)")


def _layer_error_table(errors: dict, timesteps: int, what: str = "unit") -> Table:
    """Per unit (graph order, then the output): ANN RMS and the relative error of the decoded SNN value at a few
    steps; the unit with the largest error at T is marked. ``what``: ``"output"`` for the outputs of an evaluation
    on unlabelled images."""
    table = Table(title=f"ANN vs SNN per {what}: relative error sqrt(Σ(r_t − a)² / Σa²)")
    table.add_column(what)
    table.add_column("ANN RMS", justify="right")
    shown = sorted({1, max(1, timesteps // 2), timesteps})
    for t in shown:
        table.add_column(f"t={t}", justify="right")
    final = {name: e["relative_error"][-1] for name, e in errors.items()
             if e["relative_error"] and name.split(".")[0] != "output"}
    worst = max(final, key=final.get) if final else None
    for name, e in errors.items():
        rel = e["relative_error"]
        cells = [f"{rel[t - 1]:.4f}" for t in shown] if rel else ["n/a (ANN value 0)"] + [""] * (len(shown) - 1)
        table.add_row(name + ("  <- largest at T" if name == worst else ""), f"{e['ann_rms']:.4g}", *cells)
    return table


def swept_fields(cfgs) -> tuple[bool, bool]:
    """Whether the swept configurations differ in their threshold rule, and in their levels n."""
    return len({str(c.threshold) for c in cfgs}) > 1, len({c.levels for c in cfgs}) > 1


def sweep_table(sweeps, grid, best: int, held_out: int | None) -> Table:
    """Per threshold rule and n (the columns of those that differ between the swept settings) and T of the sweep: the
    levels its thresholds were fitted for, accuracy (a regression: MSE) after T steps, gap to the ANN, events and
    energy ratio (on the held-out selection images when there are any); the recommended run is starred."""
    from snnconvert.runtime.evaluate import headline

    on = f" on {held_out} held-out images" if held_out else ""
    head = sweeps[best].headline
    table = Table(title=f"T sweep{on} (target: {head.target_text(sweeps[best].target_gap_pp)})")
    configs = [next(iter(results.values())).config for results in grid]
    rules, many_n = swept_fields(configs)
    gap_column = () if head.against_ann else (f"gap ({head.gap_unit})",)
    for name in ("threshold",) * rules + ("n",) * many_n + ("T", "fit N", _figure_column(head, " at T"), *gap_column,
                                                            "events/img", "energy ref/ext"):
        table.add_column(name, justify="left" if name == "threshold" else "right")
    for i, (swept, results) in enumerate(zip(sweeps, grid)):
        setting = [str(configs[i].threshold)] * rules + [str(configs[i].levels)] * many_n
        for T, ev in swept.evaluations.items():
            levels = results[T].calibration.quantisation_levels
            run = headline(ev)
            gap = run.gap(run.snn[-1])
            energy = ev.ops.get("energy_ratio_reference")
            star = " *" if i == best and T == swept.recommended else ""
            table.add_row(*setting, str(T) + star, str(levels) if levels else "-",
                          run.text(run.snn[-1]).removesuffix(" %"),
                          *([] if head.against_ann else ["" if gap is None else f"{gap:+.2f}"]),
                          f"{sum(ev.events_per_step):.0f}",
                          f"{energy[-1]:.3f} / {ev.ops['energy_ratio_extended'][-1]:.3f}" if energy else "")
    return table


def sweep_doc(sweeps, cfgs, grid, best: int, chosen_on: dict) -> dict:
    """The report's ``sweep``: the chosen setting's sweep fields, every (rule, n, T) run with the N its thresholds
    were fitted for (None: a rule that does not depend on T), the rules and levels swept and the images the choice
    was made on."""
    doc = sweeps[best].to_dict()
    doc["runs"] = [{"threshold": str(cfg.threshold), "levels": cfg.levels,
                    "fitted_levels": results[run["timesteps"]].calibration.quantisation_levels, **run}
                   for swept, cfg, results in zip(sweeps, cfgs, grid) for run in swept.to_dict()["runs"]]
    return {**doc, "thresholds": list(dict.fromkeys(str(cfg.threshold) for cfg in cfgs)),
            "levels": list(dict.fromkeys(cfg.levels for cfg in cfgs)), "chosen_threshold": str(cfgs[best].threshold),
            "chosen_levels": cfgs[best].levels, "selected_on": chosen_on}


def _sites_text(result) -> str:
    """``"11 ReLU site(s) + 16 identity neuron site(s) (99.9% of |x| x 1)"`` (the identity part only when there are
    any)."""
    identity = result.calibration.count("identity")
    text = f"{len(result.thresholds) - identity} ReLU site(s)"
    if identity:
        cfg = result.config
        stat = f"{cfg.identity_threshold} of |x|" if cfg.identity_tail == "both" else f"{cfg.identity_threshold}"
        text += f" + {identity} identity neuron site(s) ({stat} x {cfg.threshold_scale:g}"
        text += f", n = {cfg.identity_n})" if cfg.neuron == "mt" else ")"
    return text


def _thresholds_text(result) -> str:
    """The ReLU sites' threshold rule (``"thresholds iterate per channel"``); none when there is no ReLU site."""
    cfg = result.config
    if len(result.thresholds) == result.calibration.count("identity"):
        return f"identity thresholds per {cfg.granularity}"
    return f"thresholds {cfg.threshold} per {cfg.granularity}"


def _units_text(result) -> str:
    """``"; graded units (dense outputs): max-pool x3, product x1"`` from the conversion report, or ``""``."""
    counts = result.report.entry("replace_activations").counts
    units = [f"{k[len('GradedUnit('):-1]} x{v}" for k, v in counts.items() if k.startswith("GradedUnit(")]
    return f"; graded units (dense outputs): {', '.join(units)}" if units else ""


def sweep_line(swept, held_out: int | None, rule: str | None) -> str:
    """What the sweep recommends (``rule``: the flags of the chosen setting when the sweep compared several threshold
    rules or levels, e.g. ``"--threshold iterate --levels 3"``)."""
    notes = ["on a tie between settings, the lower energy"] if rule and swept.recommended is not None else []
    if swept.shared_run:
        notes.append(f"thresholds do not depend on T: one evaluation at T={max(swept.evaluations)}, each T read from "
                     "its first T steps")
    why = f" ({'; '.join(notes)})" if notes else ""
    below = "the tables below are for it" + (", on the evaluation images" if held_out else "")
    on = f" on the {held_out} held-out images" if held_out else ""
    which = f"{rule} at " if rule else ""
    head = swept.headline
    target = head.target_text(swept.target_gap_pp)
    if swept.recommended is not None:
        return f"recommended: {which}T={swept.recommended}, the smallest T in the sweep {target}{on}{why}; {below}"
    if head.ann is None:
        return f"no ANN {head.name}, so no recommendation; the tables below are for {which}T={swept.chosen}{why}"
    return (f"no T in the sweep is {target}{on}; the tables below are for {which}T={swept.chosen}, {head.best_text}"
            f"{why}")


def present(o: RunOptions, result, evaluation, *, label: str, eval_name: str, eval_info: dict,
            calib_info: dict | None, seconds: float, fused_pairs: int, sweep_doc: dict | None = None,
            nir_doc: dict | None = None, check: tuple | None = None) -> str | None:
    """Print an evaluation (tables, model and summary lines, energy, the NIR export, the calibration check) and
    write the JSON / Markdown reports asked for; ``calib_info`` None: the calibration images are not known (a saved
    SNN that did not record them); ``check``: ``(ThresholdCheck or None, note or None)`` from
    :func:`snnconvert.cli.checks.calibration_check`. Returns the report that goes to standard output (``-``), for
    the caller to write once every other output was written (:func:`write_stdout`); None when none does."""
    from snnconvert.runtime import build_report
    from snnconvert.runtime.evaluate import headline

    out.print(_accuracy_table(evaluation))
    if evaluation.output_errors and len(evaluation.output_errors) > 1:
        out.print(_layer_error_table(evaluation.output_errors, evaluation.timesteps, "output"))
    if evaluation.layer_errors:
        out.print(_layer_error_table(evaluation.layer_errors, evaluation.timesteps))
    layout = " (channels-last input, transposed in front)" if result.config.input_layout == "channels-last" else ""
    out.print(f"model {label}{layout}: {_sites_text(result)} -> {result.config.coding} coding, "
              f"{_thresholds_text(result)}, T={evaluation.timesteps}{_units_text(result)}")
    head = headline(evaluation)
    ann_text, snn_text = head.text(head.ann), head.text(head.snn[-1])

    def pct(v: float) -> str:
        return f"{100 * v:.2f} %"

    for name, ann_value, snn_values, fmt in (("top-5", evaluation.ann_accuracy_top5, evaluation.snn_accuracy_top5, pct),
                                             ("mIoU", evaluation.ann_miou, evaluation.snn_miou, pct),
                                             ("MAE", evaluation.ann_mae, evaluation.snn_mae, "{:.4g}".format)):
        ann_text += "" if ann_value is None else f" ({name} {fmt(ann_value)})"
        snn_text += f" ({name} {fmt(snn_values[-1])})" if snn_values else ""
    calibrated = ("calibration images not recorded" if calib_info is None
                  else f"calibrated on {calib_info['images']} images, {calib_info['split']}")
    where = f"on {evaluation.images} images of {eval_name} ({eval_info['split']}; {calibrated}) in {seconds:.1f} s"
    if evaluation.task == "fidelity":
        outputs, T = evaluation.output_errors, evaluation.timesteps
        error = f"{100 * evaluation.snn_output_error[-1]:.3g} %"
        if head.name == "agreement":
            out.print(f"no labels: the SNN's top class is the ANN's on {snn_text} of the images at T={T} (output "
                      f"error against the ANN's {error}) {where}")
        else:
            agreeing = [f"{name} {pct(e['agreement'][-1])}" for name, e in outputs.items() if "agreement" in e]
            agree = f"; the SNN's top class is the ANN's: {', '.join(agreeing)}" if agreeing else ""
            out.print(f"no labels: SNN output error against the ANN at T={T}: {error} (relative error, the largest "
                      f"of {len(outputs)} output(s){agree}) {where}")
    else:
        out.print(f"ANN {head.name} {ann_text}; SNN {head.name} at T={evaluation.timesteps}: {snn_text} {where}")
    energy = _energy_line(evaluation.ops)
    if energy is not None:
        out.print(energy)
    if evaluation.unit_outputs:
        out.print(_units_output_line(evaluation.unit_outputs, evaluation.timesteps))
    checked, note = check or (None, None)
    if checked is not None or note is not None:
        out.print(note if checked is None else checked.summary("evaluation images"))
    if nir_doc is not None:
        prefix = f"; input: {nir_doc['input']}" if nir_doc["host_prefix"] else ""
        out.print(f"NIR graph written to {nir_doc['path']} ({nir_doc['nodes']} nodes, {nir_doc['edges']} edges"
                  f"{prefix}); read back and run against the SNN: {nir_doc['check_text']}")
    if o.report is None and o.markdown is None:
        return None
    doc = build_report(result, evaluation, model=label, calib=calib_info or {}, data=eval_info,
                       timings={"total": seconds},
                       runtime={"backend": o.backend, "device": o.device, "dtype": o.dtype, "mode": o.mode,
                                "fused_pairs": fused_pairs})
    doc["sweep"] = sweep_doc
    doc["nir"] = None if nir_doc is None else {k: v for k, v in nir_doc.items() if k != "check_text"}
    doc["config_file"] = None if o.config_file is None else str(o.config_file.resolve())
    doc["logits"] = o.logits
    doc["calibration_check"] = None if checked is None else checked.to_dict()
    pending = None
    for path, what, render in ((o.report, "report", lambda: json.dumps(doc, indent=2) + "\n"),
                               (o.markdown, "Markdown report", lambda: _markdown(doc))):
        if path == STDOUT:
            pending = render()
        elif path is not None:
            with atomic_write(path) as f:
                f.write(render())
            out.print(f"{what} written to {path}")
    return pending


def _markdown(doc: dict) -> str:
    from snnconvert.runtime.report_md import report_markdown

    return report_markdown(doc)


def write_stdout(text: str | None) -> None:
    """Write the report :func:`present` kept for standard output, if any (after the run's other outputs: a run that
    fails before leaves standard output empty)."""
    if text is None:
        return
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    print("report written to standard output", file=sys.stderr)


@contextmanager
def console_on_stderr(active: bool):
    """While a report goes to standard output, the tables and lines the command prints go to stderr, and so does
    whatever the model's own code prints (its module, factory or forward): standard output holds the report alone,
    written after the run (:func:`write_stdout`)."""
    if not active:
        yield
        return
    out.file = sys.stderr
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        out.file = None  # back to the console's default: whatever sys.stdout is when it prints
