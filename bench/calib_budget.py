"""Calibration budget: how many training images the thresholds need (users.md §4.10; users ask why data is needed and
how much).

For each count N of ``--counts``, the zoo model is calibrated on ``--repeats`` disjoint blocks of N TRAIN images
(block r is images [r·N, (r+1)·N) of the train split; one block for N ≥ 5 000) and converted for every T of
``--timesteps`` (threshold iteration is fitted per T; one calibration per block), then evaluated on the TEST split.
Reported per N and T: the SNN's accuracy after T steps (mean, min and max over the blocks), its gap to the ANN, the
energy ratio, and the conversion time (one calibration, thresholds fitted for each T).

    .venv/bin/python bench/calib_budget.py --model fmnist-vgg --out bench/results/calib_budget_vgg.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import sweep
from snnconvert.runtime.data import load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--coding", default="differential")
    parser.add_argument("--threshold", default=None, help="threshold rule (default: the coding's preset)")
    parser.add_argument("--granularity", default=None, help="layer | channel | neuron (default: the preset's)")
    parser.add_argument("--counts", default="10,100,1000,5000")
    parser.add_argument("--repeats", type=int, default=3, help="disjoint calibration blocks per count below 5 000")
    parser.add_argument("--timesteps", default="4,8")
    parser.add_argument("--eval-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--backend", default="native")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    model = models_zoo.get_model(args.model)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test").subset(args.eval_images)
    steps = [int(t) for t in args.timesteps.split(",")]
    options = {"threshold": args.threshold, "granularity": args.granularity}
    cfg = ConversionConfig.for_coding(args.coding, timesteps=max(steps),
                                      **{k: v for k, v in options.items() if v is not None})
    doc = {"model": args.model, "coding": args.coding, "threshold": str(cfg.threshold), "granularity": cfg.granularity,
           "eval_images": len(test), "runs": []}
    ann_scores = None
    for n in (int(c) for c in args.counts.split(",")):
        for r in range(1 if n >= 5000 else args.repeats):
            block = train.select(torch.arange(r * n, (r + 1) * n))
            started = time.perf_counter()
            results = convert_sweep(model, forward_loop=[x for x, _ in block.batches(256)], config=cfg,
                                    timesteps=steps)
            calib_s = time.perf_counter() - started  # one calibration, thresholds fitted for every T
            report = sweep(results, lambda: test.batches(1000), ann=model if ann_scores is None else None,
                           backend=args.backend, ann_scores=ann_scores)
            ann_scores = ann_scores or report.ann_scores
            for T, ev in report.evaluations.items():
                doc["runs"].append({"images": n, "block": r, "timesteps": T, "snn_accuracy": ev.snn_accuracy[-1],
                                    "energy_ratio_extended": ev.ops["energy_ratio_extended"][-1],
                                    "conversion_seconds": round(calib_s, 2)})
            print(f"N={n} block {r}: " + ", ".join(f"T={T} {100 * ev.snn_accuracy[-1]:.2f} %"
                                                  for T, ev in report.evaluations.items())
                  + f" (conversion {calib_s:.1f} s)", flush=True)
    doc["ann_accuracy"] = ann_scores["ann_accuracy"]
    print(f"ANN {100 * doc['ann_accuracy']:.2f} %")
    print("| calibration images | T | SNN accuracy % (mean; min–max over blocks) | gap (pp) | energy ratio (ext) |"
          " conversion s |")
    print("|---|---|---|---|---|---|")
    for n in dict.fromkeys(run["images"] for run in doc["runs"]):
        for T in steps:
            runs = [run for run in doc["runs"] if run["images"] == n and run["timesteps"] == T]
            accs = [100 * run["snn_accuracy"] for run in runs]
            mean = sum(accs) / len(accs)
            spread = f"; {min(accs):.2f}–{max(accs):.2f}" if len(accs) > 1 else ""
            energy = sum(run["energy_ratio_extended"] for run in runs) / len(runs)
            secs = sum(run["conversion_seconds"] for run in runs) / len(runs)
            print(f"| {n} | {T} | {mean:.2f}{spread} | {mean - 100 * doc['ann_accuracy']:+.2f} | {energy:.3f} | "
                  f"{secs:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
