"""snnconvert.convert: turn a trained ANN (``nn.Module`` or ``.onnx`` file) into a spiking network.

The conversion is one fixed template of named stages (architecture.md §4)::

    trace / import -> normalise passes -> support check -> identity-neuron sites -> insert observers
    -> forward_loop -> thresholds -> remove observers -> replace ReLUs and identity sites by neurons

Variation enters through :class:`ConversionConfig` and the coding strategy, never through branches in the driver.
Every stage is also public (``trace_module``, ``run_passes``, ``insert_observers``, ``compute_thresholds``,
``replace_activations``) so research code can stop after calibration and inspect the thresholds.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from snnconvert.convert.artifact import ModelSource, load_artifact, save, tensors_digest
from snnconvert.convert.calibrate import (
    CalibrationReport,
    as_forward_loop,
    compute_thresholds,
    first_input,
    insert_observers,
    remove_observers,
    run_calibration,
)
from snnconvert.convert.calibrate.check import ThresholdCheck, check_thresholds
from snnconvert.convert.coding import get_coding
from snnconvert.convert.config import DIFF_DEFAULT, PRESETS, RATE_DEFAULT, ConversionConfig, ThresholdSpec
from snnconvert.convert.errors import ConfigError, check_float_images, first_line
from snnconvert.convert.frontend import annotate_shapes, trace_module
from snnconvert.convert.graph_checks import (
    check_batch_layout,
    check_per_sample,
    check_same_as_model,
    static_batch_advice,
)
from snnconvert.convert.onnx_layout import check_layout_applies, imported_layout
from snnconvert.convert.passes import NORMALIZE_PASSES
from snnconvert.convert.passes.identity import insert_identity_sites
from snnconvert.convert.passes.spikify import check_threshold_shapes, replace_activations
from snnconvert.convert.passes.support import check_supported
from snnconvert.convert.pipeline import ConversionReport, op_table, run_passes
from snnconvert.convert.snn import SpikingNetwork

log = logging.getLogger("snnconvert")
log.addHandler(logging.NullHandler())

__all__ = [
    "convert", "convert_sweep", "convert_grid", "Converter", "convert_with_thresholds", "load_onnx", "prepare",
    "ConversionResult",
    "ConversionConfig", "ThresholdSpec", "RATE_DEFAULT", "DIFF_DEFAULT", "PRESETS", "SpikingNetwork", "ModelSource",
    "save", "load_artifact", "check_thresholds", "ThresholdCheck",
]


@dataclass
class ConversionResult:
    """What :func:`convert` returns.

    Attributes:
        snn: the reference spiking network (run it with ``snn(x)`` or ``snnconvert.runtime``).
        thresholds: ``{ReLU site name: threshold tensor}`` (float32, broadcastable over one sample).
        config: the configuration used.
        report: the conversion report (passes, op tables, calibration, timings).
        calibration: per-site threshold summaries and fit diagnostics.
        source: how to rebuild the ANN (needed by :func:`save`); None for an in-memory module without one.
        ann_state: a snapshot of the ANN's weights taken at conversion (saved with the artifact).
    """

    snn: SpikingNetwork
    thresholds: dict[str, torch.Tensor]
    config: ConversionConfig
    report: ConversionReport
    calibration: CalibrationReport
    source: ModelSource | None = None
    ann_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    #: digests of the SNN's state and of ``thresholds`` when the result was made: :func:`save` refuses an SNN or a
    #: thresholds dict changed since (the artifact rebuilds the network from the conversion's inputs)
    digests: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.digests is None:
            self.digests = (tensors_digest(self.snn.state_dict()), tensors_digest(self.thresholds))

    def to(self, device: str | torch.device) -> ConversionResult:
        """Move the SNN, the thresholds and the weights snapshot to ``device`` (in place; returns ``self``). A
        conversion stays where its model was: one calibrated on a GPU holds GPU tensors until moved."""
        self.snn.to(device)
        self.thresholds = {name: theta.to(device) for name, theta in self.thresholds.items()}
        if self.ann_state is not None:
            self.ann_state = {name: value.to(device) for name, value in self.ann_state.items()}
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact (config, thresholds, report, source model) atomically; see :func:`save`."""
        return save(self, path)


