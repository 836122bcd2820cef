"""Ablation: rate vs differential x 99.9 % vs threshold iteration x n = 1 vs 4 (x granularity), at several T.

Every configuration is converted (calibration on the first --calib-images TRAIN images) and evaluated on the first
--eval-images TEST images. Thresholds from threshold iteration depend on T, so those configurations are converted
once per T; percentile thresholds do not, so one evaluation at max(T) gives every T. Also reports, for
accuracy targets just below the ANN's, the fewest events with which any differential and any rate setting (any
fitted T, any step t) reach them.

    .venv/bin/python bench/ablation.py --model fmnist-vgg --eval-images 10000 --out bench/results/ablation_vgg.json

``--backend native`` evaluates with the fused C kernels (identical results, several times faster on the CPU).
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
from snnconvert.runtime import compile, evaluate
from snnconvert.runtime.data import load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory


def run_config(model, calib, test, coding, threshold, levels, T, batch, backend="torch", granularity="channel"):
    neuron = "if" if levels == 1 and coding == "rate" else "mt"
    cfg = ConversionConfig.for_coding(coding, timesteps=T, threshold=threshold, neuron=neuron, levels=levels,
                                      granularity=granularity)
    start = time.perf_counter()
    res = convert(model, forward_loop=lambda m: [m(x) for x, _ in calib.batches(500)], config=cfg)
    ev = evaluate(compile(res.snn, backend), test.batches(max(1, batch // T)), ann=model, timesteps=T)
    cum_events = torch.tensor(ev.events_per_step).cumsum(0).tolist()
    return {
        "coding": coding, "threshold": threshold, "levels": levels, "neuron": neuron, "T_fit": T,
        "granularity": granularity,
        "ann_accuracy": ev.ann_accuracy, "snn_accuracy": ev.snn_accuracy, "events_cum": cum_events,
        "energy_ref": ev.ops.get("energy_ratio_reference"), "energy_ext": ev.ops.get("energy_ratio_extended"),
        "seconds": time.perf_counter() - start,
    }


def _cheapest(runs: list[dict], target: float, coding: str, levels: int | None = None):
    """Fewest cumulative events per image with which any run of ``coding`` (with ``levels``, if given) reaches
    ``target`` at some step t: ``(events, run, t)`` or None."""
    best = None
    for r in runs:
        if r["coding"] != coding or (levels is not None and r["levels"] != levels):
            continue
        t = next((t for t, a in enumerate(r["snn_accuracy"], 1) if a >= target), None)
        if t is not None and (best is None or r["events_cum"][t - 1] < best[0]):
            best = (r["events_cum"][t - 1], r, t)
    return best


def equal_accuracy(runs: list[dict], ann: float) -> list[str]:
    """Equal-accuracy table: for targets ANN − {1, 0.5, 0.2, 0} pp, the cheapest differential and the cheapest rate
    setting (over every configuration, fitted T and step t) that reach it, and the ratio of their events."""
    with_if = any(r["coding"] == "rate" and r["levels"] == 1 for r in runs)  # rate IF columns only if IF ran
    out = ["Equal accuracy: fewest events per image to reach the target, over every configuration and step t "
           "(config = threshold / n / T fitted for [/ granularity if not channel], step t reached)", "",
           "| target | differential: events (config, t) | rate, any neuron: events (config, t) | diff / rate |"
           + (" rate, IF (n=1) | diff / rate IF |" if with_if else ""),
           "|---|---|---|---|" + ("---|---|" if with_if else "")]

    def cell(hit):
        if hit is None:
            return "not reached"
        ev, r, t = hit
        per = "" if r.get("granularity", "channel") == "channel" else f" / {r['granularity']}"
        return f"{ev:.0f} ({r['threshold']} / n={r['levels']} / T={r['T_fit']}{per}, t={t})"

    for drop in (1.0, 0.5, 0.2, 0.0):
        target = ann - drop / 100 - 1e-9
        d = _cheapest(runs, target, "differential")
        r, r_if = _cheapest(runs, target, "rate"), _cheapest(runs, target, "rate", levels=1)

        def ratio(a, b):
            return f"{a[0] / b[0]:.3f}" if a and b else "n/a"

        out.append(f"| ANN − {drop} pp ({100 * (ann - drop / 100):.2f} %) | {cell(d)} | {cell(r)} | {ratio(d, r)} |"
                   + (f" {cell(r_if)} | {ratio(d, r_if)} |" if with_if else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-vgg")
    ap.add_argument("--timesteps", default="1,2,4,8,16,32")
    ap.add_argument("--codings", default="rate,differential")
    ap.add_argument("--thresholds", default="99.9%,iterate")
    ap.add_argument("--levels", default="1,4")
    ap.add_argument("--granularities", default="channel", help="comma list of layer, channel, neuron")
    ap.add_argument("--calib-images", type=int, default=5000)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=2048, help="images x steps per SNN call")
    ap.add_argument("--rate-T", type=int, default=64, help="percentile-threshold runs go to this T too")
    ap.add_argument("--backend", default="torch", help="runtime backend for the evaluation (torch, native, triton)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--include-runs", type=Path, action="append", default=[],
                    help="an earlier --out file of the same model and images whose runs join the equal-accuracy "
                         "table (repeatable; e.g. the per-channel runs next to a --granularities neuron run)")
    ap.add_argument("--system-malloc", dest="keep_freed_memory", action="store_false",
                    help="leave glibc's allocator as it is (default: keep freed memory as the CLI does: "
                         "runtime/malloc.py)")
    args = ap.parse_args()
    args.keep_freed_memory = keep_freed_memory() if args.keep_freed_memory else False
    torch.set_num_threads(max(1, torch.get_num_threads()))
    Ts = [int(t) for t in args.timesteps.split(",")]
    model = models_zoo.get_model(args.model)
    calib = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test").subset(args.eval_images)
    rows, runs = [], []
    levels = [int(n) for n in args.levels.split(",")]
    grains = args.granularities.split(",")
    grid = itertools.product(args.codings.split(","), args.thresholds.split(","), levels, grains)
    for coding, threshold, n, granularity in grid:
        # percentile thresholds do not depend on T: one run to max(T, --rate-T) gives every t (and the long rate
        # curves for the equal-accuracy comparison); iteration thresholds are fitted per T
        fits = Ts if threshold.startswith("iterate") else [max(max(Ts), args.rate_T)]
        accs, events, energy = {}, {}, {}
        for T in fits:
            r = run_config(model, calib, test, coding, threshold, n, T, args.batch, args.backend, granularity)
            runs.append(r)
            for t in (Ts if len(fits) == 1 else [T]):
                accs[t] = r["snn_accuracy"][t - 1]
                events[t], energy[t] = r["events_cum"][t - 1], r["energy_ext"][t - 1]
        ann = runs[-1]["ann_accuracy"]
        label = threshold if grains == ["channel"] else f"{threshold} per {granularity}"
        rows.append((coding, label, n, ann, accs, events, energy))
        print(f"done {coding} {label} n={n} ({sum(r['seconds'] for r in runs):.0f} s total)", flush=True)

    header = "| coding | threshold | n | " + " | ".join(f"T={t}" for t in Ts) + " |"
    lines = [f"ANN accuracy {100 * rows[0][3]:.2f} % ({args.model}, {args.eval_images} test images, "
             f"{args.calib_images} calibration images); cells: SNN accuracy % / events per image / energy ratio "
             "(extended)", "", header, "|" + "---|" * (3 + len(Ts))]
    for coding, threshold, n, _, accs, events, energy in rows:
        cells = [f"{100 * accs[t]:.2f} / {events[t]:.0f} / {energy[t]:.2f}" for t in Ts]
        lines.append(f"| {coding} | {threshold} | {n} | " + " | ".join(cells) + " |")

    earlier = []
    for path in args.include_runs:
        doc = json.loads(path.read_text())
        if (doc["args"]["model"], doc["args"]["eval_images"]) != (args.model, args.eval_images):
            ap.error(f"{path}: runs of {doc['args']['model']} on {doc['args']['eval_images']} images, not of "
                     f"{args.model} on {args.eval_images}")
        earlier += doc["runs"]
    if earlier:
        lines += ["", f"(equal accuracy also over the {len(earlier)} runs of "
                      f"{', '.join(str(p) for p in args.include_runs)})"]
    lines += ["", *equal_accuracy(runs + earlier, ann)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out), "include_runs": [
            str(p) for p in args.include_runs]}, "runs": runs, "table": text},
                                       indent=1))


if __name__ == "__main__":
    main()
