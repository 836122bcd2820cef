"""Peer conventions (users.md §3): the Converter shortcut, the threshold-mode grammar (a fraction of the max, names in
any case) and calibration batches given as tensors, tuples or dicts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nets import SpellingsNet
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, Converter, SpikingNetwork, ThresholdSpec, convert
from snnconvert.convert.errors import CalibrationError, ConfigError

NETS = str(Path(__file__).parent / "nets.py")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(24, 1, 28, 28)


def _thresholds(model, data, **cfg):
    return convert(model, forward_loop=data, config=ConversionConfig.for_coding("rate", **cfg)).thresholds


def _assert_same(a: dict, b: dict, scale: float = 1.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name] * scale, rtol=0, atol=0)


def test_converter_with_a_dataloader_equals_convert(images):
    model = SpellingsNet()
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=8)
    converter = Converter(loader, mode="max")
    snn = converter.convert(model)
    assert isinstance(snn, SpikingNetwork) and converter.result.snn is snn
    _assert_same(converter.result.thresholds, _thresholds(model, [images[:8], images[8:16], images[16:]],
                                                          threshold="max"))
    assert model.training  # the user's module is untouched (the converter traces and calibrates a copy in eval mode)
    assert isinstance(converter(model), SpikingNetwork)  # legacy spelling: snn = converter(model)


@pytest.mark.parametrize("mode", [0.5, "0.5", ".5"])
def test_a_fraction_of_the_max(images, mode):
    model = SpellingsNet()
    half = Converter([images], mode=mode)
    half.convert(model)
    assert str(half.config.threshold) == "0.5" and half.config.threshold.fraction == 0.5
    _assert_same(half.result.thresholds, _thresholds(model, [images], threshold="max"), scale=0.5)


def test_threshold_names_in_any_case_and_round_trips():
    for text, want in [("MAX", "max"), ("Iterate", "iterate"), ("ITERATE-reference", "iterate-reference"),
                       ("0.25", "0.25"), ("1", "1"), ("99.9%", "99.9%"), ("100%", "100%"),
                       # every digit kept (6 significant digits made 99.99999% read back as 100%, 1/3 as 0.333333)
                       ("99.99999%", "99.99999%"), ("99.123456789%", "99.123456789%"), (str(1 / 3), str(1 / 3)),
                       ("1e-5", "0.00001"), ("0.00001%", "0.00001%")]:
        spec = ThresholdSpec.parse(text)
        assert str(spec) == want and ThresholdSpec.parse(str(spec)) == spec
        cfg = ConversionConfig(threshold=text)
        assert ConversionConfig.from_dict(cfg.to_dict()) == cfg
    for bad, message in [("1.5", "fraction of the max must be in (0, 1]"), ("0", "(0, 1]"), ("max%", "not valid")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            ThresholdSpec.parse(bad)


def test_layer_thresholds_when_not_channel_wise(images):
    converter = Converter([images], mode="max", channel_wise=False)
    converter.convert(SpellingsNet())
    assert converter.config.granularity == "layer"
    assert all(t.numel() == 1 for t in converter.result.thresholds.values())


def test_converter_per_neuron_thresholds(images):
    converter = Converter([images], mode="max", granularity="neuron")
    converter.convert(SpellingsNet())
    assert converter.config.granularity == "neuron"
    _assert_same(converter.result.thresholds, _thresholds(SpellingsNet(), [images], threshold="max",
                                                          granularity="neuron"))
    with pytest.raises(ConfigError, match="granularity or channel_wise=False, not both"):
        Converter([images], channel_wise=False, granularity="neuron")


@pytest.mark.parametrize("key", ["input", "image", "images", "img", "x", "data", "pixel_values"])
def test_dict_batches(images, key):
    model = SpellingsNet()
    want = _thresholds(model, [images], threshold="max")
    _assert_same(_thresholds(model, [{key: images, "label": torch.zeros(24)}], threshold="max"), want)


def test_batch_forms_agree(images):
    model = SpellingsNet()
    want = _thresholds(model, [images], threshold="max")
    y = torch.zeros(len(images), dtype=torch.long)
    for data in (images, [(images, y)], [[images, y]]):  # one tensor, (x, y) tuples, [x, y] lists
        _assert_same(_thresholds(model, data, threshold="max"), want)


@pytest.mark.parametrize("data,message", [
    ([{"pixels": torch.rand(2, 1, 28, 28)}], "dict with keys ['pixels']"),
    ([3.0], "batch of type float is not supported"),
])
def test_bad_batches_say_what_is_wrong(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _thresholds(SpellingsNet(), data, threshold="max")


def test_missing_calibration_data_is_a_clear_error(images):
    with pytest.raises(ConfigError, match="calibration needs data"):
        Converter(None)
    with pytest.raises(ConfigError, match="calibration needs data"):
        convert(SpellingsNet(), forward_loop=None)
    with pytest.raises(ConfigError, match="neither a forward_loop"):
        Converter(42)


def test_a_generator_used_up_after_one_pass_is_reported(images):
    # exact percentiles take two passes over the data; a generator is empty on the second
    gen = (x for x in [images[:12], images[12:]])
    with pytest.raises(CalibrationError, match="in pass 2 .pass 1 had 2.: a generator"):
        _thresholds(SpellingsNet(), gen, threshold="99.9%")


def test_cli_takes_a_fraction_of_the_max(tmp_path):
    report = tmp_path / "r.json"
    args = [f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
            "--calib-images", 32, "--eval-images", 8, "-T", 2, "--threshold", "0.5", "--report", report]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["thresholds"]["method"] == "0.5"
    bad = CliRunner().invoke(app, [str(a) for a in args[:-4] + ["--threshold", "2"]])
    assert bad.exit_code == 2 and "fraction of the max must be in (0, 1]" in bad.output


@pytest.mark.parametrize("kwargs", [dict(method="mean"), dict(method="max", fraction=2.0),
                                    dict(method="iterate", fraction=0.5), dict(method="percentile"),
                                    dict(method="max", percentile=99.0), dict(method="percentile", percentile=120.0)])
def test_threshold_specs_are_validated_when_built_directly(kwargs):
    with pytest.raises(ConfigError):
        ThresholdSpec(**kwargs)


def test_a_result_moves_whole_to_another_device(images):
    """``ConversionResult.to``: the SNN's parameters and buffers, the thresholds and the weights snapshot all move
    (the meta device stands in for a GPU here; tests/test_gpu_paths.py moves a result to CUDA and back)."""
    result = convert(SpellingsNet(), forward_loop=[images], config=ConversionConfig.for_coding("differential",
                                                                                              timesteps=2))
    assert result.ann_state and result.thresholds
    assert result.to("meta") is result
    tensors = [*result.snn.parameters(), *result.snn.buffers(), *result.thresholds.values(),
               *result.ann_state.values()]
    assert tensors and all(t.device.type == "meta" for t in tensors)
