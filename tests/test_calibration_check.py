"""The calibration check (convert/calibrate/check.py): thresholds refitted on other images against the calibrated
ones. Refitting on the calibration images themselves gives back every installed threshold (the check reads what
calibration read), a scaled input scales every threshold of a bias-free network, silent groups that other images
drive are counted, and the CLI prints, reports and can skip the check."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from nets import ClipNet, SpellingsNet, TinyViT

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.calibrate.check import DEFAULT_NOISE, check_thresholds
from snnconvert.convert.errors import CalibrationError, ConfigError


def _batches(x: torch.Tensor, size: int = 16) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def _installed(result) -> dict[str, torch.Tensor]:
    return {name: neuron.threshold.reshape(-1) for name, neuron in result.snn.neurons()}


@pytest.mark.parametrize("net, side, options", [
    (SpellingsNet, 28, {"coding": "rate", "threshold": "99.9%", "granularity": "channel"}),
    (SpellingsNet, 28, {"coding": "differential", "threshold": "iterate", "granularity": "channel"}),
    (SpellingsNet, 28, {"coding": "differential", "threshold": "iterate-reference", "granularity": "layer"}),
    (SpellingsNet, 28, {"coding": "rate", "threshold": "max", "granularity": "neuron"}),
    (SpellingsNet, 28, {"coding": "rate", "threshold": "99%", "granularity": "neuron"}),
    (SpellingsNet, 28, {"coding": "rate", "threshold": "0.5", "granularity": "channel",
                        "threshold_aggregation": "batch-mean"}),
    (ClipNet, 28, {"coding": "differential", "threshold": "99.9%", "granularity": "channel"}),
    (TinyViT, 12, {"coding": "differential", "threshold": "iterate", "granularity": "channel"}),
    (TinyViT, 12, {"coding": "differential", "threshold": "iterate", "granularity": "channel",
                   "token_channel": "tokens", "identity_tail": "upper", "identity_threshold": "max"}),
    (TinyViT, 12, {"coding": "rate", "threshold": "99.9%", "granularity": "layer", "identity_neurons": "all"}),
])
def test_refitting_on_the_calibration_images_gives_back_every_threshold(net, side, options):
    """The check observes the converted graph run as its ANN at the neurons, with calibration's own observers and
    rule: on the calibration images (same batches) it must find the installed thresholds, for every rule,
    granularity, aggregation, bounded-ReLU upper sites and identity sites (token tensors, both channel dims)."""
    torch.manual_seed(0)
    x = torch.rand(48, 1, side, side)
    config = ConversionConfig.for_coding(timesteps=4, **options)
    result = convert(net().eval(), forward_loop=_batches(x), config=config)
    check = check_thresholds(result.snn, result.config, _batches(x))
    installed = _installed(result)
    assert [s["site"] for s in check.sites] == list(installed) and check.images == 48
    kinds = {s["site"]: s["kind"] for s in check.sites}
    assert kinds == {s["site"]: s["kind"] for s in result.calibration.sites}  # identity sites told apart
    assert "identity" in kinds.values() if net is TinyViT else "relu" in kinds.values()
    for entry in check.sites:
        positive = int((installed[entry["site"]] > 0).sum())
        assert entry["compared"] == positive and entry["newly_active"] == 0
        if positive:
            assert entry["ratio_min"] == pytest.approx(1, abs=1e-6) and entry["ratio_max"] == pytest.approx(1, abs=1e-6)
    assert not check.flagged
    assert check.summary().startswith("calibration check: thresholds refitted on 48 images")


@pytest.mark.parametrize("threshold", ["iterate", "99.9%", "max"])
def test_a_scaled_input_scales_every_threshold_and_is_flagged(threshold):
    """A network without biases is positively homogeneous: twice the input gives twice every activation, so every
    refitted threshold is twice the calibrated one (iteration: mean and spread double, and so does the root)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, bias=False),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 11 * 11, 6, bias=False), nn.ReLU(),
                        nn.Linear(6, 3, bias=False)).eval()
    x = torch.randn(64, 1, 28, 28)
    config = ConversionConfig.for_coding("differential", timesteps=4, threshold=threshold)
    result = convert(net, forward_loop=_batches(x), config=config)
    check = check_thresholds(result.snn, result.config, _batches(2 * x), noise=0)  # 10 % whatever the count
    assert len(check.sites) == 3 and len(check.flagged) == 3 and check.applied_tolerance == 0.1
    for entry in check.sites:
        assert entry["ratio_min"] == pytest.approx(2, rel=1e-5) and entry["ratio_max"] == pytest.approx(2, rel=1e-5)
    text = check.summary("evaluation images")
    assert text.startswith("warning: thresholds refitted on 64 evaluation images differ from the calibrated ones by "
                           "more than 10 % at 3 of 3 sites (largest change ")
    assert "x2.00" in text and "calibrate on images from the same source and preprocessing" in text
    # within a wider tolerance nothing is flagged; the same images as reference: the ratios are 1 again
    assert not check_thresholds(result.snn, result.config, _batches(2 * x), tolerance=1.5).flagged
    # by default 64 images widen the tolerance to 1 / sqrt(64) = 12.5 %: a doubling is still flagged
    widened = check_thresholds(result.snn, result.config, _batches(2 * x))
    assert widened.applied_tolerance == pytest.approx(0.125) and len(widened.flagged) == 3
    assert "by more than 12.5 % (the sampling noise of 64 images) at 3 of 3 sites" in widened.summary()
    same = check_thresholds(result.snn, result.config, _batches(2 * x), reference=_batches(2 * x))
    assert same.reference_images == 64 and not same.flagged
    assert all(s["ratio"] == pytest.approx(1, abs=1e-6) for s in same.sites)
    assert "those of 64 calibration images" in same.summary()


