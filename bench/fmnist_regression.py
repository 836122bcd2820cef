r"""Regression on real images: a small CNN trained to localise the garment of a Fashion-MNIST image placed at a random
position on a larger canvas (its bounding box, four numbers), converted, and scored by mean squared and absolute
error after every step.

The task is made from Fashion-MNIST's own images: each 28×28 image is pasted at a seeded random offset into a
``--canvas``² black canvas (default 40); the target is the box of its pixels brighter than ``--foreground`` (0.1 of
full scale), ``(x0, y0, x1, y1)`` divided by the canvas size (x1, y1 exclusive). The network (conv-BN-ReLU ×2,
max-pool, conv-BN-ReLU, max-pool, conv-BN-ReLU, max-pool, flatten, linear-ReLU, linear to 4; BatchNorms folded at
conversion) is trained for ``--epochs`` on the TRAIN split (seeded Adam, MSE), then calibrated on the first 5 000
TRAIN images and evaluated on the TEST split for each coding: differential (the preset: MT n = 4, threshold iteration
per channel, fitted per T) at every T of ``--timesteps``, and rate (IF, 99.9 % per channel: independent of T, one
run at the largest of ``--rate-timesteps``). The box error in pixels is sqrt(MSE) × canvas.

    .venv/bin/python bench/fmnist_regression.py --out bench/results/fmnist_regression.json

The trained weights are not kept (``--save`` keeps them): this is a measurement.

A smoke run of the script (about 25 s; its figures mean nothing):

    .venv/bin/python bench/fmnist_regression.py --epochs 1 --train-images 600 --test-images 300 \
        --timesteps 2,4 --rate-timesteps 4
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from fmnist_segmentation import block, common_args, energy, sweep_codings, train

from snnconvert.runtime.data import TensorDataset, load_fashion_mnist


def placed(data: TensorDataset, canvas: int, foreground: float, seed: int) -> TensorDataset:
    """The images pasted at seeded random offsets into ``canvas``² and, as targets, their boxes (float32 ``[N, 4]``,
    fractions of the canvas)."""
    n, side = len(data), data.images.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, canvas - side + 1, (n, 2), generator=generator)  # (x, y)
    images = torch.zeros(n, 1, canvas, canvas)
    for i, (ox, oy) in enumerate(offsets.tolist()):
        images[i, 0, oy:oy + side, ox:ox + side] = data.images[i, 0]
    fg = data.images[:, 0] > foreground  # [N, 28, 28]
    cols, rows = fg.any(1), fg.any(2)  # [N, 28]: columns / rows with a bright pixel
    idx = torch.arange(side)
    x0 = torch.where(cols, idx, side).min(1).values
    x1 = torch.where(cols, idx + 1, 0).max(1).values
    y0 = torch.where(rows, idx, side).min(1).values
    y1 = torch.where(rows, idx + 1, 0).max(1).values
    boxes = torch.stack([x0 + offsets[:, 0], y0 + offsets[:, 1], x1 + offsets[:, 0], y1 + offsets[:, 1]], 1)
    return TensorDataset(data.name, data.split, images, boxes.float() / canvas)


class BoxCNN(nn.Module):
    def __init__(self, canvas: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(*block(1, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                                      *block(2 * w, 4 * w), nn.MaxPool2d(2))
        side = canvas // 8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, 128), nn.ReLU(), nn.Linear(128, 4))

    def forward(self, x):
        return self.head(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser, epochs=3, timesteps="1,2,4,8,16")
    parser.add_argument("--canvas", type=int, default=40)
    args = parser.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainset = placed(load_fashion_mnist("train").subset(args.train_images), args.canvas, args.foreground, seed=1)
    testset = placed(load_fashion_mnist("test").subset(args.test_images), args.canvas, args.foreground, seed=2)
    model = BoxCNN(args.canvas)
    started = time.perf_counter()
    train(model, trainset, args.epochs, args.batch, loss_fn=F.mse_loss)
    train_s = time.perf_counter() - started
    if args.save:
        torch.save(model.state_dict(), args.save)
    spread = float(testset.labels.var(0, unbiased=False).mean())  # the MSE of always answering the mean box
    doc = {"task": f"Fashion-MNIST garment box on a {args.canvas}x{args.canvas} canvas (x0, y0, x1, y1) / canvas",
           "epochs": args.epochs, "canvas": args.canvas, "foreground": args.foreground, "train_images": len(trainset),
           "test_images": len(testset),
           "train_seconds": round(train_s), "mean_box_mse": spread, "codings": {}}
    px = args.canvas
    for coding, report, seconds in sweep_codings(model, trainset, testset, args, target_gap=1.0):
        doc["ann_mse"], doc["ann_mae"] = report.ann_scores["ann_mse"], report.ann_scores["ann_mae"]
        doc["codings"][coding] = {
            "seconds": seconds, "shared_run": report.shared_run,
            "runs": [{"timesteps": T, "snn_mse": ev.snn_mse, "snn_mae": ev.snn_mae, **energy(ev)}
                     for T, ev in report.evaluations.items()]}
        print(f"{coding}: ANN MSE {doc['ann_mse']:.3g} (box error {math.sqrt(doc['ann_mse']) * px:.2f} px; mean box "
              f"{math.sqrt(spread) * px:.2f} px); "
              + "  ".join(f"T={r['timesteps']}: MSE {r['snn_mse'][-1]:.3g} ({math.sqrt(r['snn_mse'][-1]) * px:.2f} px, "
                          f"energy {r['energy_ratio_extended']:.3f})" for r in doc["codings"][coding]["runs"]),
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
