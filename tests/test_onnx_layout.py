"""Channels-last ONNX models (TF / Keras through tf2onnx): ``input_layout="channels-last"`` puts a transpose in front
of the imported graph, so the network takes the channels-first data every data set gives; tf2onnx's own transpose
behind the input cancels it."""
from __future__ import annotations

import operator
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from nets import SpellingsNet
from test_onnx_import import rand, run_ort, textual
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert, load_onnx
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.onnx_layout import pixel_scale

#: a Keras-style file: [N, H, W, C] input, then tf2onnx's transpose to channels-first
KERAS_TEXT = ('g (float[N,28,28,1] images) => (float y) { t = Transpose <perm=[0,3,1,2]> (images)'
              ' c = Conv <kernel_shape=[3,3], pads=[1,1,1,1]> (t, w, b) r = Relu(c) p = GlobalAveragePool(r)'
              ' f = Flatten(p) y = Gemm <transB=1> (f, fc) }')
KERAS_INITS = {"w": rand(4, 1, 3, 3), "b": rand(4, seed=1), "fc": rand(10, 4, seed=2)}
FMNIST = ["--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist", "--calib-images", "16",
          "--eval-images", "16", "-T", "4", "--no-calibration-check"]


def _permutes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.target is torch.permute]


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def test_tf2onnx_transpose_cancels_and_the_module_takes_channels_first_input():
    model = textual(KERAS_TEXT, **KERAS_INITS)
    gm = load_onnx(model, input_layout="channels-last")
    assert _permutes(gm) == []  # the inserted transpose and the file's undo each other
    first = next(n for n in gm.graph.nodes if n.op == "call_module")
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert first.args[0] is placeholder  # the conv reads the input directly
    assert gm.meta["onnx"]["input_shape"] == [None, 1, 28, 28]
    assert gm.meta["onnx"]["input_layout"] == "channels-last"
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        got = gm(x).numpy()
    np.testing.assert_allclose(got, run_ort(model, _nhwc(x))[0], rtol=1e-5, atol=1e-5)
    plain = load_onnx(model)  # the default: the file's own layout
    assert plain.meta["onnx"]["input_shape"] == [None, 28, 28, 1]
    assert plain.meta["onnx"]["input_layout"] == "channels-first" and len(_permutes(plain)) == 1


def test_one_channel_reshape_cancels_too():
    """With one channel tf2onnx moves the channel axis by a Reshape: the inserted permute and it cancel; a Reshape to
    another shape is kept."""
    text = KERAS_TEXT.replace("t = Transpose <perm=[0,3,1,2]> (images)", "t = Reshape(images, to)")
    for to, cancels in (([-1, 1, 28, 28], True), ([-1, 28, 1, 28], False)):
        model = textual(text if cancels else text.replace("c = Conv", "u = Transpose <perm=[0,2,1,3]> (t) c = Conv")
                        .replace("(t, w, b)", "(u, w, b)"), to=np.array(to, np.int64), **KERAS_INITS)
        gm = load_onnx(model, input_layout="channels-last")
        reshapes = [n for n in gm.graph.nodes if n.target is torch.reshape]
        assert (reshapes == [] and _permutes(gm) == []) if cancels else len(reshapes) == 1
        x = torch.rand(3, 1, 28, 28)
        with torch.no_grad():
            got = gm(x).numpy()
        np.testing.assert_allclose(got, run_ort(model, _nhwc(x))[0], rtol=1e-5, atol=1e-5)


def test_the_permute_moves_behind_constant_elementwise_ops_and_cancels():
    """Keras' Rescaling / Normalization in front of tf2onnx's transpose (a scalar, a per-channel vector, a full-rank
    constant as the first operand): they run on the channels-first input with permuted constants and the two
    transposes still cancel."""
    text = ('g (float[N,H,W,3] images) => (float y) { a = Mul(images, half) b = Add(a, k) c = Sub(full, b)'
            ' d = Div(c, k) t = Transpose <perm=[0,3,1,2]> (d) y = ReduceSum <keepdims=0> (t, axes) }')
    model = textual(text, half=np.array(0.5, np.float32), k=rand(3, seed=3) + 3, full=rand(1, 1, 5, 3, seed=4),
                    axes=np.array([2, 3], np.int64))
    gm = load_onnx(model, input_layout="channels-last")
    assert _permutes(gm) == []
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    first = next(iter(placeholder.users))
    assert first.target in (operator.mul, torch.mul)
    assert {tuple(b.shape) for b in gm.buffers()} == {(1, 3, 1, 1), (1, 3, 1, 5)}  # the originals went with their nodes
    x = torch.rand(2, 3, 4, 5)
    with torch.no_grad():
        got = gm(x).numpy()
    np.testing.assert_allclose(got, run_ort(model, _nhwc(x))[0], rtol=1e-5, atol=1e-5)


