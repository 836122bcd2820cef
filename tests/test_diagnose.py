"""Per-unit ANN↔SNN errors (runtime/diagnose.py) and the analog run of a converted graph (SpikingNetwork.ann_forward).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nets import ClipNet, FunctionalPoolNet, SpellingsNet
from torch import nn
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime import compile, evaluate

NETS = str(Path(__file__).parent / "nets.py")


def _convert(model: nn.Module, coding: str, T: int, images: torch.Tensor):
    model.eval()
    cfg = ConversionConfig.for_coding(coding, timesteps=T)
    return convert(model, forward_loop=[images], config=cfg).snn


def _batches(images: torch.Tensor, size: int = 8):
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, images.shape[0], size)]


@pytest.mark.parametrize("net", [SpellingsNet, ClipNet, FunctionalPoolNet])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_ann_forward_computes_the_ann(net, coding):
    # the converted graph with every unit analog is the ANN after the passes (BN folded, pools moved, ReLU6 split)
    model = net().eval()
    x = torch.rand(6, 1, 28, 28)
    snn = _convert(model, coding, 4, x)
    with torch.no_grad():
        torch.testing.assert_close(snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-5)
        fused = compile(snn, "torch")  # the fused bounded-ReLU pairs run their clip
        torch.testing.assert_close(fused.ann_forward(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(m.analog for _, m in snn.stateful())  # the flag is cleared afterwards
    assert not snn.analog_pass


def _tiny(coding: str, threshold: float, x: torch.Tensor):
    """Linear(2 → 2, identity) → ReLU → Linear(identity): a network whose spikes are exact for suitable inputs."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    cfg = ConversionConfig.for_coding(coding, timesteps=6, threshold="max", granularity="layer")
    snn = convert(model.eval(), forward_loop=[x], config=cfg).snn
    for _, neuron in snn.neurons():
        neuron.threshold.fill_(threshold)
    snn.invalidate()
    return snn


@pytest.mark.parametrize("coding,values", [
    # differential MT (n = 4, θ = 1): 1 and 0.5 are levels, sent at step 1; nothing follows
    ("differential", [[1.0, 0.5], [-1.0, 0.25]]),
    # rate IF (θ = 1, m0 = θ/2): an input of 1 fires every step, 0 and negative inputs never
    ("rate", [[1.0, 0.0], [-1.0, 1.0]]),
])
def test_exactly_representable_activations_have_zero_error(coding, values):
    x = torch.tensor(values)
    snn = _tiny(coding, 1.0, x)
    report = evaluate(snn, [(x, torch.zeros(2, dtype=torch.long))], layer_errors=True, count_ops=False)
    errors = report.layer_errors
    assert list(errors) == [name for name, _ in snn.neurons()] + ["output"]
    for name, e in errors.items():  # a wrong decoding (rate's mean for differential, or the reverse) is not 0
        assert e["relative_error"] == [0.0] * 6, (name, e)
    site = errors[next(iter(errors))]
    expected_rms = torch.tensor(values, dtype=torch.float64).relu().square().mean().sqrt().item()
    assert site["ann_rms"] == pytest.approx(expected_rms, rel=1e-12)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_a_silent_unit_has_relative_error_one(coding):
    x = torch.tensor([[1.0, 0.5], [0.75, 2.0]])
    snn = _tiny(coding, 1e6, x)  # thresholds far above every input: no event ever
    report = evaluate(snn, [(x, torch.zeros(2, dtype=torch.long))], layer_errors=True, count_ops=False)
    assert list(report.layer_errors) == [n for n, _ in snn.neurons()] + ["output"]
    for e in report.layer_errors.values():
        assert e["relative_error"] == pytest.approx([1.0] * 6, rel=1e-12)


