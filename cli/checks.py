"""Checks of a run's options, outputs and labels before anything slow, and the steps both commands share (the
conversion run of ``main.py`` and the saved-SNN evaluation of ``saved.py``)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from snnconvert.cli.present import STDOUT
from snnconvert.convert.artifact import atomic_file, writable_path
from snnconvert.convert.errors import BackendUnavailableError, ConfigError, DataError, SnnConvertError, first_line

if TYPE_CHECKING:
    from snnconvert.cli.main import RunOptions

log = logging.getLogger("snnconvert.cli")


def decode_workers(o: RunOptions) -> int:
    """``--num-workers``: threads decoding image-folder files (default: up to 4, one per CPU core)."""
    return o.num_workers if o.num_workers is not None else min(4, os.cpu_count() or 1)


def check_runtime(o: RunOptions) -> torch.dtype:
    """The options of how the SNN runs and is evaluated, checked before anything slow; the layer dtype."""
    from snnconvert.runtime import backend_status, check_device

    dtype = _dtype(o.dtype)
    if o.eval_images is not None and o.eval_images <= 0:
        raise ConfigError(f"--eval-images must be positive, got {o.eval_images}")
    if o.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {o.batch_size}")
    if o.num_workers is not None and o.num_workers < 0:
        raise ConfigError(f"--num-workers must be a number of threads >= 0, got {o.num_workers}")
    if o.mode not in ("multi", "single"):
        raise ConfigError(f"--mode {o.mode!r} is not valid; choose multi (layer by layer over T*B) or single "
                          "(streaming)")
    try:
        check_device(o.device, available=False)
    except ConfigError as exc:  # the library's "device ..." in the flag's words
        raise ConfigError(f"--{exc}") from None
    ok, reason = backend_status(o.backend, o.device)  # before calibration: fail in seconds, not minutes
    if not ok:
        raise BackendUnavailableError(f"--backend {o.backend}: {reason}")
    try:
        check_device(o.device)
    except (ConfigError, BackendUnavailableError) as exc:
        raise type(exc)(f"--{exc}") from None
    return dtype


def to_stdout(o: RunOptions) -> bool:
    """A report goes to standard output: the console's tables and lines go to stderr instead."""
    return STDOUT in (o.report, o.markdown)


def check_outputs(o: RunOptions) -> None:
    """Every output path, checked before anything slow: no two on one path; the files (--report, --markdown,
    --nir) not folders; the --output folder not a file, and new, empty or a saved SNN; each in a folder that exists,
    or can be created, and takes files (a probe file is written and removed). ``-`` (standard output) names one of
    the two reports only."""
    for flag, path in (("--nir", o.nir), ("--output", o.output)):
        if path == STDOUT:
            raise ConfigError(f"{flag} -: standard output takes the JSON report (--report -) or the Markdown report "
                              f"(--markdown -) only; give {flag} a file path")
    if o.report == STDOUT and o.markdown == STDOUT:
        raise ConfigError("--report and --markdown both name standard output (-); give one of them a file path")
    files = [(flag, path) for flag, path in (("--report", o.report), ("--markdown", o.markdown), ("--nir", o.nir))
             if path is not None and path != STDOUT]
    seen: dict[Path, str] = {}
    kept = [(f"the --output folder {o.output}, which saving the SNN replaces as a whole", o.output.resolve())
            ] if o.output is not None else []
    if (Path(o.model) / "source.json").is_file():  # a saved SNN evaluated again: its files are checksummed
        kept.append((f"the saved SNN folder {o.model} being evaluated, whose files its manifest checks",
                     Path(o.model).resolve()))
    for flag, path in [*files, *([("--output", o.output)] if o.output is not None else [])]:
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} both name {path}; give each output its own path")
        seen[key] = flag
        if flag != "--output" and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; give a file path")
        for what, folder in kept:
            if flag != "--output" and key.is_relative_to(folder):
                raise ConfigError(f"{flag} {path} is inside {what}; write it elsewhere")
        try:
            writable_path(path)
        except ConfigError as exc:
            raise ConfigError(f"{flag} {exc}") from None
        _check_writable_folder(flag, path)
    if o.output is not None and o.output.exists():
        if not o.output.is_dir():
            raise ConfigError(f"--output {o.output} is a file; give a folder path for the saved SNN")
        if any(o.output.iterdir()) and not (o.output / "source.json").is_file():  # a saved SNN is replaced
            raise ConfigError(f"--output {o.output} is a folder with other files in it (not a saved SNN); choose "
                              "another --output path")


