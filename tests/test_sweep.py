"""T sweep: one calibration for several T (convert_sweep), evaluation and the recommended T (runtime/sweep.py), CLI."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import torch
from nets import ClipNet, SpellingsNet
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert, convert_grid, convert_sweep
from snnconvert.convert.errors import ConfigError
from snnconvert.runtime import evaluate, sweep
from snnconvert.runtime.evaluate import EvalReport
from snnconvert.runtime.sweep import SweepReport, choose, recommend_timesteps, truncate

NETS = str(Path(__file__).parent / "nets.py")


def _counting_loop(x: torch.Tensor):
    calls = []

    def loop(gm):
        calls.append(1)
        gm(x)

    return loop, calls


@pytest.mark.parametrize("coding,threshold,identity,passes", [
    ("differential", "iterate", "off", 1), ("rate", "99.9%", "auto", 2),
    # the max-pool after ClipNet's clamp is a graded unit read by conv4: an identity neuron with a 99.9 % threshold
    ("differential", "iterate", "auto", 2)])
def test_convert_sweep_equals_one_conversion_per_T_with_one_calibration(coding, threshold, identity, passes):
    torch.manual_seed(0)
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    cfg = ConversionConfig.for_coding(coding, timesteps=4, threshold=threshold, identity_neurons=identity)
    loop, calls = _counting_loop(x)
    results = convert_sweep(model, forward_loop=loop, config=cfg, timesteps=[8, 2, 4])
    assert len(calls) == passes  # the calibration data went through once (percentiles: its two passes)
    assert list(results) == [8, 2, 4]
    for T, res in results.items():
        one = convert(model, forward_loop=[x], config=cfg.replace(timesteps=T))
        assert res.config == one.config and res.config.timesteps == T
        assert res.thresholds.keys() == one.thresholds.keys()
        for name, theta in one.thresholds.items():
            assert torch.equal(res.thresholds[name], theta), (T, name)
        assert res.calibration.quantisation_levels == one.calibration.quantisation_levels
        with torch.no_grad():
            assert torch.equal(res.snn(x[:3]), one.snn(x[:3]))
    levels = {T: r.calibration.quantisation_levels for T, r in results.items()}
    if threshold == "iterate":  # N = T·2^n: the fit differs per T
        assert levels == {8: 128, 2: 32, 4: 64}
        assert not torch.equal(results[2].thresholds["relu"], results[8].thresholds["relu"])


def test_convert_grid_over_levels_and_T_calibrates_once():
    """convert_grid: configurations differing in n (and the neuron kind it implies) and T share one calibration; each
    result equals its own conversion; configurations differing in anything else are refused, naming the field."""
    from snnconvert.convert import convert_grid

    torch.manual_seed(0)
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    def rate(**changes):
        return ConversionConfig.for_coding("rate", threshold="iterate", identity_neurons="off", **changes)

    base = rate(timesteps=2)
    configs = [base, rate(timesteps=2, levels=3), rate(timesteps=4, levels=3), rate(timesteps=2, levels=5)]
    assert [c.neuron for c in configs] == ["if", "mt", "mt", "mt"]
    loop, calls = _counting_loop(x)
    results = convert_grid(model, forward_loop=loop, configs=configs)
    assert len(calls) == 1
    fitted = [r.calibration.quantisation_levels for r in results]
    assert fitted == [2, 2 * 2**3, 4 * 2**3, 2 * 2**5]
    for cfg, res in zip(configs, results):
        one = convert(model, forward_loop=[x], config=cfg)
        assert res.config == cfg and res.thresholds.keys() == one.thresholds.keys()
        for name, theta in one.thresholds.items():
            assert torch.equal(res.thresholds[name], theta), (cfg.levels, cfg.timesteps, name)
        with torch.no_grad():
            assert torch.equal(res.snn(x[:3]), one.snn(x[:3]))
    with pytest.raises(ConfigError, match="differ in granularity, threshold"):
        convert_grid(model, forward_loop=[x], configs=[base, base.replace(threshold="max", granularity="layer")])
    with pytest.raises(ConfigError, match="non-empty list"):
        convert_grid(model, forward_loop=[x], configs=[])


@pytest.mark.parametrize("steps", [[], [2, 2], [0, 4]])
def test_convert_sweep_rejects_bad_lists(steps):
    cfg = ConversionConfig.for_coding("differential", timesteps=4)
    with pytest.raises(ConfigError):
        convert_sweep(ClipNet(), forward_loop=[torch.rand(2, 1, 28, 28)], config=cfg, timesteps=steps)


def test_recommend_timesteps():
    acc = {1: 0.50, 2: 0.936, 4: 0.939, 8: 0.940}
    assert recommend_timesteps(acc, 0.940, 0.5) == 2
    assert recommend_timesteps(acc, 0.940, 0.2) == 4
    assert recommend_timesteps(acc, 0.940, 0.0) == 8
    assert recommend_timesteps(acc, 0.950, 0.5) is None


def _batches(x, size=6):
    y = torch.arange(x.shape[0]) % 10
    return lambda: [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]


def _same_fields(got: dict, want: dict) -> None:
    """Lists and strings equal, numbers equal up to the rounding of a sum taken in another order."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