def test_groups_silent_at_calibration_that_other_images_drive_are_counted():
    """A channel whose input is never positive on the calibration images gets threshold 0 and never fires; images
    that drive it are counted as newly active, whatever the ratios of the other channels say."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    calib = torch.rand(32, 1, 1, 1) + 0.1  # channel 1 (weight -1) silent
    config = ConversionConfig.for_coding("rate", timesteps=4, threshold="max")
    result = convert(net, forward_loop=[calib], config=config)
    assert _installed(result)[next(iter(_installed(result)))].tolist()[1] == 0
    other = torch.cat([calib, -calib])  # channel 0 as before, channel 1 now driven
    check = check_thresholds(result.snn, result.config, [other])
    (entry,) = check.sites
    assert entry["compared"] == 1 and entry["newly_active"] == 1 and entry["ratio"] == pytest.approx(1)
    assert not check.flagged and check.newly_active == 1
    assert "1 neuron group(s) silent on the calibration images (threshold 0) would be active on these" in \
        check.summary()


@pytest.mark.parametrize("threshold", ["max", "99.9%", "iterate"])
def test_the_tolerance_widens_with_few_images(threshold):
    """Thresholds refitted on N images move by sampling alone, by up to about 1 / sqrt(N) on the zoo CNNs
    (BENCHMARKS.md): the applied tolerance is the larger of 10 % and c / sqrt(N). A bias-free network scales every
    threshold with its input, so a 1.2x input moves every ratio by exactly 20 %: within the tolerance of 8 images
    (35 %), beyond that of 64 (12.5 %) and beyond a fixed 10 % at any N; a 3x input is flagged at 8 images too."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 13 * 13, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).eval()
    x = torch.randn(64, 1, 28, 28)
    config = ConversionConfig.for_coding("differential", timesteps=4, threshold=threshold)
    result = convert(net, forward_loop=_batches(x), config=config)
    for n, flagged in ((8, False), (64, True)):
        few, reference = 1.2 * x[:n], x[:n]  # against as many calibration images, as the CLI does
        check = check_thresholds(result.snn, result.config, [few], reference=[reference])
        assert check.applied_tolerance == pytest.approx(max(0.1, DEFAULT_NOISE / math.sqrt(n)))
        assert all(s["ratio"] == pytest.approx(1.2, rel=1e-5) for s in check.sites)
        assert bool(check.flagged) == flagged, (n, check.sites)
        assert check.to_dict()["applied_tolerance"] == check.applied_tolerance
        assert len(check_thresholds(result.snn, result.config, [few], reference=[reference], noise=0).flagged) == 2
    check = check_thresholds(result.snn, result.config, [1.2 * x[:8]], reference=[x[:8]])
    assert ("agree with those of 8 calibration images within 35.4 % (the sampling noise of 8 images) at every "
            "site") in check.summary()
    assert len(check_thresholds(result.snn, result.config, [3 * x[:8]], reference=[x[:8]]).flagged) == 2


