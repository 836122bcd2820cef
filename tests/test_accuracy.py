"""End-to-end accuracy on real Fashion-MNIST (full 10k test split; calibration on 5 000 train images).

Marked slow: they run in CI (`make test`) but can be deselected with `-m "not slow"`. Figures and commands are in
BENCHMARKS.md.
"""
from __future__ import annotations

import pytest
import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime import evaluate

pytestmark = pytest.mark.slow


def _convert_and_eval(name, cfg, train, test, batch_steps=2048):
    model = models_zoo.get_model(name)
    calib = train.subset(5000)
    res = convert(model, forward_loop=lambda m: [m(x) for x, _ in calib.batches(500)], config=cfg)
    with torch.no_grad():
        ev = evaluate(res.snn, test.batches(max(1, batch_steps // cfg.timesteps)), ann=model)
    return ev


def test_rate_vgg_per_channel_999_within_1pp_at_T64(fmnist_train, fmnist_test):
    ev = _convert_and_eval("fmnist-vgg", ConversionConfig.for_coding("rate", timesteps=64), fmnist_train, fmnist_test)
    assert ev.images == 10000
    assert ev.ann_accuracy >= 0.90
    gap = ev.ann_accuracy - ev.snn_accuracy[-1]
    assert gap <= 0.010, f"ANN {ev.ann_accuracy:.4f} SNN {ev.snn_accuracy[-1]:.4f}"
    # the accuracy curve climbs: far better at T=64 than after one step
    assert ev.snn_accuracy[-1] > ev.snn_accuracy[0]
