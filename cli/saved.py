"""``snnconvert SNN_DIR``: evaluate (and export) a converted SNN saved with ``--output``, without calibration."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from snnconvert.cli.checks import (
    all_or_none,
    calibration_check,
    check_labels,
    check_nir_options,
    check_runtime,
    decode_workers,
    export_nir_file,
    normalized,
)
from snnconvert.cli.main import RunOptions, progress_bar
from snnconvert.cli.present import out, present
from snnconvert.convert.errors import ArtifactError, ConfigError, DataError


def _same_pool(calib_spec: str | None, eval_spec: str) -> bool:
    """Whether a saved SNN was calibrated on the one-split pool it is evaluated on (then the evaluation must leave
    out the calibration images, as at conversion); False when the calibration data is not here."""
    from snnconvert.runtime.data import parse_data_spec, same_pool

    if calib_spec is None:
        return False
    try:
        return same_pool(parse_data_spec(calib_spec), parse_data_spec(eval_spec))
    except DataError:
        return False  # a missing file: loading the evaluation data says so if it is that one


def is_artifact(model: str) -> bool:
    """MODEL is read as a saved SNN: a folder written by ``--output`` (it holds ``source.json``), or any other folder
    (no model is a folder, so :func:`evaluate_saved` says what to give instead of naming it an unknown zoo model),
    unless the folder only has a zoo model's name."""
    path = Path(model)
    if not path.is_dir():
        return False
    if (path / "source.json").is_file():
        return True
    from snnconvert import models_zoo

    return model not in models_zoo.list_models()


#: options that define a conversion: a saved SNN is evaluated as it was converted, so they do not apply to it
_CONVERSION_OPTIONS = ("coding", "threshold", "granularity", "levels", "neuron", "weights", "calib_data",
                       "calib_images", "allow_ann_op", "identity_neurons", "identity_threshold", "identity_tail",
                       "threshold_scale", "identity_levels", "token_channel", "threshold_aggregation", "input_layout",
                       "sweep", "target_gap", "select_images", "output")


def _flag(name: str) -> str:
    return {"threshold_aggregation": "--aggregation", "timesteps": "-T"}.get(name, "--" + name.replace("_", "-"))


#: what the command records in a saved folder's source.json meta: key -> type (None allowed for each); "count" is a
#: positive int; nested dicts by their own tables
_META = {"data": dict, "preprocessing": dict, "logits": str, "ignore_index": int, "label": str}
_META_DATA = {"evaluation": str, "calibration": str, "calib_images": "count", "eval_images": "count",
              "select_images": "count", "calibration_info": dict}
_META_PREPROCESSING = {"normalize": dict, "resize": "count", "crop": "count"}


def _check_meta(folder: str, meta: dict) -> None:
    """The facts the command recorded in source.json (data, preprocessing, output) have the types it writes.

    Raises:
        ArtifactError: naming the first value that does not (a hand-edited or damaged source.json).
    """
    def bad(key: str, value) -> ArtifactError:
        return ArtifactError(f"{folder}: source.json records {key} = {value!r}, which the command never writes; "
                             "convert the model again with --output DIR")

    def check(table: dict, values: dict, prefix: str) -> None:
        for key, kind in table.items():
            value = values.get(key)
            if value is None:
                continue
            if kind == "count":
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise bad(prefix + key, value)
            elif not isinstance(value, kind) or isinstance(value, bool):
                raise bad(prefix + key, value)

    check(_META, meta, "")
    check(_META_DATA, meta.get("data") or {}, "data.")
    check(_META_PREPROCESSING, meta.get("preprocessing") or {}, "preprocessing.")
    norm = (meta.get("preprocessing") or {}).get("normalize")
    if norm is not None and not all(isinstance(norm.get(k), list) and norm[k] and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm[k]) for k in ("mean", "std")):
        raise bad("preprocessing.normalize", norm)


def _calibrated_on(data: dict) -> int | None:
    """How many images a saved SNN was calibrated on (None: not recorded)."""
    return (data.get("calibration_info") or {}).get("images") or data.get("calib_images")


def _calibration_images(o: RunOptions, data: dict, evaluation_images: int, files):
    """The calibration images of a saved SNN, read again only when the calibration check needs them (fewer
    evaluation images than were calibrated on) and they are on this machine; else None."""
    from snnconvert.runtime.data import load_calib

    calib_images = _calibrated_on(data)
    if not o.calibration_check or not data.get("calibration") or not calib_images or evaluation_images >= calib_images:
        return None
    try:
        return load_calib(data["calibration"], calib_images=calib_images, data_dir=o.data_dir, preprocess=files)
    except DataError:
        return None


