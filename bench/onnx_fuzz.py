"""Differential fuzz of the ONNX importer against onnxruntime (and the ONNX reference implementation).

Random single-node models of one family at a time, with random attributes and sizes:

- ``resize``: ``Resize`` in every mode (nearest / linear / cubic), every coordinate transformation but
  ``tf_crop_and_resize``, every rounding, ``cubic_coeff_a`` -0.75 / -0.5, ``exclude_outside``, 1-3 spatial dims,
  output sizes from ``sizes`` or ``scales``;
- ``pool``: ``AveragePool`` / ``MaxPool`` with random kernels, strides, pads, ``ceil_mode``, ``count_include_pad``,
  static or dynamic spatial sizes;
- ``same``: ``Conv`` / ``MaxPool`` / ``AveragePool`` (counting pads) with ``auto_pad=SAME_*`` on dynamic spatial
  sizes, each model run at three sizes (no dilations: onnxruntime leaves them out of SAME's pads, onnxruntime's
  Conv refuses them, and ``onnx.reference`` puts SAME_LOWER's odd pad at the end for a dilated MaxPool; the importer
  follows the spec's formula, as shape inference does).

Each case is imported (``load_onnx``) and run on a random input; it is *equal* when it matches onnxruntime
(``rtol = 1e-4``, ``atol = 1e-4``, same shape), *spec* when it differs from onnxruntime but matches
``onnx.reference`` (onnxruntime departs from the spec there), *refused* when the importer lists the node as
unsupported, *skipped* when onnxruntime refuses the model or gives an empty output, and *differs* otherwise (an
import error, a run-time error or other values; printed).
A case of the ``same`` family is equal when all three sizes are.

Usage::

    python bench/onnx_fuzz.py                        # 600 cases per family, seed 0
    python bench/onnx_fuzz.py --families resize --cases 2000 --seed 3 --json bench/results/onnx_fuzz.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort
import torch

from snnconvert.convert.errors import OnnxImportError, UnsupportedOpError
from snnconvert.convert.onnx_import import load_onnx

Case = tuple[str, dict, list]  # graph text, initializers, input arrays


def model_from_text(graph: str, opset: int, initializers: dict) -> onnx.ModelProto:
    ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    model = onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{graph}')
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    for name, array in initializers.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    return onnx.shape_inference.infer_shapes(model)


def resize_case(rng: np.random.Generator) -> Case:
    mode = str(rng.choice(["nearest", "linear", "cubic"]))
    ctm = str(rng.choice(["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                          "half_pixel_symmetric"]))
    nd = int(rng.integers(1, 3 if mode == "cubic" else 4))
    spatial = [int(rng.integers(1, 8)) for _ in range(nd)]
    attrs = [f'mode="{mode}"', f'coordinate_transformation_mode="{ctm}"']
    if mode == "cubic":
        attrs += [f"cubic_coeff_a={rng.choice([-0.75, -0.5])}"] + (["exclude_outside=1"] if rng.random() < 0.3 else [])
    if mode == "nearest":
        attrs.append(f'nearest_mode="{rng.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])}"')
    dims = ",".join(map(str, [2, 3, *spatial]))
    if rng.random() < 0.5:
        inits = {"sz": np.array([2, 3, *[int(rng.integers(1, 12)) for _ in range(nd)]], np.int64)}
        call = "(x, , , sz)"
    else:
        factors = [float(rng.choice([0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0])) for _ in range(nd)]
        inits = {"roi": np.zeros(0, np.float32), "sc": np.array([1, 1, *factors], np.float32)}
        call = "(x, roi, sc)"
    text = f'g (float[{dims}] x) => (float y) {{ y = Resize <{", ".join(attrs)}> {call} }}'
    return text, inits, [rng.standard_normal((2, 3, *spatial)).astype(np.float32)]


def pool_case(rng: np.random.Generator) -> Case:
    nd, op = int(rng.integers(1, 4)), str(rng.choice(["AveragePool", "MaxPool"]))
    kernel = [int(rng.integers(1, 5)) for _ in range(nd)]
    strides = [int(rng.integers(1, 4)) for _ in range(nd)]
    sizes = [int(rng.integers(1, 7)) for _ in range(nd)]
    pads = [int(rng.integers(0, k)) for k in kernel] + [int(rng.integers(0, k)) for k in kernel]
    dims = ",".join(f"S{i}" if rng.random() < 0.3 else str(n) for i, n in enumerate(sizes))
    attrs = f"kernel_shape={kernel}, strides={strides}, pads={pads}, ceil_mode={int(rng.integers(0, 2))}"
    if op == "AveragePool":
        attrs += f", count_include_pad={int(rng.integers(0, 2))}"
    text = f"g (float[N,2,{dims}] x) => (float y) {{ y = {op} <{attrs}> (x) }}"
    return text, {}, [rng.standard_normal((2, 2, *sizes)).astype(np.float32)]


def same_case(rng: np.random.Generator) -> Case:
    nd, op = int(rng.integers(1, 4)), str(rng.choice(["Conv", "MaxPool", "AveragePool"]))
    kernel = [int(rng.integers(1, 5)) for _ in range(nd)]
    attrs = (f"kernel_shape={kernel}, strides={[int(rng.integers(1, 4)) for _ in range(nd)]}, "
             f'auto_pad="{rng.choice(["SAME_UPPER", "SAME_LOWER"])}"')
    inits: dict = {}
    if op == "AveragePool":
        attrs += ", count_include_pad=1"
    if op == "Conv":
        inits = {"w": rng.standard_normal((3, 2, *kernel)).astype(np.float32),
                 "b": rng.standard_normal(3).astype(np.float32)}
    dims = ",".join(f"S{i}" for i in range(nd))
    args = "(x, w, b)" if op == "Conv" else "(x)"
    text = f"g (float[N,2,{dims}] x) => (float y) {{ y = {op} <{attrs}> {args} }}"
    inputs = [rng.standard_normal((2, 2, *[int(rng.integers(1, 9)) for _ in range(nd)])).astype(np.float32)
              for _ in range(3)]
    return text, inits, inputs


FAMILIES: dict[str, tuple[Callable[[np.random.Generator], Case], int]] = {
    "resize": (resize_case, 19), "pool": (pool_case, 19), "same": (same_case, 17)}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-4))


def run_family(name: str, cases: int, seed: int, log=print) -> Counter:
    """Counts of the outcomes of ``cases`` random models of family ``name`` (``refusals``: the reasons given)."""
    make, opset = FAMILIES[name]
    ort.set_default_logger_severity(4)  # the forms onnxruntime refuses are counted, not logged
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    reasons: Counter = Counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for _ in range(cases):
        text, inits, inputs = make(rng)
        model = model_from_text(text, opset, inits)
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            expected = [session.run(None, {"x": x})[0] for x in inputs]
        except Exception:  # noqa: BLE001 - onnxruntime refuses the form: nothing to compare with
            counts["skipped"] += 1
            continue
        if any(e.size == 0 for e in expected):
            counts["skipped"] += 1
            continue
        try:
            gm = load_onnx(model)
        except UnsupportedOpError as err:
            counts["refused"] += 1
            found = re.search(r"\(\w+\): (.*?)(?: \(|\.?$)", str(err), re.MULTILINE)
            reasons[re.sub(r"-?\d+(\.\d+)?", "#", found.group(1)) if found else "unsupported op"] += 1
            continue
        except OnnxImportError as err:  # a form onnxruntime runs that the importer fails on: a finding
            counts["differs"] += 1
            log(f"DIFFERS {text}: import error {str(err).splitlines()[0][:200]}")
            continue
        status = "equal"
        for x, want in zip(inputs, expected, strict=True):
            try:
                with torch.no_grad():
                    got, error = gm(torch.from_numpy(x)).numpy(), ""
            except Exception as err:  # noqa: BLE001 - a run-time failure is a finding
                got, error = None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            if got is not None and close(got, want):
                continue
            reference = onnx.reference.ReferenceEvaluator(model).run(None, {"x": x})[0]
            if got is not None and close(got, reference):
                status = "spec"
                continue
            if got is None and reference.size == 0:  # the spec's output is empty, onnxruntime computes one window
                status = "empty"
                continue
            status = "differs"
            log(f"DIFFERS {text} input {list(x.shape)}: {error or f'shape {got.shape} vs {want.shape}'}")
            break
        counts[status] += 1
    for reason, n in reasons.most_common():
        log(f"refused {n:5d}: {reason}")
    counts["refusals"] = dict(reasons.most_common())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {}
    print(f"{'family':8} {'cases':>6} {'equal':>6} {'spec':>5} {'refused':>8} {'skipped':>8} {'differs':>8}")
    for name in args.families.split(","):
        counts = run_family(name, args.cases, args.seed)
        results[name] = {"cases": args.cases, "seed": args.seed, **counts}
        print(f"{name:8} {args.cases:>6} {counts['equal']:>6} {counts['spec']:>5} {counts['refused']:>8} "
              f"{counts['skipped']:>8} {counts['differs']:>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r.get("differs") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