def load_onnx(path: str | os.PathLike, *, input_layout: str = "channels-first") -> fx.GraphModule:
    """Import an ONNX file as an eval-mode float32 ``GraphModule`` (see ``snnconvert.convert.onnx_import``);
    ``input_layout="channels-last"`` for a TF / Keras model (the module then takes channels-first input)."""
    from snnconvert.convert.onnx_import import load_onnx as _load_onnx

    return _load_onnx(path, input_layout=input_layout)


def _front_end(model: torch.nn.Module | str | os.PathLike, input_layout: str,
               example_inputs: torch.Tensor | None = None) -> fx.GraphModule:
    if isinstance(model, (str, os.PathLike)):
        if not str(model).lower().endswith(".onnx"):
            raise ConfigError(f"{model}: only .onnx files can be converted from a path; pass an nn.Module otherwise")
        return load_onnx(model, input_layout=input_layout)
    check_layout_applies(model, input_layout)
    gm = trace_module(model, example_inputs)
    if gm.meta.get("onnx") and imported_layout(gm) != input_layout:
        raise ConfigError(f"the ONNX graph was imported with input_layout={imported_layout(gm)!r} but the "
                          f"configuration has input_layout={input_layout!r}: import and convert it with the same "
                          "layout (load_onnx(path, input_layout=...))")
    return gm


def unwrapped(model: Any) -> Any:
    """The module to convert: ``torch.compile``'s wrapper and ``DataParallel`` hold it (``_orig_mod``, ``module``),
    which torch.fx cannot trace through.

    Raises:
        ConfigError: a TorchScript module (no Python code to trace), or parameters that are not float32.
    """
    if not isinstance(model, torch.nn.Module):
        return model
    while True:
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("a TorchScript module cannot be traced by torch.fx: pass the Python nn.Module, or "
                              "export it with torch.onnx.export and convert the .onnx file")
        inner = getattr(model, "_orig_mod", None) if type(model).__name__ == "OptimizedModule" else None
        if inner is None and isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            inner = model.module
        if inner is None:
            break
        log.info("converting the %s inside %s", type(inner).__name__, type(model).__name__)
        model = inner
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.is_floating_point()}
                    - {"float32"})
    if dtypes:
        raise ConfigError(f"the model's parameters are {', '.join(dtypes)}: convert a float32 model (model.float()); "
                          "the SNN's layer precision is chosen when it runs (compile(..., dtype=torch.bfloat16))")
    return model


def _check_onnx_input(gm: fx.GraphModule) -> None:
    """An imported ONNX model must take float images: an integer input (raw pixels cast inside the model) would be
    fed float images in [0, 1] by calibration and evaluation, a different model without an error."""
    onnx_meta = gm.meta.get("onnx") or {}
    declared = onnx_meta.get("input_dtype")
    if declared is not None and not declared.startswith(("float", "bfloat")):
        raise ConfigError(
            f"the ONNX model's input '{onnx_meta.get('input_name')}' is {declared} (raw pixel values, cast inside the "
            "model); the conversion calibrates and evaluates on float images: export the model with a float32 "
            "input, with the cast and scaling moved out of it into the data (--normalize)")


def prepare(
    model: torch.nn.Module | str | os.PathLike,
    config: ConversionConfig,
    report: ConversionReport,
    example_inputs: torch.Tensor | None = None,
) -> fx.GraphModule:
    """Stages 1-3: trace or import, run the normalisation passes, check support, mark the identity-neuron sites.
    Returns the canonical graph."""
    start = time.perf_counter()
    gm = _front_end(model, config.input_layout, example_inputs)
    _check_onnx_input(gm)
    report.timings["trace"] = time.perf_counter() - start
    report.shape_branches = list(gm.meta.get("shape_branches", ()))
    report.opaque_functions = dict(gm.meta.get("opaque_functions", {}))
    if example_inputs is not None:
        report.input_shape = list(example_inputs.shape[1:])
    report.ops_before = op_table(gm)
    if example_inputs is not None:
        check_float_images(example_inputs, "the example input (and the SNN)")
        _check_input_shape(gm, example_inputs)
        try:
            annotate_shapes(gm, example_inputs)
        except Exception as exc:  # noqa: BLE001 - the model cannot run on this input at all
            raise ConfigError(f"the model fails on an input of shape {list(example_inputs.shape)} ({first_line(exc)}); "
                              + (static_batch_advice(gm) or "check the data set and --normalize for this model, and "
                                 "that no batch size is fixed in its code")) from exc
    start = time.perf_counter()
    gm = run_passes(gm, NORMALIZE_PASSES, config, report)
    check_supported(gm, config, report)
    if example_inputs is not None:
        check_per_sample(gm, example_inputs)
        if isinstance(model, torch.nn.Module):
            check_same_as_model(model, gm, example_inputs)
    gm = run_passes(gm, (insert_identity_sites,), config, report)
    if example_inputs is not None:
        check_batch_layout(gm, example_inputs)
    report.timings["passes"] = time.perf_counter() - start
    return gm


