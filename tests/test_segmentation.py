"""Evaluation with one label per pixel (segmentation outputs ``[B, classes, H, W]``): pixel accuracy and mean IoU
after every step, ignored pixels, label checks; the same through the sweep and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nets import SegNet

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import ConfigError, DataError
from snnconvert.runtime import evaluate, sweep
from snnconvert.runtime.scores import miou as _miou
from snnconvert.runtime.sweep import truncate

IGNORE = 255


def _reference(pred: np.ndarray, labels: np.ndarray, classes: int) -> tuple[float, float, list]:
    """Pixel accuracy, mean IoU (classes present in labels or predictions) and the IoU per class (None where
    absent), written out with numpy."""
    keep = labels != IGNORE
    p, y = pred[keep], labels[keep]
    ious = []
    for c in range(classes):
        inter, union = np.sum((p == c) & (y == c)), np.sum((p == c) | (y == c))
        ious.append(inter / union if union else None)
    return float(np.mean(p == y)), float(np.mean([v for v in ious if v is not None])), ious


def test_mean_iou_of_a_known_confusion_matrix():
    conf = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # rows: labels; class 2 never occurs: left out
    assert _miou(conf) == pytest.approx((3 / 4 + 2 / 3) / 2)


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    model = SegNet().eval()
    x = torch.rand(24, 1, 16, 16)
    with torch.no_grad():
        labels = model(x).argmax(1)  # the ANN's own answer: its scores are 1.0; the SNN's approach it
    labels[:, :2, :] = IGNORE  # two rows of "void" pixels in every image
    res = convert(model, forward_loop=[x[:16]], config=ConversionConfig.for_coding("differential", timesteps=8))
    return model, x, labels, res


def test_pixel_accuracy_and_mean_iou_after_every_step(seg):
    model, x, labels, res = seg
    ev = evaluate(res.snn, [(x[:10], labels[:10]), (x[10:], labels[10:])], ann=model)
    assert ev.task == "segmentation" and ev.images == 24
    assert ev.ann_accuracy == 1.0 and ev.ann_miou == 1.0 and ev.snn_accuracy_top5 is None
    assert len(ev.snn_accuracy) == len(ev.snn_miou) == 8
    with torch.no_grad():
        decoded = res.snn(x)  # [T, B, 4, 16, 16]
    for t in (0, 3, 7):  # the metric equals a direct computation over all 24 images (two batches pooled)
        acc, miou, ious = _reference(decoded[t].argmax(1).numpy(), labels.numpy(), 4)
        assert ev.snn_accuracy[t] == pytest.approx(acc, abs=1e-12)
        assert ev.snn_miou[t] == pytest.approx(miou, abs=1e-12)
        assert [v is None for v in ev.snn_iou[t]] == [v is None for v in ious]
        assert [v for v in ev.snn_iou[t] if v is not None] == pytest.approx([v for v in ious if v is not None])
    with torch.no_grad():
        _, _, ann_ious = _reference(model(x).argmax(1).numpy(), labels.numpy(), 4)
    assert any(v is not None for v in ann_ious)
    assert ev.ann_iou == [1.0 if v is not None else None for v in ann_ious]  # the labels are the ANN's answer
    assert ev.snn_accuracy[-1] > max(ev.snn_accuracy[0], 0.9) and ev.snn_miou[-1] > ev.snn_miou[0]
    cut = truncate(ev, 4)
    assert cut.snn_miou == ev.snn_miou[:4] and cut.ann_miou == ev.ann_miou and cut.task == "segmentation"
    assert cut.snn_iou == ev.snn_iou[:4] and cut.ann_iou == ev.ann_iou


def test_ignored_pixels_are_not_scored(seg):
    model, x, labels, res = seg
    wrong = labels.clone()
    wrong[:, :2, :] = 0  # the void rows now carry a label: scored, and partly wrong
    ignored = evaluate(res.snn, [(x, labels)], ann=model, timesteps=2, count_ops=False)
    scored = evaluate(res.snn, [(x, wrong)], ann=model, timesteps=2, count_ops=False)
    none_ignored = evaluate(res.snn, [(x, wrong)], ann=model, timesteps=2, count_ops=False, ignore_index=None)
    assert ignored.ann_accuracy == 1.0 and scored.ann_accuracy < 1.0
    assert none_ignored.snn_accuracy == scored.snn_accuracy  # no label is 255 there


def test_labels_that_do_not_fit_the_output_are_refused(seg):
    model, x, labels, res = seg
    with pytest.raises(ConfigError, match=r"per-pixel labels of shape \[8, 8\] per image do not fit the model's "
                                          r"output of shape \[4, 16, 16\]"):
        evaluate(res.snn, [(x[:4], labels[:4, ::2, ::2])], timesteps=1, count_ops=False)
    with pytest.raises(ConfigError, match="classification needs"):
        evaluate(res.snn, [(x[:4], torch.zeros(4, dtype=torch.long))], timesteps=1, count_ops=False)
    bad = labels[:4].clone()
    bad[0, 5, 5] = 7
    with pytest.raises(DataError, match="a pixel label 7 is outside the model's 4 classes"):
        evaluate(res.snn, [(x[:4], bad)], timesteps=1, count_ops=False)


def test_the_sweep_carries_the_mean_iou(seg):
    model, x, labels, res = seg
    swept = sweep({8: res}, lambda: [(x, labels)], ann=model)
    ann = swept.ann_scores
    doc = swept.to_dict()
    assert ann["ann_miou"] == 1.0 and doc["ann_miou"] == 1.0 and ann["ann_iou"] == doc["ann_iou"]
    # the ANN's scores known (the CLI's second threshold rule): not re-run
    again = sweep({8: res}, lambda: [(x, labels)], ann_scores=ann)
    assert again.evaluations[8].ann_iou == ann["ann_iou"] and again.ann_scores == ann
    assert swept.to_dict()["runs"][0]["snn_miou"] == swept.evaluations[8].snn_miou


def test_cli_evaluates_a_segmentation_data_set(tmp_path, seg):
    from typer.testing import CliRunner

    from snnconvert.cli.main import app

    model, x, labels, _ = seg
    data = tmp_path / "seg.npz"
    np.savez(data, x_train=(x.numpy() * 255).astype(np.uint8), y_train=labels.numpy().astype(np.uint8),
             x_test=(x.numpy() * 255).astype(np.uint8), y_test=labels.numpy().astype(np.uint8))
    nets = str(__import__("nets").__file__)
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    result = CliRunner().invoke(app, [f"{nets}:SegNet", "--coding", "differential", "-T", "4", "--calib-data",
                                      str(data), "--eval-data", str(data), "--report", str(report),
                                      "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    assert "pixel accuracy" in result.output and "mIoU" in result.output
    doc = json.loads(report.read_text())
    assert doc["task"] == "segmentation" and len(doc["snn_miou"]) == 4 and doc["ann_miou"] > 0.9
    assert "SNN mIoU (T = 4)" in md.read_text() and "## IoU per class" in md.read_text()
    assert len(doc["ann_iou"]) == 4 and len(doc["snn_iou"]) == 4 and len(doc["snn_iou"][-1]) == 4
    short = tmp_path / "short.npz"  # 8x8 masks for 16x16 images: refused while loading, in one line
    np.savez(short, x=(x.numpy() * 255).astype(np.uint8), y=labels[:, ::2, ::2].numpy().astype(np.uint8))
    result = CliRunner().invoke(app, [f"{nets}:SegNet", "--calib-data", str(data), "--eval-data", str(short)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "per pixel [N, 16, 16]" in lines[0], result.output

    per_image = tmp_path / "per_image.npz"
    np.savez(per_image, x=(x.numpy() * 255).astype(np.uint8), y=np.zeros(24, np.int64))
    for net, eval_data, message in ((f"{nets}:SegNetLowRes", data, "per-pixel labels of shape [16, 16] per image "
                                     "do not fit the model's output of shape [4, 8, 8]"),
                                    (f"{nets}:SegNet", per_image, "one label per image but the model's output has "
                                     "shape [4, 16, 16]")):
        result = CliRunner().invoke(app, [net, "--calib-data", str(data), "--eval-data", str(eval_data)])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_the_only_tensor_of_a_dict_output_is_the_scores():
    from snnconvert.convert.outputs import select_output

    scores = torch.rand(2, 4, 3, 3)
    assert select_output({"out": scores}, None) is scores  # torchvision's segmentation models: {"out": ...}
    with pytest.raises(ConfigError, match="name the class scores"):
        select_output({"out": scores, "aux": scores}, None)


def test_cli_converts_a_torchvision_segmentation_model_from_local_weights(tmp_path):
    from typer.testing import CliRunner

    from snnconvert.cli.main import app
    from snnconvert.convert.errors import ModelLoadError
    from snnconvert.runtime.models import resolve_model

    tvs = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    weights, data = tmp_path / "lraspp.pt", tmp_path / "seg.npz"
    torch.save(model.state_dict(), weights)
    resolved = resolve_model("torchvision:segmentation.lraspp_mobilenet_v3_large", weights=weights)
    assert resolved.source.kwargs["num_classes"] == 3 and resolved.source.kwargs["aux_loss"] is False
    assert resolved.input_shape is None and "crop" not in resolved.preprocessing  # images at their own size
    with pytest.raises(ModelLoadError, match="unknown torchvision segmentation model 'fcn_resnet19'"):
        resolve_model("torchvision:segmentation.fcn_resnet19", weights=weights)
    x = torch.rand(6, 3, 48, 48)
    with torch.no_grad():
        labels = model((x - torch.tensor(resolved.preprocessing["mean"])[:, None, None])
                       / torch.tensor(resolved.preprocessing["std"])[:, None, None])["out"].argmax(1)
    images = (x.numpy() * 255).astype(np.uint8)
    np.savez(data, x_train=images, y_train=labels.numpy().astype(np.uint8), x_test=images,
             y_test=labels.numpy().astype(np.uint8))
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["torchvision:segmentation.lraspp_mobilenet_v3_large", "--weights", str(weights),
                                      "--calib-data", str(data), "--eval-data", str(data), "--coding",
                                      "differential", "-T", "2", "--report", str(report)])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    # the labels are the ANN's answers on the uint8-rounded images: all but a few pixels agree
    assert doc["task"] == "segmentation" and doc["ann_accuracy"] > 0.99 and len(doc["snn_miou"]) == 2