def test_other_first_nodes_keep_one_permute_and_run_time_sizes_follow():
    """An input read by an op of two inputs and by Shape (a run-time spatial size): one permute stays in front of the
    op, and the size reads take the matching dimension of the channels-first input."""
    text = ('g (float[N,H,W,3] images) => (float y) { s = Mul(images, images) t = Transpose <perm=[0,3,1,2]> (s)'
            ' m = ReduceSum <keepdims=0> (t, axes) sh = Shape(images) h = Gather(sh, one) w = Gather(sh, two)'
            ' hw = Mul(h, w) f = Cast <to=1> (hw) y = Div(m, f) }')
    model = textual(text, axes=np.array([1, 2, 3], np.int64), one=np.array(1, np.int64), two=np.array(2, np.int64))
    gm = load_onnx(model, input_layout="channels-last")
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert len(_permutes(gm)) == 2  # ours in front of Mul, the file's after it: they no longer meet
    sizes = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "size"]
    assert sizes and all(n.args[0] is placeholder and n.args[1] in (2, 3) for n in sizes)
    assert gm.meta["onnx"]["input_shape"] == [None, 3, None, None]
    for h, w in ((5, 7), (8, 3)):
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            got = gm(x).numpy()
        np.testing.assert_allclose(got, run_ort(model, _nhwc(x))[0], rtol=1e-5, atol=1e-6)


def test_a_flat_input_has_no_channels_to_move():
    model = textual('g (float[N,8] v) => (float y) { y = Relu(v) }')
    with pytest.raises(ConfigError, match="rank >= 3.*rank 2.*channels-first"):
        load_onnx(model, input_layout="channels-last")
    with pytest.raises(ConfigError, match="not valid; choose one of: channels-first, channels-last"):
        load_onnx(model, input_layout="nhwc")
    with pytest.raises(ConfigError, match="input_layout 'NHWC' is not valid"):
        ConversionConfig(input_layout="NHWC")


