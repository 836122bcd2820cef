"""Calibration cost per threshold rule: how long ``convert`` spends calibrating (the passes over the calibration
images and the threshold fits), side by side for every rule on the same images (users.md §2.8: "percentile
calibration is slow").

For each zoo model of ``--models`` and each rule of ``--thresholds`` the model is converted ``--repeats`` times on
the first ``--images`` TRAIN images of Fashion-MNIST (batches of 256, in memory: no decoding in the timing),
differential coding at T = 8 (rate coding with ``--coding rate``); the table gives the fastest calibration time
(``ConversionReport.timings["calibration"]``) and the number of passes the rule needed; the JSON adds a SHA-256 of
the thresholds (to compare the thresholds of two versions).

    .venv/bin/python bench/calib_speed.py --out bench/results/calib_speed.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime.data import load_fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-vgg,fmnist-resnet,fmnist-mobilenet")
    parser.add_argument("--thresholds", default="max,iterate,99.9%,99.99%")
    parser.add_argument("--coding", default="differential")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    train = load_fashion_mnist("train").subset(args.images)
    batches = [x for x, _ in train.batches(256)]
    rows = []
    for name in args.models.split(","):
        model = models_zoo.get_model(name)
        for rule in args.thresholds.split(","):
            passes = []

            def loop(m, calls=passes):
                calls.append(1)
                for x in batches:
                    m(x)

            cfg = ConversionConfig.for_coding(args.coding, timesteps=8, threshold=rule)
            seconds = []
            for _ in range(args.repeats):
                passes.clear()
                result = convert(model, forward_loop=loop, config=cfg)
                seconds.append(result.report.timings["calibration"])
            digest = hashlib.sha256()
            for site, theta in sorted(result.thresholds.items()):
                digest.update(site.encode() + theta.detach().cpu().double().numpy().tobytes())
            rows.append({"model": name, "threshold": rule, "passes": len(passes), "seconds": min(seconds),
                         "all_seconds": seconds, "thresholds_sha256": digest.hexdigest()})
            print(f"{name:18s} {rule:8s} passes {len(passes)}  {min(seconds):6.2f} s", flush=True)
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["threshold"]] = r["seconds"]
    print("\n| model | " + " | ".join(args.thresholds.split(",")) + " |")
    print("|---|" + "---|" * len(args.thresholds.split(",")))
    for name, cells in by_model.items():
        base = cells.get("max")
        print(f"| {name} | " + " | ".join(
            f"{s:.2f} s" + (f" ({s / base:.1f}x)" if base and rule != "max" else "") for rule, s in cells.items())
            + " |")
    if args.out:
        args.out.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "images": args.images, "coding": args.coding,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
