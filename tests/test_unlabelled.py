"""Unlabelled images (task ``fidelity``): folders and ``.npz`` files without labels load, calibrate and evaluate;
the evaluation compares every output the SNN decodes with the ANN's (relative error after every step, top-1
agreement for class outputs), the sweep recommends T on it, and the CLI, its reports and a saved SNN carry it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from nets import HeadsNet
from PIL import Image
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert, convert_sweep
from snnconvert.convert.errors import ConfigError, DataError
from snnconvert.runtime import evaluate, sweep
from snnconvert.runtime.evaluate import Headline, headline
from snnconvert.runtime.imagefiles import FolderDataset, load_npz
from snnconvert.runtime.report_md import report_markdown
from snnconvert.runtime.sweep import truncate

NETS = str(__import__("nets").__file__)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    model, x = HeadsNet().eval(), torch.rand(40, 1, 28, 28)
    res = convert(model, forward_loop=[x[:24]], config=ConversionConfig.for_coding("differential", timesteps=6))
    return model, x[24:], res


def _relative(decoded: torch.Tensor, ann: torch.Tensor) -> list[float]:
    """sqrt(Σ(r_t − a)² / Σa²) per step, written out."""
    return [math.sqrt(float(((decoded[t].double() - ann.double()) ** 2).sum() / (ann.double() ** 2).sum()))
            for t in range(decoded.shape[0])]


def test_every_output_is_compared_with_the_anns(heads):
    model, x, res = heads
    ev = evaluate(res.snn, [x[:10], x[10:]], ann=model)  # bare image tensors: no labels
    assert ev.task == "fidelity" and ev.images == 16 and ev.ann_accuracy is None and ev.snn_accuracy == []
    with torch.no_grad():
        ann, decoded = model(x), res.snn(x)
    expected = {"output.cls": _relative(decoded["cls"], ann["cls"]),
                "output.box": _relative(decoded["box"], ann["box"]),
                "output.extra.0": _relative(decoded["extra"][0], ann["extra"][0])}
    assert set(ev.output_errors) == set(expected)  # the None leaf is not an output to compare
    for name, values in expected.items():  # two batches pooled = one computation over all 16 images
        assert ev.output_errors[name]["relative_error"] == pytest.approx(values, rel=1e-5, abs=1e-9)
    assert ev.snn_output_error == pytest.approx([max(v) for v in zip(*expected.values())], rel=1e-5)
    agreement = [(decoded["cls"][t].argmax(1) == ann["cls"].argmax(1)).float().mean().item() for t in range(6)]
    assert ev.output_errors["output.cls"]["agreement"] == pytest.approx(agreement)
    assert "agreement" not in ev.output_errors["output.box"]  # not a [B, classes] output
    assert ev.snn_agreement is None  # several outputs compared: the output error leads
    head = headline(ev)
    assert head.name == "output error" and head.against_ann and head.snn == ev.snn_output_error
    # the linear head on the input has no neuron: the SNN reproduces it at every step up to float rounding
    assert max(ev.output_errors["output.extra.0"]["relative_error"]) < 1e-5
    # the ReLU head converges: its error after 6 steps is well below its first step's
    box = ev.output_errors["output.box"]["relative_error"]
    assert box[-1] < 0.5 * box[0]


def test_one_named_class_output_leads_with_agreement(heads):
    model, x, res = heads
    ev = evaluate(res.snn, [(x, None)], ann=model, output="cls")
    assert list(ev.output_errors) == ["output"] and ev.snn_agreement == ev.output_errors["output"]["agreement"]
    head = headline(ev)
    assert head.name == "agreement" and head.ann == 1.0 and head.higher_is_better and head.snn == ev.snn_agreement
    doc = ev.to_dict()
    assert doc["task"] == "fidelity" and doc["snn_agreement"] == ev.snn_agreement
    assert headline(doc) == head  # a JSON report gives the same headline
    cut = truncate(ev, 2)
    assert cut.snn_agreement == ev.snn_agreement[:2] and cut.snn_output_error == ev.snn_output_error[:2]
    assert cut.output_errors["output"]["relative_error"] == ev.output_errors["output"]["relative_error"][:2]


def test_batch_forms_without_labels_give_the_same_evaluation(heads):
    model, x, res = heads
    forms = [[x], [(x,)], [(x, None)], [[x]], [{"images": x}]]
    first = evaluate(res.snn, forms[0], ann=model, output="box")
    for batches in forms[1:]:
        ev = evaluate(res.snn, batches, ann=model, output="box")
        assert ev.output_errors == first.output_errors and ev.events_per_step == first.events_per_step


def test_labels_under_another_key_are_named(heads, caplog):
    """A dict batch whose labels sit under a key evaluation does not read ("class") was scored as unlabelled with no
    word; it still is (the key could be anything), with a warning naming the key."""
    model, x, res = heads
    with caplog.at_level("WARNING", logger="snnconvert"):
        ev = evaluate(res.snn, [{"images": x, "class": torch.zeros(len(x), dtype=torch.long)}], ann=model,
                      output="box")
    assert ev.task == "fidelity" and "'class' hold(s) an integer per image" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="snnconvert"):
        evaluate(res.snn, [{"images": x, "scale": torch.ones(len(x))}], ann=model, output="box")
    assert "integer per image" not in caplog.text  # float values are not labels


def test_unlabelled_images_need_the_ann_and_are_not_mixed_with_labelled_ones(heads):
    model, x, res = heads
    with pytest.raises(DataError, match="no labels: unlabelled images are scored by comparing the SNN's outputs "
                                        "with the ANN's; pass the ANN"):
        evaluate(res.snn, [x])
    with pytest.raises(DataError, match="mix batches with and without labels"):
        evaluate(res.snn, [x[:8], (x[8:], torch.zeros(8, dtype=torch.long))], ann=model, output="cls")
    with pytest.raises(ConfigError, match="output 'nope' is not one of the model's outputs"):
        evaluate(res.snn, [x], ann=model, output="nope")


def test_the_output_error_and_agreement_headlines():
    error = Headline("output error", [0.2, 0.004], 0.0, False, against_ann=True)
    assert error.gap(0.004) == pytest.approx(0.4) and error.gap_unit == "%"
    assert error.within(0.004, 0.5) and not error.within(0.006, 0.5) and error.within(0.005, 0.5)
    assert error.text(0.00254) == "0.254 %" and error.best_text == "the lowest output error"
    assert "output error within 0.5 %" in error.target_text(0.5)
    agree = Headline("agreement", [0.9, 0.996], 1.0, True)
    assert agree.within(0.996, 0.5) and not agree.within(0.99, 0.5) and agree.gap(0.99) == pytest.approx(-1.0)


def test_sweep_recommends_by_the_output_error(heads):
    model, x, _ = heads
    torch.manual_seed(0)
    calib = torch.rand(24, 1, 28, 28)
    results = convert_sweep(model, forward_loop=[calib], config=ConversionConfig.for_coding("differential"),
                            timesteps=[1, 2, 6])
    swept = sweep(results, lambda: [x], ann=model, output="box", target_gap_pp=20.0)
    at_T = {T: ev.snn_output_error[-1] for T, ev in swept.evaluations.items()}
    passing = [T for T, e in at_T.items() if 100 * e <= 20.0]
    assert swept.recommended == (min(passing) if passing else None)
    assert swept.chosen == (min(passing) if passing else min(at_T, key=at_T.get))
    doc = swept.to_dict()
    assert [r["snn_output_error"] for r in doc["runs"]] == [ev.snn_output_error for ev in swept.evaluations.values()]
    # known ANN figures (another rule's sweep): the ANN still runs, as the reference of unlabelled images
    again = sweep(results, lambda: [x], ann=model, output="box", target_gap_pp=20.0, ann_scores=swept.ann_scores)
    assert {T: ev.snn_output_error for T, ev in again.evaluations.items()} == \
        {T: ev.snn_output_error for T, ev in swept.evaluations.items()}


def _images(folder, n, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"{i:03d}.png")
    return folder


def test_folders_and_npz_files_without_labels(tmp_path):
    flat = _images(tmp_path / "flat", 5)
    ds = FolderDataset.scan(flat, name="flat")
    assert ds.labels is None and ds.classes == () and len(ds) == 5
    x, y = next(ds.batches(3))
    assert x.shape == (3, 3, 28, 28) and y is None
    assert ds.select(torch.tensor([4, 0])).files == (flat / "004.png", flat / "000.png")
    _images(flat / "cat", 1)  # images next to class folders: which ones are labelled?
    with pytest.raises(DataError, match=r"holds 5 image\(s\) next to class sub-folders"):
        FolderDataset.scan(flat, name="flat")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "pool.npz", images=pixels)
    np.savez(tmp_path / "two.npz", x_train=pixels[:4], x_test=pixels[4:])
    pool = load_npz(tmp_path / "pool.npz", "all", name="pool")
    assert pool.labels is None and len(pool) == 6 and pool.subset(2).labels is None
    two = load_npz(tmp_path / "two.npz", "test", name="two")
    assert two.split == "test" and len(two) == 2 and two.labels is None
    assert [y for _, y in two.batches(1)] == [None, None]


def test_cli_converts_and_evaluates_a_multi_output_model_on_unlabelled_images(tmp_path):
    """A multi-output model on unlabelled images (one pool, split by the command): no --logits needed, every output
    compared; the report, the Markdown and the saved SNN carry the figures; a bad --logits is one line."""
    data = tmp_path / "images.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8))
    report, md, saved = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "snn"
    args = [f"{NETS}:HeadsNet", "--calib-data", f"npz:{data}", "--calib-images", "24", "--coding",
            "differential", "--sweep", "2,4", "--target-gap", "30"]
    result = CliRunner().invoke(app, [*args, "--report", str(report), "--markdown", str(md), "--output", str(saved)])
    assert result.exit_code == 0, result.output
    assert "output error vs time step" in result.output and "ANN vs SNN per output" in result.output
    assert "no labels: SNN output error against the ANN" in result.output
    doc = json.loads(report.read_text())
    assert doc["task"] == "fidelity" and doc["eval_images"] == 16 and doc["ann_accuracy"] is None
    assert set(doc["output_errors"]) == {"output.cls", "output.box", "output.extra.0"}
    assert doc["snn_output_error"][-1] == max(e["relative_error"][-1] for e in doc["output_errors"].values())
    assert doc["sweep"]["recommended_timesteps"] in (2, 4, None)
    assert md.read_text() == report_markdown(doc) and "## ANN↔SNN error per output" in md.read_text()
    again = CliRunner().invoke(app, [str(saved), "--report", str(tmp_path / "again.json")])
    assert again.exit_code == 0, again.output
    redo = json.loads((tmp_path / "again.json").read_text())
    assert redo["output_errors"] == doc["output_errors"] and redo["snn_output_error"] == doc["snn_output_error"]
    bad = CliRunner().invoke(app, [*args, "--logits", "nope"])
    lines = [ln for ln in bad.output.splitlines() if ln.strip()]
    assert bad.exit_code != 0 and len(lines) == 1 and "output 'nope' is not one of the model's outputs" in lines[0]


def test_cli_label_check_leaves_a_shape_cache_of_the_model_alone(tmp_path):
    """The command's check of the labels against the model's output (before calibration) runs the model on one
    image: on the model itself it left a detector's anchor cache (``AnchorCacheNet``, as Ultralytics' ``Detect``)
    set for a batch of one, and tracing then refused the model."""
    data, pixels = tmp_path / "images.npz", np.random.default_rng(1).integers(0, 256, (24, 6, 6), dtype=np.uint8)
    for labels in (True, False):  # labelled first: the check ran on the model itself before unlabelled data existed
        np.savez(data, **({"x": pixels, "y": np.arange(24) % 4} if labels else {"images": pixels}))
        result = CliRunner().invoke(app, [f"{NETS}:AnchorCacheNet", "--calib-data", f"npz:{data}", "--calib-images",
                                          "12", "-T", "2"])
        assert result.exit_code == 0, result.output
