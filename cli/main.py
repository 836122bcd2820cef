"""The ``snnconvert`` command: flags -> ConversionConfig -> library calls -> printed tables and a JSON report.

Exit codes: 0 success, 1 conversion / calibration error, 2 usage error (bad file, name, value or missing data).
Errors print one line (``error: ...``); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from snnconvert.cli.checks import (
    all_or_none,
    calibration_check,
    check_labels,
    check_nir_options,
    check_outputs,
    check_runtime,
    decode_workers,
    export_nir_file,
    nir_graph,
    normalized,
    progress_loop,
    to_stdout,
)
from snnconvert.cli.options import as_flags, read_options
from snnconvert.cli.present import (
    console_on_stderr,
    out,
    present,
    sweep_doc,
    sweep_line,
    sweep_table,
    swept_fields,
    write_stdout,
)
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
    first_line,
)

log = logging.getLogger("snnconvert.cli")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
err = Console(stderr=True, soft_wrap=True)

#: exit codes by error type; anything else is a bug and exits 1 with its message.
USAGE_ERRORS = (ConfigError, DataError, ModelLoadError, OnnxImportError, ArtifactError, BackendUnavailableError)
CONVERSION_ERRORS = (UnsupportedOpError, CalibrationError, TraceError)


def progress_bar() -> Progress:
    """The progress display of long work (calibration, evaluation): on stderr, only on a terminal, gone when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


def _sweep_steps(o) -> list[int]:
    """The --sweep list (ascending), validated with the options it excludes; [] without --sweep."""
    if o.sweep is None:
        for flag, value in (("--target-gap", o.target_gap), ("--select-images", o.select_images)):
            if value is not None:
                raise ConfigError(f"{flag} applies to a sweep; add --sweep T1,T2,... (e.g. --sweep 1,2,4,8)")
        return []
    if o.timesteps is not None:
        raise ConfigError("give either -T/--timesteps or --sweep, not both")
    entries = [v.strip() for v in o.sweep.split(",")]
    if len(entries) > 1 and not all(entries):
        raise ConfigError(f"--sweep {o.sweep!r}: an empty entry in the list; e.g. --sweep 1,2,4,8")
    try:
        steps = [int(v) for v in entries]
    except ValueError:
        raise ConfigError(f"--sweep {o.sweep!r} is not a comma list of integers; e.g. --sweep 1,2,4,8") from None
    if not steps or any(T < 1 for T in steps) or len(set(steps)) != len(steps):
        raise ConfigError(f"--sweep {o.sweep!r}: give distinct positive numbers of time steps, e.g. --sweep 1,2,4,8")
    if o.target_gap is not None and not 0 <= o.target_gap < float("inf"):
        raise ConfigError(f"--target-gap must be a finite number >= 0 percentage points, got {o.target_gap}")
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


def _levels(o, sweep_steps: list[int]) -> list[Optional[int]]:
    """The --levels values: one (None: the preset's) or, with --sweep, a comma list the sweep chooses among (like
    --threshold; the thresholds of each n are fitted for it)."""
    if o.levels is None:
        return [None]
    try:
        values = [int(v) for v in str(o.levels).split(",")]
    except ValueError:
        raise ConfigError(f"--levels {o.levels!r} is not an integer (with --sweep: a comma list of them, e.g. --levels "
                          "3,4,5)") from None
    if len(values) > 1 and not sweep_steps:
        raise ConfigError(f"--levels {o.levels!r}: a list of levels needs --sweep (e.g. --sweep 4,8), which chooses "
                          "among them; give one n otherwise")
    if len(set(values)) < len(values):
        raise ConfigError(f"--levels {o.levels!r}: a value is listed twice; give distinct numbers of levels")
    return values


def _setting_flags(cfg, cfgs) -> str:
    """The flags that tell the swept settings apart (``"--threshold iterate --levels 3"``), empty for one setting."""
    rules, many_n = swept_fields(cfgs)
    return " ".join([f"--threshold {cfg.threshold}"] * rules + [f"--levels {cfg.levels}"] * many_n)


@dataclass(frozen=True)
class RunOptions:
    """The command's options, passed as one object (validated by the library config and here)."""

    model: str
    coding: str
    timesteps: Optional[int]
    threshold: Optional[str]
    granularity: Optional[str]
    levels: Optional[str]
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
    input_layout: Optional[str] = None
    markdown: Optional[Path] = None
    layer_errors: bool = False
    sweep: Optional[str] = None
    target_gap: Optional[float] = None
    select_images: Optional[int] = None
    logits: Optional[str] = None
    ignore_index: int = 255
    num_workers: Optional[int] = None
    nir: Optional[Path] = None
    nir_host_prefix: bool = False
    calibration_check: bool = True
    config_file: Optional[Path] = None  # the --config file the options were read from (recorded in the report)
    given: frozenset[str] = frozenset()  # the options given on the command line or in the --config file


