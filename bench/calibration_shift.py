"""Calibration check under a train/test shift (users.md §2.8): what a shift of the evaluation images costs the SNN
beyond what it costs the ANN, whether the calibration check (``convert/calibrate/check.py``) flags it, and what
calibrating on images with the same shift gives back.

For each shift of ``--shifts`` (a pixel transform of the Fashion-MNIST images in [0, 1]), the zoo model is
converted twice, each time evaluated on the shifted TEST split and checked on its first ``--calib-images`` shifted
test images (fewer with ``--eval-images``: then against as many calibration images):

- ``train``: calibrated on the first ``--calib-images`` TRAIN images as they are (a user whose test data drifted);
- ``shifted``: calibrated on the same TRAIN images with the same shift (calibration data that represents the
  test data).

    .venv/bin/python bench/calibration_shift.py --model fmnist-vgg --out bench/results/calibration_shift_vgg.json

``--noise RULES`` measures instead what the check sees WITHOUT a shift (the tolerance's margin): for each threshold
rule and each N of ``--counts``, the model calibrated on the first ``--calib-images`` TRAIN images is checked on
the first N TEST images, against the installed thresholds and against thresholds refitted on the first N
calibration images (what the CLI does when there are fewer evaluation images), and the site whose median ratio is
farthest from 1 is reported (no SNN evaluation):

    .venv/bin/python bench/calibration_shift.py --model fmnist-vgg --noise iterate,99.9%,max --counts 5000,2000,1000,500

With ``--repeats R`` each N is checked on R disjoint blocks of test images, block r against thresholds refitted on
the r-th block of N calibration images, and a table per N says how many blocks have a site beyond a fixed 10 % and
beyond the check's applied tolerance max(10 %, c / sqrt(N)) (the sampling noise of few images); ``--table FILE``
prints that table again from a saved result:

    .venv/bin/python bench/calibration_shift.py --model fmnist-vgg --noise iterate,99.9%,max \
        --counts 8,16,32,64,128,256 --repeats 8 --out bench/results/calibration_check_small_vgg.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.calibrate.check import DEFAULT_NOISE, DEFAULT_TOLERANCE, check_thresholds
from snnconvert.runtime import sweep
from snnconvert.runtime.data import TensorDataset, load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory

#: pixel transforms of images in [0, 1]
SHIFTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "contrast x1.5": lambda x: (1.5 * x).clamp(max=1.0),
    "contrast x0.5": lambda x: 0.5 * x,
    "brightness +0.2": lambda x: (x + 0.2).clamp(max=1.0),
    "gamma 0.5": lambda x: x.sqrt(),
    "inverted": lambda x: 1.0 - x,
}


def shifted(ds: TensorDataset, name: str) -> TensorDataset:
    return TensorDataset(ds.name, ds.split, SHIFTS[name](ds.images), ds.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--coding", default="differential")
    parser.add_argument("--threshold", default=None, help="threshold rule (default: the coding's preset)")
    parser.add_argument("-T", "--timesteps", type=int, default=8)
    parser.add_argument("--shifts", default=",".join(SHIFTS), help=f"comma list of {', '.join(SHIFTS)}")
    parser.add_argument("--calib-images", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--backend", default="native")
    parser.add_argument("--noise", default=None, help="comma list of threshold rules: measure the check's ratios "
                                                      "without a shift instead (see above)")
    parser.add_argument("--counts", default="5000,2000,1000,500", help="with --noise: test images checked on")
    parser.add_argument("--repeats", type=int, default=1,
                        help="with --noise: disjoint blocks of N test images, each against a disjoint block of N "
                             "calibration images (where R·N images exist), summarised per N")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, default=None,
                        help="print the --repeats summary of a saved --noise result and exit")
    args = parser.parse_args()
    if args.table is not None:
        return noise_table(json.loads(args.table.read_text()))
    names = [s.strip() for s in args.shifts.split(",")]
    unknown = [s for s in names if s not in SHIFTS]
    if unknown:
        parser.error(f"unknown shift(s) {unknown}; choose among {list(SHIFTS)}")
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    model = models_zoo.get_model(args.model)
    train = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test").subset(args.eval_images)
    cfg = ConversionConfig.for_coding(args.coding, timesteps=args.timesteps,
                                      **({} if args.threshold is None else {"threshold": args.threshold}))
    if args.noise:
        return noise(args, model, train, test)
    doc = {"model": args.model, "coding": args.coding, "threshold": str(cfg.threshold), "timesteps": args.timesteps,
           "calib_images": len(train), "eval_images": len(test), "runs": []}
    for name in names:
        test_s = shifted(test, name)
        n = min(len(test_s), len(train))  # a refit on fewer images than calibration compares with as many of those
        check_images = [x for x, _ in test_s.subset(n).batches(256)]
        ann_scores = None
        for calibrated_on in ("train", "shifted"):
            if calibrated_on == "shifted" and name == "none":
                continue
            calib = train if calibrated_on == "train" else shifted(train, name)
            started = time.perf_counter()
            result = convert(model, forward_loop=[x for x, _ in calib.batches(256)], config=cfg)
            reference = None if n == len(calib) else [x for x, _ in calib.subset(n).batches(256)]
            check = check_thresholds(result.snn, result.config, check_images, reference=reference)
            report = sweep({args.timesteps: result}, lambda ds=test_s: ds.batches(1000),
                           ann=model if ann_scores is None else None, ann_scores=ann_scores, backend=args.backend)
            ann_scores = ann_scores or report.ann_scores
            ev = report.evaluations[args.timesteps]
            big = check.largest
            run = {"shift": name, "calibrated_on": calibrated_on, "ann_accuracy": ann_scores["ann_accuracy"],
                   "snn_accuracy": ev.snn_accuracy, "flagged": len(check.flagged), "sites": len(check.sites),
                   "largest_site": big["site"], "largest_ratio": big["ratio"], "newly_active": check.newly_active,
                   "check": check.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
            doc["runs"].append(run)
            print(f"{name} / calibrated on {calibrated_on}: ANN {100 * run['ann_accuracy']:.2f} %, SNN "
                  f"{100 * ev.snn_accuracy[-1]:.2f} %; {check.summary('shifted test images')} "
                  f"({run['seconds']} s)", flush=True)
    T = args.timesteps
    print(f"| shift | calibrated on | ANN % | SNN % at T = {T // 2} / {T} | gap at T = {T} (pp) | sites flagged | "
          "largest median ratio |")
    print("|---|---|---|---|---|---|---|")
    for run in doc["runs"]:
        acc = run["snn_accuracy"]
        print(f"| {run['shift']} | {run['calibrated_on']} images | {100 * run['ann_accuracy']:.2f} | "
              f"{100 * acc[T // 2 - 1]:.2f} / {100 * acc[-1]:.2f} | {100 * (acc[-1] - run['ann_accuracy']):+.2f} | "
              f"{run['flagged']} of {run['sites']} | {run['largest_ratio']:.2f} (`{run['largest_site']}`) |")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


def _block(ds: TensorDataset, n: int, r: int) -> list[torch.Tensor]:
    """Images [r·n, (r+1)·n) of ``ds`` in batches."""
    return [x for x, _ in ds.select(torch.arange(r * n, min((r + 1) * n, len(ds)))).batches(256)]


def noise(args, model, train: TensorDataset, test: TensorDataset) -> None:
    counts = [int(c) for c in args.counts.split(",")]
    doc = {"model": args.model, "coding": args.coding, "timesteps": args.timesteps, "calib_images": len(train),
           "repeats": args.repeats, "runs": []}
    for rule in (r.strip() for r in args.noise.split(",")):
        cfg = ConversionConfig.for_coding(args.coding, timesteps=args.timesteps, threshold=rule)
        result = convert(model, forward_loop=[x for x, _ in train.batches(256)], config=cfg)
        for n in counts:
            for r in range(args.repeats if n * args.repeats <= min(len(train), len(test)) else 1):
                images = _block(test, n, r)
                row = {"rule": rule, "images": n, "block": r}
                for against in ("installed", "reference"):
                    if against == "reference" and n >= len(train):
                        continue
                    # the CLI's reference is the first n calibration images; other blocks sample its noise
                    reference = _block(train, n, r) if against == "reference" else None
                    check = check_thresholds(result.snn, result.config, images, reference=reference, noise=0)
                    row[against] = {"ratio": check.largest["ratio"], "site": check.largest["site"],
                                    "flagged": len(check.flagged)}
                doc["runs"].append(row)
                print({k: v for k, v in row.items() if k not in ("installed", "reference")},
                      {a: {k: row[a][k] for k in ("ratio", "site", "flagged")} for a in ("installed", "reference")
                       if a in row}, flush=True)
    print(f"| rule | test images | against the installed thresholds ({len(train)} calibration images) | against "
          "as many calibration images |")
    print("|---|---|---|---|")
    for row in (row for row in doc["runs"] if row["block"] == 0):
        cells = [f"{row[a]['ratio']:.3f} (`{row[a]['site']}`), {row[a]['flagged']} flagged" if a in row else "same"
                 for a in ("installed", "reference")]
        print(f"| {row['rule']} | {row['images']} | {cells[0]} | {cells[1]} |")
    noise_table(doc)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


def noise_table(doc: dict) -> None:
    """Every block against its equal-count reference (``--repeats``): the blocks with a site beyond a fixed 10 % and
    beyond the check's applied tolerance max(10 %, c / sqrt(N)), the largest deviation of a site from 1 and that
    deviation times sqrt(N)."""
    print(f"\n| rule | test images | blocks | beyond 10 % | beyond max(10 %, {DEFAULT_NOISE:g} / sqrt(N)) | largest "
          "deviation | × sqrt(N) |")
    print("|---|---|---|---|---|---|---|")
    for rule in dict.fromkeys(row["rule"] for row in doc["runs"]):
        for n in dict.fromkeys(row["images"] for row in doc["runs"]):
            rows = [row for row in doc["runs"] if row["rule"] == rule and row["images"] == n and "reference" in row]
            if not rows:
                continue
            devs = [abs(math.log(row["reference"]["ratio"])) for row in rows]
            applied = max(DEFAULT_TOLERANCE, DEFAULT_NOISE / math.sqrt(n))
            beyond = [sum(d > math.log1p(tol) for d in devs) for tol in (DEFAULT_TOLERANCE, applied)]
            print(f"| {rule} | {n} | {len(rows)} | {beyond[0]} | {beyond[1]} ({100 * applied:.3g} %) | "
                  f"{100 * math.expm1(max(devs)):.1f} % | {math.expm1(max(devs)) * math.sqrt(n):.2f} |")


if __name__ == "__main__":
    main()
