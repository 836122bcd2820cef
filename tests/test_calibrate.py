"""Calibration: observers only observe; statistics are exact and independent of batch size and order."""
from __future__ import annotations

import math

import pytest
import torch
from nets import SpellingsNet

from snnconvert.convert import DIFF_DEFAULT, ConversionConfig, convert
from snnconvert.convert.calibrate import compute_thresholds, insert_observers, remove_observers, run_calibration
from snnconvert.convert.calibrate.observers import (
    BatchMeanObserver,
    MaxObserver,
    MomentObserver,
    PercentileObserver,
    SelectPercentileObserver,
)
from snnconvert.convert.errors import CalibrationError, ConfigError
from snnconvert.convert.frontend import trace_module
from snnconvert.convert.passes import NORMALIZE_PASSES
from snnconvert.convert.pipeline import ConversionReport, run_passes


def _relu_data(n_batches=5, batch=7):
    torch.manual_seed(1)
    return [torch.relu(torch.randn(batch, 3, 5, 5) * 2 + 0.3) for _ in range(n_batches)]


def _feed(observer, batches, passes=1):
    for _ in range(passes):
        for b in batches:
            out = observer(b)
            assert out is b  # observers return their input unchanged
        if hasattr(observer, "next_phase"):
            observer.next_phase()


def _per_channel(batches):
    x = torch.cat(batches)
    return x.transpose(0, 1).reshape(x.shape[1], -1).double()


@pytest.mark.parametrize("q", [99.9, 99.0, 50.0, 1.0, 100.0])
@pytest.mark.parametrize("granularity", ["channel", "layer"])
def test_percentile_is_exact_quantile_of_all_data(q, granularity):
    batches = _relu_data()
    obs = PercentileObserver(granularity, q, bins=32)
    _feed(obs, batches, passes=2)
    data = _per_channel(batches) if granularity == "channel" else torch.cat(batches).reshape(1, -1).double()
    expected = torch.quantile(data, q / 100, dim=1)
    torch.testing.assert_close(obs.value, expected, rtol=0, atol=1e-12)


def test_percentile_independent_of_batch_size_and_order():
    data = torch.cat(_relu_data(6, 10))
    results = []
    for split in (60, 7, 1):
        batches = list(torch.split(data, split))
        for order in (batches, batches[::-1]):
            obs = PercentileObserver("channel", 99.9, bins=64)
            _feed(obs, order, passes=2)
            results.append(obs.value)
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_percentile_of_mostly_silent_channel_is_zero():
    x = torch.zeros(100, 2)
    x[:, 1] = torch.rand(100)
    x[0, 0] = 5.0  # 1 % non-zero: the 50th percentile is 0
    obs = PercentileObserver("channel", 50.0)
    _feed(obs, [x], passes=2)
    assert obs.value[0] == 0.0 and obs.value[1] > 0


def test_percentile_needs_the_same_data_each_pass():
    obs = PercentileObserver("layer", 99.0)
    _feed(obs, [torch.rand(10, 3)])
    obs(torch.rand(5, 3))
    with pytest.raises(CalibrationError, match="same data in every pass"):
        obs.next_phase()


def test_percentile_detects_other_data_with_the_same_count():
    obs = PercentileObserver("layer", 99.0, bins=16)
    x = torch.rand(40, 3)
    _feed(obs, [x], passes=1)
    obs(torch.zeros(40, 3))  # same count, other values (e.g. a random augmentation in forward_loop)
    with pytest.raises(CalibrationError, match="different values.*same data in every pass"):
        obs.next_phase()


def test_order_bins_follow_the_order_of_the_values():
    from snnconvert.convert.calibrate.observers import _order_bins

    tiny = torch.finfo(torch.float32).tiny
    special = torch.tensor([-math.inf, -3e38, -1.0, -tiny / 4, -0.0, 0.0, tiny / 4, tiny, 1.0, 1.0625, 3e38,
                            math.inf])
    values = torch.cat([special, torch.randn(4000) * 10.0 ** torch.randint(-30, 30, (4000,))]).sort().values
    for bits in (1, 4, 12, 16):
        bins = _order_bins(values[None], bits)[0]
        assert bool((bins[1:] >= bins[:-1]).all()) and int(bins.min()) >= 0 and int(bins.max()) < 2**bits
    bins = _order_bins(special[None], 12)[0]
    assert bins[4] == bins[5]  # -0.0 and +0.0
    assert bins[8] == bins[9] and bins[7] < bins[8] < bins[10]  # 1 and 1 + 1/16 share an eighth of a binade


