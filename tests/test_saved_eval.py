"""``snnconvert SNN_DIR``: a saved SNN (``--output``) and its ANN evaluated again without calibration, on the images
and with the preprocessing recorded at conversion; conversion options refused; ``runtime.load_result``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import BoxNet, SpellingsNet
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.artifact import ModelSource
from snnconvert.runtime import load, load_result

NETS = str(Path(__file__).parent / "nets.py")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(result, code=2) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """BoxNet converted (differential, T = 6) on a one-split pool of 96 images with float targets, normalised,
    evaluated on 50 images: the first conversion's report, the artifact folder and the data file."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    x = torch.rand(96, 1, 12, 12)
    with torch.no_grad():
        y = BoxNet()((x - 0.3) / 0.2) + 0.05 * torch.randn(96, 4)
    data = root / "pool.npz"
    np.savez(data, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy())
    report, snn = root / "first.json", root / "snn"
    cwd = os.getcwd()
    os.chdir(root)  # the data given by a relative path
    try:
        result = _run(f"{NETS}:BoxNet", "--coding", "differential", "-T", 6, "--calib-data", data.name,
                      "--eval-data", data.name,
                      "--calib-images", 40, "--eval-images", 50, "--normalize", "0.3,0.2", "--report", report,
                      "--output", snn)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text()), snn, data, root


def test_a_saved_snn_evaluates_as_at_conversion(saved):
    first, snn, data, root = saved
    again = root / "again.json"
    result = _run(snn, "--report", again)  # from another working directory: the data path was recorded absolute
    assert result.exit_code == 0, result.output
    doc = json.loads(again.read_text())
    # the same 50 images (of the 56 left after the pool's 40 calibration images), normalised the same way: the same
    # figures
    assert doc["data"]["evaluation"]["dataset"] == f"npz:{data.resolve()}" and doc["eval_images"] == 50
    for part in ("calibration", "evaluation"):
        assert {k: v for k, v in doc["data"][part].items() if k != "dataset"} == \
            {k: v for k, v in first["data"][part].items() if k != "dataset"}
    for key in ("ann_mse", "snn_mse", "ann_mae", "snn_mae", "events", "synaptic_ops", "thresholds", "config"):
        assert doc[key] == first[key], key
    assert doc["model"] == f"{snn} (saved SNN of {NETS}:BoxNet)"


def test_other_steps_backend_and_images(saved):
    first, snn, _, root = saved
    longer = root / "longer.json"
    from snnconvert.runtime.kernels.native import native_status

    backend = "native" if native_status("cpu")[0] else "torch"  # another backend than at conversion, where there is
    result = _run(snn, "-T", 8, "--backend", backend, "--eval-images", 20, "--report", longer)
    assert result.exit_code == 0, result.output
    assert "the thresholds were fitted for T=6; running T=8" in " ".join(result.output.split())
    doc = json.loads(longer.read_text())
    assert doc["timesteps"] == 8 and len(doc["snn_mse"]) == 8 and doc["eval_images"] == 20
    assert doc["thresholds"]["fitted_for"]["timesteps"] == 6


def test_conversion_options_do_not_apply(saved, tmp_path):
    _, snn, _, _ = saved
    line = _one_line(_run(snn, "--coding", "rate", "--calib-images", 10))
    assert f"{snn} is a saved SNN, evaluated as it was converted: --coding, --calib-images do not apply" in line
    cfg = tmp_path / "run.json"  # from a --config file too
    cfg.write_text(json.dumps({"threshold": "max"}))
    assert "--threshold does not apply" in _one_line(_run(snn, "--config", cfg))


def test_an_api_saved_snn_needs_its_evaluation_data(tmp_path):
    x = torch.rand(32, 1, 28, 28)
    model = SpellingsNet().eval()
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=3),
                  source=ModelSource.python(f"{NETS}:SpellingsNet"))
    res.save(tmp_path / "snn")
    line = _one_line(_run(tmp_path / "snn"))
    assert "does not record its evaluation data (saved through the API); pass --eval-data" in line
    result = _run(tmp_path / "snn", "--eval-data", "fashion-mnist", "--eval-images", 16)
    assert result.exit_code == 0, result.output
    assert "calibration images not recorded" in " ".join(result.output.split())


def test_load_result_rebuilds_the_conversion(saved, tmp_path):
    _, snn, _, _ = saved
    result, ann = load_result(snn)
    x = torch.rand(5, 1, 12, 12)
    assert result.config.coding == "differential" and result.config.timesteps == 6
    assert result.calibration.sites and result.calibration.quantisation_levels == 6 * 16
    with torch.no_grad():
        assert torch.equal(ann(x), BoxNet().eval()(x))  # the ANN with its saved weights (BoxNet's seeded init)
        decoded = result.snn(x)
        assert torch.equal(decoded, load(snn)(x))  # the same SNN as runtime.load's
    result.save(tmp_path / "copy")  # saved again from the loaded result: identical outputs
    copy, _ = load_result(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(copy.snn(x), decoded)


def test_evaluated_elsewhere_without_the_calibration_data(tmp_path):
    """Converted on a two-split file, evaluated on another machine where only other test data exists: the
    calibration data is not needed."""
    torch.manual_seed(1)
    x = torch.rand(40, 1, 12, 12)
    with torch.no_grad():
        y = BoxNet()(x)
    pixels = (x.numpy() * 255).astype(np.uint8)
    first, other = tmp_path / "first.npz", tmp_path / "other.npz"
    np.savez(first, x_train=pixels[:20], y_train=y[:20].numpy(), x_test=pixels[20:30], y_test=y[20:30].numpy())
    np.savez(other, x=pixels[30:], y=y[30:].numpy())
    snn = tmp_path / "snn"
    result = _run(f"{NETS}:BoxNet", "--calib-data", first, "--eval-data", first, "--output", snn)
    assert result.exit_code == 0, result.output
    first.unlink()
    assert "does not exist" in _one_line(_run(snn))  # its own evaluation data is gone: one line
    again = tmp_path / "again.json"
    result = _run(snn, "--eval-data", other, "--report", again)
    assert result.exit_code == 0, result.output
    doc = json.loads(again.read_text())
    assert doc["eval_images"] == 10 and doc["data"]["calibration"]["images"] == 20
