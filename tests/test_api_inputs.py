"""The Python API on inputs a researcher hands it beyond the happy path: wrapped, pruned, float64 or linear models,
NaN data, scalar outputs, inference mode, typos in the configuration, evaluation batches of every form, devices
that are not there, and saving where no folder can be written. Each either works as the API promises or raises
one typed error (``SnnConvertError``) that says what to do."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from snnconvert import runtime
from snnconvert.convert import ConversionConfig, convert, convert_sweep
from snnconvert.convert.artifact import ModelSource
from snnconvert.convert.errors import (
    ArtifactError,
    BackendUnavailableError,
    CalibrationError,
    ConfigError,
    DataError,
    TraceError,
)
from snnconvert.runtime import compile, evaluate, load


class Small(nn.Module):
    """conv-relu-pool-linear on 1x12x12 images, 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class Linear(nn.Module):
    """Two layers and no non-linearity at all."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 12 * 12, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class WithBuffer(Small):
    """A non-persistent buffer set after construction (left out of ``state_dict()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(5), persistent=False)

    def forward(self, x):
        return super().forward(x) + self.shift


def _data(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def _rate(T: int = 4) -> ConversionConfig:
    return ConversionConfig.for_coding("rate", timesteps=T)


def test_a_linear_model_is_exact_at_every_step_by_default():
    model, x = Linear().eval(), _data()
    result = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4))
    assert not [n for n in result.snn.gm.graph.nodes if "identity" in n.name]
    with torch.no_grad():
        torch.testing.assert_close(result.snn(x), model(x).expand(4, -1, -1), rtol=1e-5, atol=1e-6)


def test_non_persistent_buffers_are_saved_and_restored(tmp_path):
    model, x = WithBuffer().eval(), _data()
    model.shift.fill_(0.25)
    result = convert(model, forward_loop=[x], config=_rate(), source=ModelSource.python(f"{__file__}:WithBuffer"))
    result.save(tmp_path / "snn")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "snn")(x), result.snn(x))
    again, ann = runtime.load_result(tmp_path / "snn")
    assert torch.equal(ann.shift, model.shift) and torch.equal(again.ann_state["shift"], model.shift)


def test_evaluation_batches_of_every_form_and_their_errors():
    model, x = Small().eval(), _data(32)
    snn = convert(model, forward_loop=[x], config=_rate()).snn
    y = model(x).argmax(1)
    as_pairs = evaluate(snn, [(x, y)], ann=model)
    as_dicts = evaluate(snn, [{"image": x, "label": y}], ann=model)
    assert as_pairs.snn_accuracy == as_dicts.snn_accuracy and as_pairs.ann_accuracy == 1.0
    nan = x.clone()
    nan[3, 0, 5, 5] = float("nan")
    cases = [([(nan, y)], "NaN or infinite pixel values"), ([(x, y + 5)], "outside the model's 5 outputs"),
             ([], "got no images"), ([(x, y[:10])], "32 images but 10 labels"), ([{"label": y}], "an input key")]
    for batches, message in cases:
        with pytest.raises(DataError, match=message):
            evaluate(snn, batches, ann=model)
    # images alone are unlabelled: compared with the ANN (tests/test_unlabelled.py), which they need
    assert evaluate(snn, [{"image": x}], ann=model).task == evaluate(snn, [x], ann=model).task == "fidelity"
    with pytest.raises(DataError, match="no labels"):
        evaluate(snn, [x])
    # labels of any integer type (IDX files hold uint8), float64 images (as calibration reads them): the same figures
    for other in (evaluate(snn, [(x, y.to(torch.uint8))], ann=model), evaluate(snn, [(x.double(), y)], ann=model)):
        assert other.snn_accuracy == as_pairs.snn_accuracy and other.ann_accuracy == 1.0
    more = [([(x, y), (x[:0], y[:0])], "batch 1 holds no images"), (x, "an iterable of batches, got one tensor"),
            (torch.utils.data.TensorDataset(x, y), "got a TensorDataset")]
    for batches, message in more:
        with pytest.raises(DataError, match=message):
            evaluate(snn, batches, ann=model)
    with pytest.raises(ConfigError, match="takes float images"):
        evaluate(snn, [((x * 255).to(torch.uint8), y)], ann=model)  # before the ANN fails on them
    with pytest.raises(ConfigError, match="positive integer, got 2.7"):
        evaluate(snn, [(x, y)], timesteps=2.7)


