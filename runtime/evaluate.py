"""Evaluation: ANN accuracy and SNN accuracy after every step t = 1..T in one pass over a data set, plus event
counts per ReLU site and per step, and the JSON report (schema in docs/report_schema.md). The scores themselves
(task, top-k, IoU, errors) are runtime/scores.py's."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.data
from torch import nn

from snnconvert.convert.artifact import package_version
from snnconvert.convert.calibrate import BATCH_INPUT_KEYS
from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.errors import DataError, check_float_images
from snnconvert.convert.outputs import select_output
from snnconvert.convert.snn import SpikingNetwork, step_count
from snnconvert.runtime.diagnose import ErrorMeter
from snnconvert.runtime.energy import SynapticOpCounter
from snnconvert.runtime.scores import Scores

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1


@dataclass
class EvalReport:
    """Accuracy vs t and event counts from one evaluation pass.

    Attributes:
        ann_accuracy: top-1 accuracy of the ANN in [0, 1] (None when no ANN was given).
        snn_accuracy: entry ``t-1`` is the SNN's top-1 accuracy after ``t`` steps.
        images: number of evaluated images.
        ann_accuracy_top5, snn_accuracy_top5: the same as top-5 accuracies (the label among the 5 largest outputs;
            ties broken by ``torch.topk``), None when the outputs have 5 classes or fewer.
        events_per_step: emitted events (non-zero neuron outputs) per image at each step, summed over sites.
        site_events: per ReLU site: neurons per image, total events, events per neuron per image, and events per
            image at each step.
        seconds: wall time of the ANN and SNN passes.
        ops: synaptic operations and energy ratios (method.md §8), when counted.
        layer_errors: per stateful unit and for the output, the ANN value's RMS and the relative error of the
            decoded SNN value after every step (``runtime/diagnose.py``), when asked for; else empty.
        unit_outputs: per graded unit (max-pool, other non-linear function, product: dense float outputs, not
            events): outputs per image, total non-zero outputs, non-zero outputs per output element per image, and
            non-zero outputs per image at each step. Not counted in ``events_per_step``.
        task: ``"classification"`` (one label per image), ``"segmentation"`` (one label per pixel: labels
            ``[B, *S]`` for outputs ``[B, classes, *S]``) or ``"regression"`` (float targets ``[B, *S]`` for
            outputs of the same shape; ``[B]`` also for ``[B, 1]``). For segmentation the accuracies are pixel
            accuracies (pixels labelled ``ignore_index`` left out) and ``ann_miou`` / ``snn_miou`` the mean
            intersection over union of the classes that occur in the labels or the predictions; ``ann_iou`` /
            ``snn_iou`` (entry ``t-1``) the IoU of every class (None for a class absent from both). For regression
            there is no accuracy (``ann_accuracy`` None, ``snn_accuracy`` empty): ``ann_mse`` / ``snn_mse`` and
            ``ann_mae`` / ``snn_mae`` are the mean squared and absolute errors against the targets, over all target
            values. ``"fidelity"``: unlabelled images, the SNN's outputs against the ANN's (no accuracy either).
        snn_agreement: fidelity, one output ``[B, classes]`` compared: entry ``t-1`` is the share of images whose
            largest SNN output after ``t`` steps is the ANN's (the headline then); else None.
        snn_output_error: fidelity: entry ``t-1`` is the largest relative error sqrt(Σ(r_t − a)² / Σa²) over the
            compared outputs (every output, or the one ``output`` names) after ``t`` steps; else None.
        output_errors: fidelity: per output (``output``, ``output.<key>``): ``ann_rms``, ``relative_error`` (list
            over t; None where the ANN's output is all zero) and, for outputs ``[B, classes]``, ``agreement`` (list
            over t: the share of images where the SNN's largest output is the ANN's); else None.
    """

    timesteps: int
    ann_accuracy: float | None
    snn_accuracy: list[float]
    images: int
    events_per_step: list[float] = field(default_factory=list)
    site_events: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ops: dict[str, Any] = field(default_factory=dict)
    layer_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    unit_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ann_accuracy_top5: float | None = None
    snn_accuracy_top5: list[float] | None = None
    task: str = "classification"
    ann_miou: float | None = None
    snn_miou: list[float] | None = None
    ann_iou: list[float | None] | None = None
    snn_iou: list[list[float | None]] | None = None
    ann_mse: float | None = None
    snn_mse: list[float] | None = None
    ann_mae: float | None = None
    snn_mae: list[float] | None = None
    snn_agreement: list[float] | None = None
    snn_output_error: list[float] | None = None
    output_errors: dict[str, dict[str, Any]] | None = None

    def ann_scores(self) -> dict[str, Any]:
        """The ANN's figures (:data:`ANN_FIELDS`): what another evaluation of other conversions over the same images
        can reuse instead of running the ANN again (``sweep(..., ann_scores=...)``)."""
        return {k: getattr(self, k) for k in ANN_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "timesteps": self.timesteps, "ann_accuracy": self.ann_accuracy, "snn_accuracy": self.snn_accuracy,
            "ann_accuracy_top5": self.ann_accuracy_top5, "snn_accuracy_top5": self.snn_accuracy_top5,
            "images": self.images, "events_per_step": self.events_per_step, "site_events": self.site_events,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "ops": self.ops,
            "layer_errors": self.layer_errors, "unit_outputs": self.unit_outputs, "task": self.task,
            "ann_miou": self.ann_miou, "snn_miou": self.snn_miou, "ann_iou": self.ann_iou,
            "snn_iou": self.snn_iou, "ann_mse": self.ann_mse, "snn_mse": self.snn_mse, "ann_mae": self.ann_mae,
            "snn_mae": self.snn_mae, "snn_agreement": self.snn_agreement, "snn_output_error": self.snn_output_error,
            "output_errors": self.output_errors,
        }


#: The ANN's figures in an :class:`EvalReport` (they do not depend on the conversion).
ANN_FIELDS = ("ann_accuracy", "ann_accuracy_top5", "ann_miou", "ann_iou", "ann_mse", "ann_mae")


@dataclass(frozen=True)
class Headline:
    """The figure an evaluation leads with and a T sweep compares against the ANN: accuracy (classification), pixel
    accuracy (segmentation), the mean squared error (regression; lower is better), or for unlabelled images the
    agreement with the ANN (one class output: how often the SNN's top class is the ANN's, whose own is 100 %) or the
    output error (the relative error of the SNN's outputs against the ANN's, whose own is 0; lower is better).

    Attributes:
        name: ``"accuracy"``, ``"pixel accuracy"``, ``"MSE"``, ``"agreement"`` or ``"output error"``.
        snn: its value after every step.
        ann: the ANN's value (None without an ANN).
        higher_is_better: True for accuracies.
        against_ann: True when the figure is the SNN's distance from the ANN itself (the output error): its gap is
            the figure, in percent.
    """

    name: str
    snn: list[float]
    ann: float | None
    higher_is_better: bool
    against_ann: bool = False

    @property
    def gap_unit(self) -> str:
        """Accuracies differ in percentage points; an MSE is compared in percent of the ANN's, an output error is a
        percentage."""
        return "pp" if self.higher_is_better else "%"

    def gap(self, value: float) -> float | None:
        """``value`` against the ANN: percentage points for accuracies, percent of the ANN's MSE for an MSE, the
        output error in percent."""
        if self.ann is None:
            return None
        if self.against_ann:
            return 100 * value
        if self.higher_is_better:
            return 100 * (value - self.ann)
        return 100 * (value / self.ann - 1) if self.ann > 0 else (0.0 if value == 0 else float("inf"))

    def within(self, value: float, target_gap: float) -> bool:
        """Whether ``value`` is at most ``target_gap`` (in :attr:`gap_unit`) worse than the ANN's."""
        if self.ann is None:
            return False
        if self.against_ann:
            return 100 * value <= target_gap * (1 + 1e-12)
        if self.higher_is_better:
            return value >= self.ann - target_gap / 100 - 1e-12
        return value <= self.ann * (1 + target_gap / 100) * (1 + 1e-12)

    def text(self, value: float | None) -> str:
        """``93.82 %`` for an accuracy, ``0.01234`` for an MSE, ``0.254 %`` for an output error."""
        if value is None:
            return "n/a"
        if self.against_ann:
            return f"{100 * value:.3g} %"
        return f"{100 * value:.2f} %" if self.higher_is_better else f"{value:.4g}"

    def target_text(self, target_gap: float) -> str:
        """``within 0.5 pp of the ANN`` / ``within 0.5 % of the ANN's MSE`` / ``with an output error within
        0.5 %``."""
        if self.against_ann:
            return f"with an output error within {target_gap:g} % of the ANN's outputs"
        return f"within {target_gap:g} pp of the ANN" if self.higher_is_better else \
            f"within {target_gap:g} % of the ANN's MSE"

    @property
    def best_text(self) -> str:
        """What the best value is called: ``the most accurate``, ``the lowest MSE``, ``the lowest output error``."""
        return "the most accurate" if self.higher_is_better else f"the lowest {self.name}"