@pytest.mark.parametrize("bins", [4, 4096])
@pytest.mark.parametrize("q", [0.0, 0.1, 10.0, 40.0, 50.0, 60.0, 99.9, 100.0])
def test_percentile_is_exact_on_signed_values_around_zero(q, bins):
    """Signed activations (an identity site's input): negatives, zeros of both signs and subnormals on both sides of
    zero, where the bins meet at zero; the same exact quantile as torch.quantile, any batching."""
    g = torch.Generator().manual_seed(int(q * 10) + bins)
    x = torch.randn(3000, 3, generator=g) * 10.0 ** torch.randint(-3, 3, (3000, 3), generator=g)
    tiny = torch.finfo(torch.float32).tiny
    x[:400] = 0.0
    x[400:800] = -0.0
    x[800:900] = -tiny / 8  # subnormals just below zero
    x[900:1000] = tiny / 8
    x = x[torch.randperm(3000, generator=g)]
    obs = PercentileObserver("channel", q, bins=bins)
    _feed(obs, list(torch.split(x, 700)), passes=2)
    torch.testing.assert_close(obs.value, torch.quantile(x.double().T, q / 100, dim=1), rtol=1e-12, atol=0)


def test_percentile_keeps_few_values_even_next_to_an_outlier():
    """Bins over the float order do not depend on the range: one value 1e30 times the others does not send every
    value to the selection pass (bins spread linearly from the minimum to the maximum would)."""
    x = torch.relu(torch.randn(20000, 1))
    x[0, 0] = 1e30
    obs = PercentileObserver("layer", 99.9)
    _feed(obs, [x], passes=1)
    obs(x)
    kept = sum(int(v.numel()) for v, _ in obs.kept)
    assert 0 < kept <= 0.002 * x.numel()
    obs.next_phase()
    torch.testing.assert_close(obs.value[0], torch.quantile(x.double().reshape(-1), 0.999), rtol=0, atol=1e-12)


def test_percentile_bins_are_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        PercentileObserver("layer", 99.0, bins=1000)