def test_bad_calibration_images_and_scalar_outputs_are_one_error():
    x = _data()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="first calibration image holds NaN"):
        convert(Small().eval(), forward_loop=[x], config=_rate())

    class Scalar(Small):
        def forward(self, x):
            return super().forward(x).sum()

    with pytest.raises(ConfigError, match="0-dim scalar"):
        convert(Scalar().eval(), forward_loop=[_data()], config=_rate())


def test_converting_under_inference_mode_gives_a_usable_snn():
    model, x = Small().eval(), _data()
    with torch.inference_mode():
        result = convert(model, forward_loop=[x], config=_rate())
    out = result.snn(x)  # outside inference mode and outside no_grad
    assert out.shape == (4, 16, 5) and not any(t.is_inference() for t in result.thresholds.values())


def test_wrapped_models_are_unwrapped_and_script_modules_refused():
    model, x = Small().eval(), _data()
    plain = convert(model, forward_loop=[x], config=_rate()).snn(x)
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        with torch.no_grad():
            torch.testing.assert_close(convert(wrapped, forward_loop=[x], config=_rate()).snn(x), plain)
    with pytest.raises(ConfigError, match="TorchScript"):
        convert(torch.jit.trace(model, x[:1]), forward_loop=[x], config=_rate())


def test_model_precision_and_pruning():
    x = _data()
    with pytest.raises(ConfigError, match="parameters are float64"):
        convert(Small().double().eval(), forward_loop=[x.double()], config=_rate())
    result = convert(Small().eval(), forward_loop=[x.double()], config=_rate())  # float64 data: read as float32
    assert result.snn(x).dtype == torch.float32
    pruned = Small().eval()
    prune.l1_unstructured(pruned.conv, "weight", amount=0.5)
    pruned(x)
    with pytest.raises(TraceError, match="prune.remove"):
        convert(pruned, forward_loop=[x], config=_rate())


def test_configuration_typos_and_argument_types():
    with pytest.raises(ConfigError, match="did you mean 'timesteps'"):
        ConversionConfig.for_coding("rate", timestep=8)
    with pytest.raises(ConfigError, match="did you mean 'timesteps'"):
        _rate().replace(timestep=8)
    with pytest.raises(ConfigError, match="did you mean 'granularity'"):
        ConversionConfig(granularty="layer")  # the constructor itself
    assert ConversionConfig(allow_ann_ops="sort*").allow_ann_ops == ("sort*",)
    model, x = Small().eval(), _data()
    with pytest.raises(ConfigError, match="a list of numbers of time steps"):
        convert_sweep(model, forward_loop=[x], config=_rate(), timesteps=4)
    results = convert_sweep(model, forward_loop=[x], config=_rate(), timesteps=[1, 2])
    y = model(x).argmax(1)
    assert runtime.sweep(results, [(x, y)], ann=model).chosen in (1, 2)  # a list, read once per evaluation
    snn = results[2].snn
    for bad in (2.7, "4", True, 0):
        with pytest.raises(ConfigError, match="positive integer"):
            snn(x, bad)
    assert snn(x, np.int64(3)).shape[0] == 3
    # images of another size or rank: named against the size converted at (a layer's error counted T·B rows)
    assert snn.input_shape == (1, 12, 12)
    with pytest.raises(ConfigError, match=r"the SNN fails on images of shape \[1, 16, 16\] \(.*\); it was converted "
                                          r"for images of shape \[1, 12, 12\]"):
        snn(torch.rand(3, 1, 16, 16))
    with pytest.raises(DataError, match=r"evaluation batch 0: images of shape \[12, 12\], the SNN was converted for "
                                        r"images of shape \[1, 12, 12\]"):
        evaluate(snn, [(x[:, 0], y)], ann=model)
    with pytest.raises(ConfigError, match="float images"):
        snn((x * 255).to(torch.uint8))