def test_the_first_T_steps_of_a_longer_run_are_the_run_for_T():
    # thresholds that do not depend on T: truncate(evaluation at 6, T) is the evaluation at T, field by field
    torch.manual_seed(3)
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    snn = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=6)).snn
    batches = _batches(x)
    long = evaluate(snn, batches(), ann=model, timesteps=6, layer_errors=True)
    for T in (1, 3, 6):
        cut, direct = truncate(long, T), evaluate(snn, batches(), ann=model, timesteps=T, layer_errors=True)
        for key in ("timesteps", "ann_accuracy", "snn_accuracy", "ann_accuracy_top5", "snn_accuracy_top5", "images",
                    "events_per_step", "layer_errors"):
            assert getattr(cut, key) == getattr(direct, key), (T, key)
        assert cut.site_events.keys() == direct.site_events.keys()
        for name, site in direct.site_events.items():
            _same_fields(cut.site_events[name], site)
        for key in ("energy_ratio_reference", "energy_ratio_extended", "sop_per_step", "ann_macs_per_image"):
            assert cut.ops[key] == direct.ops[key], (T, key)
        assert cut.ops["layers"].keys() == direct.ops["layers"].keys()
        for name, layer in direct.ops["layers"].items():
            _same_fields(cut.ops["layers"][name], layer)
    with pytest.raises(ConfigError):
        truncate(long, 7)


@pytest.mark.parametrize("threshold,shared", [("99.9%", True), ("iterate", False)])
def test_sweep_evaluates_once_when_thresholds_do_not_depend_on_T(monkeypatch, threshold, shared):
    sweep_module = importlib.import_module("snnconvert.runtime.sweep")  # the package's `sweep` is the function

    torch.manual_seed(4)
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    cfg = ConversionConfig.for_coding("differential", timesteps=4, threshold=threshold)
    results = convert_sweep(model, forward_loop=[x], config=cfg, timesteps=[1, 2, 4])
    runs, anns = [], []
    real = sweep_module.evaluate

    def counted(*a, **kw):
        runs.append(kw["timesteps"])
        anns.append(kw.get("ann") is not None and kw.get("score_ann", True))
        return real(*a, **kw)

    monkeypatch.setattr(sweep_module, "evaluate", counted)
    report = sweep(results, _batches(x), ann=model, target_gap_pp=100.0)
    assert report.shared_run is shared
    assert runs == ([4] if shared else [1, 2, 4])
    assert anns == ([True] if shared else [True, False, False])  # the ANN is scored in the first evaluation only
    assert list(report.evaluations) == [1, 2, 4]
    assert all(ev.timesteps == T and len(ev.snn_accuracy) == T for T, ev in report.evaluations.items())
    assert report.recommended == report.chosen == 1  # a 100 pp target: every T passes, the smallest is chosen
    assert report.ann_accuracy == report.evaluations[4].ann_accuracy is not None
    # the ANN ran once; every T's evaluation carries its top-5 accuracy too
    top5 = report.ann_scores["ann_accuracy_top5"]
    assert top5 is not None and all(ev.ann_accuracy_top5 == top5 for ev in report.evaluations.values())
    for T, ev in report.evaluations.items():  # each entry is the network converted for T
        direct = evaluate(results[T].snn, _batches(x)(), timesteps=T)
        assert ev.snn_accuracy == direct.snn_accuracy and ev.events_per_step == direct.events_per_step