def test_moments_pooled_exactly_any_batching():
    data = torch.cat(_relu_data(6, 10)) - 1.0
    ref = _per_channel([data])
    for split in (60, 7, 1):
        obs = MomentObserver("channel")
        _feed(obs, list(torch.split(data, split)))
        torch.testing.assert_close(obs.mean, ref.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(obs.var, ref.var(1, unbiased=False), rtol=1e-12, atol=1e-12)


def test_max_is_global_max():
    batches = _relu_data()
    obs = MaxObserver("channel")
    _feed(obs, batches)
    assert torch.equal(obs.max.double(), _per_channel(batches).amax(1))


@pytest.mark.parametrize("q", [None, 99.9, 50.0])
def test_batch_mean_is_the_size_weighted_mean_of_per_batch_statistics(q):
    """The reference's aggregation (method.md §7.8): per-batch max / torch.quantile per channel, averaged weighted by
    the batch sizes (here 7, 3 and 12 images)."""
    torch.manual_seed(2)
    batches = [torch.relu(torch.randn(b, 3, 5, 5) * 2 + 0.3) for b in (7, 3, 12)]
    obs = BatchMeanObserver("channel", q)
    _feed(obs, batches)
    per_batch = [_per_channel([b]) for b in batches]
    stats = [p.amax(1) if q is None else torch.quantile(p, q / 100, dim=1) for p in per_batch]
    expected = sum(v * b.shape[0] for v, b in zip(stats, batches)) / sum(b.shape[0] for b in batches)
    torch.testing.assert_close(obs.value, expected, rtol=1e-12, atol=1e-12)
    global_max = _per_channel(batches).amax(1)
    assert bool((obs.value <= global_max).all()) and not torch.equal(obs.value, global_max)


def test_batch_mean_aggregation_end_to_end():
    """``threshold_aggregation="batch-mean"``: thresholds depend on the batching (one batch: the global statistic)."""
    x = torch.rand(24, 1, 28, 28)
    cfg = ConversionConfig(threshold="99%", threshold_aggregation="batch-mean")
    one = convert(SpellingsNet(), forward_loop=[x], config=cfg).thresholds
    glob = convert(SpellingsNet(), forward_loop=list(torch.split(x, 5)),
                   config=cfg.replace(threshold_aggregation="global")).thresholds
    split = convert(SpellingsNet(), forward_loop=list(torch.split(x, 5)), config=cfg).thresholds
    for k in one:
        torch.testing.assert_close(one[k], glob[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(split[k], glob[k]) for k in one)
    with pytest.raises(ConfigError, match="threshold_aggregation 'mean' is not valid"):
        cfg.replace(threshold_aggregation="mean")


def _prepared(cfg):
    gm = trace_module(SpellingsNet())
    gm = run_passes(gm, NORMALIZE_PASSES, cfg, ConversionReport())
    return gm


@pytest.mark.parametrize("threshold", ["max", "99.9%"])
def test_observers_leave_outputs_unchanged_and_are_removed(threshold):
    cfg = ConversionConfig(threshold=threshold)
    gm = _prepared(cfg)
    x = torch.rand(6, 1, 28, 28)
    before = gm(x)
    code_before = gm.code
    sites = insert_observers(gm, cfg)
    assert len(sites) == 6 and all(s.observes == "output" for s in sites)

    def forward_loop(model):
        assert torch.equal(model(x), before)

    run_calibration(gm, sites, forward_loop)
    thresholds, report = compute_thresholds(gm, sites, cfg)
    # other rules, granularities or tails cannot come from these statistics (they came out as this rule's before)
    other = "max" if threshold != "max" else "99.9%"
    for wrong in (cfg.replace(threshold=other), cfg.replace(threshold="iterate"), cfg.replace(granularity="layer")):
        with pytest.raises(ConfigError, match=r"site \w+: its observer gathered the .* per channel, but the "
                                              r"configuration asks for .*: compute_thresholds takes the configuration"):
            compute_thresholds(gm, sites, wrong)
    remove_observers(gm, sites)
    assert gm.code == code_before
    with pytest.raises(ConfigError, match=r"site \w+ has no observer \w+_observer in this graph"):
        compute_thresholds(gm, sites, cfg)
    # per-channel shapes broadcast over one sample: conv sites [C, 1, 1], linear sites [F]
    shapes = {name: tuple(t.shape) for name, t in thresholds.items()}
    assert shapes["relu"] == (6, 1, 1) and shapes["shared"] == (16,)
    assert all(s["threshold"]["count"] == t.numel() for s, t in zip(report.sites, thresholds.values()))


@pytest.mark.parametrize("threshold", ["max", "iterate"])
def test_relu_on_token_tensors_is_per_feature(threshold):
    """A ReLU between two Linear layers of ``[B, N, C]`` tokens takes one threshold per feature (the last dim,
    method.md §6, §7.8), pooled over images and tokens; a ReLU of conv features keeps dim 1."""
    class TokenMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.conv = torch.nn.Conv2d(1, 8, 7, stride=7)
            self.fc1, self.fc2 = torch.nn.Linear(8, 12), torch.nn.Linear(12, 10)

        def forward(self, x):
            h = torch.relu(self.conv(x))  # [B, 8, 4, 4]
            tokens = h.flatten(2).transpose(1, 2)  # [B, 16, 8]
            return self.fc2(torch.relu(self.fc1(tokens))).mean(1)

    x = torch.rand(10, 1, 28, 28)
    model = TokenMLP().eval()
    cfg = ConversionConfig.for_coding("differential", timesteps=4, threshold=threshold)
    res = convert(model, forward_loop=[x], config=cfg)
    th = res.thresholds
    assert tuple(th["relu"].shape) == (8, 1, 1) and tuple(th["relu_1"].shape) == (12,)
    with torch.no_grad():  # the [12] thresholds broadcast over [T*B, 16, 12]: the SNN runs and converges
        err = (res.snn(x) - model(x)).abs().flatten(1).amax(1)
    assert err[-1] < err[0]
    if threshold == "max":
        with torch.no_grad():
            feats = torch.relu(model.fc1(torch.relu(model.conv(x)).flatten(2).transpose(1, 2)))
        torch.testing.assert_close(th["relu_1"], feats.amax((0, 1)))


def test_thresholds_do_not_depend_on_batching():
    x = torch.rand(40, 1, 28, 28)
    a = convert(SpellingsNet(), forward_loop=[x]).thresholds
    b = convert(SpellingsNet(), forward_loop=list(torch.split(x, 3))[::-1]).thresholds
    for k in a:  # conv kernels round differently for other batch sizes: compare at fp32 rounding level
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_layer_granularity_gives_scalars():
    res = convert(SpellingsNet(), forward_loop=[torch.rand(8, 1, 28, 28)],
                  config=ConversionConfig(granularity="layer", threshold="max"))
    assert all(t.dim() == 0 for t in res.thresholds.values())


def _per_element(batches):
    x = torch.cat(batches)
    return x.reshape(x.shape[0], -1).transpose(0, 1).double()  # [elements of a sample, images]


@pytest.mark.parametrize("q", [99.9, 99.0, 62.5, 50.0, 1.0, 100.0, 0.0])
@pytest.mark.parametrize("split", [35, 8, 1])
def test_neuron_percentile_is_exact_quantile_per_element(q, split):
    data = torch.cat(_relu_data(5, 7)) - 0.5  # 35 images of [3, 5, 5]: 75 groups of 35 values
    obs = SelectPercentileObserver("neuron", q)
    _feed(obs, list(torch.split(data, split))[::-1], passes=2)
    expected = torch.quantile(_per_element([data]), q / 100, dim=1)
    torch.testing.assert_close(obs.value, expected, rtol=0, atol=1e-12)
    assert obs.kept is None  # the selection is freed once the percentile is known


def test_neuron_percentile_keeps_few_values_and_bounds_memory():
    data = _relu_data(5, 7)
    obs = SelectPercentileObserver("neuron", 99.0)
    _feed(obs, data, passes=1)
    assert obs.k == 2 and obs.upper  # the two order statistics around rank 0.99 * 34 from the top
    obs = SelectPercentileObserver("neuron", 50.0, max_values=75 * 17)
    _feed(obs, data[:1], passes=0)
    for b in data:
        obs(b)
    with pytest.raises(CalibrationError, match="keeps 18 values for each of 75 neurons.*granularity channel"):
        obs.next_phase()


@pytest.mark.parametrize("observer", [MaxObserver, MomentObserver, BatchMeanObserver])
def test_neuron_granularity_statistics_per_element(observer):
    batches = [b - 0.5 for b in _relu_data(4, 6)]
    obs = observer("neuron")
    _feed(obs, batches)
    ref = _per_element(batches)
    assert obs.sample_shape == (3, 5, 5) and obs.count == 24
    if observer is MomentObserver:
        torch.testing.assert_close(obs.mean, ref.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(obs.var, ref.var(1, unbiased=False), rtol=1e-12, atol=1e-12)
    elif observer is MaxObserver:
        torch.testing.assert_close(obs.value, ref.amax(1), rtol=0, atol=1e-7)
    else:  # batch-size-weighted mean of the per-batch maxima of each element
        per_batch = torch.stack([_per_element([b]).amax(1) for b in batches])
        torch.testing.assert_close(obs.value, per_batch.mean(0), rtol=1e-12, atol=1e-12)


def test_neuron_granularity_needs_one_sample_shape():
    obs = MaxObserver("neuron")
    obs(torch.rand(4, 3, 5, 5))
    with pytest.raises(CalibrationError, match=r"shape \(3, 6, 5\) after \(3, 5, 5\).*one size"):
        obs(torch.rand(4, 3, 6, 5))


@pytest.mark.parametrize("threshold", ["max", "99%", "iterate"])
def test_neuron_granularity_thresholds_have_the_sample_shape(threshold):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 36, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    x = torch.rand(40, 1, 6, 6)
    res = convert(model, forward_loop=list(torch.split(x, 16)), config=ConversionConfig.for_coding(
        "differential", granularity="neuron", threshold=threshold, timesteps=4))
    assert {k: tuple(v.shape) for k, v in res.thresholds.items()} == {"1": (4, 6, 6), "4": (3,)}
    with torch.no_grad():
        pre = model[0](x)  # the first site's input (iterate) and, through the ReLU, its output (max, percentile)
    per_element = pre.reshape(40, -1).transpose(0, 1).double()
    if threshold == "max":
        expected = per_element.relu().amax(1)
    elif threshold == "99%":
        expected = torch.quantile(per_element.relu(), 0.99, dim=1)
    else:
        from snnconvert.convert.calibrate.fit import fit_thresholds

        expected = fit_thresholds(per_element.mean(1), per_element.var(1, unbiased=False), 4 * 2**4).threshold
    torch.testing.assert_close(res.thresholds["1"].reshape(-1).double(), expected, rtol=1e-5, atol=1e-6)
    assert res.report.calibration["granularity"] == "neuron"
    with torch.no_grad():
        assert res.snn(x[:5]).shape == (4, 5, 2)
    with pytest.raises(ConfigError, match=r"^site 1: threshold: per-neuron values of shape \(4, 6, 6\).*calibrated at"):
        res.snn(torch.rand(2, 1, 7, 7))


def test_neuron_granularity_rate_coding_and_artifact_round_trip(tmp_path):
    from pathlib import Path

    from snnconvert.convert import ModelSource
    from snnconvert.runtime import load

    x = torch.rand(24, 1, 28, 28)
    source = ModelSource.python(f"{Path(__file__).parent / 'nets.py'}:SpellingsNet")
    res = convert(SpellingsNet(), forward_loop=[x[:16], x[16:]],
                  config=ConversionConfig(granularity="neuron", timesteps=6), source=source)
    shapes = [tuple(t.shape) for t in res.thresholds.values()]  # [C, H, W] after convolutions, [F] after Linear
    assert all(len(s) in (1, 3) for s in shapes) and sum(len(s) == 3 for s in shapes) >= 3, shapes
    again = load(res.save(tmp_path / "snn"))
    with torch.no_grad():
        assert torch.equal(again(x[:4]), res.snn(x[:4]))
    with pytest.raises(ConfigError, match="^site act_inplace_act: threshold: .*calibrated at"):
        res.snn(torch.rand(2, 1, 32, 32))
    import shutil

    from snnconvert.runtime import compile

    if shutil.which("cc") is not None:  # a kernel backend (needs a C compiler) names the site too
        native = compile(res.snn, "native")
        with pytest.raises(ConfigError, match="^site act_inplace_act: threshold: .*calibrated at"):
            native(torch.rand(2, 1, 32, 32))


def test_silent_groups_are_logged_once_per_sweep(caplog):
    from snnconvert.convert import convert_sweep

    x = torch.rand(16, 1, 28, 28)
    x[:, :, :3] = 0  # rows that stay dark: neurons behind them never fire, their per-neuron max is 0
    with caplog.at_level("WARNING", logger="snnconvert.convert.calibrate"):
        convert_sweep(SpellingsNet(), forward_loop=[x], config=ConversionConfig(granularity="neuron",
                                                                                 threshold="max"), timesteps=[2, 4])
    lines = [r.getMessage() for r in caplog.records if "have threshold 0" in r.getMessage()]
    assert lines and len(lines) == len(set(lines)), lines  # once per site, not once per T
    assert all(" of " in line and "neurons have threshold 0 (max)" in line for line in lines)  # names the rule


def test_no_calibration_data_is_an_error():
    with pytest.raises(CalibrationError, match="no calibration data"):
        convert(SpellingsNet(), forward_loop=[])


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="timesteps"):
        ConversionConfig(timesteps=0)
    with pytest.raises(ConfigError, match="coding 'foo'"):
        ConversionConfig(coding="foo")
    with pytest.raises(ConfigError, match="percentile"):
        ConversionConfig(threshold="120%")
    with pytest.raises(ConfigError, match="threshold 'median'"):
        ConversionConfig(threshold="median")
    assert ConversionConfig.for_coding("rate", levels=4).neuron == "mt"
    # multi-threshold neurons asked for without a level count: n = 4 (the method's), not the IF preset's 1
    assert ConversionConfig.for_coding("rate", neuron="mt").levels == 4
    assert ConversionConfig.for_coding("rate", neuron="mt", levels=1).levels == 1  # given: kept
    cfg = ConversionConfig(threshold="99.9%")
    assert ConversionConfig.from_dict(cfg.to_dict()) == cfg
    # numpy integers are integers (they were refused); None patterns are no patterns (a TypeError)
    import numpy as np

    cfg = ConversionConfig(timesteps=np.int64(8), levels=np.int32(3), neuron="mt", allow_ann_ops=None)
    assert (cfg.timesteps, cfg.levels, cfg.allow_ann_ops) == (8, 3, ()) and type(cfg.timesteps) is int
    with pytest.raises(ConfigError, match=r"use neuron='mt' \(or leave identity_levels unset, None, with neuron"):
        DIFF_DEFAULT.replace(neuron="if", levels=1)


@pytest.mark.parametrize("threshold", ["99.9%", "max", "iterate"])
def test_a_forward_loop_that_feeds_nothing_names_the_site(threshold):
    with pytest.raises(CalibrationError, match=r"no calibration data reached \w+; check the forward_loop"):
        convert(SpellingsNet().eval(), forward_loop=lambda model: None, config=ConversionConfig(threshold=threshold))


def test_unconverged_fit_names_the_group_and_its_statistics():
    cfg = ConversionConfig.for_coding("differential", timesteps=8, fit_max_iter=1)
    with pytest.raises(CalibrationError, match=r"did not converge .* in 1 iterations \(group \d+: mean .*, variance "):
        convert(SpellingsNet(), forward_loop=[torch.rand(8, 1, 28, 28)], config=cfg)


@pytest.mark.parametrize("coding, threshold, aggregation", [
    ("rate", "99.9%", "global"), ("rate", "max", "global"), ("differential", "iterate", "global"),
    ("differential", "99.9%", "global"), ("rate", "99.9%", "batch-mean")])
def test_a_nan_pixel_is_refused_by_every_threshold_rule(coding, threshold, aggregation):
    """One NaN pixel among the calibration images: max and iterate refused it, while the percentile rules (the rate
    default, and identity neurons') gave a finite threshold from a histogram whose bounds were NaN."""
    x = torch.rand(40, 1, 28, 28)
    x[17, 0, 3, 4] = float("nan")
    config = ConversionConfig.for_coding(coding, timesteps=4, threshold=threshold, threshold_aggregation=aggregation)
    with pytest.raises(CalibrationError, match=r"non-finite activation value\(s\) on the calibration images; check the "
                                               r"calibration images for NaN or inf"):
        convert(SpellingsNet().eval(), forward_loop=[x[:20], x[20:]], config=config)


def test_a_nan_parameter_is_named():
    """An infinite weight in a channel the model drops: the output is finite, the neuron site is not; the error names
    the parameter (it said to check the calibration data)."""
    class Dropped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = torch.nn.Conv2d(1, 3, 3), torch.nn.Linear(2 * 6 * 6, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x))[:, :2].flatten(1))

    model = Dropped().eval()
    with torch.no_grad():
        model.conv.weight[2, 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match="the model holds NaN or inf in conv.weight"):
        convert(model, forward_loop=[torch.rand(8, 1, 8, 8)], config=ConversionConfig.for_coding("rate"))


