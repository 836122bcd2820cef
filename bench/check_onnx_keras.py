"""Keras models as tf2onnx writes them, imported and checked against onnxruntime.

Two steps in two environments (TensorFlow and this project's torch do not share one):

1. export, with a Python that has ``tensorflow-cpu==2.15.1`` and ``tf2onnx==1.16.1`` (Keras 2; tf2onnx does not
   read Keras 3 models): each ``keras.applications`` model with random weights (``weights=None``), at a fixed input
   size (with its classifier, 10 classes) and with dynamic height and width (``include_top=False``, global average
   pooling and a 10-way Dense), opset 17, channels-last input as Keras has it::

       python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2
       /tmp/tfvenv/bin/python bench/check_onnx_keras.py export /tmp/keras_onnx

2. check, with this project's environment: each file imported (``load_onnx``) and run on random images at its
   size, and for the dynamic ones at two sizes of different parity (SAME padding with a stride > 1 then pads
   differently), against onnxruntime (pass: ``max |ours - ort| / max |ort| <= 1e-5``; "not compared" where
   onnxruntime cannot run the file)::

       .venv/bin/python bench/check_onnx_keras.py check /tmp/keras_onnx

   ``--snn-steps T`` also converts each imported file (differential coding, T steps, 8 random channels-last
   calibration images) and reports the SNN's ``max |output - ANN| / max |ANN|`` after 1, 4 and T steps on 8 other
   images (random weights: a check that the converted network approaches the imported one, not of accuracy).

   ``--input-layout channels-last`` imports each file as ``snnconvert --input-layout channels-last`` does (a transpose
   in front of the input: the module takes ``[N, 3, H, W]``), feeds it the channels-first copy of the same images and
   says whether the transpose cancelled against tf2onnx's (``input permute``: ``cancelled`` or ``kept``) and which
   divisor of pixel values the model applies first, for which the command warns that it expects [0, 255]
   (``pixel scale``: ``snnconvert.convert.onnx_layout.pixel_scale``, ``-`` for none).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

#: model name -> the fixed input side it is exported at (InceptionV3 and Xception need at least 75 / 71 pixels)
MODELS = {"MobileNetV2": 64, "MobileNetV3Small": 64, "ResNet50": 64, "ResNet50V2": 64, "EfficientNetB0": 64,
          "EfficientNetV2B0": 64, "DenseNet121": 64, "InceptionV3": 96, "Xception": 96, "VGG16": 64,
          "NASNetMobile": 64, "ConvNeXtTiny": 64}


def export(folder: Path) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    folder.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name, side in MODELS.items():
        factory = getattr(tf.keras.applications, name)
        for dynamic in (False, True):
            shape = (None, None, 3) if dynamic else (side, side, 3)
            try:
                if dynamic:
                    base = factory(input_shape=shape, weights=None, include_top=False, pooling="avg")
                    model = tf.keras.Sequential([base, tf.keras.layers.Dense(10)])
                else:
                    model = factory(input_shape=shape, weights=None, classes=10)
                spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
                path = folder / f"{name}_{'dyn' if dynamic else side}.onnx"
                tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
                print(f"{path.name}: exported", flush=True)
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                failures += 1
                print(f"{name} ({'dynamic' if dynamic else side}): export fails: {str(exc).splitlines()[0][:160]}")
    return 1 if failures else 0


def snn_errors(gm, side: int, steps: int, layout: str) -> str:
    """The converted network's relative distance to the imported one after 1, 4 and ``steps`` steps."""
    import torch

    from snnconvert.convert import ConversionConfig, convert

    generator = torch.Generator().manual_seed(side)
    calib, x = torch.rand(8, side, side, 3, generator=generator), torch.rand(8, side, side, 3, generator=generator)
    if layout == "channels-last":
        calib, x = calib.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2)
    config = ConversionConfig.for_coding("differential", timesteps=steps, input_layout=layout)
    result = convert(gm, forward_loop=[calib], config=config)
    with torch.no_grad():
        ann, out = gm(x), result.snn(x, steps)
    error = [float((o - ann).abs().max() / ann.abs().max()) for o in out]
    return " / ".join(f"{error[t - 1]:.3g}" for t in (1, 4, steps))


def check(folder: Path, snn_steps: int | None = None, layout: str = "channels-first") -> int:
    import numpy as np
    import onnxruntime as ort
    import torch

    from snnconvert.convert.errors import OnnxImportError, UnsupportedOpError
    from snnconvert.convert.onnx_import import load_onnx
    from snnconvert.convert.onnx_layout import pixel_scale

    ort.set_default_logger_severity(3)
    snn_column = f"  SNN err after 1 / 4 / {snn_steps} steps" if snn_steps else ""
    permute_column = f" {'input permute':>13} {'pixel scale':>11}" if layout == "channels-last" else ""
    print(f"{'file':28} {'sizes':>10} {'max rel err':>12} {'s':>5}{permute_column}  result{snn_column}")
    failed = 0
    for path in sorted(folder.glob("*.onnx")):
        started = time.perf_counter()
        stem = path.stem.rsplit("_", 1)
        side = MODELS.get(stem[0], 64)
        sides = [side, side + 3] if stem[1] == "dyn" else [int(stem[1])]
        try:
            gm = load_onnx(path, input_layout=layout)
        except (OnnxImportError, UnsupportedOpError) as exc:
            failed += 1
            print(f"{path.stem:28} {'-':>10} {'-':>12} {time.perf_counter() - started:5.1f}  FAIL import: "
                  f"{str(exc).splitlines()[0][:140]}")
            continue
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        errors, checked, note = [], [], ""
        placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        kept = any(n.target is torch.permute for n in placeholder.users)
        scale = pixel_scale(gm)
        permute = (f" {'kept' if kept else 'cancelled':>13} {'-' if scale is None else f'{scale:.5g}':>11}"
                   if layout == "channels-last" else "")
        for s in sides:
            x = np.random.default_rng(s).random((2, s, s, 3), dtype=np.float32)
            try:
                want = session.run(None, {session.get_inputs()[0].name: x})[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime cannot run the file at this size: nothing to compare
                note += f" (onnxruntime fails at {s}: {str(exc).splitlines()[0][-90:]})"
                continue
            feed = torch.from_numpy(x)
            with torch.no_grad():
                got = gm(feed.permute(0, 3, 1, 2) if layout == "channels-last" else feed).numpy()
            errors.append(float(np.abs(got - want).max() / np.abs(want).max()) if got.shape == want.shape
                          else float("inf"))
            checked.append(s)
        ok = max(errors, default=0.0) <= 1e-5
        failed += not ok
        result = ("pass" if ok else "FAIL") if errors else "not compared"
        if snn_steps and errors:
            try:
                result += f"  {snn_errors(gm, sides[0], snn_steps, layout)}"
            except Exception as exc:  # noqa: BLE001 - reported per file
                failed += 1
                result += f"  conversion FAIL: {str(exc).splitlines()[0][:140]}"
        print(f"{path.stem:28} {','.join(map(str, checked)) or '-':>10} {max(errors, default=float('nan')):12.2e} "
              f"{time.perf_counter() - started:5.1f}{permute}  {result}{note}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("export", "check"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--snn-steps", type=int, help="check: also convert each file and run the SNN this many steps")
    parser.add_argument("--input-layout", default="channels-first", choices=("channels-first", "channels-last"),
                        help="check: import the files with this input layout (channels-last: fed channels-first data)")
    args = parser.parse_args(argv)
    return export(args.folder) if args.step == "export" else check(args.folder, args.snn_steps, args.input_layout)


if __name__ == "__main__":
    sys.exit(main())