def evaluate_saved(o: RunOptions) -> str | None:
    """``snnconvert SNN_DIR``: evaluate a saved SNN (``--output``) and its ANN again, without calibration: on the
    evaluation images it was evaluated on (or ``--eval-data``), with the preprocessing it was converted with (or
    ``--normalize`` / ``--resize`` / ``--crop``), on any backend, device, dtype and number of steps.

    A folder saved from a Python model imports the module named in its ``source.json`` and calls that factory to
    rebuild the ANN (only a class or Python function defined outside the standard library is called): like any
    model code, evaluate folders only from a trusted source."""
    if not (Path(o.model) / "source.json").is_file():
        raise ArtifactError(f"{o.model} is a folder but not a saved SNN (no source.json): give a folder written by "
                            "--output, or a model (zoo name, file.onnx, file.py:factory)")
    from snnconvert.runtime import check_device, load_result, sweep
    from snnconvert.runtime.data import Normalize, check_data_flags, load_calib_eval, load_eval, parse_normalize
    from snnconvert.runtime.imagefiles import Preprocess

    fixed = [_flag(name) for name in _CONVERSION_OPTIONS if name in o.given]
    if fixed:
        raise ConfigError(f"{o.model} is a saved SNN, evaluated as it was converted: {', '.join(fixed)} "
                          f"{'does' if len(fixed) == 1 else 'do'} not apply to it (convert the model again to change "
                          "the conversion)")
    dtype = check_runtime(o)
    result, ann = load_result(o.model)
    check_nir_options(o, result.config.coding)
    meta = result.source.meta
    _check_meta(o.model, meta)
    data, card = meta.get("data") or {}, meta.get("preprocessing") or {}
    eval_name = o.eval_data or data.get("evaluation")
    if eval_name is None:
        raise ConfigError(f"{o.model} does not record its evaluation data (saved through the API); pass --eval-data")
    # the user's flags, not the recorded ones
    check_data_flags((eval_name,), resize=o.resize, crop=o.crop, data_dir=o.data_dir,
                     num_workers=o.num_workers)
    saved_norm = card.get("normalize")
    norm = (parse_normalize(o.normalize) if o.normalize else
            Normalize(saved_norm["mean"], saved_norm["std"]) if saved_norm else None)
    shape = result.report.input_shape
    channels = shape[0] if shape and shape[0] in (1, 3) else 3
    files = Preprocess(channels=channels, resize=o.resize if o.resize is not None else card.get("resize"),
                       crop=o.crop if o.crop is not None else card.get("crop"), workers=decode_workers(o))
    if "eval_images" not in o.given and o.eval_data is None:  # the images of the first evaluation
        o = dataclasses.replace(o, eval_images=data.get("eval_images"))
    if _same_pool(data.get("calibration"), eval_name):  # the split of the conversion: no image calibrated on
        splits = load_calib_eval(data["calibration"], eval_name, calib_images=data["calib_images"],
                                 eval_images=o.eval_images, select_images=data.get("select_images"),
                                 data_dir=o.data_dir, preprocess=files)
        eval_set, eval_info, calib_set = splits.eval, splits.eval_info, splits.calib
    else:  # a test split or another source: the calibration data need not be on this machine
        eval_set, eval_info = load_eval(eval_name, eval_images=o.eval_images, data_dir=o.data_dir, preprocess=files)
        calib_set = _calibration_images(o, data, len(eval_set), files)
    calib_info = data.get("calibration_info")
    logits = o.logits if "logits" in o.given else meta.get("logits")
    ignore = o.ignore_index if "ignore_index" in o.given else meta.get("ignore_index", o.ignore_index)
    check_labels(ann, normalized(norm, eval_set.example(1)), eval_set, eval_name, logits, ignore)
    T = o.timesteps if o.timesteps is not None else result.config.timesteps
    started = time.perf_counter()
    with progress_bar() as bar:
        def progress(t: int):
            task = bar.add_task(f"evaluation (T={t})", total=len(eval_set))
            return lambda n: bar.advance(task, n)

        swept = sweep({T: result}, lambda: ((normalized(norm, x), y) for x, y in eval_set.batches(o.batch_size)),
                      ann=ann, backend=o.backend, device=o.device, dtype=dtype, mode=o.mode,
                      layer_errors=o.layer_errors, progress=progress, output=logits, ignore_index=ignore)
        device = check_device(o.device)  # the check refits on the evaluation's device, as the conversion did
        result.to(device)
        check = calibration_check(o, result, eval_set, calib_set, _calibrated_on(data),
                                  lambda x: normalized(norm, x).to(device), bar)
        result.to("cpu")
    if T != result.config.timesteps and result.calibration.quantisation_levels:
        out.print(f"note: the thresholds were fitted for T={result.config.timesteps}; running T={T}")
    o = dataclasses.replace(o, logits=logits, ignore_index=ignore)
    label = f"{o.model} (saved SNN of {meta['label']})" if meta.get("label") else o.model
    with all_or_none(o):
        nir_doc = export_nir_file(o, result.snn, normalized(norm, eval_set.example(16)))
        text = present(o, result, swept.evaluations[T], label=label, eval_name=eval_name, eval_info=eval_info,
                       calib_info=calib_info, seconds=time.perf_counter() - started, fused_pairs=swept.fused_pairs,
                       nir_doc=nir_doc, check=check)
    return text  # written to standard output by the caller (cli.main)