def test_bad_use_is_one_clear_error():
    torch.manual_seed(2)
    x = torch.rand(16, 1, 28, 28)
    result = convert(SpellingsNet().eval(), forward_loop=[x],
                     config=ConversionConfig.for_coding("rate", timesteps=2, granularity="channel"))
    for tolerance in (0, -1, math.inf, float("nan"), "10%"):
        with pytest.raises(ConfigError, match="tolerance must be a positive number"):
            check_thresholds(result.snn, result.config, [x], tolerance=tolerance)
    for noise in (-0.5, math.inf, "1"):
        with pytest.raises(ConfigError, match="noise must be a number >= 0"):
            check_thresholds(result.snn, result.config, [x], noise=noise)
    layer = ConversionConfig.for_coding("rate", timesteps=2, granularity="layer")
    with pytest.raises(ConfigError, match=r"installed threshold\(s\) but 1 group\(s\) per layer; check with the "
                                          "configuration the network was converted with"):
        check_thresholds(result.snn, layer, [x])
    # another coding's configuration, or (threshold iteration fits to T and n) another T or n: every site would be
    # flagged as a shift of the images
    diff = convert(SpellingsNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential",
                                                                                              timesteps=2))
    for other, says in ((result.config, "coding 'rate', the network's 'differential'"),
                        (diff.config.replace(timesteps=8), "T = 8, the network's 2"),
                        (diff.config.replace(levels=3), "levels 3, the network's 4")):
        with pytest.raises(ConfigError, match=f"the calibration check's configuration is not the network's "
                                              rf"\({says}\): give the configuration it was converted with"):
            check_thresholds(diff.snn, other, [x])
    assert check_thresholds(result.snn, result.config.replace(timesteps=8), [x]).flagged == []  # 99.9%: no T in it
    with pytest.raises(ConfigError, match="calibration needs data"):
        check_thresholds(result.snn, result.config, None)
    with pytest.raises(CalibrationError, match="no calibration data"):
        check_thresholds(result.snn, result.config, [])
    bad = x.clone()
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(CalibrationError, match=r"non-finite activation value\(s\) on the given images; check the "
                                               "given images for NaN or inf"):
        check_thresholds(result.snn, result.config, [bad])
    # the check leaves the network as it was: no hooks, the same outputs
    assert all(not n._forward_hooks and not n._forward_pre_hooks for _, n in result.snn.neurons())


def _fmnist_npz(path, images: np.ndarray, labels: np.ndarray) -> str:
    np.savez(path, x=images, y=labels)
    return f"npz:{path}"


def test_cli_prints_reports_and_can_skip_the_check(tmp_path, fmnist_test):
    """The default run checks on as many evaluation images as were calibrated on (here fewer: against as many
    calibration images); evaluation images with another contrast are flagged; --no-calibration-check skips it."""
    from test_cli import NETS, _run

    report, markdown = tmp_path / "r.json", tmp_path / "r.md"
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--calib-images", 200, "--eval-images",
                  100, "-T", 2, "--report", report, "--markdown", markdown)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    doc = json.loads(report.read_text())["calibration_check"]
    assert doc["images"] == 100 and doc["reference_images"] == 100 and len(doc["sites"]) == 6
    assert "calibration check: thresholds refitted on 100 evaluation images (99.9% per channel) agree with those " \
           "of 100 calibration images within 10 % at every site" in text
    md = markdown.read_text()
    assert "refitted on evaluation images (median ratio)" in md and "0 of 6 sites differ by more than 10 %" in md
    # 16 evaluation images: the tolerance widens to 1 / sqrt(16) = 25 % (said on the console and in both reports)
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--calib-images", 200, "--eval-images",
                  16, "-T", 2, "--report", report, "--markdown", markdown)
    assert result.exit_code == 0, result.output
    assert "within 25 % (the sampling noise of 16 images)" in " ".join(result.output.split())
    assert json.loads(report.read_text())["calibration_check"]["applied_tolerance"] == pytest.approx(0.25)
    assert "differ by more than 25 % (10 % widened for the sampling noise of 16 images)" in markdown.read_text()

    images = np.round(fmnist_test.images[:300].numpy() * 127.5).astype(np.uint8)  # half the contrast
    shifted = _fmnist_npz(tmp_path / "dim.npz", images[:, 0], fmnist_test.labels[:300].numpy())
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", shifted, "--calib-images",
                  200, "-T", 2, "--report", report)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    doc = json.loads(report.read_text())["calibration_check"]
    assert doc["images"] == 200 and doc["reference_images"] is None and doc["flagged"] >= 1
    assert f"warning: thresholds refitted on 200 evaluation images differ from the calibrated ones by more than " \
           f"10 % at {doc['flagged']} of 6 sites" in text

    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--calib-images", 64, "--eval-images", 32,
                  "-T", 2, "--no-calibration-check", "--report", report)
    assert result.exit_code == 0, result.output
    assert "calibration check" not in result.output and json.loads(report.read_text())["calibration_check"] is None