def _check_input_shape(gm: fx.GraphModule, example_inputs: torch.Tensor) -> None:
    """An imported ONNX graph states its input shape: reject data of another shape with one clear message."""
    expected = (getattr(gm, "meta", {}).get("onnx") or {}).get("input_shape")
    if not expected:
        return
    got = list(example_inputs.shape)
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected[1:], got[1:])):
        shown = ["N" if i == 0 else "?" if e is None else e for i, e in enumerate(expected)]
        data = ", ".join(map(str, got[1:]))
        hint = "use a data set that matches the model"
        if len(got) == len(expected) >= 3:
            moved_last = [got[0], *got[2:], got[1]]  # the data moved to channels-last
            moved_first = [got[0], got[-1], *got[1:-1]]
            if all(e is None or e == g for e, g in zip(expected[1:], moved_last[1:])):
                # channels last (TF / Keras through tf2onnx) while the data pipeline gives [N, C, H, W]
                hint = ("the model takes channels-last images (TF / Keras layout): convert it with "
                        "input_layout='channels-last' (a transpose in front of the model)")
            elif gm.meta["onnx"].get("input_layout") == "channels-last" and all(
                    e is None or e == g for e, g in zip(expected[1:], moved_first[1:])):
                # the transpose put in front of a model that was channels-first already
                hint = ("the model itself takes channels-first images ([N, C, H, W], as the data are): convert it "
                        "without input_layout='channels-last'")
            elif all(e is None or e == g for e, g in zip(expected[1:], moved_first[1:])):
                hint = "the data are channels-last; give them channels-first ([N, C, H, W])"
        raise ConfigError(f"the ONNX model expects input {shown} but the data have shape [N, {data}]; {hint}")


def state_snapshot(model) -> dict[str, torch.Tensor] | None:
    """The ANN's state dict and its non-persistent buffers (left out of ``state_dict()``, but a model may set them
    after construction: the saved folder must rebuild the same model)."""
    if not isinstance(model, torch.nn.Module):
        return None
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, buffer in model.named_buffers():
        if name not in state and buffer is not None:
            state[name] = buffer.detach().clone()
    return state


def convert(
    model: torch.nn.Module | str | os.PathLike,
    forward_loop: Callable[[torch.nn.Module], None] | Iterable,
    *,
    config: ConversionConfig | None = None,
    example_inputs: torch.Tensor | None = None,
    source: ModelSource | None = None,
) -> ConversionResult:
    """Convert an ANN into a spiking network.

    Args:
        model: an ``nn.Module`` (traced with torch.fx on a deep copy; the model itself is not modified) or the path
            of an ``.onnx`` file.
        forward_loop: ``forward_loop(model)`` that feeds calibration batches (training data), or an iterable of
            batches. It may be called several times (exact percentiles need two passes) and must feed the same
            data each time.
        config: the conversion configuration (default: :data:`RATE_DEFAULT`).
        example_inputs: optional example batch; records shapes in ``node.meta["tensor_meta"]`` and decides
            branches on shapes (frontend.py). Default: the first sample of ``forward_loop`` when that is a tensor, a
            list or a DataLoader (not a generator or a callable).
        source: how to rebuild the model later (zoo factory, ``file.py:factory`` or ONNX path); needed to save.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        TraceError, OnnxImportError, UnsupportedOpError (listing every offending node), CalibrationError,
        ConfigError.
    """
    cfg = config or RATE_DEFAULT
    with torch.inference_mode(False):  # under the caller's inference_mode, thresholds would be inference tensors
        return _convert_many(model, forward_loop, [cfg], example_inputs, source)[0]


