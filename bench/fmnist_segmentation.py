r"""Segmentation on real images: a small fully convolutional network trained to label every pixel of a Fashion-MNIST
image (background, or the garment's class), converted, and scored by pixel accuracy and mean IoU after every step.

The task is made from Fashion-MNIST's own labels: a pixel whose intensity is above ``--foreground`` (default 0.1 of
full scale) is labelled with its image's class + 1, every other pixel 0 (background): 11 classes, masks ``[N, 28,
28]``. The network (conv-BN-ReLU ×2, max-pool, conv-BN-ReLU, max-pool, conv-BN-ReLU ×2, 1×1 classifier, bilinear
upsampling ×4; BatchNorms folded at conversion) is trained for ``--epochs`` on the TRAIN split (seeded Adam), then
calibrated on the first 5 000 TRAIN images and evaluated on the TEST split for each coding: differential (the preset:
MT n = 4, threshold iteration per channel, fitted per T) at every T of ``--timesteps``, and rate (IF, 99.9 %
per channel: independent of T, one run at the largest of ``--rate-timesteps``).

    .venv/bin/python bench/fmnist_segmentation.py --out bench/results/fmnist_segmentation.json

The trained weights are not kept (``--save`` keeps them): this is a measurement.

A smoke run of the script (about 25 s; its figures mean nothing):

    .venv/bin/python bench/fmnist_segmentation.py --epochs 1 --train-images 600 --test-images 300 \
        --timesteps 2 --rate-timesteps 4
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import sweep
from snnconvert.runtime.data import TensorDataset, load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory

CLASSES = 11  # background + the 10 garment classes


def masks(data: TensorDataset, foreground: float) -> TensorDataset:
    """The data set with per-pixel labels: class + 1 where the image is brighter than ``foreground``, else 0."""
    fg = data.images[:, 0] > foreground
    labels = torch.where(fg, data.labels[:, None, None] + 1, torch.zeros((), dtype=torch.int64))
    return TensorDataset(data.name, data.split, data.images, labels)


def block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class FCN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(*block(1, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                                      *block(2 * w, 2 * w), *block(2 * w, 2 * w))
        self.classifier = nn.Conv2d(2 * w, CLASSES, 1)

    def forward(self, x):
        return F.interpolate(self.classifier(self.features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


def train(model: nn.Module, data: TensorDataset, epochs: int, batch: int, loss_fn=F.cross_entropy) -> None:
    """Seeded Adam with a one-cycle schedule (also used by ``fmnist_regression.py``, with ``F.mse_loss``)."""
    generator = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * (len(data) // batch))
    model.train()
    for epoch in range(epochs):
        order, start, total = torch.randperm(len(data), generator=generator), time.perf_counter(), 0.0
        for i in range(len(data) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = loss_fn(model(data.images[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / (len(data) // batch):.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    model.eval()


def common_args(parser: argparse.ArgumentParser, *, epochs: int, timesteps: str) -> None:
    """The options of both task benchmarks (this one and ``fmnist_regression.py``)."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--foreground", type=float, default=0.1)
    parser.add_argument("--timesteps", default=timesteps, help="differential coding: T values (one fit each)")
    parser.add_argument("--rate-timesteps", default="8,16,32", help="rate coding: T values (one shared run)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save", type=Path, help="also save the trained state dict here")
    limits(parser)


def limits(parser: argparse.ArgumentParser) -> None:
    """``--train-images`` / ``--test-images``: a short run on the first N images of each split (the recorded figures
    use all of them; calibration takes the first 5 000 of the training images used)."""
    parser.add_argument("--train-images", type=int, default=None, help="train on the first N train images only")
    parser.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images only")


def sweep_codings(model: nn.Module, trainset: TensorDataset, testset: TensorDataset, args, target_gap: float):
    """Calibrate on the first 5 000 training images and sweep each coding over the test set (native backend): yields
    ``(coding, SweepReport, seconds)``; the ANN runs once, in the first sweep."""
    keep_freed_memory()  # as the CLI does (runtime/malloc.py): without it half the run is page faults
    calib = [x for x, _ in trainset.subset(5000).batches(256)]
    known = None
    for coding, steps in (("differential", args.timesteps), ("rate", args.rate_timesteps)):
        steps = [int(t) for t in steps.split(",")]
        started = time.perf_counter()
        results = convert_sweep(model, forward_loop=calib, timesteps=steps,
                                config=ConversionConfig.for_coding(coding, timesteps=max(steps)))
        report = sweep(results, lambda: testset.batches(500), ann=model if known is None else None,
                       backend="native", target_gap_pp=target_gap,
                       ann_scores=None if known is None else known.ann_scores)
        known = known or report
        yield coding, report, round(time.perf_counter() - started)


def energy(ev) -> dict[str, float]:
    """Events per image and both energy ratios after the last step of an evaluation."""
    return {"events_per_image": sum(ev.events_per_step),
            "energy_ratio_reference": ev.ops["energy_ratio_reference"][-1],
            "energy_ratio_extended": ev.ops["energy_ratio_extended"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, epochs=2, timesteps="1,2,4,8,16")
    args = parser.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainset = masks(load_fashion_mnist("train").subset(args.train_images), args.foreground)
    testset = masks(load_fashion_mnist("test").subset(args.test_images), args.foreground)
    model = FCN()
    started = time.perf_counter()
    train(model, trainset, args.epochs, args.batch)
    train_s = time.perf_counter() - started
    if args.save:
        torch.save(model.state_dict(), args.save)
    doc = {"task": "Fashion-MNIST pixels: background or garment class (11 classes)", "epochs": args.epochs,
           "foreground": args.foreground, "train_images": len(trainset), "test_images": len(testset),
           "train_seconds": round(train_s), "codings": {}}
    for coding, report, seconds in sweep_codings(model, trainset, testset, args, target_gap=0.5):
        doc["ann_pixel_accuracy"], doc["ann_miou"] = report.ann_accuracy, report.ann_scores["ann_miou"]
        doc["codings"][coding] = {
            "seconds": seconds, "shared_run": report.shared_run,
            "runs": [{"timesteps": T, "snn_pixel_accuracy": ev.snn_accuracy, "snn_miou": ev.snn_miou, **energy(ev)}
                     for T, ev in report.evaluations.items()]}
        print(f"{coding}: ANN pixel acc {100 * report.ann_accuracy:.2f} %, mIoU {100 * doc['ann_miou']:.2f} %; "
              + "  ".join(f"T={r['timesteps']}: {100 * r['snn_pixel_accuracy'][-1]:.2f} % / mIoU "
                          f"{100 * r['snn_miou'][-1]:.2f} % (energy {r['energy_ratio_extended']:.3f})"
                          for r in doc["codings"][coding]["runs"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
