"""NIR export on the whole Fashion-MNIST test split: the exported file, read back and run in discrete time
(``snnconvert.runtime.nir.run_nir``), against the converted SNN it came from.

For each zoo model and neuron setting, the model is converted with rate coding (1 000 training images, the preset's
thresholds), exported (``--nir-host-prefix`` semantics for models whose stem ends in a max-pool), written and read
back, and both the SNN (reference runtime) and the read-back graph are evaluated on the test images for T steps.
Reported: the graph's size, the file size, both accuracies after T steps, the images whose top-1 differs, the largest
decoded-output difference, and the two wall times (the NIR runner is a plain node-by-node interpreter).

    .venv/bin/python bench/nir_export.py --out bench/results/nir_export.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nir
import numpy as np
import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime.data import load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory
from snnconvert.runtime.nir import host_input, run_nir, to_nir, write_nir

SETTINGS = {"if": {"neuron": "if"}, "mt4": {"neuron": "mt", "levels": 4}}


def hard_reset(graph):
    """The same graph with every IF site written as NIR's hard-reset ``IF`` (v from 0, fires at v >= θ, then v = 0),
    as an exporter that maps reset by subtraction onto NIR's IF writes it (users.md §1.1: SpikingJelly's export)."""
    nodes, edges = dict(graph.nodes), list(graph.edges)
    for site in [n[:-2] for n in graph.nodes if n.endswith(".u")]:
        if f"{site}.fire1" in nodes or f"{site}.fire0n" in nodes:
            raise SystemExit("the hard-reset comparison covers single-threshold (IF) sites only")
        u, fire, out, reset = (f"{site}.{k}" for k in ("u", "fire0", "out0", "reset0"))
        theta = nodes[out].scale
        nodes[f"{site}.if"] = nir.IF(r=nodes[u].r, v_threshold=np.nextafter(theta, np.float32(-np.inf)),
                                     v_reset=np.zeros_like(theta))
        edges = [(s, f"{site}.if") if d == u and s != reset else (f"{site}.if", d) if s == fire and d == out
                 else (s, d) for s, d in edges if (s, d) not in ((u, fire), (fire, reset), (reset, u))]
        for k in (u, fire, reset):
            del nodes[k]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    parser.add_argument("--settings", default="if,mt4")
    parser.add_argument("--timesteps", type=int, default=16)
    parser.add_argument("--calib-images", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.out is not None:  # the folder first: a missing one would fail after the work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    torch.set_grad_enabled(False)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test").subset(args.eval_images)
    calib = [x for x, _ in train.subset(args.calib_images).batches(256)]
    T, rows = args.timesteps, []
    for name in args.models.split(","):
        model = models_zoo.get_model(name)
        for setting in args.settings.split(","):
            cfg = ConversionConfig.for_coding("rate", timesteps=T, **SETTINGS[setting])
            snn = convert(model, forward_loop=calib, config=cfg).snn
            prefix = name == "fmnist-resnet"  # its stem max-pool has no NIR primitive
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "net.nir"
                graph = write_nir(to_nir(snn, calib[0], host_prefix=prefix), path)
                size = path.stat().st_size
            hard = hard_reset(graph) if setting == "if" else None
            snn_ok = nir_ok = differ = hard_ok = 0
            max_abs = snn_s = nir_s = 0.0
            for x, y in test.batches(500):
                t0 = time.perf_counter()
                want = snn(x, T)
                t1 = time.perf_counter()
                feed = host_input(snn, x) if prefix else x
                got = snn.coding.decode(run_nir(graph, feed.unsqueeze(0).expand(T, *feed.shape)))
                t2 = time.perf_counter()
                snn_s, nir_s = snn_s + t1 - t0, nir_s + t2 - t1
                if hard is not None:
                    raw = run_nir(hard, feed.unsqueeze(0).expand(T, *feed.shape))
                    hard_ok += int((snn.coding.decode(raw)[-1].argmax(1) == y).sum())
                a, b = want[-1].argmax(1), got[-1].argmax(1)
                snn_ok += int((a == y).sum())
                nir_ok += int((b == y).sum())
                differ += int((a != b).sum())
                max_abs = max(max_abs, float((got - want).abs().max()))
            row = {"model": name, "setting": setting, "timesteps": T, "host_prefix": prefix,
                   "nodes": len(graph.nodes), "edges": len(graph.edges), "file_bytes": size,
                   "snn_accuracy": snn_ok / len(test), "nir_accuracy": nir_ok / len(test), "top1_differs": differ,
                   "max_abs_decoded_difference": max_abs, "snn_seconds": round(snn_s, 1),
                   "nir_seconds": round(nir_s, 1), "images": len(test),
                   "hard_reset_accuracy": None if hard is None else hard_ok / len(test)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| model | neurons | T | NIR nodes / edges | file | SNN % | NIR graph % | top-1 differs | max decoded diff |"
          " SNN s | NIR runner s | hard-reset IF graph % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hard = "—" if r["hard_reset_accuracy"] is None else f"{100 * r['hard_reset_accuracy']:.2f}"
        print(f"| {r['model']}{' (host prefix)' if r['host_prefix'] else ''} | {r['setting']} | {r['timesteps']} | "
              f"{r['nodes']} / {r['edges']} | {r['file_bytes'] / 1e6:.1f} MB | {100 * r['snn_accuracy']:.2f} | "
              f"{100 * r['nir_accuracy']:.2f} | {r['top1_differs']} | {r['max_abs_decoded_difference']:.2g} | "
              f"{r['snn_seconds']} | {r['nir_seconds']} | {hard} |")
    if args.out:
        args.out.write_text(json.dumps({"images": len(test), "calib_images": args.calib_images, "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