def convert_sweep(
    model: torch.nn.Module | str | os.PathLike,
    forward_loop: Callable[[torch.nn.Module], None] | Iterable,
    *,
    config: ConversionConfig,
    timesteps: Sequence[int],
    example_inputs: torch.Tensor | None = None,
    source: ModelSource | None = None,
) -> dict[int, ConversionResult]:
    """Convert for several numbers of time steps with ONE calibration: :func:`convert` with ``config`` at each T.

    The model is traced and calibrated once; the thresholds are then computed for each T (threshold iteration fits
    N = T·2^n levels, so its thresholds differ per T; max and percentile thresholds do not depend on T and come out
    the same). Each result equals ``convert(..., config=config.replace(timesteps=T))`` (tested).

    Returns:
        ``{T: ConversionResult}`` in the order of ``timesteps``.

    Raises:
        ConfigError: an empty or repeated list, or a T < 1; otherwise as :func:`convert`.
    """
    if isinstance(timesteps, (int, str)) or not isinstance(timesteps, Iterable):
        raise ConfigError(f"timesteps must be a list of numbers of time steps, e.g. [1, 2, 4, 8], got {timesteps!r}")
    steps = list(timesteps)
    if not steps or len(set(steps)) != len(steps):
        raise ConfigError(f"timesteps must be a non-empty list of distinct values, got {steps}")
    configs = [config.replace(timesteps=T) for T in steps]  # validates each T
    return dict(zip(steps, convert_grid(model, forward_loop, configs=configs, example_inputs=example_inputs,
                                        source=source)))


#: What the configurations of one calibration may differ in: the thresholds are fitted (threshold iteration: for
#: N = T·2^n levels) and the neurons built per configuration; tracing, the passes and the observers read none of them.
GRID_FIELDS = ("timesteps", "levels", "neuron")


def convert_grid(
    model: torch.nn.Module | str | os.PathLike,
    forward_loop: Callable[[torch.nn.Module], None] | Iterable,
    *,
    configs: Sequence[ConversionConfig],
    example_inputs: torch.Tensor | None = None,
    source: ModelSource | None = None,
) -> list[ConversionResult]:
    """Convert for several configurations that differ only in T, the number of levels n and the neuron kind n implies
    (:data:`GRID_FIELDS`), with ONE calibration: each result equals :func:`convert` with its configuration (tested).
    :func:`convert_sweep` is this over T; the command's ``--sweep ... --levels a,b`` uses it over (n, T).

    Returns:
        one :class:`ConversionResult` per configuration, in their order.

    Raises:
        ConfigError: no configurations, or two that differ in another field (named); otherwise as :func:`convert`.
    """
    configs = list(configs)
    if not configs or not all(isinstance(c, ConversionConfig) for c in configs):
        raise ConfigError("configs must be a non-empty list of ConversionConfig")

    def shared(c: ConversionConfig) -> dict:
        return {k: v for k, v in c.to_dict().items() if k not in GRID_FIELDS}

    first = shared(configs[0])
    for c in configs[1:]:
        differ = sorted(k for k, v in shared(c).items() if first[k] != v)
        if differ:
            raise ConfigError(f"configurations of one calibration may differ only in {', '.join(GRID_FIELDS)}; these "
                              f"differ in {', '.join(differ)}: convert them separately")
    with torch.inference_mode(False):
        return _convert_many(model, forward_loop, configs, example_inputs, source)


def _convert_many(model, forward_loop, configs: list[ConversionConfig], example_inputs, source
                  ) -> list[ConversionResult]:
    """Trace, normalise and calibrate once (with ``configs[0]``, which shares everything but :data:`GRID_FIELDS` with
    the others), then compute thresholds and build one SNN per config."""
    cfg = configs[0]
    coding = get_coding(cfg.coding)
    model = unwrapped(model)
    base = ConversionReport()
    start = time.perf_counter()
    built = []
    if example_inputs is None:
        example_inputs = first_input(forward_loop)
    if isinstance(example_inputs, torch.Tensor) and example_inputs.is_floating_point():
        example_inputs = example_inputs.float()  # the SNN computes on float32 images (float64 data included)
    with torch.no_grad():
        gm = prepare(model, cfg, base, example_inputs)
        t0 = time.perf_counter()
        sites = insert_observers(gm, cfg)
        try:
            run_calibration(gm, sites, as_forward_loop(forward_loop))
            fitted = [compute_thresholds(gm, sites, c, warn=i == 0) for i, c in enumerate(configs)]
        finally:
            remove_observers(gm, sites)
        base.timings["calibration"] = time.perf_counter() - t0
        for i, (c, (thresholds, calibration)) in enumerate(zip(configs, fitted)):
            report = copy.deepcopy(base)
            report.calibration = calibration.to_dict()
            graph = gm if i == len(configs) - 1 else copy.deepcopy(gm)
            built.append((c, thresholds, calibration, report, replace_activations(graph, thresholds, coding, c,
                                                                                  report)))
    if source is None and isinstance(model, (str, os.PathLike)):
        source = ModelSource.onnx(model)
    snapshot = state_snapshot(model)
    results = []
    for c, thresholds, calibration, report, snn in built:
        report.ops_after = op_table(snn.gm)
        report.timings["convert"] = time.perf_counter() - start
        log.info("converted %d neuron site(s) to %s neurons (%s thresholds, %s, T=%d) in %.2f s", len(thresholds),
                 c.coding, c.threshold, c.granularity, c.timesteps, report.timings["convert"])
        results.append(ConversionResult(snn, thresholds, c, report, calibration, source, snapshot))
    return results


