"""The evaluation report as Markdown (users.md §4.2): the JSON report's figures as tables for a README or a paper.

:func:`report_markdown` is a pure function of the JSON report (``build_report``'s dict, or a saved report file read
back): it computes nothing new, so both always agree. For a saved report:
``report_markdown(json.loads(Path("report.json").read_text()))``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from snnconvert.runtime.evaluate import Headline, headline
from snnconvert.runtime.scores import only_agreement


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _gap(snn: float, ann: float | None) -> str:
    return "n/a" if ann is None else f"{100 * (snn - ann):+.2f} pp"


def _num(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def _energy(ref: list[float] | None, ext: list[float] | None, t: int | None = None) -> str:
    """The two energy ratios after step t (default: the last step), or n/a when operations were not counted."""
    if not ref or not ext or (t is not None and len(ref) < t):
        return "n/a"
    i = -1 if t is None else t - 1
    return f"{ref[i]:.3f} / {ext[i]:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _gap_text(head: Headline, value: float) -> str:
    gap = head.gap(value)
    return "n/a" if gap is None else f"{gap:+.2f} {head.gap_unit}"


def _accuracy_rows(doc: dict[str, Any]) -> list[list[str]]:
    head, ops = headline(doc), doc.get("synaptic_ops") or {}
    ref, ext = ops.get("energy_ratio_reference"), ops.get("energy_ratio_extended")
    extra, _, _, fmt = _extra_metric(doc)
    rows, events = [], 0.0
    for t, value in enumerate(head.snn, start=1):
        events += doc["events"]["per_step"][t - 1]
        rows.append([str(t), head.text(value), _gap_text(head, value), *([fmt(extra[t - 1])] if extra else []),
                     _num(events), _energy(ref, ext, t)])
    return rows


def _iou_table(doc: dict[str, Any]) -> list[str]:
    """Segmentation: the IoU of every class, ANN and SNN after the last step (— for a class absent from both)."""
    T, snn, ann = doc["timesteps"], doc["snn_iou"][-1], doc.get("ann_iou") or [None] * len(doc["snn_iou"][-1])
    rows = [[str(c), _pct(a) if a is not None else "—", _pct(s) if s is not None else "—",
             _gap(s, a) if s is not None and a is not None else ""] for c, (a, s) in enumerate(zip(ann, snn))]
    return ["## IoU per class", ""] + _table(["class", "ANN IoU", f"SNN IoU (T = {T})", "gap"], rows)


def _extra_metric(doc: dict[str, Any]) -> tuple[list[float] | None, float | None, str, Callable[[float], str]]:
    """The SNN's per-step values, the ANN's value, the name and the format of the second metric: the mean IoU for a
    segmentation report (per-pixel labels; the accuracies are pixel accuracies), the mean absolute error for a
    regression, the output error or the agreement with the ANN for unlabelled images (the one the headline is not),
    else top-5 (absent in reports written before it, null with <= 5 classes)."""
    if doc.get("task") == "segmentation":
        return doc.get("snn_miou"), doc.get("ann_miou"), "mIoU", _pct
    if doc.get("task") == "regression":
        return doc.get("snn_mae"), doc.get("ann_mae"), "MAE", "{:.4g}".format
    if doc.get("task") == "fidelity" and doc.get("snn_agreement"):  # unlabelled, one class output: agreement leads
        return doc.get("snn_output_error"), 0.0, "output error", lambda v: f"{100 * v:.3g} %"
    if doc.get("task") == "fidelity":  # unlabelled images: top-1 agreement with the ANN, when one output has it
        return only_agreement(doc.get("output_errors")), 1.0, "agreement", _pct
    return doc.get("snn_accuracy_top5"), doc.get("ann_accuracy_top5"), "top-5", _pct


def report_markdown(doc: dict[str, Any]) -> str:
    """Markdown for one JSON report: summary, accuracy and events after every step, the T sweep (when run), neuron
    sites (thresholds, firing), layers (synaptic operations), energy constants, per-unit errors (with
    ``--layer-errors``), graded units and the configuration."""
    head = headline(doc)
    cfg, T = doc["config"], doc["timesteps"]
    data = doc.get("data") or {}
    lines = [f"# snnconvert report: {doc['model']}", "",
             f"{doc['coding']} coding, T = {T}, thresholds {doc['thresholds']['method']} per "
             f"{doc['thresholds']['granularity']}; evaluated on {doc['eval_images']} images "
             f"({_describe(data.get('evaluation'))}), calibrated on {doc['calib_images']} images "
             f"({_describe(data.get('calibration'))}); snnconvert {doc.get('snnconvert_version', '?')}.", ""]
    ops = doc.get("synaptic_ops") or {}
    energy = _energy(ops.get("energy_ratio_reference"), ops.get("energy_ratio_extended"))
    extra, ann_extra, name, fmt = _extra_metric(doc)
    figure = head.name
    more = [f"ANN {name}", f"SNN {name} (T = {T})"] if extra else []
    lines += _table([f"ANN {figure}", f"SNN {figure} (T = {T})", "gap", *more, "events / image",
                     "energy ratio ref / ext"],
                    [[head.text(head.ann), head.text(head.snn[-1]), _gap_text(head, head.snn[-1]),
                      *([fmt(ann_extra) if ann_extra is not None else "n/a", fmt(extra[-1])] if extra else []),
                      _num(doc["events"]["total_per_image"]), energy]])
    lines += [f"## {figure[0].upper() + figure[1:]} after every step", ""]
    lines += _table(["t", f"SNN {figure}", "gap to ANN", *([name] if extra else []), "events / image (cum.)",
                     "energy ratio ref / ext (cum.)"], _accuracy_rows(doc))
    if doc.get("snn_iou"):
        lines += _iou_table(doc)
    sweep = doc.get("sweep")
    if sweep:
        lines += [f"## T sweep (target: {head.target_text(sweep['target_gap_pp'])})", ""]
        rules = len(sweep.get("thresholds", ())) > 1  # the sweep also chose the threshold rule
        many_n = len(sweep.get("levels", ())) > 1  # ... and the number of levels n
        rows = []
        for r in sweep["runs"]:
            run = headline({**sweep, **r, "task": doc.get("task")})
            fitted = r.get("fitted_levels")
            rows.append([r["threshold"]] * rules + [str(r.get("levels"))] * many_n
                        + [str(r["timesteps"]), "-" if fitted is None else str(fitted), run.text(run.snn[-1]),
                           _gap_text(run, run.snn[-1]),
                           _num(sum(r["events_per_step"])),
                           _energy(r.get("energy_ratio_reference"), r.get("energy_ratio_extended"))])
        lines += _table(["threshold"] * rules + ["n"] * many_n + ["T", "fit N", f"{figure} at T", "gap",
                                                                  "events / image", "energy ratio ref / ext"], rows)
        rec = sweep.get("recommended_timesteps")
        rule = (f"threshold {sweep['chosen_threshold']}, " if rules else "") + \
            (f"n = {sweep.get('chosen_levels')}, " if many_n else "")
        chosen = f"{rule}T = {sweep.get('chosen_timesteps')}"
        lines += [f"Recommended: {rule}T = {rec}." if rec is not None else
                  f"No T in the sweep reaches the target (the report's figures: {chosen}).", ""]
        on = sweep.get("selected_on")
        if on:
            lines += [f"Chosen on {on['images']} {'held-out ' if on['held_out'] else 'evaluation '}images "
                      f"({on['dataset']}, {on['split']}, {on['selection']})"
                      + ("; the tables above the sweep are on the evaluation images." if on["held_out"] else "."), ""]
    nir = doc.get("nir")
    if nir:
        c = nir["check"]
        lines += ["## NIR export", "",
                  f"`{nir['path']}`: {nir['nodes']} nodes, {nir['edges']} edges, {nir['neuron_sites']} neuron sites, "
                  f"written for T = {nir['timesteps']}, dt = {nir['dt']:g}; input: {nir['input']}. Read back and run "
                  f"against the SNN on {c['images']} images for {c['timesteps']} steps: largest decoded difference "
                  f"{c['max_abs']:.3g} (outputs up to {c['scale']:.3g}), same top-1 on {c['same_top1']}/{c['images']}.",
                  ""]
    lines += ["## Neuron sites", ""]
    check = doc.get("calibration_check")
    refits = {c["site"]: c for c in check["sites"]} if check else {}
    rows = []
    for s in doc["thresholds"]["sites"]:
        th, ev = s["threshold"], s.get("events") or {}
        rows.append([f"`{s['site']}`", s.get("kind", "relu"), f"{th['mean']:.4g} ({th['min']:.4g}–{th['max']:.4g})",
                     str(th["zero"]), _num(ev.get("neurons_per_image", 0)), f"{ev.get('events_per_neuron', 0):.3f}"]
                    + ([_refit_text(refits.get(s["site"]))] if check else []))
    lines += _table(["site", "kind", "threshold mean (min–max)", "silent groups", "neurons / image",
                     "events / neuron / image"] + (["refitted on evaluation images (median ratio)"] if check else []),
                    rows)
    if check:
        against = ("the calibrated thresholds" if check["reference_images"] is None
                   else f"thresholds refitted on {check['reference_images']} calibration images")
        lines += [f"Calibration check: thresholds refitted on {check['images']} evaluation images against {against}; "
                  f"{check['flagged']} of {len(check['sites'])} sites differ by more than "
                  f"{_applied_tolerance(check)} (flagged with **!**).", ""]
    if ops.get("layers"):
        lines += ["## Synaptic operations per layer", ""]
        rows = [[f"`{name}`", layer["input"], _num(layer["tot_macs"]), _num(sum(layer["sop_per_step"])),
                 f"{layer['sop_rate']:.3f}"] for name, layer in ops["layers"].items()]
        lines += _table(["layer", "input", "ANN MACs / image", "SOPs / image (all steps)", "SOP rate (per step)"],
                        rows)
        c = ops["constants_pj"]
        lines += [f"Energy: E_AC {c['E_AC']} pJ, E_MAC {c['E_MAC']} pJ ({c['source']}); `reference`: every SNN "
                  "operation an AC; `extended`: layers with analog input as MACs. ANN: "
                  f"{_num(ops['ann_macs_per_image'])} MACs / image."]
        left = ops.get("not_in_energy")
        if left:
            lines += [f"Not priced: {_num(left['neuron_updates_per_step'])} neuron updates and "
                      f"{_num(left['graded_unit_outputs_per_step'])} graded-unit evaluations per image and step."]
        lines += [""]
    for key, what in (("output_errors", "output (unlabelled images)"), ("layer_errors", "unit")):
        errors = doc.get(key) or {}
        if errors:
            lines += [f"## ANN↔SNN error per {what} (relative RMS of the decoded value)", ""]
            steps = sorted({1, (T + 1) // 2, T})
            rows = [[f"`{name}`", f"{e['ann_rms']:.4g}",
                     *(f"{e['relative_error'][t - 1]:.3f}" if e["relative_error"] else "n/a (ANN value 0)"
                       for t in steps)] for name, e in errors.items()]
            lines += _table([what.split()[0], "ANN RMS", *(f"t = {t}" for t in steps)], rows)
    units = doc.get("graded_units") or {}
    if units:
        lines += ["## Graded units (dense outputs, not events)", ""]
        rows = [[f"`{name}`", _num(u["outputs_per_image"]), f"{u['nonzero_per_output']:.3f}"]
                for name, u in units.items()]
        lines += _table(["unit", "outputs / image", "non-zero outputs per output and image (all steps)"], rows)
    lines += ["## Configuration", ""]
    if doc.get("config_file"):
        lines += [f"Options read from `{doc['config_file']}` (command-line flags override it).", ""]
    lines += ["```json", json.dumps(cfg, indent=1), "```", ""]
    return "\n".join(lines)


def _applied_tolerance(check: dict) -> str:
    """The tolerance the check flagged with (reports before ``applied_tolerance`` existed: ``tolerance``)."""
    applied = check.get("applied_tolerance") or check["tolerance"]
    text = f"{100 * applied:.3g} %"
    if applied > check["tolerance"]:
        n = min(check["images"], check["reference_images"] or check["images"])
        text += f" ({100 * check['tolerance']:g} % widened for the sampling noise of {n} images)"
    return text


def _refit_text(entry: dict | None) -> str:
    if entry is None or entry["ratio"] is None:
        return "n/a"
    text = f"{entry['ratio']:.3f} ({entry['ratio_min']:.3f}–{entry['ratio_max']:.3f})"
    if entry.get("upper_clip"):
        return f"{text}, ceiling of a bounded ReLU: not flagged"
    return f"**!** {text}" if entry["flagged"] else text


def _describe(part: dict | None) -> str:
    if not part:
        return "n/a"
    return f"{part.get('dataset', '?')}/{part.get('split', '?')}, {part.get('selection', '')}".rstrip(", ")
