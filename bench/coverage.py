"""Which torchvision classification architectures convert, and how: one row per family.

Each model is built with random weights (no download), its BatchNorm statistics set by three training-mode passes
on random images, then converted with the differential preset (T = 4; calibration on 32 random images) through the
torch.fx front end. A row gives: converted or refused (with the first line of the reason), ReLU sites (spiking
neurons), identity-neuron sites (signed neurons in front of layers that would read dense values, method.md §4.7;
the default ``identity_neurons="auto"``), graded units by kind (dense outputs, method.md §5), the share of the
ANN's MACs in layers fed by analog or dense inputs (counted as MACs by the extended energy metric; the first
layer's share included), and the largest
difference between the converted graph run as an ANN (``snn.ann_forward``) and the model, relative to the largest
output (fp32 rounding of BatchNorm folding; random-weight outputs can be large).

    .venv/bin/python bench/coverage.py --out bench/results/coverage.json

Structure only: random weights say nothing about accuracy (the zoo models on Fashion-MNIST do, BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import UnsupportedOpError
from snnconvert.runtime.energy import SynapticOpCounter

FAMILIES = ["alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "squeezenet1_1",
            "googlenet", "inception_v3", "mobilenet_v2", "mnasnet0_5", "regnet_x_400mf", "shufflenet_v2_x0_5",
            "mobilenet_v3_small", "mobilenet_v3_large", "regnet_y_400mf", "efficientnet_b0", "efficientnet_v2_s",
            "convnext_tiny", "swin_t", "vit_b_16"]


def build(name: str, side: int):
    import torchvision.models as tvm

    kwargs = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    if name == "vit_b_16":
        kwargs["image_size"] = side
    model = getattr(tvm, name)(**kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, side, side))
    return model.eval()


def row(name: str, side: int) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(name, side)
    x = torch.rand(32, 3, side, side)
    try:
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4),
                      example_inputs=x[:1])
    except UnsupportedOpError as err:
        kinds = sorted({n.module_type or n.target.rsplit(".", 1)[-1] for n in err.nodes})
        why = "no ReLU: " if "no ReLU" in str(err) else "unsupported: "
        return {"model": name, "converts": False, "reason": f"{why}{len(err.nodes)} node(s) ({', '.join(kinds)})",
                "seconds": round(time.perf_counter() - start, 1)}
    counts = res.report.entry("replace_activations").counts
    units = {k[len("GradedUnit("):-1]: v for k, v in counts.items() if k.startswith("GradedUnit(")}
    counter = SynapticOpCounter(res.snn, 1)  # dense MACs per layer and each layer's input kind
    res.snn(x[:1], 1)
    counter.close()
    tot, kinds = counter.counts.tot, counter.counts.kinds
    analog = sum(v for k, v in tot.items() if kinds.get(k) == "analog")
    with torch.no_grad():
        ref = model(x[:4])
        diff = ((res.snn.ann_forward(x[:4]) - ref).abs().max() / ref.abs().max()).item()
    identity = res.calibration.count("identity")
    return {"model": name, "converts": True, "relu_sites": len(res.thresholds) - identity,
            "identity_sites": identity, "graded_units": units,
            "analog_mac_share": analog / sum(tot.values()), "ann_forward_max_rel_diff": diff,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FAMILIES), help="comma list of torchvision model names")
    parser.add_argument("--side", type=int, default=64, help="input image side (inception_v3 needs >= 75)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    print("| model | converts | ReLU sites | identity sites | graded units (dense outputs) | MACs fed by analog/dense "
          "inputs | converted graph as ANN vs model: max |diff| / max |output| |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = row(name, max(args.side, 80) if name == "inception_v3" else args.side)
        rows.append(r)
        if r["converts"]:
            units = ", ".join(f"{k} ×{v}" for k, v in r["graded_units"].items()) or "—"
            print(f"| {name} | yes | {r['relu_sites']} | {r['identity_sites']} | {units} | "
                  f"{100 * r['analog_mac_share']:.1f} % | "
                  f"{r['ann_forward_max_rel_diff']:.1e} |", flush=True)
        else:
            print(f"| {name} | no | | | | | {r['reason']} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