class Converter:
    """The shortcut SpikingJelly users know: ``snn = Converter(dataloader, mode="99.9%").convert(model)`` (also
    ``converter(model)``), over :func:`convert`.

    Args:
        dataloader: calibration data from the TRAIN split: a DataLoader or any re-iterable of batches (tensors,
            ``(input, target)`` tuples, dicts with an ``input`` / ``image`` / ... key), one tensor of images, or a
            ``forward_loop(model)``.
        mode: the threshold rule: ``"max"``, ``"<p>%"``, a fraction of the max (``0.5`` or ``"0.5"``), ``"iterate"``
            or ``"iterate-reference"``; default: the coding's preset (rate 99.9 %, differential iterate).
        coding: ``"rate"`` or ``"differential"``.
        timesteps: T (default: the coding's preset).
        channel_wise: one threshold per channel (default) or, if False, one per layer.
        **config: any other :class:`ConversionConfig` field (``neuron``, ``levels``, ``allow_ann_ops``, ...);
            ``granularity="neuron"`` (or any granularity) replaces ``channel_wise``.

    Attributes:
        config: the validated configuration.
        result: the :class:`ConversionResult` of the last conversion (thresholds, reports), or None.

    Raises:
        ConfigError: no calibration data or an invalid option, at construction.
    """

    def __init__(self, dataloader, mode: str | float | None = None, *, coding: str = "rate",
                 timesteps: int | None = None, channel_wise: bool = True, **config) -> None:
        as_forward_loop(dataloader)  # reject missing or unusable data now, not after tracing
        self.dataloader = dataloader
        if "granularity" in config and not channel_wise:
            raise ConfigError("give granularity or channel_wise=False, not both")
        config.setdefault("granularity", "channel" if channel_wise else "layer")
        self.config = ConversionConfig.for_coding(
            coding, timesteps=timesteps, threshold=None if mode is None else str(mode), **config)
        self.result: ConversionResult | None = None

    def convert(self, model: torch.nn.Module | str | os.PathLike) -> SpikingNetwork:
        """Convert ``model`` (calibrated on the dataloader); returns the spiking network (``result`` keeps the
        rest)."""
        self.result = convert(model, forward_loop=self.dataloader, config=self.config)
        return self.result.snn

    __call__ = convert


def convert_with_thresholds(
    model: torch.nn.Module | str | os.PathLike, thresholds: dict[str, torch.Tensor], config: ConversionConfig,
    input_shape: Sequence[int] | None = None,
) -> tuple[SpikingNetwork, ConversionReport]:
    """Stages 1-3 and 7 with given thresholds (no calibration): how a saved artifact is rebuilt. ``input_shape``:
    the per-sample shape the model was converted at (branches on shapes follow it again)."""
    report = ConversionReport()
    example = None if input_shape is None else torch.zeros(1, *input_shape)
    with torch.no_grad():
        gm = prepare(model, config, report, example)
        if example is not None:  # shapes after the passes (a max-pool moved before its ReLU changes the ReLU's)
            annotate_shapes(gm, example)
            check_threshold_shapes(gm, thresholds)
        snn = replace_activations(gm, thresholds, get_coding(config.coding), config, report)
    report.ops_after = op_table(snn.gm)
    return snn, report
