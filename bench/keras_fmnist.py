"""A Keras CNN trained on Fashion-MNIST, exported by tf2onnx as Keras users export (channels-last input), for
``snnconvert FILE --input-layout channels-last``.

Runs with a Python that has TensorFlow and tf2onnx (not this project's environment; see
``bench/check_onnx_keras.py`` for the versions)::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2
    /tmp/tfvenv/bin/python bench/keras_fmnist.py /tmp/keras_fmnist.onnx

The model: two blocks of 3x3 conv (SAME), batch norm, ReLU, 2x2 max pool (32 and 64 channels), flatten, a
128-unit Dense with ReLU and a 10-way Dense with softmax, as Keras tutorials write it; Adam, 4 epochs, batch 128, on
the 60 000 training images scaled to [0, 1] (what snnconvert's Fashion-MNIST loader gives), seed 0. It prints the
test accuracy TensorFlow measures; then::

    .venv/bin/snnconvert /tmp/keras_fmnist.onnx --input-layout channels-last --calib-data fashion-mnist \\
        --coding differential
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as an array: images ``[N, 28, 28]`` or labels ``[N]``, uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .onnx file to write")
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    images = {split: read_idx(args.data_dir / f"{prefix}-images-idx3-ubyte.gz")[..., None].astype(np.float32) / 255
              for split, prefix in (("train", "train"), ("test", "t10k"))}
    labels = {split: read_idx(args.data_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
              for split, prefix in (("train", "train"), ("test", "t10k"))}
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        layers.Conv2D(32, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images["train"], labels["train"], batch_size=128, epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(images["test"], labels["test"], batch_size=1000, verbose=0)
    print(f"Keras test accuracy: {100 * accuracy:.2f} %")
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="images"),)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