def test_a_unit_whose_ann_value_is_zero_has_no_relative_error():
    x = torch.tensor([[-1.0, -0.5]])
    snn = _tiny("differential", 1.0, x)
    errors = evaluate(snn, [(x, torch.zeros(1, dtype=torch.long))], layer_errors=True).layer_errors
    site = errors[next(iter(errors))]
    assert site["ann_rms"] == 0.0 and site["relative_error"] is None


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_layer_errors_are_the_same_in_both_step_modes_and_do_not_change_the_evaluation(coding):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    snn = _convert(ClipNet(), coding, 5, x)
    plain = evaluate(snn, _batches(x), timesteps=5)
    multi = evaluate(snn, _batches(x), timesteps=5, layer_errors=True)
    single = evaluate(snn, _batches(x), timesteps=5, mode="single", layer_errors=True)
    for key in ("snn_accuracy", "events_per_step", "site_events", "ops"):  # the analog pass is not counted
        assert getattr(multi, key) == getattr(plain, key), key
    assert plain.layer_errors == {}
    assert list(multi.layer_errors) == list(single.layer_errors)
    for name, e in multi.layer_errors.items():
        assert e["ann_rms"] == pytest.approx(single.layer_errors[name]["ann_rms"], rel=1e-12)
        # the SNN outputs are bit-identical in both modes; the decoding's running sums round differently (torch's CPU
        # cumsum accumulates fp32 in fp64)
        assert e["relative_error"] == pytest.approx(single.layer_errors[name]["relative_error"], rel=1e-6, abs=1e-9)
    # error falls with time on this network (differential: the residual is sent; rate: the mean converges)
    out = multi.layer_errors["output"]["relative_error"]
    assert out[-1] < out[0]


def test_fused_pairs_report_their_output_and_leave_the_other_units_unchanged():
    torch.manual_seed(1)
    x = torch.rand(16, 1, 28, 28)
    snn = _convert(ClipNet(), "differential", 4, x)
    unfused = evaluate(snn, _batches(x), timesteps=4, layer_errors=True).layer_errors
    fused_net = compile(snn, "torch")
    fused = evaluate(fused_net, _batches(x), timesteps=4, layer_errors=True).layer_errors
    pairs = [name for name, m in fused_net.stateful() if hasattr(m, "site_names")]
    assert len(pairs) == 3 and all(p in fused for p in pairs)
    members = {site for _, m in fused_net.stateful() for site in getattr(m, "site_names", ())}
    assert members <= set(unfused) and not members & set(fused)
    for name in set(unfused) - members:  # the same outputs bit for bit, so the same errors
        assert fused[name] == unfused[name], name


def test_cli_layer_errors_table_and_report(tmp_path):
    report = tmp_path / "r.json"
    args = [f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
            "--calib-images", 32, "--eval-images", 16, "-T", 3, "--coding", "differential", "--report", report]
    result = CliRunner().invoke(app, [str(a) for a in args + ["--layer-errors"]])
    assert result.exit_code == 0, result.output
    assert "ANN vs SNN per unit" in result.output and "largest at T" in result.output
    doc = json.loads(report.read_text())
    errors = doc["layer_errors"]
    assert list(errors)[-1] == "output" and len(errors) >= 4
    assert any(e["relative_error"] is not None for e in errors.values())
    assert all(len(e["relative_error"]) == 3 for e in errors.values() if e["relative_error"] is not None)
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0 and "ANN vs SNN per unit" not in result.output
    assert json.loads(report.read_text())["layer_errors"] is None


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_kernel_backends_give_the_torch_backends_layer_errors(backend):
    from snnconvert.runtime import backend_status

    ok, reason = backend_status(backend, "cpu")
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(2)
    x = torch.rand(8, 1, 28, 28)
    snn = _convert(ClipNet(), "differential", 3, x)
    want = evaluate(compile(snn, "torch"), _batches(x), timesteps=3, layer_errors=True).layer_errors
    got = evaluate(compile(snn, backend), _batches(x), timesteps=3, layer_errors=True).layer_errors
    assert got == want  # the kernels' outputs are the torch backend's bit for bit, fused pairs included


def test_a_unit_called_twice_is_refused():
    from snnconvert.convert.errors import ConfigError

    x = torch.tensor([[1.0, 0.5]])
    snn = _tiny("differential", 1.0, x)
    name = next(name for name, _ in snn.neurons())
    node = next(n for n in snn.gm.graph.nodes if n.op == "call_module" and n.target == name)
    with snn.gm.graph.inserting_after(node):
        again = snn.gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(again)
    again.args = (node,)
    snn.gm.recompile()
    with pytest.raises(ConfigError, match="called at several places"):
        evaluate(snn, [(x, torch.zeros(1, dtype=torch.long))], layer_errors=True)
