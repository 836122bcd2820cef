r"""Detection on real images: an Ultralytics YOLO trained to find Fashion-MNIST garments placed on a canvas, converted,
and scored by mAP after T steps.

Ultralytics is not a dependency of snnconvert: install it outside the project's environment (BENCHMARKS.md
"Ultralytics coverage") and put it on ``PYTHONPATH``. The model is built from its YAML file (``--model``, random
initial weights: nothing is downloaded) with one input channel and the 10 Fashion-MNIST classes, and trained here
with Ultralytics' own detection loss (``model.loss``: box, class and DFL terms at the package's default gains) by
seeded AdamW with a cosine schedule. Ultralytics' trainer is not used (it reads a data set from files on disk).

The task is made from Fashion-MNIST's own images: each ``--canvas``² black canvas (default 64) holds 1 to
``--max-objects`` garments (default 3), each resized to a seeded random side of 20–40 pixels and pasted (pixel-wise
maximum) at a seeded random position where its box overlaps earlier ones by IoU < 0.3 (ten tries, else it is left
out); a garment's box is the tight box of its pixels brighter than 0.1 of full scale, its class the image's label.
Training canvases come from the TRAIN split, a fresh seeded batch per iteration; ``--calib-images`` canvases from
TRAIN (seed 1) calibrate; ``--test-images`` canvases from the TEST split (seed 2) are scored.

Scoring is Ultralytics' validation protocol for the decoded box tensor (``[B, 4 + classes, anchors]``: the first
output of the model in eval mode): ``ultralytics.utils.nms.non_max_suppression`` (confidence 0.001, IoU 0.7, at
most 300 boxes), each box matched to an unclaimed ground-truth box of its class in confidence order at the ten IoU
thresholds 0.5:0.95, and ``ultralytics.utils.metrics.ap_per_class``: mAP50 and mAP50-95, for the ANN and for the
SNN's decoded output after T steps. The SNN is converted with snnconvert's differential preset (MT n = 4,
threshold iteration per channel fitted for each T: one calibration, ``convert_sweep``; identity neurons, n = 6,
carry SiLU networks) or, with ``--coding rate``, the rate preset (IF neurons, 99.9 % per channel). The energy
ratio after T steps (method.md §8, both metrics) is counted on the scored images. Next to mAP, each T records what
snnconvert reports when it is given these canvases without labels (the scores of ``evaluate`` for unlabelled
images, task ``fidelity``, fed the outputs of the scored run: every output against the ANN's): ``output_error``
(the largest relative error over the outputs: the decoded box tensor and the three raw head maps) and
``output_errors`` per output, and ``class_score_error``, the relative error of the class-score rows of the box
tensor alone: how well an output error without labels tells a detector's accuracy.

    PYTHONPATH=/tmp/ulsite:/tmp/uldeps .venv/bin/python bench/yolo_fmnist.py --model yolov8n \
        --out bench/results/yolo_fmnist_yolov8n.json

``--load`` a state dict kept with ``--save`` to score another coding without training again. The same trained
model runs in the command on the canvases without their boxes (``--save-canvases``; the factories ``yolov8n`` and
``yolov6n`` of this file), which then compares the SNN's outputs with the ANN's (BENCHMARKS.md "Detection on real
images"). A smoke run (about ten
seconds; its figures mean nothing):

    PYTHONPATH=/tmp/ulsite:/tmp/uldeps .venv/bin/python bench/yolo_fmnist.py --iters 5 --test-images 64 \
        --calib-images 64 --timesteps 2
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import evaluate
from snnconvert.runtime.data import TensorDataset, load_fashion_mnist
from snnconvert.runtime.energy import SynapticOpCounter
from snnconvert.runtime.malloc import keep_freed_memory
from snnconvert.runtime.scores import Scores


def canvases(data: TensorDataset, n: int, canvas: int, max_objects: int, seed: int):
    """``n`` canvases [n, 1, canvas, canvas] and their boxes: a list of float tensors [k, 5] (class, x0, y0, x1, y1
    in pixels, x1 and y1 exclusive)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, canvas, canvas)
    boxes = []
    for i in range(n):
        placed: list[list[float]] = []
        for _ in range(int(torch.randint(1, max_objects + 1, (1,), generator=gen))):
            j = int(torch.randint(len(data), (1,), generator=gen))
            side = int(torch.randint(20, 41, (1,), generator=gen))
            garment = F.interpolate(data.images[j:j + 1], size=(side, side), mode="bilinear", align_corners=False)[0]
            fg = garment[0] > 0.1
            if not fg.any():
                continue
            rows, cols = fg.any(1).nonzero().flatten(), fg.any(0).nonzero().flatten()
            for _try in range(10):
                ox, oy = (int(v) for v in torch.randint(0, canvas - side + 1, (2,), generator=gen))
                box = [ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1]
                if not placed or float(box_iou(torch.tensor([box], dtype=torch.float32),
                                                torch.tensor(placed, dtype=torch.float32)[:, 1:]).max()) < 0.3:
                    break
            else:
                continue
            window = images[i, :, oy:oy + side, ox:ox + side]
            torch.maximum(window, garment, out=window)
            placed.append([float(data.labels[j]), *map(float, box)])
        boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 5))
    return images, boxes