def headline(source: EvalReport | Mapping[str, Any]) -> Headline:
    """The :class:`Headline` of an evaluation, or of a JSON report or one of its sweep runs (a dict with the same
    keys: ``task``, ``snn_accuracy`` / ``ann_accuracy``, ``snn_mse`` / ``ann_mse``, ``snn_agreement`` or
    ``snn_output_error``)."""
    get = source.get if isinstance(source, Mapping) else lambda key: getattr(source, key, None)
    task = get("task") or "classification"
    if task == "regression":
        return Headline("MSE", list(get("snn_mse") or []), get("ann_mse"), False)
    if task == "fidelity" and get("snn_agreement"):
        return Headline("agreement", list(get("snn_agreement")), 1.0, True)
    if task == "fidelity":
        return Headline("output error", list(get("snn_output_error") or []), 0.0, False, against_ann=True)
    return Headline("pixel accuracy" if task == "segmentation" else "accuracy", list(get("snn_accuracy") or []),
                    get("ann_accuracy"), True)


class _EventCounter:
    """Forward hooks that count the neurons' non-zero outputs per step (multi- and single-step modes); with
    ``targets``, those ``(name, module)`` pairs' non-zero outputs instead (the graded units' dense outputs).

    Neurons whose kernels count their events (``KernelNeuron.counts_events``: native and Triton) are asked to, and
    their counts are used instead of a pass over the output (the same numbers: non-zero emitted values per step). A
    neuron that runs inside a fused unit (``runtime/fuse.py``: a unit with ``site_names``) is not called itself: the
    unit is hooked and its per-site counts are credited to the neuron's site name.
    """

    def __init__(self, snn: SpikingNetwork, timesteps: int, targets: list[tuple[str, nn.Module]] | None = None) -> None:
        self.T = timesteps
        self.counts: dict[str, torch.Tensor] = {}
        self.neurons: dict[str, int] = {}
        self.step: dict[str, int] = {}
        if targets is None:
            owner = {site: m for _, m in snn.stateful() for site in getattr(m, "site_names", ())}
            targets = [(name, owner.get(name, m)) for name, m in snn.neurons()]
        self.modules = list({id(m): m for _, m in targets if getattr(m, "counts_events", False)}.values())
        for m in self.modules:
            m.count_events, m.last_events = True, None
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in targets]

    def _hook(self, name: str) -> Callable:
        def hook(module, args, out):
            if getattr(module, "capture", False) or getattr(module, "analog", False):
                return
            counts = self.counts.setdefault(name, torch.zeros(self.T, dtype=torch.float64))
            counted = getattr(module, "last_events", None)  # from the kernel or fused unit, for this call
            if isinstance(counted, dict):  # a fused unit's counts per site; the unit resets them on its next call
                counted = counted[name]
            elif counted is not None:
                module.last_events = None
            if module.step_mode == "m":
                per_step = out.reshape(self.T, -1)
                if counted is not None:
                    counts += counted.double().cpu()
                else:
                    # int32 accumulation (2x faster than the default int64 on CPU) while a step's count cannot
                    # overflow
                    acc = torch.int32 if per_step.shape[1] < 2**31 else torch.int64
                    counts += per_step.ne(0).sum(1, dtype=acc).double().cpu()
                self.neurons[name] = per_step.shape[1] // (out.shape[0] // self.T)
            else:
                t = self.step.get(name, 0)
                counts[t % self.T] += float(counted.sum()) if counted is not None else float(out.ne(0).sum())
                self.step[name] = t + 1
                self.neurons[name] = out[0].numel()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self.modules:
            m.count_events, m.last_events = False, None