class _ChannelsLast(torch.nn.Module):
    """``net`` behind a transpose from [N, H, W, C]: exported, the file tf2onnx would write for a Keras model."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def _export(model, path, example):
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      dynamic_axes={"images": {0: "batch"}})


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """The same CNN exported channels-first and behind a channels-last transpose."""
    folder = tmp_path_factory.mktemp("layouts")
    net = SpellingsNet().eval()
    _export(net, folder / "nchw.onnx", torch.rand(2, 1, 28, 28))
    _export(_ChannelsLast(net), folder / "nhwc.onnx", torch.rand(2, 28, 28, 1))
    return folder / "nchw.onnx", folder / "nhwc.onnx"


def test_channels_last_file_converts_to_the_channels_first_files_network(two_layouts):
    nchw, nhwc = two_layouts
    torch.manual_seed(5)
    calib = [torch.rand(16, 1, 28, 28) for _ in range(2)]
    cfg = ConversionConfig.for_coding("differential", timesteps=4)
    a = convert(str(nchw), forward_loop=calib, config=cfg)
    b = convert(str(nhwc), forward_loop=calib, config=cfg.replace(input_layout="channels-last"))
    assert a.report.ops_after == b.report.ops_after  # the same graph: no permute left
    assert [t.shape for t in a.thresholds.values()] == [t.shape for t in b.thresholds.values()]
    for x, y in zip(a.thresholds.values(), b.thresholds.values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        ya, yb = a.snn(x), b.snn(x)
    assert (ya.argmax(-1) == yb.argmax(-1)).float().mean() >= 0.99
    assert float((ya - yb).abs().mean()) < 1e-4
    assert b.config.input_layout == "channels-last"


def test_layout_of_an_imported_graph_must_match_the_configuration(two_layouts):
    _, nhwc = two_layouts
    calib = [torch.rand(8, 1, 28, 28)]
    gm = load_onnx(nhwc, input_layout="channels-last")
    with pytest.raises(ConfigError, match="imported with input_layout='channels-last'.*input_layout='channels-first'"):
        convert(gm, forward_loop=calib)
    res = convert(gm, forward_loop=calib, config=ConversionConfig(input_layout="channels-last"))
    assert res.config.input_layout == "channels-last"
    with pytest.raises(ConfigError, match="applies to ONNX models"):
        convert(SpellingsNet().eval(), forward_loop=calib, config=ConversionConfig(input_layout="channels-last"))


def test_the_wrong_layout_names_which_side_is_wrong(two_layouts):
    """A channels-first file converted as channels-last, and the other way round: the message says what to change
    (it said "the data are channels-last" of channels-first data)."""
    nchw, nhwc = two_layouts
    calib = [torch.rand(8, 1, 28, 28)]
    with pytest.raises(ConfigError, match=r"the model itself takes channels-first images .* convert it without "
                                          r"input_layout='channels-last'"):
        convert(str(nchw), forward_loop=calib, config=ConversionConfig(input_layout="channels-last"))
    with pytest.raises(ConfigError, match=r"the model takes channels-last images .* input_layout='channels-last'"):
        convert(str(nhwc), forward_loop=calib)
    with pytest.raises(ConfigError, match=r"the data are channels-last; give them channels-first"):
        convert(str(nchw), forward_loop=[torch.rand(8, 28, 28, 1)])


def test_cli_converts_saves_and_reevaluates_a_channels_last_file(two_layouts, tmp_path):
    _, nhwc = two_layouts
    runner = CliRunner()
    refused = runner.invoke(app, [str(nhwc), *FMNIST])
    assert refused.exit_code == 2
    lines = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "channels-last" in lines[0] and "--input-layout channels-last" in lines[0], lines
    report = tmp_path / "r.json"
    done = runner.invoke(app, [str(nhwc), *FMNIST, "--input-layout", "channels-last", "--coding", "differential",
                               "--output", str(tmp_path / "snn"), "--report", str(report)])
    assert done.exit_code == 0, done.output
    assert "(channels-last input, transposed in front):" in " ".join(done.output.split())
    import json

    first = json.loads(report.read_text())
    assert first["config"]["input_layout"] == "channels-last"
    again = tmp_path / "again.json"
    saved = runner.invoke(app, [str(tmp_path / "snn"), "--eval-images", "16", "--report", str(again)])
    assert saved.exit_code == 0, saved.output
    doc = json.loads(again.read_text())
    for key in ("ann_accuracy", "snn_accuracy", "events", "synaptic_ops", "thresholds", "config"):
        assert doc[key] == first[key], key
    flag = runner.invoke(app, [str(tmp_path / "snn"), "--input-layout", "channels-last"])
    assert flag.exit_code == 2 and "--input-layout" in flag.output and "does not apply" in flag.output
    zoo = runner.invoke(app, ["fmnist-vgg", "--input-layout", "channels-last", "--eval-images", "8"])
    assert zoo.exit_code == 2
    lines = [ln for ln in zoo.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--input-layout channels-last applies to ONNX models" in lines[0], lines


def test_a_model_that_rescales_pixel_values_itself_is_named(caplog):
    """Keras' Rescaling(1/255) (EfficientNet) or Rescaling(1/127.5, offset=-1) (MobileNetV3) in front of the layers:
    the model expects [0, 255], and the command, whose data are [0, 1] images, warns once with the flag to use."""
    def graph(first: str, **inits):
        text = KERAS_TEXT.replace("(images)", "(a)").replace("{ t =", "{ " + first + " t =")
        return load_onnx(textual(text, **KERAS_INITS, **inits), input_layout="channels-last")

    assert pixel_scale(graph("a = Mul(images, s)", s=np.array(1 / 255, np.float32))) == pytest.approx(255)
    assert pixel_scale(graph("a = Div(images, s)", s=np.array(255, np.float32))) == pytest.approx(255)
    assert pixel_scale(graph("m = Mul(images, s) a = Add(m, o)", s=np.full((1, 1, 1, 1), 1 / 127.5, np.float32),
                             o=np.array(-1, np.float32))) == pytest.approx(127.5)
    assert pixel_scale(graph("a = Mul(images, s)", s=np.array(0.5, np.float32))) is None  # not a pixel scale
    assert pixel_scale(graph("a = Div(s, images)", s=np.array(255, np.float32))) is None  # 255 / x
    varying = np.linspace(1 / 255, 2 / 255, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    assert pixel_scale(graph("a = Mul(images, s)", s=varying)) is None  # not one scale of every pixel
    assert pixel_scale(load_onnx(textual(KERAS_TEXT, **KERAS_INITS), input_layout="channels-last")) is None
    path = Path(tempfile.mkdtemp()) / "rescaling.onnx"
    text = KERAS_TEXT.replace("(images)", "(a)").replace("{ t =", "{ a = Mul(images, s) t =")
    onnx.save(textual(text, **KERAS_INITS, s=np.array(1 / 255, np.float32)), path)
    runner = CliRunner()
    warned = runner.invoke(app, [str(path), *FMNIST, "--input-layout", "channels-last"])
    assert warned.exit_code == 0, warned.output
    said = [r.getMessage() for r in caplog.records if "Rescaling" in r.getMessage()]
    assert len(said) == 1 and "divides its input by 255 first (Keras' Rescaling layer): it expects pixel values in " \
        "[0, 255]" in said[0] and "--normalize 0,0.00392156862745098" in said[0]
    caplog.clear()
    fed = runner.invoke(app, [str(path), *FMNIST, "--input-layout", "channels-last", "--normalize",
                              "0,0.00392156862745098"])
    assert fed.exit_code == 0 and not [r for r in caplog.records if "Rescaling" in r.getMessage()]