def test_sweep_refuses_conversions_not_keyed_by_their_T():
    """Conversions keyed by something else (n) ran for that many steps with thresholds fitted for another T; the list
    convert_grid returns and a target given as text were raw TypeErrors."""
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    cfg = ConversionConfig.for_coding("differential", timesteps=8)
    grid = convert_grid(model, forward_loop=[x], configs=[cfg.replace(levels=3), cfg.replace(levels=4)])
    batches = _batches(x)
    for results, says in (({3: grid[0], 4: grid[1]}, "the conversion under T = 3 was fitted for T = 8"),
                          (grid, "the sweep takes {T: ConversionResult}"), ({}, "at least one conversion"),
                          ({0: grid[0]}, "keys are numbers of time steps T >= 1, got 0"),
                          ({8: "x"}, "not a ConversionResult")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            sweep(results, batches, ann=model)
    with pytest.raises(ConfigError, match="the target gap must be a finite number >= 0"):
        sweep({8: grid[0]}, batches, ann=model, target_gap_pp="0.5")
    percentile = convert(model, forward_loop=[x], config=cfg.replace(threshold="99.9%"))
    assert sweep({2: percentile}, batches).evaluations[2].timesteps == 2  # a rule without T: any key


def test_sweep_without_a_passing_T_reports_the_most_accurate():
    torch.manual_seed(5)
    model, x = ClipNet().eval(), torch.rand(12, 1, 28, 28)
    cfg = ConversionConfig.for_coding("differential", timesteps=2)
    results = convert_sweep(model, forward_loop=[x], config=cfg, timesteps=[1, 2])
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())  # the ANN always says 3
        for res in results.values():  # every SNN always says 0
            res.snn.gm.fc.weight.zero_()
            res.snn.gm.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(0), 10).float())
            res.snn.invalidate()
    threes = [(x[:6], torch.full((6,), 3)), (x[6:], torch.full((6,), 3))]
    report = sweep(results, lambda: threes, ann=model, target_gap_pp=50.0)
    assert report.ann_accuracy == 1.0
    assert [ev.snn_accuracy[-1] for ev in report.evaluations.values()] == [0.0, 0.0]
    assert report.recommended is None and report.chosen == 1  # a tie in accuracy: the smaller T


def _report(runs: dict[int, tuple[float, float]], target: float = 0.5, ann: float = 0.9) -> SweepReport:
    """A sweep over ``{T: (accuracy after T steps, extended energy after T steps)}``."""
    evaluations = {T: EvalReport(timesteps=T, ann_accuracy=ann, snn_accuracy=[acc] * T, images=10,
                                 events_per_step=[1.0] * T, ops={"energy_ratio_extended": [energy] * T})
                   for T, (acc, energy) in runs.items()}
    at_T = {T: acc for T, (acc, _) in runs.items()}
    recommended = recommend_timesteps(at_T, ann, target)
    chosen = recommended if recommended is not None else max(at_T, key=lambda T: (at_T[T], -T))
    return SweepReport(target_gap_pp=target, evaluations=evaluations, shared_run=False, recommended=recommended,
                       chosen=chosen)


def test_choose_between_threshold_rules():
    slow = _report({2: (0.85, 0.1), 4: (0.897, 0.3)})  # reaches the target at T = 4
    fast = _report({2: (0.896, 0.2), 4: (0.9, 0.4)})  # at T = 2
    cheap = _report({2: (0.895, 0.15), 4: (0.9, 0.3)})  # at T = 2 too, for less energy
    assert choose([slow, fast]) == 1 and choose([fast, slow]) == 0  # the smaller T first
    assert choose([slow, fast, cheap]) == 2  # then the lower energy at that T
    assert choose([fast, _report({2: (0.896, 0.2)})]) == 0  # then the first listed
    # none reaches the target: the most accurate run, then the smaller T
    a, b = _report({2: (0.5, 0.1), 4: (0.6, 0.2)}), _report({2: (0.6, 0.3), 4: (0.55, 0.4)})
    assert (a.recommended, a.chosen, b.chosen) == (None, 4, 2) and choose([a, b]) == 1
    with pytest.raises(ConfigError, match="different accuracy targets"):
        choose([fast, _report({2: (0.896, 0.2)}, target=1.0)])
    with pytest.raises(ConfigError, match="nothing to choose from"):
        choose([])


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