def _check_writable_folder(flag: str, path: Path) -> None:
    """The folder ``path`` goes in, or the nearest existing folder above it (the writers create the missing ones),
    is a folder that takes a new file."""
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".snnconvert-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc}); choose another "
                          "path") from None


@contextlib.contextmanager
def all_or_none(o: RunOptions) -> Iterator[None]:
    """The run's outputs as a whole: when writing one fails, those this run created before it are removed again and
    the files it replaced get their content back, so a failed run leaves the paths as they were (each file is
    written atomically on its own; a saved SNN folder is replaced last, atomically)."""
    paths = [writable_path(p) for p in (o.nir, o.report, o.markdown, o.output) if p is not None and p != STDOUT]
    existed = {p: p.exists() for p in paths}
    before = {p: p.read_bytes() for p in paths if p.is_file()}
    try:
        yield
    except BaseException:
        for path in paths:
            if path in before:
                if not path.is_file() or path.read_bytes() != before[path]:
                    with atomic_file(path) as tmp:
                        Path(tmp).write_bytes(before[path])
            elif not existed[path] and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def check_nir_options(o: RunOptions, coding: str) -> None:
    """``--nir`` / ``--nir-host-prefix`` checked before anything slow."""
    if o.nir is None:
        if o.nir_host_prefix:
            raise ConfigError("--nir-host-prefix applies to a NIR export; add --nir FILE.nir")
        return
    if coding != "rate":
        raise ConfigError(f"--nir needs --coding rate (NIR has no decoder for {coding} coding: it weights step t by "
                          "1/t and sends offsets once)")
    from snnconvert.runtime.nir import require_nir

    require_nir()  # the optional package is here (before calibration)


def nir_graph(o: RunOptions, snn, example: torch.Tensor):
    from snnconvert.runtime.nir import to_nir

    return to_nir(snn, example, host_prefix=o.nir_host_prefix)


def export_nir_file(o: RunOptions, snn, images: torch.Tensor) -> dict | None:
    """``--nir FILE``: write the NIR graph, read it back and run it against the SNN on ``images``; what the report
    records of it (None without ``--nir``)."""
    if o.nir is None:
        return None
    from snnconvert.runtime.nir import check_nir, write_nir

    graph = write_nir(nir_graph(o, snn, images), o.nir)
    check = check_nir(graph, snn, images, host_prefix=o.nir_host_prefix)
    meta = graph.metadata
    return {"path": str(o.nir.resolve()), "nodes": len(graph.nodes), "edges": len(graph.edges),
            "neuron_sites": int(meta["neuron_sites"]), "timesteps": int(meta["timesteps"]), "dt": float(meta["dt"]),
            "input": str(meta["input"]), "host_prefix": o.nir_host_prefix, "check": dataclasses.asdict(check),
            "check_text": check.text}


