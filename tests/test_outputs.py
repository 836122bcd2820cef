"""Models with several outputs (a dict / tuple of heads, nested, with non-tensor leaves): the SNN keeps the output
structure and decodes every output on its own; evaluation takes the class scores from the output it is told."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES
from nets import ClsHead, HeadsNet
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import ConfigError
from snnconvert.convert.outputs import describe_outputs, output_leaves, select_output
from snnconvert.runtime import compile, evaluate

NETS = str(Path(__file__).parent / "nets.py")


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(11)
    return torch.rand(24, 1, 28, 28)


def _leaves(tree):
    return dict(output_leaves(tree))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_every_output_is_decoded_in_the_models_structure(data, coding):
    model = HeadsNet().eval()
    res = convert(model, forward_loop=[data], config=ConversionConfig.for_coding(coding, timesteps=16))
    with torch.no_grad():
        ann, multi, single = model(data[:6]), res.snn(data[:6]), res.snn(data[:6], mode="single")
    assert set(multi) == {"cls", "box", "extra"} and multi["extra"][1] is None  # the non-tensor leaf is kept
    assert list(_leaves(multi)) == list(_leaves(ann)) == ["cls", "box", "extra.0"]
    for key, want in _leaves(ann).items():
        got = _leaves(multi)[key]
        assert got.shape == (16, *want.shape), key
        torch.testing.assert_close(_leaves(single)[key], got, **TOLERANCES["single_vs_multi"])
        if key != "extra.0":  # (exact: below) each head behind neurons tracks its ANN value, better by T = 16
            err = [float((got[t] - want).abs().mean() / want.abs().mean()) for t in (0, 15)]
            assert err[1] < min(err[0], 0.15 if coding == "rate" else 0.05), (key, err)
    # the head on the input is linear in the input: exact at every step (differential: offset captured per output)
    torch.testing.assert_close(multi["extra"][0], ann["extra"][0].expand(16, -1, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_outputs_without_neurons_reproduce_the_ann_at_every_step(data, coding):
    # the trunk without ReLU: cls and extra are functions of the input alone (no identity neurons re-spiking the
    # trunk), box has one neuron site behind it; method.md §12's "a network without ReLU reproduces the ANN" holds
    # per output
    model = HeadsNet(linear=True).eval()
    cfg = ConversionConfig.for_coding(coding, timesteps=5, identity_neurons="off")
    res = convert(model, forward_loop=[data], config=cfg)
    with torch.no_grad():
        ann, out = model(data[:4]), res.snn(data[:4])
    for key in ("cls", "extra.0"):
        want = _leaves(ann)[key]
        torch.testing.assert_close(_leaves(out)[key], want.expand(5, *want.shape), rtol=1e-4, atol=1e-5)


def test_evaluation_reads_the_named_output(data):
    heads, cls = HeadsNet().eval(), ClsHead().eval()
    cfg = ConversionConfig.for_coding("differential", timesteps=4)
    a, b = convert(heads, forward_loop=[data], config=cfg), convert(cls, forward_loop=[data], config=cfg)
    torch.manual_seed(2)
    batches = [(data[:12], torch.randint(0, 10, (12,))), (data[12:], torch.randint(0, 10, (12,)))]
    got = evaluate(a.snn, batches, ann=heads, output="cls", layer_errors=True)
    want = evaluate(b.snn, batches, ann=cls, layer_errors=True)
    for key in ("ann_accuracy", "snn_accuracy", "ann_accuracy_top5", "snn_accuracy_top5"):
        assert getattr(got, key) == getattr(want, key), key
    # per-unit errors cover every output, one entry each; the class scores' equal the single-output model's
    assert [k for k in got.layer_errors if k.startswith("output")] == ["output.cls", "output.box", "output.extra.0"]
    mine, theirs = got.layer_errors["output.cls"], want.layer_errors["output"]
    assert mine["ann_rms"] == pytest.approx(theirs["ann_rms"])
    assert mine["relative_error"] == pytest.approx(theirs["relative_error"])
    with pytest.raises(ConfigError, match=r"returns 3 outputs: cls \[B, 10\], box \[B, 2, 14, 14\], extra.0 \[B, 3\]; "
                                          r"name the class scores"):
        evaluate(a.snn, batches, ann=heads)
    with pytest.raises(ConfigError, match=r"returns 3 outputs: cls \[B, 10\], box \[B, 2, 14, 14\]"):
        evaluate(a.snn, batches)  # no ANN: the SNN's decoded outputs [T, B, ...] are described per sample too
    with pytest.raises(ConfigError, match="output 'boxes' is not one of the model's outputs"):
        evaluate(a.snn, batches, output="boxes")
    with pytest.raises(ConfigError, match="returns one tensor"):
        evaluate(b.snn, batches, output="cls")


def test_select_output_paths():
    t = torch.zeros(2, 3)
    tree = ({"a": t, "b": [t, None]}, t)
    assert [p for p, _ in output_leaves(tree)] == ["0.a", "0.b.0", "1"]
    assert select_output(tree, 1) is t and select_output(tree, "0.b.0") is t and select_output(t, None) is t
    assert describe_outputs((t, torch.zeros(2))) == "2 outputs: 0 [B, 3], 1 [B]"
    assert describe_outputs((torch.zeros(4, 2, 3), torch.zeros(4, 2)), leading=2) == "2 outputs: 0 [B, 3], 1 [B]"


@pytest.mark.parametrize("backend", ["native"])
def test_kernel_backend_keeps_the_outputs(data, backend):
    import shutil

    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the native backend")
    res = convert(HeadsNet().eval(), forward_loop=[data], config=ConversionConfig.for_coding("differential",
                                                                                               timesteps=3))
    with torch.no_grad():
        want, got = res.snn(data[:5]), compile(res.snn, backend)(data[:5])
    for key, value in _leaves(want).items():
        assert torch.equal(_leaves(got)[key], value), key


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_logits_names_the_class_scores(tmp_path):
    common = (f"{NETS}:HeadsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist", "--calib-images",
              16, "--eval-images", 8, "-T", 2)
    report = tmp_path / "r.json"
    result = _run(*common, "--logits", "cls", "--layer-errors", "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["logits"] == "cls" and {"output.cls", "output.box", "output.extra.0"} <= set(doc["layer_errors"])
    for flags, message in ((("--report", report), "returns 3 outputs: cls [B, 10], box [B, 2, 14, 14]"),
                           (("--logits", "score"), "output 'score' is not one of the model's outputs"),
                           (("--logits", "extra.0"), "labels go up to"),):
        report.unlink(missing_ok=True)
        result = _run(*common, *flags)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert not report.exists()
    result = _run(f"{NETS}:SpellingsNet", *common[1:], "--logits", "0")
    assert result.exit_code == 2 and "returns one tensor" in result.output


def test_onnx_model_with_two_outputs(data, tmp_path):
    """An ONNX graph with two outputs imports as a tuple (keys 0 and 1) and converts like the module."""
    class Two(HeadsNet):
        def forward(self, x):
            d = super().forward(x)
            return d["cls"], d["box"]

    model, path = Two().eval(), tmp_path / "two.onnx"
    torch.onnx.export(model, (data[:2],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits", "boxes"],
                      dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}, "boxes": {0: "b"}})
    cfg = ConversionConfig.for_coding("differential", timesteps=8)
    a, b = convert(model, forward_loop=[data], config=cfg), convert(str(path), forward_loop=[data], config=cfg)
    with torch.no_grad():
        ya, yb = a.snn(data[:6]), b.snn(data[:6])
    assert isinstance(yb, tuple) and len(yb) == 2
    for u, v in zip(ya, yb):  # conv rounding differs between the graphs: compare closely, not bit for bit
        assert u.shape == v.shape and float((u - v).abs().mean()) < 1e-4
    labels = torch.arange(6) % 10
    by_index = evaluate(b.snn, [(data[:6], labels)], output=0).snn_accuracy
    assert by_index == evaluate(b.snn, [(data[:6], labels)], output="0").snn_accuracy
    # output 0 is the class scores (the logits [B, 10], not the boxes): the accuracy of its argmax at every step
    assert by_index == pytest.approx([float((yb[0][t].argmax(-1) == labels).float().mean()) for t in range(8)])


Boxes = __import__("collections").namedtuple("Boxes", "boxes scores")


class Detector(torch.nn.Module):
    """A detection head returning a NamedTuple, or its prior boxes (a buffer without a batch dim) next to it, or a
    NaN from a damaged weight."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        torch.manual_seed(12)
        self.extra = extra
        self.conv, self.head = torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.Conv2d(8, 6, 1)
        self.register_buffer("priors", torch.rand(196, 4))
        if extra == "nan":
            with torch.no_grad():
                self.head.weight[0, 0] = float("nan")

    def forward(self, x):
        y = self.head(torch.relu(self.conv(x))).flatten(2).transpose(1, 2)  # [B, 196, 6]
        if self.extra == "priors":
            return y, self.priors
        return Boxes(y[..., :4], y[..., 4:].softmax(-1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_namedtuple_output_keeps_its_type_and_fields(data, coding):
    """torch.fx records ``Boxes(a, b)`` as a call of the class (was refused as "function is not convertible"); it is
    the output structure, like a plain tuple."""
    model = Detector().eval()
    res = convert(model, forward_loop=[data], config=ConversionConfig.for_coding(coding, timesteps=16))
    with torch.no_grad():
        ann, out = model(data[:4]), res.snn(data[:4])
    assert type(out) is Boxes and out.boxes.shape == (16, 4, 196, 4)
    for got, want in zip(out, ann):
        err = [float((got[t] - want).abs().mean() / want.abs().mean()) for t in (0, 15)]
        assert err[1] < min(err[0], 0.15 if coding == "rate" else 0.05), err


def test_an_output_without_a_batch_dim_or_not_finite_is_one_clear_error(data):
    from snnconvert.convert.errors import CalibrationError

    with pytest.raises(ConfigError, match=r"the model's output 1 has no batch dim \(\[196, 4\] for one image and for "
                                          r"two\) and does not depend on the input \(anchors, priors\?\)"):
        convert(Detector("priors").eval(), forward_loop=[data])
    with pytest.raises(CalibrationError, match="the model's output boxes is NaN or infinite on the first calibration "
                                               "image: check its weights"):
        convert(Detector("nan").eval(), forward_loop=[data])


def test_a_namedtuple_inside_a_dict_output_is_listed_with_what_to_do(data):
    """fx writes no import for a NamedTuple class inside a dict of the output (its generated forward failed with a
    NameError, reported as "a batch size fixed in the code"): it stays a listed call."""
    from snnconvert.convert.errors import UnsupportedOpError

    class InDict(Detector):
        def forward(self, x):
            return {"det": super().forward(x)}

    with pytest.raises(UnsupportedOpError, match="a NamedTuple built in the graph .* return it as the output, or "
                                                 "inside a tuple or list"):
        convert(InDict().eval(), forward_loop=[data])
