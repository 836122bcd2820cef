"""Scores of an evaluation: the task the labels define (classification, segmentation, regression; ``fidelity``
for unlabelled images: the SNN's outputs against the ANN's), top-1/top-5 hits, confusion matrices and IoU, and
their accumulation over batches for the ANN and the SNN after every step."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from snnconvert.convert.errors import ConfigError, DataError
from snnconvert.convert.outputs import output_leaves
from snnconvert.runtime.diagnose import RelativeError, output_name


def label_task(output_shape: Sequence[int], label_shape: Sequence[int], floating: bool) -> str:
    """The task that labels of shape ``label_shape`` (``[B, ...]``; ``floating``: float values) evaluate on an
    output of shape ``output_shape`` (``[B, ...]``): ``"classification"`` (integer labels ``[B]``, outputs
    ``[B, classes]``), ``"segmentation"`` (integer labels ``[B, *pixels]``, outputs ``[B, classes, *pixels]``) or
    ``"regression"`` (float targets with the output's shape; ``[B]`` also for ``[B, 1]``).

    Raises:
        ConfigError: the shapes do not fit any of them (one line saying what was expected).
    """
    out, lab = tuple(output_shape[1:]), tuple(label_shape[1:])
    if floating:
        if out == lab or (lab == () and out == (1,)):
            return "regression"
        what = f"of shape {list(lab)} per image" if lab else "(one value per image)"
        raise ConfigError(f"float targets {what} do not fit the model's output of shape {list(out)} per image: "
                          "regression needs targets of the output's shape (class labels must be integers)")
    if not lab:
        if len(out) == 1:
            return "classification"
        raise ConfigError(f"one label per image but the model's output has shape {list(out)} per image; "
                          "classification needs [classes] (per-pixel labels [N, H, W] evaluate a segmentation "
                          "output [classes, H, W]; float targets a regression output)")
    if len(out) == len(lab) + 1 and out[1:] == lab:
        return "segmentation"
    raise ConfigError(f"per-pixel labels of shape {list(lab)} per image do not fit the model's output of shape "
                      f"{list(out)} per image ([classes, *pixels] expected for segmentation)")


TOP_K = 5


def hits(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Correct predictions in ``out`` [..., B, classes] for labels ``y`` [B], summed over the batch: top-1 (argmax)
    and top-5 (None with 5 classes or fewer). Leading dims (the steps) are kept.

    Top-5 ranks the label's output among all with argmax's tie rule (an equal output at a smaller class index ranks
    first), so a top-1 hit is always a top-5 hit, also where many outputs tie (a silent network outputs zeros).
    """
    top1 = (out.argmax(-1) == y).sum(-1)
    if out.shape[-1] <= TOP_K:
        return top1, None
    label = y.expand(out.shape[:-1]).unsqueeze(-1)
    score = out.gather(-1, label)
    before = torch.arange(out.shape[-1], device=out.device) < label
    rank = (out > score).sum(-1) + ((out == score) & before).sum(-1)
    return top1, (rank < TOP_K).sum(-1)


def confusion(pred: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Counts ``[classes (label), classes (prediction)]`` of the predicted classes ``pred`` against the labels
    ``y`` (the scored pixels, same shape; labels already checked, ignored pixels already dropped)."""
    return torch.bincount((y * classes + pred).reshape(-1), minlength=classes * classes).view(classes, classes)


def iou(conf: torch.Tensor) -> list[float | None]:
    """IoU of every class of a confusion matrix; None for a class absent from both the labels and the
    predictions."""
    tp = conf.diagonal().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    return [float(i / u) if u > 0 else None for i, u in zip(tp, union, strict=True)]


def miou(conf: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the labels or the predictions of a confusion matrix."""
    present = [v for v in iou(conf) if v is not None]
    return sum(present) / len(present) if present else float("nan")


def only_agreement(output_errors: dict[str, dict[str, Any]] | None) -> list[float] | None:
    """The agreement after every step of the one class output among fidelity's compared outputs
    (``output_errors``), or None when none or several have one."""
    agreeing = [e["agreement"] for e in (output_errors or {}).values() if "agreement" in e]
    return agreeing[0] if len(agreeing) == 1 else None


class Scores:
    """Accumulates the ANN's and the SNN's (after every step) scores over batches; the task follows the labels
    (:func:`label_task`). Classification: top-1 and top-5 (:func:`hits`). Segmentation: pixel accuracy and a
    confusion matrix per step for the mean IoU; pixels labelled ``ignore_index`` are left out. Regression: sums of
    squared and absolute errors over all target values. Unlabelled images (``fidelity``, :meth:`add_reference`):
    per output, the squared error of the SNN's decoded values against the ANN's, and how often both pick the same
    class."""

    def __init__(self, timesteps: int, ignore_index: int | None) -> None:
        self.T, self.ignore = timesteps, ignore_index
        self.task: str | None = None
        self.images = 0
        self.pixels = 0  # scored pixels (segmentation) or target values (regression)
        self.snn = torch.zeros(timesteps, dtype=torch.float64)
        self.ann = 0
        self.snn_top5: torch.Tensor | None = torch.zeros(timesteps, dtype=torch.float64)
        self.ann_top5: int | None = 0
        self.snn_conf: torch.Tensor | None = None
        self.ann_conf: torch.Tensor | None = None
        self.snn_abs = torch.zeros(timesteps, dtype=torch.float64)
        self.ann_abs = 0.0
        self.outputs: dict[str, dict[str, Any]] = {}  # fidelity: per output, its RelativeError and agreement counts

    def _kind(self, out: torch.Tensor | None, y: torch.Tensor | None, leading: int) -> str:
        task = "fidelity" if y is None else label_task(out.shape[leading:], y.shape, y.is_floating_point())
        if self.task not in (None, task):
            if "fidelity" in (self.task, task):
                raise DataError("the evaluation data mix batches with and without labels; give labels for every "
                                "image or for none")
            raise ConfigError(f"the data set mixes labels for {self.task} and {task}")
        self.task = task
        return task

    def add_reference(self, ann_out: Any, decoded: Any) -> None:
        """Unlabelled images: every output the SNN decoded (``[T, B, ...]`` per tensor leaf) against the ANN's
        (``[B, ...]``, the same structure); for outputs ``[B, classes]``, also whether both pick the same class."""
        self._kind(None, None, 1)
        ann_leaves, snn_leaves = output_leaves(ann_out), dict(output_leaves(decoded))
        if not ann_leaves or {p for p, _ in ann_leaves} != set(snn_leaves):
            raise ConfigError(f"the SNN's outputs {sorted(snn_leaves)} do not match the ANN's "
                              f"{sorted(p for p, _ in ann_leaves)}")
        self.images += int(ann_leaves[0][1].shape[0])
        for path, a in ann_leaves:
            r, a = snn_leaves[path].float(), a.detach().float()
            if r.shape[1:] != a.shape:
                raise ConfigError(f"output {output_name(path)!r}: the SNN decodes {list(r.shape[1:])} per step, the "
                                  f"ANN gives {list(a.shape)}")
            acc = self.outputs.setdefault(output_name(path), {
                "error": RelativeError(self.T),
                "agree": torch.zeros(self.T, dtype=torch.float64) if a.dim() == 2 and a.shape[1] >= 2 else None})
            acc["error"].reference(a)
            acc["error"].add(r, a)
            if acc["agree"] is not None:
                acc["agree"] += (r.argmax(-1) == a.argmax(-1)).sum(-1).double().cpu()

    def _fidelity(self) -> dict[str, Any]:
        """The fidelity fields: per output its ANN RMS, relative error sqrt(Σ(r_t − a)² / Σa²) after every step
        (None for an output the ANN leaves all zero) and top-1 agreement (outputs ``[B, classes]``); the largest
        relative error, and the agreement when one class output is compared (``snn_agreement``)."""
        outputs = {name: {**acc["error"].result(), **({"agreement": (acc["agree"] / self.images).tolist()}
                                                        if acc["agree"] is not None else {})}
                   for name, acc in self.outputs.items()}
        compared = [o["relative_error"] for o in outputs.values() if o["relative_error"] is not None]
        if not compared:
            raise DataError("the ANN's outputs are all zero on these images: without labels there is nothing to "
                            "compare the SNN's outputs with; give labelled images or other images")
        agreement = next(iter(outputs.values())).get("agreement") if len(outputs) == 1 else None
        return {"task": "fidelity", "ann_accuracy": None, "snn_accuracy": [], "snn_agreement": agreement,
                "snn_output_error": [max(values) for values in zip(*compared, strict=True)],
                "output_errors": outputs}

    def _pixels(self, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask of the scored pixels, and their labels (checked against the number of classes)."""
        keep = torch.ones_like(y, dtype=torch.bool) if self.ignore is None else y != self.ignore
        labels = y[keep]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
            raise DataError(f"a pixel label {bad} is outside the model's {classes} classes"
                            + ("" if self.ignore is None else f" (pixels labelled {self.ignore} are ignored)"))
        return keep, labels

    @staticmethod
    def _errors(out: torch.Tensor, y: torch.Tensor, leading: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared and absolute errors of ``out`` ([*lead, B, ...]) against ``y`` ([B, ...]), summed over all
        target values (float64), per leading index."""
        diff = out.double().reshape(*out.shape[:leading], -1) - y.double().reshape(-1)
        return diff.square().sum(-1), diff.abs().sum(-1)

    @staticmethod
    def _check_classes(y: torch.Tensor, classes: int) -> None:
        """Class labels index the output: another data set's labels would score 0 % without a word."""
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            bad = int(y.max()) if int(y.max()) >= classes else int(y.min())
            raise DataError(f"a label {bad} is outside the model's {classes} outputs; check that the data set "
                            "matches the model")

    def add_ann(self, out: torch.Tensor, y: torch.Tensor) -> None:
        task = self._kind(out, y, 0)
        if task == "classification":
            self._check_classes(y, out.shape[-1])
            top1, top5 = hits(out, y)
            self.ann += int(top1)
            self.ann_top5 = None if top5 is None or self.ann_top5 is None else self.ann_top5 + int(top5)
        elif task == "regression":
            se, ae = self._errors(out, y, 0)
            self.ann += float(se)
            self.ann_abs += float(ae)
        else:
            classes = out.shape[1]
            keep, labels = self._pixels(y, classes)
            conf = confusion(out.argmax(1)[keep], labels, classes).cpu()
            self.ann_conf = conf if self.ann_conf is None else self.ann_conf + conf
            self.ann += int(conf.diagonal().sum())

    def add_snn(self, decoded: torch.Tensor, y: torch.Tensor) -> None:
        self.images += int(y.shape[0])
        task = self._kind(decoded, y, 1)
        if task == "classification":
            self._check_classes(y, decoded.shape[-1])
            top1, top5 = hits(decoded, y)
            self.snn += top1.double().cpu()
            self.snn_top5 = None if top5 is None or self.snn_top5 is None else self.snn_top5 + top5.double().cpu()
        elif task == "regression":
            se, ae = self._errors(decoded, y, 1)
            self.pixels += int(y.numel())
            self.snn += se.cpu()
            self.snn_abs += ae.cpu()
        else:
            classes = decoded.shape[2]
            keep, labels = self._pixels(y, classes)
            self.pixels += int(labels.numel())
            conf = torch.stack([confusion(decoded[t].argmax(1)[keep], labels, classes)
                                for t in range(self.T)]).cpu()
            self.snn_conf = conf if self.snn_conf is None else self.snn_conf + conf
            self.snn += conf.diagonal(dim1=1, dim2=2).sum(1).double()

    def fields(self, with_ann: bool) -> dict[str, Any]:
        """The EvalReport fields: accuracies (pixel accuracies for segmentation) with top-5 or the mean IoU, or the
        errors of a regression."""
        task = self.task or "classification"
        if task == "fidelity":
            return self._fidelity()
        if task == "regression":
            n = max(self.pixels, 1)
            return {"task": task, "ann_accuracy": None, "snn_accuracy": [],
                    "ann_mse": self.ann / n if with_ann else None, "snn_mse": (self.snn / n).tolist(),
                    "ann_mae": self.ann_abs / n if with_ann else None, "snn_mae": (self.snn_abs / n).tolist()}
        dense = task == "segmentation"
        n = max(self.pixels if dense else self.images, 1)
        out = {"task": task,
               "ann_accuracy": self.ann / n if with_ann else None,
               "snn_accuracy": [float(c) / n for c in self.snn]}
        if dense:
            ann, snn = (self.ann_conf if with_ann else None), self.snn_conf
            out.update(ann_miou=None if ann is None else miou(ann), snn_miou=None if snn is None else
                       [miou(c) for c in snn], ann_iou=None if ann is None else iou(ann),
                       snn_iou=None if snn is None else [iou(c) for c in snn])
        else:
            out.update(ann_accuracy_top5=self.ann_top5 / n if with_ann and self.ann_top5 is not None else None,
                       snn_accuracy_top5=None if self.snn_top5 is None else [float(c) / n for c in self.snn_top5])
        return out