BASE = [f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist", "--calib-images", 32,
        "--eval-images", 24, "--coding", "differential"]


def test_cli_sweep_prints_the_table_and_reports_the_chosen_T(tmp_path):
    report = tmp_path / "r.json"
    result = _cli(*BASE, "--sweep", "4,1,2", "--target-gap", 100, "--report", report, "--output", tmp_path / "snn")
    assert result.exit_code == 0, result.output
    assert "T sweep" in result.output and "recommended: T=1" in result.output
    doc = json.loads(report.read_text())
    assert doc["sweep"]["recommended_timesteps"] == doc["sweep"]["chosen_timesteps"] == 1
    assert [r["timesteps"] for r in doc["sweep"]["runs"]] == [1, 2, 4]
    assert doc["sweep"]["target_gap_pp"] == 100.0 and doc["sweep"]["shared_run"] is False
    assert doc["timesteps"] == 1 and doc["config"]["timesteps"] == 1 and len(doc["snn_accuracy"]) == 1
    assert doc["thresholds"]["fitted_for"]["quantisation_levels"] == 1 * 2**4
    assert doc["snn_accuracy"] == doc["sweep"]["runs"][0]["snn_accuracy"]
    assert json.loads((tmp_path / "snn" / "config.json").read_text())["config"]["timesteps"] == 1  # the chosen SNN
    plain = tmp_path / "plain.json"
    assert _cli(*BASE, "-T", 2, "--report", plain).exit_code == 0
    assert json.loads(plain.read_text())["sweep"] is None


def test_cli_sweep_chooses_T_on_held_out_training_images(tmp_path):
    from snnconvert.runtime.data import load_fashion_mnist

    report = tmp_path / "r.json"
    result = _cli(*BASE, "--sweep", "1,2", "--select-images", 16, "--target-gap", 100, "--report", report)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps lines
    assert "T sweep on 16 held-out images" in text
    assert "within 100 pp of the ANN on the 16 held-out images" in text and "for it, on the evaluation images" in text
    doc = json.loads(report.read_text())
    assert doc["sweep"]["selected_on"] == {"split": "train", "selection": "the 16 after the calibration images",
                                           "dataset": "fashion-mnist", "images": 16, "held_out": True}
    assert doc["sweep"]["chosen_timesteps"] == doc["timesteps"] == 1 and len(doc["snn_accuracy"]) == 1
    model = SpellingsNet().eval()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")

    def accuracy(images, labels):
        with torch.no_grad():
            return (model(images).argmax(1) == labels).float().mean().item()

    # the sweep's ANN accuracy is on train[32:48] (after the 32 calibration images), the report's on test[:24]
    assert doc["sweep"]["ann_accuracy"] == pytest.approx(accuracy(train.images[32:48], train.labels[32:48]))
    assert doc["ann_accuracy"] == pytest.approx(accuracy(test.images[:24], test.labels[:24]))
    assert doc["eval_images"] == 24
    plain = tmp_path / "plain.json"
    assert _cli(*BASE, "--sweep", "1,2", "--report", plain).exit_code == 0
    assert json.loads(plain.read_text())["sweep"]["selected_on"] == {
        "split": "test", "selection": "first 24", "dataset": "fashion-mnist", "images": 24, "held_out": False}


