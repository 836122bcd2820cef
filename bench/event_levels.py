"""Where a converted network's events go: per neuron site and step, positive and negative events, and events per
level λ_k = θ/2^k of the multi-threshold neurons (k = 0 is θ).

Converts a zoo model (calibration on the first ``--calib-images`` train images), runs the reference (torch) SNN on
the first ``--eval-images`` test images and reads every neuron's output through a forward hook. An event of level k
has magnitude exactly θ/2^k (θ of its own neuron, channel or layer), so k = round(log2(θ/|d|)).

    .venv/bin/python bench/event_levels.py --model fmnist-vgg --coding differential -T 8 \
        --out bench/results/event_levels_vgg_t8.json

Events per image are totals over the evaluated images divided by their number (BENCHMARKS.md "Where the events
go").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.runtime.data import load_fashion_mnist


class LevelCounter:
    """Forward hooks on every spiking neuron (multi-step mode): events per step by sign and by level."""

    def __init__(self, snn, timesteps: int, levels: int) -> None:
        self.T, self.levels = timesteps, levels
        self.sites: dict[str, dict[str, torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in snn.gm.named_modules()
                        if isinstance(m, SpikingNeuron)]

    def _hook(self, name: str):
        def hook(module, args, out):
            if module.capture or out.shape[0] % self.T:  # the zero-input bias capture (a batch of one)
                return
            d = out.reshape(self.T, -1, *out.shape[1:])
            theta = torch.broadcast_to(module.threshold.to(d.dtype), d.shape[2:])
            site = self.sites.setdefault(name, {"positive": torch.zeros(self.T), "negative": torch.zeros(self.T),
                                                "by_level": torch.zeros(self.T, self.levels)})
            for t in range(self.T):
                fired = d[t] != 0
                site["positive"][t] += (d[t] > 0).sum()
                site["negative"][t] += (d[t] < 0).sum()
                k = torch.log2(theta.expand_as(d[t])[fired] / d[t][fired].abs()).round().long()
                site["by_level"][t] += torch.bincount(k.clamp(0, self.levels - 1), minlength=self.levels).float()

        return hook


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-vgg")
    ap.add_argument("--coding", default="differential")
    ap.add_argument("-T", "--timesteps", type=int, default=8)
    ap.add_argument("--threshold", default=None, help="default: the coding's preset")
    ap.add_argument("--granularity", default=None, help="default: the coding's preset")
    ap.add_argument("--calib-images", type=int, default=5000)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model = models_zoo.get_model(args.model).eval()
    train = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test").subset(args.eval_images)
    cfg = ConversionConfig.for_coding(args.coding, timesteps=args.timesteps, threshold=args.threshold,
                                      granularity=args.granularity)
    result = convert(model, forward_loop=lambda m: [m(x) for x, _ in train.batches(256)], config=cfg)
    counter = LevelCounter(result.snn, args.timesteps, cfg.levels)
    with torch.no_grad():
        for x, _ in test.batches(args.batch):
            result.snn(x)
    n = len(test)
    sites = {name: {key: (v / n).tolist() for key, v in s.items()} for name, s in counter.sites.items()}
    total = {key: sum(torch.tensor(s[key]) for s in sites.values()) for key in ("positive", "negative", "by_level")}
    events = total["positive"] + total["negative"]
    summary = {"events_per_step": events.tolist(), "events": float(events.sum()),
               "negative_share": float(total["negative"].sum() / events.sum()),
               "level_share": (total["by_level"].sum(0) / events.sum()).tolist()}
    for name, s in sites.items():
        print(f"{name}: positive/step {[round(v) for v in s['positive']]}, negative/step "
              f"{[round(v) for v in s['negative']]}")
    print(f"events per image and step {[round(v) for v in summary['events_per_step']]}, total "
          f"{summary['events']:.0f}; negative {100 * summary['negative_share']:.1f} %")
    print("events per image by level (k = 0: θ ... k = n-1: θ/2^(n-1)), per step:")
    for t, row in enumerate(total["by_level"].tolist(), start=1):
        print(f"  t={t}: {[round(v) for v in row]}")
    print("share by level:", [f"{100 * v:.1f} %" for v in summary["level_share"]],
          f"({time.perf_counter() - started:.0f} s)")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
                                        "summary": summary, "sites": sites}, indent=1) + "\n")


if __name__ == "__main__":
    main()