def normalized(norm, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the model is fed (``norm``: the run's ``Normalize``, or None for raw images)."""
    return norm(x) if norm is not None else x


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPE_NAMES:
        raise ConfigError(f"--dtype {name!r} is not valid; choose one of: {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def check_labels(ann: torch.nn.Module, example: torch.Tensor, data, name: str, logits: str | None,
                  ignore_index: int, calib_example: torch.Tensor | None = None) -> None:
    """The evaluated output must be one output (``--logits`` names it among several) that the evaluation labels fit
    (``label_task``: class labels, per-pixel labels or regression targets), and class labels must index it (e.g.
    not an ImageFolder with more classes than logits); per-pixel labels index the output's dim 1, except those
    equal to ``ignore_index``. Unlabelled images compare every output with the ANN's (or the one ``--logits``
    names, which must be one). The model must run on the evaluation images: where it runs on the calibration images
    (``calib_example``; a saved SNN: none) but not on these, a DataError before the calibration."""
    from snnconvert.convert.outputs import select_output
    from snnconvert.runtime.scores import label_task

    probe = copy.deepcopy(ann)  # a model may cache state on the input's shape (Ultralytics' Detect keeps its anchors
    try:  # for the last batch size), which tracing would then read: the probes run on a copy
        with torch.no_grad():
            out = probe(example)
    except Exception as exc:  # noqa: BLE001 - the conversion runs the model next and names the failing node
        if calib_example is not None:
            try:
                with torch.no_grad():
                    probe(calib_example)
            except Exception:  # noqa: BLE001 - fails on both: the conversion says where, in one line
                return
        runs = (f" although it runs on the calibration images ({list(calib_example.shape[1:])})"
                if calib_example is not None else "")
        raise DataError(f"{name}: the model fails on the evaluation images ({list(example.shape[1:])}){runs}: "
                        f"{first_line(exc)}; give evaluation images the model takes (--resize / --crop, "
                        "--normalize, or other data)") from None
    if data.labels is None:
        if logits is not None:
            select_output(out, logits)
        return
    scores = select_output(out, logits)
    try:
        task = label_task(scores.shape, data.labels.shape, data.labels.is_floating_point())
    except ConfigError as e:
        raise DataError(f"{name}: {e}") from None
    if task == "regression":
        y = data.labels
        if y.dim() == 2 and y.shape[1] > 1 and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all()):
            log.warning("%s: the float labels are one-hot rows: they are evaluated as regression targets (MSE); "
                        "give class indices (labels.argmax(1), integers) for accuracy", name)
        return
    dense = task == "segmentation"
    outputs = scores.shape[1] if dense else scores.shape[-1]
    labels = data.labels[data.labels != ignore_index] if dense else data.labels
    top = int(labels.max()) if labels.numel() else -1
    if top >= outputs:
        raise DataError(f"{name}: labels go up to {top} but the model has {outputs} "
                        f"{'classes (output dim 1)' if dense else 'outputs'}; check that the data "
                        "set matches the model (ImageFolder labels are the sorted class folders)")
    if not dense and outputs >= 2 * (top + 1) and len(labels) >= 100:
        log.warning("%s: the labels use %d classes but the model has %d outputs; check that the data set matches "
                    "the model (its accuracy counts every output)", name, top + 1, outputs)


def progress_loop(bar, description: str, data, prep, batch_size: int = 256):
    """A ``forward_loop(model)`` over ``data`` (an image data set) in batches of ``batch_size``, preprocessed by
    ``prep``, advancing one progress-bar task per pass."""
    task = bar.add_task(description, total=len(data))

    def forward_loop(model: torch.nn.Module) -> None:
        bar.reset(task, total=len(data))
        for x, _ in data.batches(batch_size):
            model(prep(x))
            bar.advance(task, len(x))

    forward_loop.task = task
    return forward_loop


def calibration_check(o: RunOptions, result, eval_set, calib_set, calib_images: int | None, prep, bar):
    """``--calibration-check`` (the default): the thresholds refitted on the evaluation images against the
    calibrated ones (``convert/calibrate/check.py``), on as many images as calibration had: the first
    ``min(evaluation, calibration)`` evaluation images, compared with the installed thresholds, or, with fewer
    evaluation images, with thresholds refitted on as many calibration images (``calib_set``; None when they are
    not at hand: no check then). Returns ``(check or None, note or None)``."""
    if not o.calibration_check:
        return None, None
    from snnconvert.convert.calibrate.check import check_thresholds

    if calib_images is None:
        return None, "calibration check skipped: the number of calibration images is not recorded"
    n = min(len(eval_set), calib_images)
    reference = None
    if n < calib_images:
        if calib_set is None:
            return None, (f"calibration check skipped: {n} evaluation images, fewer than the {calib_images} "
                          "calibrated on, and the calibration images are not loaded")
        reference = progress_loop(bar, "calibration check (calibration images)", calib_set.subset(n), prep)
    data = progress_loop(bar, "calibration check", eval_set.subset(n), prep)
    try:
        return check_thresholds(result.snn, result.config, data, reference=reference), None
    except SnnConvertError as exc:  # the evaluation stands: its report is written, the check's failure said
        return None, f"calibration check failed: {first_line(exc)}"
    finally:
        for loop in (data, reference):
            if loop is not None:
                bar.remove_task(loop.task)
