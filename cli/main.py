"""The ``snnconvert`` command: flags -> ConversionConfig -> library calls -> printed tables and a JSON report.

Exit codes: 0 success, 1 conversion / calibration error, 2 usage error (bad file, name, value or missing data).
Errors print one line (``error: ...``); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from snnconvert.convert.artifact import ordinary_permissions
from snnconvert.convert.errors import (
    ArtifactError,
    BackendUnavailableError,
    CalibrationError,
    ConfigError,
    DataError,
    ModelLoadError,
    OnnxImportError,
    SnnConvertError,
    TraceError,
    UnsupportedOpError,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)

#: exit codes by error type; anything else is a bug and exits 1 with its message.
USAGE_ERRORS = (ConfigError, DataError, ModelLoadError, OnnxImportError, ArtifactError, BackendUnavailableError)
CONVERSION_ERRORS = (UnsupportedOpError, CalibrationError, TraceError)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


@contextmanager
def _atomic_write(path: Path):
    """Yield a temporary file next to ``path``; rename it over ``path`` only when the block succeeds. The file gets
    the permissions of a plainly created one (mkstemp's are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yield f
        ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _accuracy_table(ev) -> Table:
    """Accuracy, gap to the ANN, top-5 accuracy (more than 5 classes; segmentation: pixel accuracy and mean IoU;
    regression: MSE, its change against the ANN's and MAE), cumulative events and energy ratio (method.md §8, both
    metrics) after each step of the evaluation ``ev``."""
    from snnconvert.runtime.evaluate import headline

    head, events, ops = headline(ev), ev.events_per_step, ev.ops
    if ev.task == "regression":
        extra, extra_name = ev.snn_mae, "SNN MAE"
    elif ev.task == "segmentation":
        extra, extra_name = [100 * v for v in ev.snn_miou or []], "mIoU %"
    else:
        extra, extra_name = [100 * v for v in ev.snn_accuracy_top5 or []], "top-5 %"
    table = Table(title=f"{head.name} vs time step")
    table.add_column("t", justify="right")
    table.add_column({"MSE": "SNN MSE", "accuracy": "SNN acc %"}.get(head.name, "SNN pixel acc %"), justify="right")
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
        row = [str(t), head.text(value).removesuffix(" %"), "" if gap is None else f"{gap:+.2f}",
               *([f"{extra[t - 1]:.4g}" if ev.task == "regression" else f"{extra[t - 1]:.2f}"] if extra else []),
               f"{cums[t - 1]:.0f}" if cums else ""]
        if energy_ref and energy_ext:
            row.append(f"{energy_ref[t - 1]:.3f} / {energy_ext[t - 1]:.3f}")
        table.add_row(*row)
    return table


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


def _layer_error_table(errors: dict, timesteps: int) -> Table:
    """Per unit (graph order, then the output): ANN RMS and the relative error of the decoded SNN value at a few
    steps; the unit with the largest error at T is marked."""
    table = Table(title="ANN vs SNN per unit: relative error sqrt(Σ(r_t − a)² / Σa²)")
    table.add_column("unit")
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


def _sweep_steps(o) -> list[int]:
    """The --sweep list (ascending), validated with the options it excludes; [] without --sweep."""
    if o.sweep is None:
        for flag, value in (("--target-gap", o.target_gap), ("--select-images", o.select_images)):
            if value is not None:
                raise ConfigError(f"{flag} applies to a sweep; add --sweep T1,T2,... (e.g. --sweep 1,2,4,8)")
        return []
    if o.timesteps is not None:
        raise ConfigError("give either -T/--timesteps or --sweep, not both")
    try:
        steps = [int(v) for v in o.sweep.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {o.sweep!r} is not a comma list of integers; e.g. --sweep 1,2,4,8") from None
    if not steps or any(T < 1 for T in steps) or len(set(steps)) != len(steps):
        raise ConfigError(f"--sweep {o.sweep!r}: give distinct positive numbers of time steps, e.g. --sweep 1,2,4,8")
    if o.target_gap is not None and not o.target_gap >= 0:
        raise ConfigError(f"--target-gap must be >= 0 percentage points, got {o.target_gap}")
    if o.select_images is not None and o.select_images <= 0:
        raise ConfigError(f"--select-images must be positive, got {o.select_images}")
    return sorted(steps)


def _thresholds(o, sweep_steps: list[int]) -> list[Optional[str]]:
    """The --threshold rules: one (None: the preset's) or, with --sweep, a comma list the sweep chooses among."""
    if o.threshold is None or "," not in o.threshold:
        return [o.threshold]
    if not sweep_steps:
        raise ConfigError(f"--threshold {o.threshold!r}: a list of threshold rules needs --sweep (e.g. --sweep "
                          "1,2,4,8), which chooses among them; give one rule otherwise")
    rules = [v.strip() for v in o.threshold.split(",")]
    if not all(rules):
        raise ConfigError(f"--threshold {o.threshold!r}: an empty rule in the list; e.g. --threshold iterate,99.9%")
    return rules


def _sweep_table(sweeps, grid, best: int, held_out: int | None) -> Table:
    """Per threshold rule (when there are several) and T of the sweep: the levels its thresholds were fitted for,
    accuracy (a regression: MSE) after T steps, gap to the ANN, events and energy ratio (on the held-out selection
    images when there are any); the recommended run is starred."""
    from snnconvert.runtime.evaluate import headline

    on = f" on {held_out} held-out images" if held_out else ""
    head = sweeps[best].headline
    table = Table(title=f"T sweep{on} (target: {head.target_text(sweeps[best].target_gap_pp)})")
    rules = len(sweeps) > 1
    figure = "MSE at T" if head.name == "MSE" else "acc % at T"
    for name in ("threshold",) * rules + ("T", "fit N", figure, f"gap ({head.gap_unit})", "events/img",
                                          "energy ref/ext"):
        table.add_column(name, justify="left" if name == "threshold" else "right")
    for i, (swept, results) in enumerate(zip(sweeps, grid)):
        for T, ev in swept.evaluations.items():
            levels = results[T].calibration.quantisation_levels
            run = headline(ev)
            gap = run.gap(run.snn[-1])
            energy = ev.ops.get("energy_ratio_reference")
            star = " *" if i == best and T == swept.recommended else ""
            table.add_row(*[str(results[T].config.threshold)] * rules, str(T) + star, str(levels) if levels else "-",
                          run.text(run.snn[-1]).removesuffix(" %"), "" if gap is None else f"{gap:+.2f}",
                          f"{sum(ev.events_per_step):.0f}",
                          f"{energy[-1]:.3f} / {ev.ops['energy_ratio_extended'][-1]:.3f}" if energy else "")
    return table


def _sweep_doc(sweeps, cfgs, best: int, chosen_on: dict) -> dict:
    """The report's ``sweep``: the chosen rule's sweep fields, every (rule, T) run, the rules and the images the
    choice was made on."""
    doc = sweeps[best].to_dict()
    doc["runs"] = [{"threshold": str(cfg.threshold), **run} for swept, cfg in zip(sweeps, cfgs)
                   for run in swept.to_dict()["runs"]]
    return {**doc, "thresholds": [str(cfg.threshold) for cfg in cfgs], "chosen_threshold": str(cfgs[best].threshold),
            "selected_on": chosen_on}


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


def _sweep_line(swept, held_out: int | None, rule: str | None) -> str:
    """What the sweep recommends (``rule``: the chosen threshold rule when the sweep compared several)."""
    notes = ["on a tie between threshold rules, the lower energy"] if rule and swept.recommended is not None else []
    if swept.shared_run:
        notes.append(f"thresholds do not depend on T: one evaluation at T={max(swept.evaluations)}, each T read from "
                     "its first T steps")
    why = f" ({'; '.join(notes)})" if notes else ""
    below = "the tables below are for it" + (", on the evaluation images" if held_out else "")
    on = f" on the {held_out} held-out images" if held_out else ""
    which = f"--threshold {rule} at " if rule else ""
    head = swept.headline
    target = head.target_text(swept.target_gap_pp)
    if swept.recommended is not None:
        return f"recommended: {which}T={swept.recommended}, the smallest T in the sweep {target}{on}{why}; {below}"
    if head.ann is None:
        return f"no ANN {head.name}, so no recommendation; the tables below are for {which}T={swept.chosen}{why}"
    best = "the most accurate" if head.higher_is_better else "the lowest MSE"
    return (f"no T in the sweep is {target}{on}; the tables below are for {which}T={swept.chosen}, {best}{why}")


@dataclass(frozen=True)
class RunOptions:
    """The command's options, passed as one object (validated by the library config and here)."""

    model: str
    coding: str
    timesteps: Optional[int]
    threshold: Optional[str]
    granularity: Optional[str]
    levels: Optional[int]
    neuron: Optional[str]
    weights: Optional[Path]
    calib_data: Optional[str]
    eval_data: Optional[str]
    calib_images: int
    eval_images: Optional[int]
    data_dir: Optional[Path]
    normalize: Optional[str]
    resize: Optional[int]
    crop: Optional[int]
    report: Optional[Path]
    output: Optional[Path]
    batch_size: int
    mode: str
    backend: str
    device: str
    dtype: str
    allow_ann_op: tuple[str, ...]
    identity_neurons: Optional[str] = None
    identity_threshold: Optional[str] = None
    identity_tail: Optional[str] = None
    threshold_scale: Optional[float] = None
    identity_levels: Optional[int] = None
    token_channel: Optional[str] = None
    threshold_aggregation: Optional[str] = None
    markdown: Optional[Path] = None
    layer_errors: bool = False
    sweep: Optional[str] = None
    target_gap: Optional[float] = None
    select_images: Optional[int] = None
    logits: Optional[str] = None
    ignore_index: int = 255
    config_file: Optional[Path] = None  # the --config file the options were read from (recorded in the report)
    given: frozenset[str] = frozenset()  # the options given on the command line or in the --config file


def _run(o: RunOptions) -> None:
    from snnconvert import models_zoo
    from snnconvert.cli.malloc import keep_freed_memory
    from snnconvert.convert import ConversionConfig, convert, convert_sweep
    from snnconvert.runtime import sweep
    from snnconvert.runtime.data import Normalize, load_calib_eval, parse_normalize
    from snnconvert.runtime.imagefiles import Preprocess
    from snnconvert.runtime.models import resolve_model
    from snnconvert.runtime.sweep import choose

    keep_freed_memory()  # large tensors are not unmapped and paged in again on every layer call (cli/malloc.py)
    if _is_artifact(o.model):
        return _evaluate_saved(o)
    sweep_steps = _sweep_steps(o)
    cfgs = [ConversionConfig.for_coding(o.coding, timesteps=max(sweep_steps) if sweep_steps else o.timesteps,
                                        threshold=threshold,
                                        granularity=o.granularity, levels=o.levels, neuron=o.neuron,
                                        allow_ann_ops=o.allow_ann_op or None, identity_neurons=o.identity_neurons,
                                        identity_threshold=o.identity_threshold, identity_tail=o.identity_tail,
                                        threshold_scale=o.threshold_scale, identity_levels=o.identity_levels,
                                        token_channel=o.token_channel,
                                        threshold_aggregation=o.threshold_aggregation)
            for threshold in _thresholds(o, sweep_steps)]
    if len({str(cfg.threshold) for cfg in cfgs}) < len(cfgs):
        raise ConfigError(f"--threshold {o.threshold!r}: a rule is listed twice; give distinct rules")
    if o.calib_images <= 0:
        raise ConfigError(f"--calib-images must be positive, got {o.calib_images}")
    dtype = _check_runtime(o)
    resolved = resolve_model(o.model, weights=o.weights, zoo=models_zoo)
    calib_name = o.calib_data or resolved.dataset
    eval_name = o.eval_data or resolved.dataset
    if calib_name is None:
        raise ConfigError(f"{o.model}: no data set is known for this model; pass --calib-data (e.g. fashion-mnist)")
    if eval_name is None:
        raise ConfigError(f"{o.model}: no data set is known for this model; pass --eval-data (e.g. fashion-mnist)")
    card = resolved.preprocessing or {}
    if o.normalize:
        norm = parse_normalize(o.normalize)
    elif "mean" in card:
        norm = Normalize(card["mean"], card["std"])
    else:
        norm = None
    channels = resolved.input_shape[0] if resolved.input_shape and resolved.input_shape[0] in (1, 3) else 3
    files = Preprocess(channels=channels, resize=o.resize if o.resize is not None else card.get("resize"),
                       crop=o.crop if o.crop is not None else card.get("crop"))
    splits = load_calib_eval(calib_name, eval_name, calib_images=o.calib_images, eval_images=o.eval_images,
                             select_images=o.select_images, data_dir=o.data_dir, preprocess=files)
    calib_set, eval_set, calib_info, eval_info = splits.calib, splits.eval, splits.calib_info, splits.eval_info

    def prep(x: torch.Tensor) -> torch.Tensor:
        return _prep(norm, x)

    started = time.perf_counter()
    with _progress() as bar:
        calib_task = bar.add_task("calibration", total=None)

        def forward_loop(gm: torch.nn.Module) -> None:
            bar.reset(calib_task, total=len(calib_set))
            for x, _ in calib_set.batches(256):
                gm(prep(x))
                bar.advance(calib_task, len(x))

        # an ONNX file is imported once: the imported graph is the ANN to compare against and what convert()
        # traces (a deep copy; node names, hence threshold keys, are the importer's either way)
        ann = resolved.model if isinstance(resolved.model, torch.nn.Module) else result_ann(resolved.model)
        example = prep(calib_set.example(2))
        _check_labels(ann, prep(eval_set.example(1)), eval_set, eval_name, o.logits, o.ignore_index)  # before calib.
        grid = []  # per threshold rule: {T: ConversionResult} (one calibration each)
        for cfg in cfgs:
            if sweep_steps:
                grid.append(convert_sweep(ann, forward_loop=forward_loop, config=cfg, timesteps=sweep_steps,
                                          source=resolved.source, example_inputs=example))
            else:
                grid.append({cfg.timesteps: convert(ann, forward_loop=forward_loop, config=cfg,
                                                    source=resolved.source, example_inputs=example)})
        bar.remove_task(calib_task)

        def run(candidates: dict, data, stage: str, layer_errors: bool, known=None):
            rule = f"{next(iter(candidates.values())).config.threshold}, " if len(cfgs) > 1 else ""

            def progress(T: int):
                task = bar.add_task(f"{stage} ({rule}T={T})", total=len(data))
                return lambda n: bar.advance(task, n)

            return sweep(candidates, lambda: ((prep(x), y) for x, y in data.batches(o.batch_size)), ann=ann,
                         target_gap_pp=o.target_gap if o.target_gap is not None else 0.5, backend=o.backend,
                         device=o.device, dtype=dtype, mode=o.mode, layer_errors=layer_errors, progress=progress,
                         output=o.logits, ignore_index=o.ignore_index,
                         ann_scores=None if known is None else known.ann_scores)

        # choose T (and the threshold rule) on held-out images when asked: the evaluation images then see the
        # chosen conversion only
        data, stage = (splits.select, "selection") if splits.select is not None else (eval_set, "evaluation")
        sweeps = []
        for results in grid:
            # the ANN is evaluated once, by the first sweep: the others reuse its accuracies (same images)
            sweeps.append(run(results, data, stage, o.layer_errors and splits.select is None,
                              sweeps[0] if sweeps else None))
        best = choose(sweeps)
        swept, results, cfg = sweeps[best], grid[best], cfgs[best]
        if splits.select is not None:
            final = run({swept.chosen: results[swept.chosen]}, eval_set, "evaluation", o.layer_errors)
        else:
            final = swept
        result, evaluation = results[swept.chosen], final.evaluations[swept.chosen]
    if sweep_steps:
        out.print(_sweep_table(sweeps, grid, best, o.select_images))
        out.print(_sweep_line(swept, o.select_images, str(cfg.threshold) if len(cfgs) > 1 else None))
    sweep_doc = None
    if sweep_steps and (o.report is not None or o.markdown is not None):
        chosen_on = ({**splits.select_info, "held_out": True} if splits.select is not None
                     else {**eval_info, "held_out": False})
        sweep_doc = _sweep_doc(sweeps, cfgs, best, chosen_on)
    _present(o, result, evaluation, label=resolved.label, eval_name=eval_name, eval_info=eval_info,
             calib_info=calib_info, seconds=time.perf_counter() - started, fused_pairs=final.fused_pairs,
             sweep_doc=sweep_doc)
    if o.output is not None:
        # what a later `snnconvert SNN_DIR` needs to evaluate it on the same images, preprocessed the same way
        norm_doc = None if norm is None else {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
        result.source = dataclasses.replace(result.source, meta={
            **result.source.meta,
            "data": {"calibration": calib_name, "calib_images": o.calib_images, "select_images": o.select_images,
                     "evaluation": eval_name, "eval_images": o.eval_images, "calibration_info": calib_info},
            "preprocessing": {"normalize": norm_doc, "resize": files.resize, "crop": files.crop},
            "logits": o.logits, "ignore_index": o.ignore_index, "label": resolved.label})
        result.save(o.output)
        out.print(f"SNN saved to {o.output} (evaluate it again with `snnconvert {o.output}`; API: "
                  "snnconvert.runtime.load)")


def _check_runtime(o: RunOptions) -> torch.dtype:
    """The options of how the SNN runs and is evaluated, checked before anything slow; the layer dtype."""
    from snnconvert.runtime import backend_status

    dtype = _dtype(o.dtype)
    if o.eval_images is not None and o.eval_images <= 0:
        raise ConfigError(f"--eval-images must be positive, got {o.eval_images}")
    if o.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {o.batch_size}")
    if o.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {o.device}: no CUDA device is available here; use --device cpu")
    ok, reason = backend_status(o.backend, o.device)  # before calibration: fail in seconds, not minutes
    if not ok:
        raise BackendUnavailableError(f"--backend {o.backend}: {reason}")
    return dtype


def _is_artifact(model: str) -> bool:
    """MODEL names a folder written by ``--output`` (it holds ``source.json``)."""
    path = Path(model)
    return path.is_dir() and (path / "source.json").is_file()


#: options that define a conversion: a saved SNN is evaluated as it was converted, so they do not apply to it
_CONVERSION_OPTIONS = ("coding", "threshold", "granularity", "levels", "neuron", "weights", "calib_data",
                       "calib_images", "allow_ann_op", "identity_neurons", "identity_threshold", "identity_tail",
                       "threshold_scale", "identity_levels", "token_channel", "threshold_aggregation", "sweep",
                       "target_gap", "select_images", "output")


def _flag(name: str) -> str:
    return {"threshold_aggregation": "--aggregation", "timesteps": "-T"}.get(name, "--" + name.replace("_", "-"))


def _evaluate_saved(o: RunOptions) -> None:
    """``snnconvert SNN_DIR``: evaluate a saved SNN (``--output``) and its ANN again, without calibration: on the
    evaluation images it was evaluated on (or ``--eval-data``), with the preprocessing it was converted with (or
    ``--normalize`` / ``--resize`` / ``--crop``), on any backend, device, dtype and number of steps."""
    from snnconvert.runtime import load_result, sweep
    from snnconvert.runtime.data import Normalize, load_calib_eval, load_eval, parse_normalize
    from snnconvert.runtime.imagefiles import Preprocess

    fixed = [_flag(name) for name in _CONVERSION_OPTIONS if name in o.given]
    if fixed:
        raise ConfigError(f"{o.model} is a saved SNN, evaluated as it was converted: {', '.join(fixed)} "
                          f"{'does' if len(fixed) == 1 else 'do'} not apply to it (convert the model again to change "
                          "the conversion)")
    dtype = _check_runtime(o)
    result, ann = load_result(o.model)
    meta = result.source.meta
    data, card = meta.get("data") or {}, meta.get("preprocessing") or {}
    eval_name = o.eval_data or data.get("evaluation")
    if eval_name is None:
        raise ConfigError(f"{o.model} does not record its evaluation data (saved through the API); pass --eval-data")
    saved_norm = card.get("normalize")
    norm = (parse_normalize(o.normalize) if o.normalize else
            Normalize(saved_norm["mean"], saved_norm["std"]) if saved_norm else None)
    shape = result.report.input_shape
    channels = shape[0] if shape and shape[0] in (1, 3) else 3
    files = Preprocess(channels=channels, resize=o.resize if o.resize is not None else card.get("resize"),
                       crop=o.crop if o.crop is not None else card.get("crop"))
    calib_info = None
    if "eval_images" not in o.given and o.eval_data is None:  # the images of the first evaluation
        o = dataclasses.replace(o, eval_images=data.get("eval_images"))
    if data.get("calibration") is not None:  # the same split as at conversion: never an image calibrated on
        splits = load_calib_eval(data["calibration"], eval_name, calib_images=data["calib_images"],
                                 eval_images=o.eval_images, select_images=data.get("select_images"),
                                 data_dir=o.data_dir, preprocess=files)
        eval_set, eval_info, calib_info = splits.eval, splits.eval_info, data.get("calibration_info")
    else:
        eval_set, eval_info = load_eval(eval_name, eval_images=o.eval_images, data_dir=o.data_dir, preprocess=files)
    logits = o.logits if "logits" in o.given else meta.get("logits")
    ignore = o.ignore_index if "ignore_index" in o.given else meta.get("ignore_index", o.ignore_index)
    _check_labels(ann, _prep(norm, eval_set.example(1)), eval_set, eval_name, logits, ignore)
    T = o.timesteps if o.timesteps is not None else result.config.timesteps
    started = time.perf_counter()
    with _progress() as bar:
        def progress(t: int):
            task = bar.add_task(f"evaluation (T={t})", total=len(eval_set))
            return lambda n: bar.advance(task, n)

        swept = sweep({T: result}, lambda: ((_prep(norm, x), y) for x, y in eval_set.batches(o.batch_size)),
                      ann=ann, backend=o.backend, device=o.device, dtype=dtype, mode=o.mode,
                      layer_errors=o.layer_errors, progress=progress, output=logits, ignore_index=ignore)
    if T != result.config.timesteps and result.calibration.quantisation_levels:
        out.print(f"note: the thresholds were fitted for T={result.config.timesteps}; running T={T}")
    o = dataclasses.replace(o, logits=logits, ignore_index=ignore)
    label = f"{o.model} (saved SNN of {meta['label']})" if meta.get("label") else o.model
    _present(o, result, swept.evaluations[T], label=label, eval_name=eval_name, eval_info=eval_info,
             calib_info=calib_info, seconds=time.perf_counter() - started, fused_pairs=swept.fused_pairs)


def _prep(norm, x: torch.Tensor) -> torch.Tensor:
    return norm(x) if norm is not None else x


def _present(o: RunOptions, result, evaluation, *, label: str, eval_name: str, eval_info: dict,
             calib_info: dict | None, seconds: float, fused_pairs: int, sweep_doc: dict | None = None) -> None:
    """Print an evaluation (tables, model and summary lines, energy) and write the JSON / Markdown reports asked
    for; ``calib_info`` None: the calibration images are not known (a saved SNN that did not record them)."""
    from snnconvert.runtime import build_report
    from snnconvert.runtime.evaluate import headline

    out.print(_accuracy_table(evaluation))
    if evaluation.layer_errors:
        out.print(_layer_error_table(evaluation.layer_errors, evaluation.timesteps))
    out.print(f"model {label}: {_sites_text(result)} -> {result.config.coding} coding, "
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
    out.print(f"ANN {head.name} {ann_text}; SNN {head.name} at T={evaluation.timesteps}: {snn_text} "
              f"on {evaluation.images} images of {eval_name} ({eval_info['split']}; {calibrated}) in {seconds:.1f} s")
    energy = _energy_line(evaluation.ops)
    if energy is not None:
        out.print(energy)
    if evaluation.unit_outputs:
        out.print(_units_output_line(evaluation.unit_outputs, evaluation.timesteps))
    if o.report is None and o.markdown is None:
        return
    doc = build_report(result, evaluation, model=label, calib=calib_info or {}, data=eval_info,
                       timings={"total": seconds},
                       runtime={"backend": o.backend, "device": o.device, "dtype": o.dtype, "mode": o.mode,
                                "fused_pairs": fused_pairs})
    doc["sweep"] = sweep_doc
    doc["config_file"] = None if o.config_file is None else str(o.config_file.resolve())
    doc["logits"] = o.logits
    if o.report is not None:
        with _atomic_write(o.report) as f:
            json.dump(doc, f, indent=2)
        out.print(f"report written to {o.report}")
    if o.markdown is not None:
        from snnconvert.runtime.report_md import report_markdown

        with _atomic_write(o.markdown) as f:
            f.write(report_markdown(doc))
        out.print(f"Markdown report written to {o.markdown}")


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPE_NAMES:
        raise ConfigError(f"--dtype {name!r} is not valid; choose one of: {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def _check_labels(ann: torch.nn.Module, example: torch.Tensor, data, name: str, logits: str | None,
                  ignore_index: int) -> None:
    """The evaluated output must be one output (``--logits`` names it among several) that the evaluation labels fit
    (``label_task``: class labels, per-pixel labels or regression targets), and class labels must index it (e.g.
    not an ImageFolder with more classes than logits); per-pixel labels index the output's dim 1, except those
    equal to ``ignore_index``."""
    from snnconvert.convert.outputs import select_output
    from snnconvert.runtime.evaluate import label_task

    try:
        with torch.no_grad():
            out = ann(example)
    except Exception:  # noqa: BLE001 - the conversion runs the model next and names the failing node in one line
        return
    scores = select_output(out, logits)
    try:
        task = label_task(scores.shape, data.labels.shape, data.labels.is_floating_point())
    except ConfigError as e:
        raise DataError(f"{name}: {e}") from None
    if task == "regression":
        return
    dense = task == "segmentation"
    outputs = scores.shape[1] if dense else scores.shape[-1]
    labels = data.labels[data.labels != ignore_index] if dense else data.labels
    top = int(labels.max()) if labels.numel() else -1
    if top >= outputs:
        raise DataError(f"{name}: labels go up to {top} but the model has {outputs} "
                        f"{'classes (output dim 1)' if dense else 'outputs'}; check that the data "
                        "set matches the model (ImageFolder labels are the sorted class folders)")


def result_ann(onnx_path: str) -> torch.nn.Module:
    """The ANN to compare against for an ONNX model: the imported graph itself."""
    from snnconvert.convert import load_onnx

    return load_onnx(onnx_path)


@app.command()
def main(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(
        None, show_default=False, help="zoo name (e.g. fmnist-vgg), torchvision:NAME, torchvision:segmentation.NAME, "
                                       "path/to/file.py:factory, model.onnx, or a folder saved with --output "
                                       "(evaluated again, no calibration); may instead be the --config file's "
                                       "`model`"),
    coding: str = typer.Option("rate", help="rate | differential"),
    timesteps: Optional[int] = typer.Option(None, "--timesteps", "--time-steps", "-T",
                                            help="time steps T (default: the preset's)"),
    threshold: Optional[str] = typer.Option(None, help="max | <p>% (e.g. 99.9%) | <f> (a fraction of the max, e.g. "
                                            "0.5) | iterate | iterate-reference; with --sweep a comma list (e.g. "
                                            "iterate,99.9%): the sweep also chooses the rule"),
    granularity: Optional[str] = typer.Option(
        None, help="layer | channel | neuron (one threshold per element of a sample: tied to the input size)"),
    levels: Optional[int] = typer.Option(None, help="thresholds per multi-threshold neuron (n)"),
    neuron: Optional[str] = typer.Option(None, help="if (single threshold) | mt (multi-threshold)"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load into a Python model"),
    calib_data: Optional[str] = typer.Option(
        None, help="calibration data (train split): fashion-mnist | imagefolder:PATH | npz:PATH"),
    eval_data: Optional[str] = typer.Option(
        None, help="evaluation data (test split): fashion-mnist | imagefolder:PATH | npz:PATH"),
    calib_images: int = typer.Option(5000, "--calib-images", "--calib-samples",
                                     help="calibration images (first N of the train split)"),
    eval_images: Optional[int] = typer.Option(None, help="evaluation images (default: the whole test split)"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files"),
    normalize: Optional[str] = typer.Option(None, help="MEAN,STD (or one per channel): feed (x - mean) / std"),
    resize: Optional[int] = typer.Option(None, help="image folders: resize the shorter side to N pixels"),
    crop: Optional[int] = typer.Option(None, help="image folders: centre crop N x N pixels"),
    report: Optional[Path] = typer.Option(None, help="write the JSON report here"),
    markdown: Optional[Path] = typer.Option(None, help="write the report as Markdown tables here (accuracy after "
                                            "every step, sites, layers, energy, configuration)"),
    output: Optional[Path] = typer.Option(None, help="save the converted SNN (folder) here"),
    batch_size: int = typer.Option(128, help="evaluation batch size (the SNN runs T x batch per call)"),
    mode: str = typer.Option("multi", help="multi (layer by layer over T*B) | single (streaming)"),
    backend: str = typer.Option(
        "torch", help="runtime backend: torch (reference) | triton (GPU kernels) | native (C kernels, CPU) | "
                 "inductor (torch.compile of the neuron loops; 2-15 s compile per neuron configuration on first use)"),
    device: str = typer.Option("cpu", help="cpu | cuda[:N]"),
    dtype: str = typer.Option("float32", help="compute precision of the layers: float32 | bfloat16 | float16 "
                              "(neuron state stays fp32)"),
    allow_ann_op: list[str] = typer.Option([], help="node-name pattern allowed to stay analog: it runs as a "
                                           "graded unit, exact on decoded values (repeatable)"),
    identity_neurons: Optional[str] = typer.Option(
        None, help="signed neurons in front of Conv/Linear layers: auto (where the input is not already spikes: "
                   "after a graded unit or a layer without activation) | all (also the input layer: the image is "
                   "spike-encoded) | off (such layers read dense values) [default: auto]"),
    identity_threshold: Optional[str] = typer.Option(
        None, help="identity-neuron thresholds: <p>% | max of the input's magnitude (see --identity-tail) "
                   "[default: 99.9%]"),
    identity_tail: Optional[str] = typer.Option(
        None, help="both (the statistic of |x|: negative values get the same range) | upper (of the signed input, "
                   "the reference's rule) [default: both]"),
    threshold_scale: Optional[float] = typer.Option(
        None, help="c: identity-neuron thresholds are the statistic times c [default: 1]"),
    identity_levels: Optional[int] = typer.Option(
        None, help="n of the identity neurons (multi-threshold): more levels resolve their signed, heavy-tailed "
                   "inputs at few steps, at more events [default: 6 with differential coding, else --levels]"),
    token_channel: Optional[str] = typer.Option(
        None, help="per-channel thresholds on [B, N, C] token tensors: features (last dim) | tokens (dim 1, the "
                   "reference implementation's rule) [default: features]"),
    threshold_aggregation: Optional[str] = typer.Option(
        None, "--aggregation", help="max / percentile thresholds over the calibration data: global (of all values) "
                                    "| batch-mean (per batch of 256 images, averaged: the reference "
                                    "implementation's rule) [default: global]"),
    layer_errors: bool = typer.Option(False, "--layer-errors", help="also compare every neuron's (and pooling "
                                      "unit's) decoded output with its ANN value after each step: where accuracy is "
                                      "lost"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="comma list of T (e.g. 1,2,4,8,16): convert and "
                                        "evaluate for each (one calibration) and report the smallest T within "
                                        "--target-gap of the ANN"),
    target_gap: Optional[float] = typer.Option(None, "--target-gap", help="with --sweep: accuracy target in "
                                               "percentage points below the ANN (regression: percent above the "
                                               "ANN's MSE) [default: 0.5]"),
    select_images: Optional[int] = typer.Option(
        None, "--select-images", help="with --sweep: choose T on N held-out images of the calibration data (the N "
                                      "after the calibration images) instead of the evaluation images, which then "
                                      "see the chosen T only [default: choose on the evaluation images]"),
    ignore_index: int = typer.Option(255, "--ignore-index", help="with per-pixel labels (segmentation: pixel "
                                     "accuracy and mean IoU): the label of pixels left out of both (-1: none)"),
    logits: Optional[str] = typer.Option(
        None, "--logits", help="for a model with several outputs (tuple, list or dict: heads): the one holding the "
                               "class scores, by index or key (e.g. 0, cls, heads.0); the SNN decodes every output"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML or JSON file of options (keys: the flag "
                                          "names, e.g. coding, time-steps, calib-images); flags given on the "
                                          "command line override it"),
    debug: bool = typer.Option(False, help="show tracebacks"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress details"),
) -> None:
    """Convert MODEL to a spiking network, calibrate it, and report accuracy at every time step."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(RunOptions(**_options(ctx, config)))
    except CONVERSION_ERRORS as exc:
        _fail(exc, debug, code=1)
    except USAGE_ERRORS as exc:
        _fail(exc, debug, code=2)
    except SnnConvertError as exc:
        _fail(exc, debug, code=1)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - unexpected: one line, traceback with --debug
        _fail(exc, debug, code=1, unexpected=True)


_NOT_RUN_OPTIONS = ("config", "debug", "verbose")  # parameters of the command, not of the run


def _read_config(path: Path) -> dict:
    """The mapping in a ``--config`` file (``.yaml``/``.yml`` or ``.json``)."""
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: reading YAML needs the pyyaml package; install it or write the "
                              "options as JSON") from None
        load, errors = yaml.safe_load, (yaml.YAMLError,)
    elif suffix == ".json":
        load, errors = json.loads, (json.JSONDecodeError,)
    else:
        raise ConfigError(f"--config {path}: use a .yaml, .yml or .json file")
    try:
        doc = load(path.read_text())
    except errors as exc:
        raise ConfigError(f"--config {path} is not valid: {' '.join(str(exc).split())}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option names to values")
    return doc


def _options(ctx: typer.Context, config: Optional[Path]) -> dict:
    """The run options: the parsed command line, with the ``--config`` file's values for every option the command
    line did not give. Values go through the same parsing as flags."""
    values = {k: v for k, v in ctx.params.items() if k not in _NOT_RUN_OPTIONS}
    given = {k for k in values if (src := ctx.get_parameter_source(k)) is not None and src.name == "COMMANDLINE"}
    if config is not None:
        params = {p.name: p for p in ctx.command.params if p.name not in _NOT_RUN_OPTIONS}
        names = {opt.lstrip("-").replace("-", "_"): p.name for p in params.values() for opt in p.opts}
        names.update({name: name for name in params})
        for key, raw in _read_config(config).items():
            name = names.get(str(key).replace("-", "_"))
            if name is None:
                raise ConfigError(f"--config {config}: unknown option {key!r}; valid: "
                                  f"{', '.join(sorted(n.replace('_', '-') for n in params))}")
            source = ctx.get_parameter_source(name)
            if source is not None and source.name == "COMMANDLINE" and values[name] is not None:
                continue  # a flag (or MODEL) on the command line wins
            param = params[name]
            if param.multiple and isinstance(raw, str):
                raw = [raw]
            elif not param.multiple and isinstance(raw, list):  # a YAML/JSON list for a comma-list flag
                raw = ",".join(str(v) for v in raw)
            try:
                values[name] = param.process_value(ctx, raw)
            except typer.BadParameter as exc:
                raise ConfigError(f"--config {config}: {key}: {exc.format_message()}") from None
            given.add(name)
    if not values["model"]:
        where = f"or `model: ...` in {config}" if config is not None else "or in a --config file (`model: ...`)"
        raise ConfigError(f"no MODEL given: name it on the command line (e.g. snnconvert fmnist-vgg) {where}")
    values["allow_ann_op"] = tuple(values["allow_ann_op"])
    values["config_file"] = config
    values["given"] = frozenset(given)
    return values


def _fail(exc: BaseException, debug: bool, *, code: int, unexpected: bool = False) -> None:
    if debug:
        err.print_exception()
    prefix = f"internal error ({type(exc).__name__})" if unexpected else "error"
    text = str(exc)
    if unexpected and not debug:
        text += " (rerun with --debug for the traceback)"
    print(f"{prefix}: {text}", file=sys.stderr)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