def _device_of(module: nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer (None for a module without either)."""
    tensor = next(module.parameters(), None)
    tensor = tensor if tensor is not None else next(module.buffers(), None)
    return None if tensor is None else tensor.device


#: keys of a dict batch that hold the labels (the input: ``BATCH_INPUT_KEYS``, as in calibration)
BATCH_LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def eval_batch(batch: Any, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images and labels of one evaluation batch: an ``(images, labels)`` tuple or list, or a dict with an input key
    (``BATCH_INPUT_KEYS``) and a label key (``BATCH_LABEL_KEYS``); finite images, one label (or label map) each.
    Unlabelled images (labels None): a tensor, ``(images,)``, ``(images, None)`` or a dict without a label key.

    Raises:
        DataError: a batch of another form, with NaN / infinite images or unequal counts.
    """
    y = None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in BATCH_INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in BATCH_LABEL_KEYS if k in batch), None)
        if x is None:
            raise DataError(f"evaluation batch {index} is a dict with keys {sorted(map(str, batch))}: it needs an "
                            f"input key ({', '.join(BATCH_INPUT_KEYS)}) and, for labelled images, a label key "
                            f"({', '.join(BATCH_LABEL_KEYS)})")
        if y is None and index == 0 and isinstance(x, torch.Tensor) and x.dim():
            maybe = [str(k) for k, v in batch.items() if isinstance(v, torch.Tensor) and v is not x and v.dim()
                     and len(v) == len(x) and not v.is_floating_point()]
            if maybe:  # labels under another name would be dropped: the evaluation compares with the ANN only
                log.warning("evaluation batches hold no label key (%s), but %s hold(s) an integer per image: the "
                            "images are evaluated as unlabelled (agreement with the ANN); name the labels 'label'",
                            ", ".join(BATCH_LABEL_KEYS), ", ".join(repr(k) for k in maybe))
    elif isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        x, y = batch if len(batch) == 2 else (batch[0], None)
    elif isinstance(batch, torch.Tensor):
        x = batch
    else:
        raise DataError(f"evaluation batch {index} of type {type(batch).__name__} is not supported: give (images, "
                        "labels) pairs, dicts with an image and a label key, or images alone (unlabelled)")
    if not isinstance(x, torch.Tensor) or not (y is None or isinstance(y, torch.Tensor)):
        raise DataError(f"evaluation batch {index}: images and labels must be tensors, got {type(x).__name__} and "
                        f"{type(y).__name__}")
    if x.dim() == 0 or (y is not None and (y.dim() == 0 or len(x) != len(y))):
        raise DataError(f"evaluation batch {index} holds {len(x) if x.dim() else 0} images but "
                        f"{len(y) if y.dim() else 0} labels; give one label (or label map) per image")
    if len(x) == 0:
        raise DataError(f"evaluation batch {index} holds no images; leave empty batches out")
    check_float_images(x, "the evaluation")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"evaluation batch {index} holds NaN or infinite pixel values: the SNN's neurons never fire "
                        "on them (no error) where the ANN outputs NaN; clean the data")
    if y is not None and not y.is_floating_point() and y.dtype != torch.int64:
        y = y.long()  # class labels of any integer type (IDX files hold uint8), or bool
    return x.float(), y  # float32, as the SNN computes (float64 / float16 images, read as calibration reads them)