def detector(name: str = "yolov8n"):
    """The untrained Ultralytics model of this task (one input channel, 10 classes), built from its YAML."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(f"{name}.yaml", ch=1, nc=10, verbose=False)


def yolov8n():
    """The command's factory (``snnconvert bench/yolo_fmnist.py:yolov8n --weights STATE``)."""
    return detector("yolov8n")


def yolov6n():
    """The command's factory (``snnconvert bench/yolo_fmnist.py:yolov6n --weights STATE``)."""
    return detector("yolov6n")


def ultralytics_batch(images: torch.Tensor, boxes: list[torch.Tensor]) -> dict:
    """The batch dict of Ultralytics' detection loss: class and normalised centre-size boxes per object."""
    side = images.shape[-1]
    rows = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    xyxy = rows[:, 2:] / side
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
    return {"img": images, "batch_idx": rows[:, 0], "cls": rows[:, 1:2], "bboxes": xywh}


def train(model, data: TensorDataset, args) -> float:
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()  # the loss's gains (box 7.5, cls 0.5, dfl 1.5)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    model.train()
    loss_sum = 0.0
    for it in range(args.iters):
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * it / args.iters))
        images, boxes = canvases(data, args.batch, args.canvas, args.max_objects, seed=1000 + it)
        loss, items = model.loss(ultralytics_batch(images, boxes))
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        total = sum(float(v) for v in items.values())  # box + class + DFL terms
        loss_sum = total if it == 0 else 0.98 * loss_sum + 0.02 * total
        if (it + 1) % 100 == 0:
            print(f"iteration {it + 1}/{args.iters}: loss {loss_sum:.3f}", flush=True)
    return loss_sum


def _correct(pred: torch.Tensor, truth: torch.Tensor, thresholds: torch.Tensor) -> np.ndarray:
    """[detections, thresholds]: whether each detection (confidence order) claims a ground-truth box of its class not
    claimed by a more confident one, at IoU >= each threshold."""
    out = np.zeros((len(pred), len(thresholds)), dtype=bool)
    if not len(pred) or not len(truth):
        return out
    iou = box_iou(pred[:, :4], truth[:, 1:]) * (pred[:, 5:6] == truth[None, :, 0])
    for k, thr in enumerate(thresholds.tolist()):
        claimed = torch.zeros(len(truth), dtype=torch.bool)
        for d in range(len(pred)):
            cand = torch.where(claimed, torch.zeros_like(iou[d]), iou[d])
            best = int(cand.argmax())
            if float(cand[best]) >= thr:
                claimed[best] = True
                out[d, k] = True
    return out


