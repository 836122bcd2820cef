"""Evaluation against float targets (regression outputs of any shape): mean squared and absolute error of the ANN
and of the SNN after every step, the shape rule, the sweep's MSE target, the report and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nets import BoxNet, ScalarNet

from snnconvert.convert import ConversionConfig, convert, convert_sweep
from snnconvert.convert.errors import ConfigError, DataError
from snnconvert.runtime import evaluate, sweep
from snnconvert.runtime.evaluate import Headline, headline
from snnconvert.runtime.imagefiles import load_npz
from snnconvert.runtime.report_md import report_markdown
from snnconvert.runtime.scores import label_task
from snnconvert.runtime.sweep import recommend_timesteps, truncate


@pytest.fixture(scope="module")
def box():
    torch.manual_seed(0)
    model = BoxNet().eval()
    x = torch.rand(24, 1, 12, 12)
    with torch.no_grad():
        targets = model(x) + 0.05 * torch.randn(24, 4)  # the ANN's answer plus noise: its MSE is about 0.0025
    res = convert(model, forward_loop=[x[:16]], config=ConversionConfig.for_coding("differential", timesteps=6))
    return model, x, targets, res


def test_which_task_the_labels_evaluate():
    assert label_task([8, 10], [8], floating=False) == "classification"
    assert label_task([8, 4, 6, 6], [8, 6, 6], floating=False) == "segmentation"
    assert label_task([8, 4], [8, 4], floating=True) == "regression"
    assert label_task([8, 1], [8], floating=True) == "regression"  # one value per image for a [B, 1] output
    assert label_task([8, 2, 6, 6], [8, 2, 6, 6], floating=True) == "regression"  # dense regression
    with pytest.raises(ConfigError, match=r"float targets \(one value per image\) do not fit the model's output "
                                          r"of shape \[10\] per image: .* \(class labels must be integers\)"):
        label_task([8, 10], [8], floating=True)
    with pytest.raises(ConfigError, match=r"float targets of shape \[3\]"):
        label_task([8, 4], [8, 3], floating=True)
    with pytest.raises(ConfigError, match="classification needs"):
        label_task([8, 4, 6, 6], [8], floating=False)


def test_mean_squared_and_absolute_errors_after_every_step(box):
    model, x, targets, res = box
    ev = evaluate(res.snn, [(x[:10], targets[:10]), (x[10:], targets[10:])], ann=model)
    assert ev.task == "regression" and ev.images == 24
    assert ev.ann_accuracy is None and ev.snn_accuracy == [] and ev.snn_accuracy_top5 is None
    with torch.no_grad():
        ann_out, decoded = model(x), res.snn(x)  # [B, 4], [T, B, 4]
    assert ev.ann_mse == pytest.approx(float(torch.mean((ann_out - targets) ** 2)), rel=1e-6)
    assert ev.ann_mae == pytest.approx(float(torch.mean((ann_out - targets).abs())), rel=1e-6)
    assert len(ev.snn_mse) == len(ev.snn_mae) == 6
    for t in range(6):  # the two batches pooled: the same as one computation over all 24 images
        assert ev.snn_mse[t] == pytest.approx(float(torch.mean((decoded[t] - targets) ** 2)), rel=1e-6)
        assert ev.snn_mae[t] == pytest.approx(float(torch.mean((decoded[t] - targets).abs())), rel=1e-6)
    # the decoded output approaches the ANN's: the SNN's error approaches the ANN's from the first step on
    assert abs(ev.snn_mse[-1] - ev.ann_mse) < 0.2 * abs(ev.snn_mse[0] - ev.ann_mse)
    head = headline(ev)
    assert head.name == "MSE" and not head.higher_is_better and head.snn == ev.snn_mse and head.ann == ev.ann_mse
    doc = ev.to_dict()
    assert doc["task"] == "regression" and doc["snn_mse"] == ev.snn_mse and doc["ann_mae"] == ev.ann_mae
    cut = truncate(ev, 3)
    assert cut.snn_mse == ev.snn_mse[:3] and cut.snn_mae == ev.snn_mae[:3] and cut.ann_mse == ev.ann_mse


def test_one_value_per_image_for_a_single_output(box):
    _, x, _, _ = box
    model = ScalarNet().eval()
    res = convert(model, forward_loop=[x[:16]], config=ConversionConfig.for_coding("rate", timesteps=4))
    y = torch.linspace(0, 1, 24)
    ev = evaluate(res.snn, [(x, y)], ann=model)
    with torch.no_grad():
        assert ev.ann_mse == pytest.approx(float(torch.mean((model(x)[:, 0] - y) ** 2)), rel=1e-6)


def test_targets_that_do_not_fit_are_refused(box):
    model, x, targets, res = box
    with pytest.raises(ConfigError, match=r"float targets of shape \[3\] per image"):
        evaluate(res.snn, [(x[:4], targets[:4, :3])], timesteps=1, count_ops=False)
    with pytest.raises(ConfigError, match="mixes labels for regression and classification"):
        evaluate(res.snn, [(x[:4], targets[:4]), (x[4:8], torch.zeros(4, dtype=torch.long))], timesteps=1,
                 count_ops=False)


def test_the_mse_target_of_a_sweep():
    # an MSE may be at most (1 + gap/100) times the ANN's
    mse = {1: 0.0130, 2: 0.0104, 4: 0.01006, 8: 0.0100}
    assert recommend_timesteps(mse, 0.0100, 5.0, higher_is_better=False) == 2
    assert recommend_timesteps(mse, 0.0100, 1.0, higher_is_better=False) == 4
    assert recommend_timesteps(mse, 0.0100, 0.0, higher_is_better=False) == 8
    assert recommend_timesteps(mse, 0.0090, 5.0, higher_is_better=False) is None
    head = Headline("MSE", [0.0104], 0.0100, False)
    assert head.gap(0.0104) == pytest.approx(4.0) and head.gap_unit == "%" and head.text(0.0104) == "0.0104"
    assert Headline("MSE", [], 0.0, False).within(0.0, 0.5)  # a perfect ANN: only a perfect SNN is within


def test_sweep_recommends_by_mse(box):
    model, x, targets, _ = box
    cfg = ConversionConfig.for_coding("differential", timesteps=4)
    results = convert_sweep(model, forward_loop=[x[:16]], config=cfg, timesteps=[1, 2, 4])
    swept = sweep(results, lambda: [(x, targets)], ann=model, target_gap_pp=10.0)
    ann_mse = swept.ann_scores["ann_mse"]
    assert ann_mse is not None and swept.ann_accuracy is None
    at_T = {T: ev.snn_mse[-1] for T, ev in swept.evaluations.items()}
    passing = [T for T, v in at_T.items() if v <= ann_mse * 1.10]
    assert swept.recommended == (min(passing) if passing else None)
    assert swept.chosen == (min(passing) if passing else min(at_T, key=at_T.get))  # else the lowest MSE
    strict = sweep(results, lambda: [(x, targets)], ann_scores=swept.ann_scores, target_gap_pp=0.0)
    exact = [T for T, v in at_T.items() if v <= ann_mse]
    assert strict.recommended == (min(exact) if exact else None)
    assert strict.chosen == (min(exact) if exact else min(at_T, key=at_T.get))
    doc = swept.to_dict()
    assert doc["ann_mse"] == ann_mse and doc["ann_accuracy"] is None
    assert [r["snn_mse"] for r in doc["runs"]] == [ev.snn_mse for ev in swept.evaluations.values()]
    again = sweep(results, lambda: [(x, targets)], ann_scores=swept.ann_scores, target_gap_pp=10.0)
    assert again.recommended == swept.recommended and again.ann_scores == swept.ann_scores


def test_npz_float_targets_load_as_regression_targets(tmp_path):
    x = (np.random.default_rng(0).random((6, 1, 5, 5)) * 255).astype(np.uint8)
    path = tmp_path / "r.npz"
    np.savez(path, x=x, y=np.linspace(0, 1, 24).reshape(6, 4))
    data = load_npz(path, "all", name="r.npz")
    assert data.labels.dtype == torch.float32 and data.labels.shape == (6, 4)
    bad = np.linspace(0, 1, 24).reshape(6, 4)
    bad[2, 1] = np.nan
    np.savez(path, x=x, y=bad)
    with pytest.raises(DataError, match="regression targets contain NaN"):
        load_npz(path, "all", name="r.npz")


def test_cli_evaluates_a_regression_data_set(tmp_path, box):
    from typer.testing import CliRunner

    from snnconvert.cli.main import app

    model, x, _, _ = box
    x = torch.rand(48, 1, 12, 12)
    with torch.no_grad():
        targets = model(x) + 0.05 * torch.randn(48, 4)
    data = tmp_path / "box.npz"
    pixels = (x.numpy() * 255).astype(np.uint8)
    np.savez(data, x_train=pixels[:24], y_train=targets[:24].numpy(), x_test=pixels[24:], y_test=targets[24:].numpy())
    nets = str(__import__("nets").__file__)
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    result = CliRunner().invoke(app, [f"{nets}:BoxNet", "--sweep", "2,4", "--target-gap", "50", "--calib-data",
                                      str(data), "--eval-data", str(data), "--report", str(report),
                                      "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    assert "MSE vs time step" in result.output and "within 50 % of the ANN's MSE" in result.output
    doc = json.loads(report.read_text())
    assert doc["task"] == "regression" and doc["ann_accuracy"] is None and doc["snn_accuracy"] == []
    assert len(doc["snn_mse"]) == doc["timesteps"] and doc["ann_mse"] > 0 and doc["sweep"]["ann_mse"] == doc["ann_mse"]
    assert md.read_text() == report_markdown(doc) and "SNN MSE" in md.read_text() and "## MSE after every step" in \
        md.read_text()
    assert "within 50 % of the ANN's MSE" in md.read_text()
    wrong = tmp_path / "wrong.npz"  # three values per image for a four-output model: one line, before calibration
    np.savez(wrong, x=pixels, y=targets[:, :3].numpy())
    result = CliRunner().invoke(app, [f"{nets}:BoxNet", "--calib-data", str(data), "--eval-data", str(wrong)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "float targets of shape [3] per image" in lines[0], \
        result.output


def test_cli_scores_one_head_of_a_multi_output_model_as_a_regression(tmp_path):
    """A detection-style model (class scores and a dense box map): ``--logits box`` with float targets of the box
    map's shape evaluates that head by MSE."""
    from nets import HeadsNet
    from typer.testing import CliRunner

    from snnconvert.cli.main import app

    torch.manual_seed(3)
    model, x = HeadsNet().eval(), torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        box = model(x)["box"] + 0.01 * torch.randn(32, 2, 14, 14)
    pixels, data, report = (x.numpy() * 255).astype(np.uint8), tmp_path / "heads.npz", tmp_path / "r.json"
    np.savez(data, x_train=pixels[:16], y_train=box[:16].numpy(), x_test=pixels[16:], y_test=box[16:].numpy())
    nets = str(__import__("nets").__file__)
    result = CliRunner().invoke(app, [f"{nets}:HeadsNet", "--calib-data", str(data), "--eval-data", str(data),
                                      "--logits", "box", "--coding", "differential", "-T", "4", "--report",
                                      str(report)])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["task"] == "regression" and doc["logits"] == "box" and len(doc["snn_mse"]) == 4
    with torch.no_grad():  # the ANN's MSE on the 16 test images, written out
        expected = float(((model(torch.from_numpy(pixels[16:]).float() / 255)["box"] - box[16:]) ** 2).mean())
    assert doc["ann_mse"] == pytest.approx(expected, rel=1e-5)