def test_a_saved_snn_is_checked_against_its_calibration_images_when_they_are_at_hand(tmp_path, fmnist_train,
                                                                                     fmnist_test):
    """Evaluated again on fewer images than it was calibrated on, a saved SNN is checked against as many of its
    calibration images, read again; when they are gone, the check is skipped with a note, and the run goes on."""
    from test_cli import NETS, _run

    def uint8(ds, n):
        return np.round(ds.images[:n, 0].numpy() * 255).astype(np.uint8), ds.labels[:n].numpy()

    (xa, ya), (xb, yb) = uint8(fmnist_train, 120), uint8(fmnist_test, 60)
    data = tmp_path / "two_splits.npz"
    np.savez(data, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    saved = tmp_path / "snn"
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", f"npz:{data}", "--calib-images", 100, "-T", 2,
                  "--output", saved)
    assert result.exit_code == 0, result.output
    assert "thresholds refitted on 60 evaluation images" in " ".join(result.output.split())  # 60 of 100

    result = _run(saved, "--eval-images", 40)
    assert result.exit_code == 0, result.output
    assert "agree with those of 40 calibration images" in " ".join(result.output.split())

    data.unlink()
    result = _run(saved, "--eval-data", "fashion-mnist", "--eval-images", 40)
    assert result.exit_code == 0, result.output
    assert ("calibration check skipped: 40 evaluation images, fewer than the 100 calibrated on, and the calibration "
            "images are not loaded") in " ".join(result.output.split())
    result = _run(saved, "--eval-data", "fashion-mnist", "--eval-images", 100)  # as many: the installed thresholds
    assert result.exit_code == 0, result.output
    assert "thresholds refitted on 100 evaluation images (99.9% per channel) agree with the calibrated ones" in \
        " ".join(result.output.split())


def test_a_failed_check_leaves_the_evaluation_and_its_report(tmp_path, monkeypatch):
    """The check runs after the evaluation: when it fails (here: made to), the run still exits 0 with its report
    and says why the check is missing."""
    from test_cli import NETS, _run

    import snnconvert.convert.calibrate.check as check_module

    def fail(*args, **kwargs):
        raise CalibrationError("site relu: 3 non-finite activation value(s) on the given images")

    monkeypatch.setattr(check_module, "check_thresholds", fail)
    report = tmp_path / "r.json"
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--calib-images", 32, "--eval-images", 32,
                  "-T", 2, "--report", report)
    assert result.exit_code == 0, result.output
    assert "calibration check failed: site relu: 3 non-finite activation value(s) on the given images" in \
        " ".join(result.output.split())
    doc = json.loads(report.read_text())
    assert doc["calibration_check"] is None and len(doc["snn_accuracy"]) == 2


def test_the_ceiling_neurons_of_bounded_relus_are_reported_but_never_flagged():
    """``relu(x - 6)`` of a decomposed ReLU6 (and of Hardtanh / clamp) fires only on the rare inputs above the
    ceiling: its max or 99.9 % threshold varies from sample to sample without any shift (fmnist-mobilenet: ratios
    down to 0 on unshifted test images; BENCHMARKS.md), so it never raises the warning; the ReLU part still does."""
    from snnconvert.runtime.report_md import _refit_text

    torch.manual_seed(3)
    x = torch.rand(48, 1, 28, 28)
    result = convert(ClipNet().eval(), forward_loop=_batches(x),
                     config=ConversionConfig.for_coding("rate", timesteps=2, threshold="max"))
    check = check_thresholds(result.snn, result.config, _batches(3 * x))
    upper = {s["site"] for s in check.sites if s["upper_clip"]}
    assert upper and upper == {s["site"] for s in check.sites if s["site"].endswith("_hi")}
    assert check.flagged and not any(s["flagged"] for s in check.sites if s["upper_clip"])
    assert check.largest["site"] not in upper
    ceiling = next(s for s in check.sites if s["upper_clip"] and s["ratio"] is not None)
    assert _refit_text(ceiling).endswith("ceiling of a bounded ReLU: not flagged")