def _run(o: RunOptions) -> str | None:
    """The whole command; returns the report kept for standard output (``--report -`` / ``--markdown -``)."""
    from snnconvert import models_zoo
    from snnconvert.convert import ConversionConfig, convert_grid
    from snnconvert.convert.onnx_layout import check_layout_applies, pixel_scale
    from snnconvert.runtime import check_device, sweep
    from snnconvert.runtime.data import Normalize, check_data_flags, load_calib_eval, parse_normalize
    from snnconvert.runtime.imagefiles import Preprocess
    from snnconvert.runtime.malloc import keep_freed_memory
    from snnconvert.runtime.models import first_conv_channels, resolve_model
    from snnconvert.runtime.sweep import choose

    keep_freed_memory()  # large tensors are not unmapped and paged in again on every layer call (runtime/malloc.py)
    from snnconvert.cli.saved import evaluate_saved, is_artifact

    check_outputs(o)
    if is_artifact(o.model):
        return evaluate_saved(o)
    sweep_steps = _sweep_steps(o)
    cfgs = [ConversionConfig.for_coding(o.coding, timesteps=max(sweep_steps) if sweep_steps else o.timesteps,
                                        threshold=threshold,
                                        granularity=o.granularity, levels=levels, neuron=o.neuron,
                                        allow_ann_ops=o.allow_ann_op or None, identity_neurons=o.identity_neurons,
                                        identity_threshold=o.identity_threshold, identity_tail=o.identity_tail,
                                        threshold_scale=o.threshold_scale, identity_levels=o.identity_levels,
                                        token_channel=o.token_channel,
                                        threshold_aggregation=o.threshold_aggregation,
                                        input_layout=o.input_layout)
            for threshold in _thresholds(o, sweep_steps) for levels in _levels(o, sweep_steps)]
    if len({(str(cfg.threshold), cfg.levels) for cfg in cfgs}) < len(cfgs):
        raise ConfigError(f"--threshold {o.threshold!r}: a rule is listed twice; give distinct rules")
    if o.calib_images <= 0:
        raise ConfigError(f"--calib-images must be positive, got {o.calib_images}")
    check_nir_options(o, cfgs[0].coding)
    dtype = check_runtime(o)
    layout = cfgs[0].input_layout
    resolved = resolve_model(o.model, weights=o.weights, zoo=models_zoo, input_layout=layout)
    # an ONNX file is imported once, before anything else can fail on it: the imported graph is the ANN to compare
    # against and what convert() traces (a deep copy; node names, hence threshold keys, are the importer's either way)
    check_layout_applies(resolved.model, layout)
    ann = resolved.model if isinstance(resolved.model, torch.nn.Module) else result_ann(resolved.model, layout)
    # one data set named for either side is both sides' (its train split calibrates, its test split evaluates; a
    # one-split folder or file is divided by load_calib_eval)
    calib_name = o.calib_data or resolved.dataset or o.eval_data
    eval_name = o.eval_data or resolved.dataset or o.calib_data
    if calib_name is None:
        raise ConfigError(f"{o.model}: no data set is known for this model; pass --calib-data (e.g. fashion-mnist; "
                          "evaluation uses its test split unless --eval-data names other data)")
    # the user's flags, not the card's
    check_data_flags((calib_name, eval_name), resize=o.resize, crop=o.crop, data_dir=o.data_dir,
                     num_workers=o.num_workers)
    card = resolved.preprocessing or {}
    if o.normalize:
        norm = parse_normalize(o.normalize)
    elif "mean" in card:
        norm = Normalize(card["mean"], card["std"])
    else:
        norm = None
        scale = pixel_scale(ann) if isinstance(ann, torch.fx.GraphModule) else None
        if scale is not None:  # every data set gives [0, 1] images
            log.warning("%s: the model divides its input by %.4g first (Keras' Rescaling layer): it expects pixel "
                        "values in [0, 255], and the data give images in [0, 1]; pass --normalize "
                        "0,0.00392156862745098 to feed it x·255", o.model, scale)
    # image files are read as greyscale or RGB for the model's input: its card's or ONNX input's channels, else its
    # first convolution's
    channels = (resolved.input_shape[0] if resolved.input_shape and resolved.input_shape[0] in (1, 3)
                else first_conv_channels(ann) or 3)
    files = Preprocess(channels=channels, resize=o.resize if o.resize is not None else card.get("resize"),
                       crop=o.crop if o.crop is not None else card.get("crop"), workers=decode_workers(o))
    splits = load_calib_eval(calib_name, eval_name, calib_images=o.calib_images, eval_images=o.eval_images,
                             select_images=o.select_images, data_dir=o.data_dir, preprocess=files)
    calib_set, eval_set, calib_info, eval_info = splits.calib, splits.eval, splits.calib_info, splits.eval_info

    # calibration and its check run where the SNN is evaluated (--device): the ANN, and so the SNN traced from it
    device = check_device(o.device)
    ann.to(device)

    def prep(x: torch.Tensor) -> torch.Tensor:
        return normalized(norm, x).to(device)

    started = time.perf_counter()
    with progress_bar() as bar:
        forward_loop = progress_loop(bar, "calibration", calib_set, prep)
        example = prep(calib_set.example(2))
        check_labels(ann, prep(eval_set.example(1)), eval_set, eval_name, o.logits, o.ignore_index,  # before calib.
                     calib_example=example[:1])
        grid = []  # per setting (threshold rule, n): {T: ConversionResult}; one calibration per rule
        steps = sweep_steps or [cfgs[0].timesteps]
        for rule in dict.fromkeys(str(c.threshold) for c in cfgs):
            group = [c for c in cfgs if str(c.threshold) == rule]  # its levels, in cfgs' order
            results = convert_grid(ann, forward_loop=forward_loop, source=resolved.source, example_inputs=example,
                                   configs=[c.replace(timesteps=T) for c in group for T in steps])
            grid += [dict(zip(steps, results[i * len(steps):(i + 1) * len(steps)])) for i in range(len(group))]
        bar.remove_task(forward_loop.task)
        if o.nir is not None:  # every node NIR cannot express, before the evaluation, not after it
            nir_graph(o, next(iter(grid[0].values())).snn, example)

        def run(candidates: dict, data, stage: str, layer_errors: bool, known=None):
            rule = _setting_flags(next(iter(candidates.values())).config, cfgs)
            rule = f"{rule}, " if rule else ""

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
        check = calibration_check(o, result, eval_set, calib_set, len(calib_set), prep, bar)
    result.to("cpu")  # the report, the NIR file and the saved folder read CPU tensors
    if sweep_steps:
        out.print(sweep_table(sweeps, grid, best, o.select_images))
        out.print(sweep_line(swept, o.select_images, _setting_flags(cfg, cfgs) or None))
    report_sweep = None
    if sweep_steps and (o.report is not None or o.markdown is not None):
        chosen_on = ({**splits.select_info, "held_out": True} if splits.select is not None
                     else {**eval_info, "held_out": False})
        report_sweep = sweep_doc(sweeps, cfgs, grid, best, chosen_on)
    with all_or_none(o):
        nir_doc = export_nir_file(o, result.snn, normalized(norm, eval_set.example(16)))
        text = present(o, result, evaluation, label=resolved.label, eval_name=eval_name, eval_info=eval_info,
                       calib_info=calib_info, seconds=time.perf_counter() - started, fused_pairs=final.fused_pairs,
                       sweep_doc=report_sweep, nir_doc=nir_doc, check=check)
        if o.output is not None:
            _save(o, result, norm, files, calib_name, eval_name, calib_info, resolved.label)
    return text


