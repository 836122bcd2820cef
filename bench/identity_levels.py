"""Choosing n for identity neurons on held-out TRAIN images (never the test split).

Calibrates on the first 5 000 train images (as the CLI does), then evaluates ANN and SNN on train images
``[--val-start, --val-start + --val-images)`` (disjoint from the calibration images) for each identity-neuron level
count n and each T, with the differential preset otherwise unchanged (ReLU neurons n = 4, threshold iteration;
identity thresholds 99.9 % of |x|, c = 1). Prints one row per (n, T): accuracy, gap, events and both energy ratios.

    .venv/bin/python bench/identity_levels.py --model fmnist-mnv3 --levels 4,5,6 --timesteps 4,8 \
        --out bench/results/identity_levels_mnv3.json

This is how the preset's ``identity_levels`` was chosen (BENCHMARKS.md "Identity neurons"); the test split then
measures the choice.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import evaluate
from snnconvert.runtime.data import load_fashion_mnist


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-mnv3")
    ap.add_argument("--levels", type=_ints, default=[4, 5, 6], help="identity-neuron n values (comma list)")
    ap.add_argument("--timesteps", type=_ints, default=[4, 8])
    ap.add_argument("--calib-images", type=int, default=5000)
    ap.add_argument("--val-start", type=int, default=50000)
    ap.add_argument("--val-images", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.val_start < args.calib_images:
        ap.error("--val-start must be >= --calib-images: validation images must not be calibration images")

    train = load_fashion_mnist("train")
    calib = list(train.subset(args.calib_images).batches(args.batch_size))
    val = train.select(torch.arange(args.val_start, args.val_start + args.val_images))
    model = models_zoo.get_model(args.model).eval()
    rows = []
    print(f"{args.model}: calibration train[0:{args.calib_images}], validation train[{args.val_start}:"
          f"{args.val_start + args.val_images}]")
    print("| identity n | T | SNN acc % | gap (pp) | events/img | energy ratio ref / ext |")
    print("|---|---|---|---|---|---|")
    for n in args.levels:
        cfg = ConversionConfig.for_coding("differential", identity_levels=n)
        start = time.perf_counter()
        results = convert_sweep(model, forward_loop=calib, config=cfg, timesteps=args.timesteps)
        for T, res in results.items():
            with torch.no_grad():
                ev = evaluate(res.snn, val.batches(args.batch_size), ann=model, timesteps=T)
            row = {"identity_levels": n, "T": T, "ann_accuracy": ev.ann_accuracy, "snn_accuracy": ev.snn_accuracy[-1],
                   "gap_pp": 100 * (ev.snn_accuracy[-1] - ev.ann_accuracy),
                   "events_per_image": sum(ev.events_per_step),
                   "energy_reference": ev.ops["energy_ratio_reference"][-1],
                   "energy_extended": ev.ops["energy_ratio_extended"][-1]}
            rows.append(row)
            print(f"| {n} | {T} | {100 * row['snn_accuracy']:.2f} | {row['gap_pp']:+.2f} | "
                  f"{row['events_per_image']:,.0f} | {row['energy_reference']:.3f} / {row['energy_extended']:.3f} |",
                  flush=True)
        rows[-1]["seconds"] = time.perf_counter() - start
    print(f"ANN accuracy on the validation images: {100 * rows[0]['ann_accuracy']:.2f} %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "calib_images": args.calib_images,
                                        "val": [args.val_start, args.val_start + args.val_images], "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
