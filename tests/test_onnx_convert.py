"""An imported ONNX CNN converts like the original PyTorch module (same thresholds, same SNN outputs); the CLI
takes .onnx files and reads the data set from the zoo's metadata."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import SpellingsNet
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert


def _export(model, path, opset=17):
    torch.onnx.export(model, (torch.rand(2, 1, 28, 28),), str(path), dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = SpellingsNet().eval()
    path = tmp_path_factory.mktemp("onnx") / "spellings.onnx"
    _export(model, path)
    return model, path


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_imported_cnn_converts_like_the_module(exported, coding):
    model, path = exported
    torch.manual_seed(4)
    calib = [torch.rand(16, 1, 28, 28) for _ in range(2)]
    cfg = ConversionConfig.for_coding(coding, timesteps=8)
    a = convert(model, forward_loop=calib, config=cfg)
    b = convert(str(path), forward_loop=calib, config=cfg)
    ta, tb = list(a.thresholds.values()), list(b.thresholds.values())  # node names differ, graph order does not
    assert len(ta) == len(tb) == 6
    for x, y in zip(ta, tb):
        assert x.shape == y.shape
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        ya, yb = a.snn(x), b.snn(x)
    if coding == "rate":
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    else:
        # conv rounding differs between the two graphs; an MT event may flip where a membrane sits on a cut-off,
        # so compare the decision and the mean deviation rather than every element
        assert (ya.argmax(-1) == yb.argmax(-1)).float().mean() >= 0.99
        assert float((ya - yb).abs().mean()) < 1e-4
    assert b.source.kind == "onnx"


def test_onnx_artifact_round_trip(exported, tmp_path):
    from snnconvert.runtime import load

    _, path = exported
    res = convert(str(path), forward_loop=[torch.rand(8, 1, 28, 28)])
    saved = res.save(tmp_path / "snn")
    assert (saved / "model.onnx").is_file()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load(saved)(x), res.snn(x))


def test_cli_onnx_without_metadata_needs_data_flag(exported):
    _, path = exported
    result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 2
    assert "pass --calib-data" in result.output and "Traceback" not in result.output


def test_cli_corrupt_onnx_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx file at all")
    result = CliRunner().invoke(app, [str(bad), "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output


def test_zoo_onnx_needs_no_data_flag(tmp_path):
    from snnconvert import models_zoo

    path = models_zoo.get_entry("fmnist-vgg").onnx_path
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, [str(path), "--coding", "differential", "-T", "2", "--calib-images", "64",
                                      "--eval-images", "32", "--report", str(report)])
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads(report.read_text())
    assert doc["data"]["evaluation"]["dataset"] == "fashion-mnist" and doc["eval_images"] == 32


def test_onnx_input_shape_mismatch_is_one_line(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.rand(1, 3, 32, 32))
    path = tmp_path / "rgb.onnx"
    torch.onnx.export(model.eval(), (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    result = CliRunner().invoke(app, [str(path), "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                                      "--calib-images", "8", "--eval-images", "8"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "expects input ['N', 3, 32, 32]" in lines[0]
    path = tmp_path / "rgb_any_size.onnx"  # a dynamic size is "?", not "N" (as if it were the batch size)
    torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                      (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    result = CliRunner().invoke(app, [str(path), "--calib-data", "fashion-mnist", "--calib-images", "8",
                                      "--eval-images", "8"])
    assert result.exit_code == 2 and "expects input ['N', 3, '?', '?']" in result.output, result.output


def _converges(tmp_path, text: str, **inits):
    """Import the ONNX graph ``text`` (a 1 x 9 x 9 input), convert it with differential coding and check that the
    SNN's output converges to the imported ANN's as steps accumulate; the conversion result."""
    import onnx
    from test_onnx_import import textual

    from snnconvert.convert import load_onnx

    path = tmp_path / "model.onnx"
    onnx.save(textual(text, 17, **inits), path)
    x = torch.rand(16, 1, 9, 9)
    result = convert(str(path), forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=32))
    with torch.no_grad():
        ann, snn = load_onnx(path)(x), result.snn(x, 32)
    error = [float((s - ann).abs().max() / ann.abs().max()) for s in snn]
    assert error[-1] < 0.01 and error[-1] < error[3]
    return result


@pytest.mark.parametrize("layer", [
    'AveragePool <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER"> (r)',
    'Resize <mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1> (r, roi, sc)',  # TF's bicubic, 9 -> 5
])
def test_tf_forms_convert(tmp_path, layer):
    """TF's "SAME" average pooling (asymmetric pads, padding not counted: a per-window constant rescales the
    zero-padded average) and TF's bicubic resize (weighted source taps per axis) stay linear ops the SNN passes its
    decoded values through: the converted network converges to the imported ANN."""
    rng = np.random.default_rng(0)
    text = ('g (float[N,1,9,9] x) => (float y) { c = Conv <pads=[1,1,1,1]> (x, w, b) r = Relu(c) p = '
            f'{layer} f = Flatten(p) y = Gemm(f, w2, b2) }}')
    _converges(tmp_path, text, roi=np.zeros(0, np.float32), sc=np.array([1, 1, 0.6, 0.6], np.float32),
               w=rng.standard_normal((4, 1, 3, 3)).astype(np.float32), b=rng.standard_normal(4).astype(np.float32),
               w2=rng.standard_normal((100, 3)).astype(np.float32), b2=np.zeros(3, np.float32))


def test_keras_same_padding_on_run_time_sizes_converts(tmp_path):
    """A Keras model without fixed input sizes as tf2onnx writes it (``auto_pad=SAME_UPPER`` with stride 2 on
    dynamic H, W): the pads computed at run time from the input's size; the SNN converges to the imported ANN."""
    rng = np.random.default_rng(0)
    text = ('g (float[N,1,H,W] x) => (float y) { c = Conv <kernel_shape=[3,3], strides=[2,2], auto_pad="SAME_UPPER">'
            ' (x, w, b) r = Relu(c) p = MaxPool <kernel_shape=[2,2], strides=[2,2], auto_pad="SAME_UPPER"> (r)'
            ' f = Flatten(p) y = Gemm(f, w2, b2) }')
    _converges(tmp_path, text, w=rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
               b=rng.standard_normal(4).astype(np.float32), w2=rng.standard_normal((36, 3)).astype(np.float32),
               b2=np.zeros(3, np.float32))


def test_keras_prelu_on_a_channels_last_tensor_converts(tmp_path):
    """Keras' PReLU as tf2onnx writes it (a slope per channel of the last dim of an NHWC tensor, not torch's
    per-channel form): a selection with a constant slope, one graded unit after conversion."""
    from snnconvert.convert.passes.piecewise import PiecewiseFunction

    rng = np.random.default_rng(0)
    text = ('g (float[N,1,9,9] x) => (float y) { c = Conv <pads=[1,1,1,1]> (x, w, b) t = Transpose <perm=[0,2,3,1]>'
            ' (c) p = PRelu(t, sl) f = Flatten(p) y = Gemm(f, w2, b2) }')
    result = _converges(tmp_path, text, sl=np.array([[[0.1, 0.25, -0.5, 2.0]]], np.float32),
                        w=rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
                        b=rng.standard_normal(4).astype(np.float32),
                        w2=rng.standard_normal((324, 3)).astype(np.float32), b2=np.zeros(3, np.float32))
    units = [m for m in result.snn.modules() if isinstance(m, PiecewiseFunction)]
    assert len(units) == 1