def test_cli_sweep_chooses_the_threshold_rule_too(tmp_path):
    report = tmp_path / "r.json"
    result = _cli(*BASE, "--sweep", "1,2", "--threshold", "iterate, 99.9%", "--target-gap", 100, "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    sw = doc["sweep"]
    assert sw["thresholds"] == ["iterate", "99.9%"] and sw["chosen_threshold"] in sw["thresholds"]
    assert [(r["threshold"], r["timesteps"]) for r in sw["runs"]] == [("iterate", 1), ("iterate", 2), ("99.9%", 1),
                                                                     ("99.9%", 2)]
    # iteration fits each T's thresholds for its N = T·2^n (n = 4); a percentile does not depend on T
    assert [r["fitted_levels"] for r in sw["runs"]] == [16, 32, None, None]
    from snnconvert.runtime.report_md import report_markdown

    assert "| threshold | T | fit N |" in report_markdown(doc) and "| iterate | 2 | 32 |" in report_markdown(doc)
    assert doc["config"]["threshold"] == sw["chosen_threshold"] and doc["timesteps"] == sw["chosen_timesteps"] == 1
    chosen = [r for r in sw["runs"] if (r["threshold"], r["timesteps"]) == (sw["chosen_threshold"], 1)][0]
    assert doc["snn_accuracy"] == chosen["snn_accuracy"]  # chosen on the evaluation images: the same run
    # every rule reaches a 100 pp target at T = 1: the chosen one spends the least energy there
    assert chosen["energy_ratio_extended"][-1] == min(r["energy_ratio_extended"][-1] for r in sw["runs"]
                                                      if r["timesteps"] == 1)
    text = " ".join(result.output.split())
    assert f"recommended: --threshold {sw['chosen_threshold']} at T=1" in text
    assert re.search(r"│ 99\.9% +│ +2 │", result.output) and re.search(r"│ iterate +│ +2 │", result.output)
    # a config file may give the lists as lists; with held-out selection the report's run is the chosen one's
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"sweep": [2, 1], "threshold": ["max", "99%"], "select-images": 8}))
    result = _cli(*BASE, "--config", config, "--report", report)
    assert result.exit_code == 0, result.output
    sw = json.loads(report.read_text())["sweep"]
    assert sw["thresholds"] == ["max", "99%"] and [r["timesteps"] for r in sw["runs"]] == [1, 2, 1, 2]
    assert sw["selected_on"]["images"] == 8 and sw["selected_on"]["held_out"]


def test_cli_sweep_chooses_the_levels_too(tmp_path):
    """--levels a,b with --sweep: one conversion per n (thresholds fitted for T·2^n levels), every (n, T) run in the
    table and the report, the chosen n's SNN reported and saved."""
    report = tmp_path / "r.json"
    result = _cli(*BASE, "--sweep", "1,2", "--levels", "2, 5", "--target-gap", 100, "--report", report,
                  "--output", tmp_path / "snn")
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    sw = doc["sweep"]
    assert sw["levels"] == [2, 5] and sw["thresholds"] == ["iterate"] and sw["chosen_levels"] in (2, 5)
    assert [(r["levels"], r["timesteps"]) for r in sw["runs"]] == [(2, 1), (2, 2), (5, 1), (5, 2)]
    assert doc["config"]["levels"] == sw["chosen_levels"] and doc["timesteps"] == sw["chosen_timesteps"] == 1
    assert doc["thresholds"]["fitted_for"]["quantisation_levels"] == 1 * 2 ** sw["chosen_levels"]
    chosen = [r for r in sw["runs"] if (r["levels"], r["timesteps"]) == (sw["chosen_levels"], 1)][0]
    assert doc["snn_accuracy"] == chosen["snn_accuracy"]
    # both reach a 100 pp target at T = 1: the chosen n spends the least energy there (fewer levels, fewer events)
    assert chosen["energy_ratio_extended"][-1] == min(r["energy_ratio_extended"][-1] for r in sw["runs"]
                                                      if r["timesteps"] == 1)
    saved = json.loads((tmp_path / "snn" / "config.json").read_text())["config"]
    assert saved["levels"] == sw["chosen_levels"] and saved["timesteps"] == 1
    text = " ".join(result.output.split())
    assert f"recommended: --levels {sw['chosen_levels']} at T=1" in text and "--threshold" not in text
    from snnconvert.runtime.report_md import report_markdown  # the Markdown report: the n column and the chosen n

    markdown = report_markdown(doc)
    assert "| n | T | fit N |" in markdown and f"Recommended: n = {sw['chosen_levels']}, T = 1." in markdown
    assert [r["fitted_levels"] for r in sw["runs"]] == [4, 8, 32, 64]  # T·2^n
    # the table: an n column and the levels each run was fitted for (T·2^n)
    assert re.search(r"│ 5 │ +2 │ +64 │", result.output) and re.search(r"│ 2 │ +1(?: \*)? │ +4 │", result.output)
    # with two rules too: one conversion per (rule, n), both flags in the recommendation
    result = _cli(*BASE, "--sweep", "1", "--levels", "2,3", "--threshold", "iterate,max", "--target-gap", 100,
                  "--report", report)
    assert result.exit_code == 0, result.output
    sw = json.loads(report.read_text())["sweep"]
    assert [(r["threshold"], r["levels"]) for r in sw["runs"]] == [("iterate", 2), ("iterate", 3), ("max", 2),
                                                                   ("max", 3)]
    assert f"--threshold {sw['chosen_threshold']} --levels {sw['chosen_levels']} at T=1" in " ".join(
        result.output.split())
    # a config file gives the list as a list, one n as a number
    config = tmp_path / "c.json"
    for levels, want in (([3, 2], [3, 2]), (3, [3])):
        config.write_text(json.dumps({"sweep": [1], "levels": levels}))
        result = _cli(*BASE, "--config", config, "--report", report)
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["sweep"]["levels"] == want