def test_devices_that_are_not_there_and_saving_where_no_folder_can_be(tmp_path):
    model, x = Small().eval(), _data()
    result = convert(model, forward_loop=[x], config=_rate(), source=ModelSource.python(f"{__file__}:Small"))
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        compile(result.snn, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            compile(result.snn, device="cuda")
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            evaluate(result.snn, [(x, model(x).argmax(1))], device="cuda")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ArtifactError, match="cannot save to"):
        result.save(tmp_path / "a_file" / "snn")


@pytest.mark.parametrize("edit", ["snn threshold", "snn weight", "thresholds dict"])
def test_a_result_changed_after_conversion_is_not_saved_as_another_network(tmp_path, edit):
    """An artifact rebuilds the SNN from the model's weights and the thresholds at conversion: saving an SNN whose
    thresholds or weights were changed since, or a changed thresholds dict, wrote another network than the result's
    (0.14 apart after doubling a threshold); both are refused, and the unchanged result still saves and reloads."""
    model, x = Small().eval(), _data()
    result = convert(model, forward_loop=[x], config=_rate(), source=ModelSource.python(f"{__file__}:Small"))
    result.snn(x)  # running it (captured offsets, counters) is not a change
    assert load(result.save(tmp_path / "plain")) is not None
    name = next(iter(result.thresholds))
    with torch.no_grad():
        if edit == "snn threshold":
            result.snn.gm.get_submodule(name).threshold.mul_(2)
        elif edit == "snn weight":
            result.snn.gm.fc.weight.mul_(0.5)
        else:
            result.thresholds[name] = result.thresholds[name] * 2
    says = "result.thresholds was changed after conversion, but result.snn still runs" if edit == "thresholds dict" \
        else "result.snn.s weights or thresholds were changed after conversion"
    with pytest.raises(ArtifactError, match=says):
        result.save(tmp_path / "edited")
    assert not (tmp_path / "edited").exists()


def test_a_map_style_dataset_is_calibration_data_in_order():
    model, x = Small().eval(), _data(40)
    labels = torch.zeros(40, dtype=torch.long)
    from_dataset = convert(model, forward_loop=torch.utils.data.TensorDataset(x, labels), config=_rate())
    from_batches = convert(model, forward_loop=[(x, labels)], config=_rate())
    for name, threshold in from_batches.thresholds.items():
        torch.testing.assert_close(from_dataset.thresholds[name], threshold)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_sample_with_nan_or_inf_gets_nan_outputs_and_the_others_do_not_change(coding):
    model, x = Small().eval(), _data()
    snn = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=3)).snn
    bad = x.clone()
    bad[2, 0, 5, 5], bad[7, 0, 0, 0] = float("nan"), float("inf")
    assert not torch.isfinite(model(bad)[[2, 7]]).all(1).any()  # the ANN has no finite answer for them either
    for mode in ("multi", "single"):
        out, clean = snn(bad, mode=mode), snn(x, mode=mode)
        assert torch.isnan(out[:, [2, 7]]).all(), mode
        keep = [i for i in range(len(x)) if i not in (2, 7)]
        torch.testing.assert_close(out[:, keep], clean[:, keep], rtol=0, atol=0)


def test_a_forward_loop_needing_more_arguments_is_one_error_and_bound_ones_work():
    model, x = Small().eval(), _data()

    def loop(net, batches, scale=1.0):
        for batch in batches:
            net(batch * scale)

    with pytest.raises(ConfigError, match=r"forward_loop .*loop\(net, batches, scale=1.0\) is called as "
                                          r"forward_loop\(model\) .*'batches'.*functools.partial"):
        convert(model, forward_loop=loop, example_inputs=x[:2], config=_rate())
    bound = convert(model, functools.partial(loop, batches=[x]), example_inputs=x[:2], config=_rate())  # positional
    direct = convert(model, forward_loop=[x], config=_rate())
    for name, threshold in direct.thresholds.items():
        torch.testing.assert_close(bound.thresholds[name], threshold)


def test_saving_with_a_source_that_builds_another_model_fails_at_save(tmp_path):
    model, x = Small().eval(), _data()
    result = convert(model, forward_loop=[x], config=_rate(), source=ModelSource.python(f"{__file__}:Linear"))
    with pytest.raises(ArtifactError, match="builds another model than the converted one"):
        result.save(tmp_path / "snn")
    assert not (tmp_path / "snn").exists()