def evaluate(
    snn: SpikingNetwork,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    ann: torch.nn.Module | None = None,
    timesteps: int | None = None,
    mode: str = "multi",
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    count_ops: bool = True,
    layer_errors: bool = False,
    output: int | str | None = None,
    ignore_index: int | None = 255,
    score_ann: bool = True,
) -> EvalReport:
    """Run the ANN and the SNN over ``batches`` once; accuracy (or, for float targets, the errors of a regression;
    for unlabelled images, the SNN's outputs against the ANN's: task ``fidelity``) after every step, events per site
    and step.

    On a CPU with glibc, call :func:`snnconvert.runtime.keep_freed_memory` once beforehand, as the command does: large
    activations are otherwise unmapped and paged in again at every layer call (1.9–3.2× slower on fmnist-vgg).

    Args:
        snn: the converted network.
        batches: iterable of ``(images, labels)``, or of unlabelled images (:func:`eval_batch`).
        ann: the original ANN (evaluated on the same images; its training flag is restored afterwards); needed for
            unlabelled images, the reference their SNN outputs are compared with.
        timesteps: T (default ``snn.timesteps``).
        mode: ``"multi"`` (layer by layer over T·B) or ``"single"`` (streaming, bounded memory).
        device: where to run.
        progress: called with the number of images of each finished batch (the CLI drives a progress bar).
        count_ops: count synaptic operations per layer and step and the energy ratio (method.md §8).
        layer_errors: also compare every stateful unit's decoded output after each step with its value in the ANN
            (``runtime/diagnose.py``; one analog pass per batch and a few passes over each unit's output).
        output: for a model with several outputs (a tuple, list or dict), the one holding the class scores: its
            index or key (``convert/outputs.py``: ``"cls"``, ``1``, ``"heads.0"``); the per-unit errors cover every
            output. Unlabelled images compare every output unless this names one.
        ignore_index: with per-pixel labels (segmentation, ``EvalReport.task``), the label of pixels that are not
            scored (255: the VOC / Cityscapes "void"); None scores every pixel.
        score_ann: False: the ANN's own figures are not computed (known from another evaluation over the same
            images, ``EvalReport.ann_scores``); the ANN still runs on unlabelled batches, as their reference.

    Raises:
        ConfigError: the model has several outputs and ``output`` does not name one of them; the labels' shape
            does not fit the output (:func:`~snnconvert.runtime.scores.label_task`: one per image for
            ``[B, classes]``, one per pixel for ``[B, classes, *pixels]``, float targets of the output's shape for a
            regression).
        DataError: a pixel label is not a class of the output (and not ``ignore_index``); unlabelled images
            without ``ann``; batches with and without labels mixed.
    """
    T = snn.timesteps if timesteps is None else step_count(timesteps)
    if isinstance(batches, (torch.Tensor, torch.utils.data.Dataset)):
        what = "one tensor" if isinstance(batches, torch.Tensor) else f"a {type(batches).__name__} (a data set)"
        raise DataError(f"evaluate takes an iterable of batches, got {what}: give [images] or [(images, labels)], "
                        "or wrap a data set in a torch.utils.data.DataLoader")
    from snnconvert.runtime import check_device

    device = check_device(device)
    homes = [(m, _device_of(m)) for m in (snn, ann) if m is not None]  # the caller's devices, restored after
    snn = snn.to(device)
    scores = Scores(T, ignore_index)
    seconds = {"ann": 0.0, "snn": 0.0}
    was_training = ann.training if ann is not None else False
    if ann is not None:
        ann.to(device).eval()
    counter = _EventCounter(snn, T)
    unit_counter = _EventCounter(snn, T, [(n, m) for n, m in snn.stateful() if isinstance(m, GradedUnit)])
    ops = SynapticOpCounter(snn, T) if count_ops else None
    meter = ErrorMeter(snn, T) if layer_errors else None
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                x, y = eval_batch(batch, index)
                converted = getattr(snn, "input_shape", None)
                if converted is not None and x.dim() - 1 != len(converted):  # e.g. [B, H, W] for [B, 1, H, W]
                    raise DataError(f"evaluation batch {index}: images of shape {list(x.shape[1:])}, the SNN was "
                                    f"converted for images of shape {list(converted)}; give images of that shape")
                if y is None and ann is None:
                    raise DataError(f"evaluation batch {index} has no labels: unlabelled images are scored by "
                                    "comparing the SNN's outputs with the ANN's; pass the ANN (ann=model)")
                x, y = x.to(device), None if y is None else y.to(device)
                reference = None
                if ann is not None and (score_ann or y is None):
                    start = time.perf_counter()
                    out = ann(x)
                    if y is None:
                        reference = out if output is None else select_output(out, output)
                    else:
                        scores.add_ann(select_output(out, output), y)
                    seconds["ann"] += time.perf_counter() - start
                if meter is not None:
                    meter.begin(x)
                start = time.perf_counter()
                decoded = snn(x, T, mode=mode)
                seconds["snn"] += time.perf_counter() - start
                if meter is not None:
                    meter.output(decoded)
                if y is None:
                    scores.add_reference(reference, decoded if output is None else
                                         select_output(decoded, output, leading=2))
                else:
                    scores.add_snn(select_output(decoded, output, leading=2), y)
                if progress is not None:
                    progress(int(x.shape[0]))
    finally:
        counter.close()
        unit_counter.close()
        if ops is not None:
            ops.close()
        if meter is not None:
            meter.close()
        if ann is not None:
            ann.train(was_training)
        for module, home in homes:  # the caller's modules stay where they were
            if home is not None:
                module.to(home)
    images = scores.images
    if images == 0:
        raise DataError("evaluation got no images: pass (images, labels) batches (a DataLoader, a list of pairs) or "
                        "unlabelled images")
    total = torch.zeros(T, dtype=torch.float64)
    site_events = {}
    for name, counts in counter.counts.items():
        total += counts
        n = counter.neurons[name]
        site_events[name] = {"neurons_per_image": n, "events": float(counts.sum()),
                             "events_per_neuron": float(counts.sum()) / (n * images),
                             "events_per_step": (counts / images).tolist()}
    unit_outputs = {}
    for name, counts in unit_counter.counts.items():
        n = unit_counter.neurons[name]
        unit_outputs[name] = {"outputs_per_image": n, "nonzero": float(counts.sum()),
                              "nonzero_per_output": float(counts.sum()) / (n * images),
                              "nonzero_per_step": (counts / images).tolist()}
    report = EvalReport(
        timesteps=T,
        **scores.fields(with_ann=ann is not None and score_ann),
        images=images,
        events_per_step=[float(c) / images for c in total],
        site_events=site_events,
        seconds=seconds,
        unit_outputs=unit_outputs,
    )
    if ops is not None:
        ops.counts.images = images
        report.ops = ops.counts.to_dict()
        # what the energy ratios leave out (method.md §8): every neuron updates its state and every graded unit
        # evaluates its function on all its elements at every step; counted, not priced (no per-op energy given)
        report.ops["not_in_energy"] = {
            "neuron_updates_per_step": float(sum(e["neurons_per_image"] for e in site_events.values())),
            "graded_unit_outputs_per_step": float(sum(u["outputs_per_image"] for u in unit_outputs.values())),
        }
    if meter is not None:
        report.layer_errors = meter.result()
    head = headline(report)
    log.info("evaluated %d images (%s): ANN %s, SNN %s at T=%d%s", images, head.name, head.text(head.ann),
             head.text(head.snn[-1]), T, f", SNN mIoU {report.snn_miou[-1]:.4f}" if report.snn_miou else "")
    return report