@pytest.mark.parametrize("args,message", [
    (["--sweep", "2,4", "-T", 4], "either -T/--timesteps or --sweep"),
    (["--levels", "3,4"], "a list of levels needs --sweep"),
    (["--sweep", "2,4", "--levels", "3,3"], "a value is listed twice"),
    (["--sweep", "2,4", "--levels", "3,x"], "is not an integer"),
    (["--levels", "2.5"], "is not an integer"),
    (["--sweep", "2,4", "--levels", "3,0"], "--levels"),
    (["--sweep", "2,x"], "not a comma list of integers"),
    (["--sweep", "1,,2"], "--sweep '1,,2': an empty entry in the list"),
    (["--sweep", "2,4,"], "an empty entry in the list"),
    (["--sweep", "0,2"], "distinct positive"),
    (["--sweep", "2,2"], "distinct positive"),
    (["--target-gap", 0.5], "--target-gap applies to a sweep"),
    (["--sweep", "2,4", "--target-gap", -1], "--target-gap must be a finite number >= 0"),
    (["--sweep", "2,4", "--target-gap", "inf"], "--target-gap must be a finite number >= 0 percentage points, got inf"),
    (["--select-images", 100], "--select-images applies to a sweep"),
    (["--sweep", "2,4", "--select-images", 0], "--select-images must be positive"),
    (["--sweep", "2,4", "--select-images", 60000], "too few for 32 calibration and 60000 selection images"),
    (["--threshold", "iterate,99.9%"], "a list of threshold rules needs --sweep"),
    (["--sweep", "2,4", "--threshold", "99.9%,99.90%"], "a rule is listed twice"),
    (["--sweep", "2,4", "--threshold", "iterate,"], "an empty rule in the list"),
    (["--sweep", "2,4", "--threshold", "iterate,median"], "threshold 'median' is not valid"),
])
def test_cli_sweep_bad_input_is_one_line(args, message):
    result = _cli(*BASE, *args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_spellings_net_sweep_reaches_its_rate_targets():
    # rate coding with percentile thresholds on real data: one evaluation at the largest T serves every T
    from snnconvert.runtime.data import load_fashion_mnist

    train, test = load_fashion_mnist("train").subset(64), load_fashion_mnist("test").subset(24)
    model = SpellingsNet().eval()
    cfg = ConversionConfig.for_coding("rate", timesteps=8)
    results = convert_sweep(model, forward_loop=lambda m: [m(x) for x, _ in train.batches(32)], config=cfg,
                            timesteps=[2, 8])
    report = sweep(results, lambda: test.batches(12), ann=model)
    assert report.shared_run and list(report.evaluations) == [2, 8]
    assert report.evaluations[2].snn_accuracy == report.evaluations[8].snn_accuracy[:2]