def _save(o: RunOptions, result, norm, files, calib_name: str, eval_name: str, calib_info: dict, label: str) -> None:
    """``--output``: save the SNN with what a later ``snnconvert SNN_DIR`` needs to evaluate it on the same images,
    preprocessed the same way."""
    norm_doc = None if norm is None else {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()}
    result.source = dataclasses.replace(result.source, meta={
        **result.source.meta,
        "data": {"calibration": _portable(calib_name), "calib_images": o.calib_images,
                 "select_images": o.select_images, "evaluation": _portable(eval_name),
                 "eval_images": o.eval_images, "calibration_info": calib_info},
        "preprocessing": {"normalize": norm_doc, "resize": files.resize, "crop": files.crop},
        "logits": o.logits, "ignore_index": o.ignore_index, "label": label})
    result.save(o.output)
    out.print(f"SNN saved to {o.output} (evaluate it again with `snnconvert {o.output}`; API: "
              "snnconvert.runtime.load)")


def _portable(spec: str) -> str:
    """A data spec that names the same files from any working directory (``npz:/abs/file.npz``)."""
    from snnconvert.runtime.data import parse_data_spec

    source = parse_data_spec(spec)
    return spec if source.path is None else f"{source.kind}:{source.path}"


def result_ann(onnx_path: str, input_layout: str) -> torch.nn.Module:
    """The ANN to compare against for an ONNX model: the imported graph itself."""
    from snnconvert.convert import load_onnx

    return load_onnx(onnx_path, input_layout=input_layout)


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
    levels: Optional[str] = typer.Option(None, help="thresholds per multi-threshold neuron (n); with --sweep a comma "
                                                    "list the sweep chooses among, e.g. 3,4,5"),
    neuron: Optional[str] = typer.Option(None, help="if (single threshold) | mt (multi-threshold)"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load into a Python model"),
    calib_data: Optional[str] = typer.Option(
        None, help="calibration data (train split): fashion-mnist | imagefolder:PATH | npz:PATH"),
    eval_data: Optional[str] = typer.Option(
        None, help="evaluation data (test split): fashion-mnist | imagefolder:PATH | npz:PATH"),
    calib_images: int = typer.Option(5000, "--calib-images", "--calib-samples",
                                     help="calibration images (the first N of the train split; of a seeded "
                                          "permutation for an image folder or a one-split file)"),
    eval_images: Optional[int] = typer.Option(None, help="evaluation images (default: the whole test split)"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with the data set files"),
    normalize: Optional[str] = typer.Option(None, help="MEAN,STD (or one per channel): feed (x - mean) / std"),
    resize: Optional[int] = typer.Option(None, help="image folders: resize the shorter side to N pixels"),
    crop: Optional[int] = typer.Option(None, help="image folders: centre crop N x N pixels"),
    report: Optional[Path] = typer.Option(None, help="write the JSON report here (-: to standard output, and what "
                                          "the command prints to stderr)"),
    markdown: Optional[Path] = typer.Option(None, help="write the report as Markdown tables here (accuracy after "
                                            "every step, sites, layers, energy, configuration; -: to standard "
                                            "output)"),
    output: Optional[Path] = typer.Option(None, help="save the converted SNN (folder) here"),
    nir: Optional[Path] = typer.Option(None, "--nir", help="export the SNN as a NIR graph (rate coding; reset by "
                                       "subtraction and multi-threshold levels kept exactly) to this .nir file, "
                                       "read back and run against the SNN on 16 evaluation images"),
    nir_host_prefix: bool = typer.Option(False, "--nir-host-prefix", help="with --nir: keep the stateless layers "
                                         "in front of the first neuron (e.g. a stem max-pool) on the host; the "
                                         "graph's input is their output"),
    batch_size: int = typer.Option(128, help="evaluation batch size (the SNN runs T x batch per call)"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="image folders: threads decoding the "
                                              "files, one batch ahead (0: none) [default: up to 4, one per core]"),
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
        None, help="identity-neuron thresholds: <p>% | max | a fraction <f> of the max, of the input's magnitude "
                   "(see --identity-tail) "
                   "[default: 99.9%]"),
    identity_tail: Optional[str] = typer.Option(
        None, help="both (the statistic of |x|: negative values get the same range) | upper (of the signed input, "
                   "the reference's rule) [default: both]"),
    threshold_scale: Optional[float] = typer.Option(
        None, help="c: identity-neuron thresholds are the statistic times c [default: 1]"),
    identity_levels: Optional[int] = typer.Option(
        None, help="n of the identity neurons (multi-threshold): more levels resolve their signed, heavy-tailed "
                   "inputs at few steps, at more events [default: 6 with differential coding's MT neurons, else "
                   "--levels]"),
    token_channel: Optional[str] = typer.Option(
        None, help="per-channel thresholds on [B, N, C] token tensors: features (last dim) | tokens (dim 1, the "
                   "reference implementation's rule) [default: features]"),
    threshold_aggregation: Optional[str] = typer.Option(
        None, "--aggregation", help="max / percentile thresholds over the calibration data: global (of all values) "
                                    "| batch-mean (per batch of 256 images, averaged: the reference "
                                    "implementation's rule) [default: global]"),
    input_layout: Optional[str] = typer.Option(
        None, "--input-layout", help="an ONNX model's input layout: channels-first ([N, C, H, W]) | channels-last "
                                     "([N, H, W, C]: TF / Keras exported by tf2onnx; the data stay channels-first, "
                                     "a transpose goes in front of the model) [default: channels-first]"),
    layer_errors: bool = typer.Option(False, "--layer-errors", help="also compare every neuron's (and pooling "
                                      "unit's) decoded output with its ANN value after each step: where accuracy is "
                                      "lost"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="comma list of T (e.g. 1,2,4,8,16): convert and "
                                        "evaluate for each (one calibration) and report the smallest T within "
                                        "--target-gap of the ANN"),
    target_gap: Optional[float] = typer.Option(None, "--target-gap", help="with --sweep: accuracy target in "
                                               "percentage points below the ANN (regression: percent above the "
                                               "ANN's MSE; unlabelled images: agreement in pp below 100 %, or "
                                               "the output error in percent) [default: 0.5]"),
    select_images: Optional[int] = typer.Option(
        None, "--select-images", help="with --sweep: choose T on N held-out images of the calibration data (the N "
                                      "after the calibration images) instead of the evaluation images, which then "
                                      "see the chosen T only [default: choose on the evaluation images]"),
    ignore_index: int = typer.Option(255, "--ignore-index", help="with per-pixel labels (segmentation: pixel "
                                     "accuracy and mean IoU): the label of pixels left out of both (-1: none)"),
    logits: Optional[str] = typer.Option(
        None, "--logits", help="for a model with several outputs (tuple, list or dict: heads): the one holding the "
                               "class scores, by index or key (e.g. 0, cls, heads.0); the SNN decodes every output "
                               "(unlabelled images: the output compared with the ANN's; default: every output)"),
    calibration_check: bool = typer.Option(
        True, "--calibration-check/--no-calibration-check",
        help="refit the thresholds on the evaluation images (as many as calibration had) and warn where they differ "
             "from the calibrated ones by more than 10 % (1/sqrt(N) below 100 images: their sampling noise): "
             "calibration images unlike the evaluation images"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML or JSON file of options (keys: the flag "
                                          "names, e.g. coding, time-steps, calib-images); flags given on the "
                                          "command line override it"),
    debug: bool = typer.Option(False, help="show tracebacks"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress details"),
) -> None:
    """Convert MODEL to a spiking network, calibrate it, and report accuracy at every time step."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # torch's probe for building CUDA extensions, met by --backend inductor; --device is checked
        logging.getLogger("torch.utils.cpp_extension").addFilter(_not_the_cuda_probe)
    try:
        options = RunOptions(**read_options(ctx, config))
        with console_on_stderr(to_stdout(options)):
            text = _run(options)
        write_stdout(text)  # after the run: what the model's own code prints went to stderr
    except CONVERSION_ERRORS as exc:
        _fail(exc, debug, code=1)
    except USAGE_ERRORS as exc:
        _fail(exc, debug, code=2)
    except SnnConvertError as exc:
        _fail(exc, debug, code=1)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except OSError as exc:  # the file system refused (a race after the checks, a full disk): not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(SnnConvertError(f"{exc.strerror or exc}{where}; check the path, its permissions and the free space"),
              debug, code=2)
    except Exception as exc:  # noqa: BLE001 - unexpected: one line, traceback with --debug
        if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc):
            _fail(SnnConvertError(f"out of memory ({first_line(exc)}): the SNN runs T x batch images per call; lower "
                                  "--batch-size or -T, or use --mode single"), debug, code=1)
        _fail(exc, debug, code=1, unexpected=True)


def _not_the_cuda_probe(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")


def _fail(exc: BaseException, debug: bool, *, code: int, unexpected: bool = False) -> None:
    if debug:
        err.print_exception()
    prefix = f"internal error ({type(exc).__name__})" if unexpected else "error"
    text = str(exc) if unexpected else as_flags(str(exc))
    if unexpected and not debug:
        text += " (rerun with --debug for the traceback)"
    print(f"{prefix}: {text}", file=sys.stderr)
    raise typer.Exit(code)


def run() -> None:
    """The ``snnconvert`` command: ``app`` with click's usage errors (an unknown flag, ``-T 2.5``) as one line, like
    every other error, instead of click's usage block."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - click's UsageError family, found by its interface (typer vendors click)
        if callable(getattr(exc, "format_message", None)) and getattr(exc, "exit_code", None) == 2:
            print(f"error: {' '.join(exc.format_message().split())} (snnconvert --help lists the options)",
                  file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