def mean_ap(decoded: list[torch.Tensor], boxes: list[torch.Tensor], classes: int) -> dict[str, float]:
    """mAP50 and mAP50-95 of decoded box tensors [B, 4 + classes, anchors] (Ultralytics' protocol, module doc)."""
    from ultralytics.utils.metrics import ap_per_class
    from ultralytics.utils.nms import non_max_suppression

    thresholds = torch.linspace(0.5, 0.95, 10)
    tp, conf, pred_cls, target_cls = [], [], [], []
    for y, truth in zip(decoded, boxes):
        for pred, t in zip(non_max_suppression(y, conf_thres=0.001, iou_thres=0.7, max_det=300, nc=classes), truth):
            tp.append(_correct(pred, t, thresholds))
            conf.append(pred[:, 4].numpy())
            pred_cls.append(pred[:, 5].numpy())
            target_cls.append(t[:, 0].numpy())
    ap = ap_per_class(np.concatenate(tp), np.concatenate(conf), np.concatenate(pred_cls),
                      np.concatenate(target_cls))[5]
    return {"mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean())}


def _tracking(store: dict[str, list[float]], name: str):
    """A forward hook on a neuron: in a multi-step call, the relative error of its decoded output against its
    function (ReLU or identity) of its own decoded input after each step, |R_out − f(R_in)| / |f(R_in,T)| (means over
    the elements): whether the neuron follows what it is given, apart from what it is given."""
    def hook(neuron, args, out):
        if neuron.analog or neuron.capture or neuron.step_mode != "m":
            return
        T = neuron.timesteps
        x = args[0].float().reshape(T, -1, *args[0].shape[1:])
        d = out.float().reshape(x.shape)
        t = torch.arange(1, T + 1, dtype=torch.float32).view(T, *[1] * (x.dim() - 1))
        b = neuron.bias.float()
        r_in, r_out = b + torch.cumsum((x - b) / t, 0), torch.cumsum(d / t, 0)
        want = neuron.analog_forward(r_in)
        scale = float(want[-1].abs().mean()) or 1.0
        store[name] = [float((r_out[k] - want[k]).abs().mean()) / scale for k in range(T)]
    return hook


def diagnose(res, model, images: torch.Tensor, T: int) -> dict[str, dict]:
    """Per neuron site, in graph order: relative error of its decoded output against its ANN value after each step
    (``evaluate(..., layer_errors=True)``: the ANN's box tensor serves as a regression target, ``output=0``, so that
    it runs on a detector), the same against the function of its own decoded input (:func:`_tracking`), events per
    neuron at each step, and the min / median / max of its thresholds."""
    with torch.no_grad():
        target = model(images)[0]
    tracking: dict[str, list[float]] = {}
    handles = [neuron.register_forward_hook(_tracking(tracking, name)) for name, neuron in res.snn.neurons()]
    try:
        with torch.no_grad():
            res.snn(images, T)
    finally:
        for handle in handles:
            handle.remove()
    ev = evaluate(res.snn, [(images, target)], timesteps=T, output=0, layer_errors=True, count_ops=False)
    sites = {}
    for name, events in ev.site_events.items():
        th = res.thresholds[name].flatten().float()
        sites[name] = {"relative_error": ev.layer_errors[name]["relative_error"],
                       "relative_error_to_own_input": tracking.get(name),
                       "events_per_neuron_per_step": [e / events["neurons_per_image"]
                                                      for e in events["events_per_step"]],
                       "threshold_min_median_max": [float(th.min()), float(th.median()), float(th.max())]}
    return sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n", help="Ultralytics YAML name (yolov8n, yolov6n, yolo11n, ...)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--max-objects", type=int, default=3)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--timesteps", default="1,2,4,8,16")
    parser.add_argument("--coding", choices=["differential", "rate"], default="differential",
                        help="the coding's preset (rate: IF neurons, 99.9 %% thresholds per channel)")
    parser.add_argument("--threshold", help="another threshold rule than the preset's (iterate, 99.9%%, max, ...)")
    parser.add_argument("--diagnose", type=int, default=0, metavar="N",
                        help="also, on the first N test canvases: every neuron site's relative error against the ANN "
                        "and against its own decoded input after each step, its events per neuron at each step and "
                        "its thresholds' range")
    parser.add_argument("--save", type=Path, help="keep the trained state dict here")
    parser.add_argument("--load", type=Path, help="skip training: load this state dict")
    parser.add_argument("--save-canvases", type=Path, help="write the calibration and test canvases (no boxes) to "
                        "this .npz file (x_train, x_test) and stop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    torch.manual_seed(0)
    model = detector(args.model)
    train_split, test_split = load_fashion_mnist("train"), load_fashion_mnist("test")
    if args.save_canvases:  # the calibration and test canvases without their boxes, for the command
        test_x, _ = canvases(test_split, args.test_images, args.canvas, args.max_objects, seed=2)
        calib_x, _ = canvases(train_split, args.calib_images, args.canvas, args.max_objects, seed=1)
        np.savez(args.save_canvases, x_train=calib_x.numpy(), x_test=test_x.numpy())
        return
    started = time.perf_counter()
    if args.load:
        model.load_state_dict(torch.load(args.load))
        final_loss = None
    else:
        final_loss = train(model, train_split, args)
    train_s = time.perf_counter() - started
    if args.save:
        torch.save(model.state_dict(), args.save)
    model.eval()
    test_x, test_boxes = canvases(test_split, args.test_images, args.canvas, args.max_objects, seed=2)
    calib_x, _ = canvases(train_split, args.calib_images, args.canvas, args.max_objects, seed=1)
    chunks = list(range(0, len(test_x), args.eval_batch))
    truth = [test_boxes[s:s + args.eval_batch] for s in chunks]
    with torch.no_grad():
        ann_outputs = [model(test_x[s:s + args.eval_batch]) for s in chunks]  # every output, for the output errors
    ann_out = [out[0] for out in ann_outputs]
    steps = [int(t) for t in args.timesteps.split(",")]
    cfg = ConversionConfig.for_coding(args.coding, timesteps=max(steps), threshold=args.threshold)
    doc = {"model": args.model, "coding": args.coding, "threshold": str(cfg.threshold),
           "task": "Fashion-MNIST garments on a canvas: boxes and 10 classes",
           "canvas": args.canvas, "max_objects": args.max_objects, "iters": args.iters, "batch": args.batch,
           "train_seconds": round(train_s), "final_loss": final_loss, "objects": sum(len(b) for b in test_boxes),
           "test_images": args.test_images, "calib_images": args.calib_images,
           "ann": mean_ap(ann_out, truth, 10), "snn": {}}
    print(f"ANN: {doc['ann']}", flush=True)
    model.model[-1].shape = None  # the head's anchor cache, set by the calls above (BENCHMARKS.md)
    started = time.perf_counter()
    results = convert_sweep(model, forward_loop=[calib_x[s:s + 256] for s in range(0, len(calib_x), 256)],
                            config=cfg, timesteps=steps)
    doc["convert_seconds"] = round(time.perf_counter() - started)
    for T, res in results.items():
        started = time.perf_counter()
        counter = SynapticOpCounter(res.snn, T)
        decoded, fidelity = [], Scores(T, None)
        with torch.no_grad():
            for s, ann_tree in zip(chunks, ann_outputs):
                out = res.snn(test_x[s:s + args.eval_batch], T)
                fidelity.add_reference(ann_tree, out)  # what evaluate() scores for these images without boxes
                decoded.append(out[0][T - 1])
                counter.counts.images += len(decoded[-1])
        counter.close()
        ops = counter.counts.to_dict()
        fidelity = fidelity.fields(with_ann=True)
        scores = torch.cat([d[:, 4:] for d in decoded]), torch.cat([a[:, 4:] for a in ann_out])
        row = {**mean_ap(decoded, truth, 10), "energy_ratio_reference": ops["energy_ratio_reference"][-1],
               "energy_ratio_extended": ops["energy_ratio_extended"][-1],
               "output_error": fidelity["snn_output_error"][-1],
               "output_errors": {k: e["relative_error"][-1] for k, e in fidelity["output_errors"].items()},
               "class_score_error": float((scores[0] - scores[1]).norm() / scores[1].norm()),
               "seconds": round(time.perf_counter() - started)}
        if args.diagnose:
            row["sites"] = diagnose(res, model, test_x[:args.diagnose], T)
        doc["snn"][str(T)] = row
        print(f"T={T}: { {k: v for k, v in row.items() if k != 'sites'} }", flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
