"""A timm architecture trained on Fashion-MNIST, then converted: does the front end's timm support (functional
BatchNorm behind rank assertions, ReLU6, TF-style padding) give an SNN that tracks the trained ANN?

Trains ``--model`` (timm, ``pretrained=False``, one input channel, 10 classes) for ``--epochs`` on the TRAIN split
(seeded, SGD + cosine schedule, random crops and flips), calibrates on the first 5 000 TRAIN images and evaluates the
ANN and the differential-coded SNN (the preset: MT n = 4, threshold iteration per channel, fitted per T) on the TEST
split with the native backend, for each T of ``--timesteps``.

    .venv/bin/pip install timm
    .venv/bin/python bench/timm_fmnist.py --model mobilenetv2_050 --epochs 3 --out bench/results/timm_fmnist.json

Needs timm (not a dependency of snnconvert). The trained weights are not kept: this is a measurement.

A smoke run of the script (about 25 s; its figures mean nothing):

    .venv/bin/python bench/timm_fmnist.py --epochs 1 --train-images 512 --test-images 200 --timesteps 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fmnist_segmentation import limits

from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import sweep
from snnconvert.runtime.data import load_fashion_mnist


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int) -> None:
    generator = torch.Generator().manual_seed(0)
    steps = epochs * (len(labels) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        start, total = time.perf_counter(), 0.0
        for i in range(len(labels) // batch):
            idx = order[i * batch:(i + 1) * batch]
            x = F.pad(images[idx], (2, 2, 2, 2))  # random 28x28 crop of the image padded by 2, random flip
            dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
            x = x[:, :, dy:dy + 28, dx:dx + 28]
            if torch.rand((), generator=generator) < 0.5:
                x = x.flip(-1)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / (len(labels) // batch):.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    model.eval()


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_050")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--timesteps", default="2,4,8")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--save", type=Path, help="also save the trained state dict here")
    parser.add_argument("--load", type=Path, help="skip training: load this state dict")
    limits(parser)
    args = parser.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainset = load_fashion_mnist("train").subset(args.train_images)
    testset = load_fashion_mnist("test").subset(args.test_images)
    model = timm.create_model(args.model, pretrained=False, num_classes=10, in_chans=1)
    started = time.perf_counter()
    if args.load:
        model.load_state_dict(torch.load(args.load, weights_only=True))
        model.eval()
    else:
        train(model, trainset.images, trainset.labels, args.epochs, args.batch)
    train_s = time.perf_counter() - started
    if args.save:
        torch.save(model.state_dict(), args.save)
    steps = [int(t) for t in args.timesteps.split(",")]
    calib = trainset.subset(5000)
    started = time.perf_counter()
    results = convert_sweep(model, forward_loop=[x for x, _ in calib.batches(256)],
                            config=ConversionConfig.for_coding("differential", timesteps=max(steps)), timesteps=steps)
    report = sweep(results, lambda: testset.batches(500), ann=model, backend="native", target_gap_pp=0.5)
    rows = [{"timesteps": T, "snn_accuracy": ev.snn_accuracy, "events_per_image": sum(ev.events_per_step),
             "energy_ratio_extended": ev.ops["energy_ratio_extended"][-1]} for T, ev in report.evaluations.items()]
    res = results[steps[0]].report
    doc = {"model": args.model, "timm": timm.__version__, "epochs": args.epochs, "train_images": len(trainset),
           "test_images": len(testset),
           "weights": f"loaded from {args.load}" if args.load else "trained here", "train_seconds": round(train_s),
           "convert_and_evaluate_seconds": round(time.perf_counter() - started), "ann_accuracy": report.ann_accuracy,
           "folded_batch_norms": res.entry("fold_bn").counts,
           "functional_layers": res.entry("functional_layers_to_modules").counts, "runs": rows}
    print(f"{args.model}: ANN {100 * report.ann_accuracy:.2f} %  " + "  ".join(
        f"T={r['timesteps']}: SNN {100 * r['snn_accuracy'][-1]:.2f} % (energy {r['energy_ratio_extended']:.3f})"
        for r in rows))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