def build_report(
    result,
    evaluation: EvalReport,
    *,
    model: str,
    calib: dict[str, Any],
    data: dict[str, Any],
    timings: dict[str, float] | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report (schema version 1, documented in docs/report_schema.md); ``runtime`` records how the SNN
    was run (backend, device, dtype, step mode)."""
    cfg = result.config
    sites = []
    for info in result.calibration.sites:
        sites.append({**info, **({"events": evaluation.site_events.get(info["site"], {})})})
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "snnconvert_version": package_version(),
        "model": model,
        "coding": cfg.coding,
        "timesteps": evaluation.timesteps,
        "config": cfg.to_dict(),
        "ann_accuracy": evaluation.ann_accuracy,
        "snn_accuracy": evaluation.snn_accuracy,
        "ann_accuracy_top5": evaluation.ann_accuracy_top5,
        "snn_accuracy_top5": evaluation.snn_accuracy_top5,
        "task": evaluation.task,
        "ann_miou": evaluation.ann_miou,
        "snn_miou": evaluation.snn_miou,
        "ann_iou": evaluation.ann_iou,
        "snn_iou": evaluation.snn_iou,
        "ann_mse": evaluation.ann_mse,
        "snn_mse": evaluation.snn_mse,
        "ann_mae": evaluation.ann_mae,
        "snn_mae": evaluation.snn_mae,
        "snn_agreement": evaluation.snn_agreement,
        "snn_output_error": evaluation.snn_output_error,
        "output_errors": evaluation.output_errors,
        "eval_images": evaluation.images,
        "calib_images": calib.get("images"),
        "data": {"calibration": calib, "evaluation": data},
        "thresholds": {
            "method": str(cfg.threshold),
            "granularity": cfg.granularity,
            "fitted_for": {"timesteps": cfg.timesteps, "levels": cfg.levels,
                           "quantisation_levels": result.calibration.quantisation_levels},
            "sites": sites,
        },
        "events": {"per_step": evaluation.events_per_step,
                   "total_per_image": float(sum(evaluation.events_per_step))},
        "synaptic_ops": evaluation.ops,
        "layer_errors": evaluation.layer_errors or None,
        "graded_units": evaluation.unit_outputs or None,
        "runtime": dict(runtime or {}),
        "conversion": result.report.to_dict(),
        "timings": {**{f"eval_{k}": round(v, 4) for k, v in evaluation.seconds.items()},
                    **{k: round(v, 4) for k, v in (timings or {}).items()}},
    }