def test_integer_images_are_refused_with_how_to_scale_them():
    x = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8)
    with pytest.raises(ConfigError, match=r"takes float images, got torch.uint8: scale .*x.float\(\) / 255"):
        convert(SpellingsNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("differential"))


def test_iteration_from_one_value_per_neuron_warns(caplog):
    x = torch.rand(1, 1, 28, 28)
    config = ConversionConfig.for_coding("differential", timesteps=4, granularity="neuron")
    with caplog.at_level("WARNING", logger="snnconvert"):
        convert(SpellingsNet().eval(), forward_loop=[x], config=config)
    assert "threshold iteration from 1 calibration value per neuron" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="snnconvert"):
        convert(SpellingsNet().eval(), forward_loop=[torch.rand(4, 1, 28, 28)], config=config)
    assert "threshold iteration from" not in caplog.text


def test_a_percentile_from_too_few_values_per_group_warns_once(caplog):
    """99.9 % of fewer than 1 000 values is their maximum: one warning names the sites and the fewest values."""
    from snnconvert.convert import convert_sweep

    def warnings(images: int, threshold: str, granularity: str = "neuron", sweep: bool = False) -> list[str]:
        caplog.clear()
        cfg = ConversionConfig(granularity=granularity, threshold=threshold)
        with caplog.at_level("WARNING", logger="snnconvert.convert.calibrate"):
            x = [torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(0))]
            if sweep:
                convert_sweep(SpellingsNet().eval(), forward_loop=x, config=cfg, timesteps=[2, 4])
            else:
                convert(SpellingsNet().eval(), forward_loop=x, config=cfg)
        return [r.getMessage() for r in caplog.records if "too few to tell" in r.getMessage()]

    lines = warnings(50, "99.9%")
    assert len(lines) == 1, lines
    assert lines[0].startswith("99.9% thresholds of 6 site(s) (act_inplace_act, relu, relu_1, relu_2 and 2 more) "
                               "come from fewer than 1000 values per neuron (fewest: 50)")
    assert len(warnings(50, "99.9%", sweep=True)) == 1  # once per sweep, not once per T
    # per channel the conv sites pool 196-784 positions per image; the Linear sites get one value per image
    lines = warnings(50, "99.9%", granularity="channel")
    assert len(lines) == 1 and "of 2 site(s) (shared_act, shared)" in lines[0] and "per channel" in lines[0]
    assert warnings(120, "99%") == []  # 99 % needs 100 values
    assert len(warnings(99, "99%")) == 1
    assert warnings(50, "max") == []
