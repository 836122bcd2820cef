"""Ablation: rate vs differential x 99.9 % vs threshold iteration x n = 1 vs 4, at several T, on a zoo model.

Every configuration is converted (calibration on the first --calib-images TRAIN images) and evaluated on the first
--eval-images TEST images. Thresholds from threshold iteration depend on T, so those configurations are converted
once per T; percentile thresholds do not, so one evaluation at max(T) gives every T. Also reports, for the
differential setting at --equal-T, how many events the best rate setting needs to reach the same accuracy.

    .venv/bin/python bench/ablation.py --model fmnist-vgg --eval-images 10000 --out bench/results/ablation_vgg.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime import evaluate
from snnconvert.runtime.data import load_fashion_mnist


def run_config(model, calib, test, coding, threshold, levels, T, batch):
    neuron = "if" if levels == 1 and coding == "rate" else "mt"
    cfg = ConversionConfig.for_coding(coding, timesteps=T, threshold=threshold, neuron=neuron, levels=levels)
    start = time.perf_counter()
    res = convert(model, forward_loop=lambda m: [m(x) for x, _ in calib.batches(500)], config=cfg)
    ev = evaluate(res.snn, test.batches(max(1, batch // T)), ann=model, timesteps=T)
    cum_events = torch.tensor(ev.events_per_step).cumsum(0).tolist()
    return {
        "coding": coding, "threshold": threshold, "levels": levels, "neuron": neuron, "T_fit": T,
        "ann_accuracy": ev.ann_accuracy, "snn_accuracy": ev.snn_accuracy, "events_cum": cum_events,
        "energy_ref": ev.ops.get("energy_ratio_reference"), "energy_ext": ev.ops.get("energy_ratio_extended"),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-vgg")
    ap.add_argument("--timesteps", default="1,2,4,8,16,32")
    ap.add_argument("--codings", default="rate,differential")
    ap.add_argument("--thresholds", default="99.9%,iterate")
    ap.add_argument("--levels", default="1,4")
    ap.add_argument("--calib-images", type=int, default=5000)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=2048, help="images x steps per SNN call")
    ap.add_argument("--equal-T", type=int, default=8)
    ap.add_argument("--rate-T", type=int, default=64, help="longest rate run for the equal-accuracy comparison")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    Ts = [int(t) for t in args.timesteps.split(",")]
    model = models_zoo.get_model(args.model)
    calib = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test").subset(args.eval_images)
    rows, runs = [], []
    levels = [int(n) for n in args.levels.split(",")]
    grid = itertools.product(args.codings.split(","), args.thresholds.split(","), levels)
    for coding, threshold, n in grid:
        fits = Ts if threshold.startswith("iterate") else [max(Ts)]
        accs, events, energy = {}, {}, {}
        for T in fits:
            r = run_config(model, calib, test, coding, threshold, n, T, args.batch)
            runs.append(r)
            for t in (Ts if len(fits) == 1 else [T]):
                accs[t] = r["snn_accuracy"][t - 1]
                events[t], energy[t] = r["events_cum"][t - 1], r["energy_ext"][t - 1]
        ann = runs[-1]["ann_accuracy"]
        rows.append((coding, threshold, n, ann, accs, events, energy))
        print(f"done {coding} {threshold} n={n} ({sum(r['seconds'] for r in runs):.0f} s total)", flush=True)

    header = "| coding | threshold | n | " + " | ".join(f"T={t}" for t in Ts) + " |"
    lines = [f"ANN accuracy {100 * rows[0][3]:.2f} % ({args.model}, {args.eval_images} test images, "
             f"{args.calib_images} calibration images); cells: SNN accuracy % / events per image / energy ratio "
             "(extended)", "", header, "|" + "---|" * (3 + len(Ts))]
    for coding, threshold, n, _, accs, events, energy in rows:
        cells = [f"{100 * accs[t]:.2f} / {events[t]:.0f} / {energy[t]:.2f}" for t in Ts]
        lines.append(f"| {coding} | {threshold} | {n} | " + " | ".join(cells) + " |")

    # equal accuracy: events of differential (iterate, max n) at --equal-T vs the best rate setting reaching it;
    # rate settings run once to --rate-T with percentile thresholds (iteration thresholds would be fitted per T)
    diff = [r for r in runs if r["coding"] == "differential" and r["levels"] == max(levels)
            and r["threshold"] == "iterate" and r["T_fit"] == args.equal_T]
    if diff and "rate" in args.codings:
        target, d_events = diff[0]["snn_accuracy"][-1], diff[0]["events_cum"][-1]
        candidates = []
        for n in levels:
            r = run_config(model, calib, test, "rate", "99.9%", n, args.rate_T, args.batch)
            hit = next((t for t, a in enumerate(r["snn_accuracy"], 1) if a >= target), None)
            candidates.append((hit is None, r["events_cum"][(hit or args.rate_T) - 1], n, hit))
        _, ev, n, hit = min(candidates)
        reach = f"reaches it at t={hit}" if hit else f"does not reach it by t={args.rate_T} (events counted to there)"
        lines += ["", f"Equal accuracy: differential/iterate/n={max(levels)} at T={args.equal_T}: {100 * target:.2f} % "
                  f"with {d_events:.0f} events per image; best rate setting (99.9%, n={n}) {reach} with {ev:.0f} "
                  f"events: ratio {d_events / ev:.3f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs, "table": text},
                                       indent=1))


if __name__ == "__main__":
    main()
