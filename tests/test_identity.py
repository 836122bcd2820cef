"""Identity neurons (method.md §4.7, §6 "dispatch by structure", §7.1/§7.7 thresholds): signed, unconstrained
neurons in front of every Conv/Linear layer whose input is not already an event stream (``identity_neurons="auto"``,
the default), also in front of the input layer (``"all"``), or nowhere (``"off"``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import GatedNet, SpellingsNet, TinyViT
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, ModelSource, convert, load_artifact, prepare
from snnconvert.convert.calibrate.observers import _groups
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.errors import ConfigError, UnsupportedOpError
from snnconvert.convert.passes.identity import IdentitySite, insert_identity_sites, stream_kinds
from snnconvert.convert.pipeline import ConversionReport
from snnconvert.runtime import load
from snnconvert.runtime.energy import input_kinds

NETS = str(Path(__file__).parent / "nets.py")


class SiluNet(nn.Module):
    """No ReLU: a SiLU stem, a linear bottleneck (conv -> conv), a tensor read by two convs and a residual add, a
    GELU, an average-pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.proj = nn.Conv2d(6, 6, 1)
        self.left, self.right = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        h = F.silu(self.stem(x))
        p = self.proj(self.conv1(h))  # conv -> conv: the second reads a layer's output
        g = F.gelu(p)
        y = self.left(g) + self.right(g) + g  # g: read by two convs and an add
        return self.fc(y.mean((2, 3)))


def _cfg(coding="differential", **kw) -> ConversionConfig:
    return ConversionConfig.for_coding(coding, **kw)


def _sites(gm) -> dict[str, str]:
    """{site module name: the node it reads}."""
    return {n.target: n.args[0].name for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), IdentitySite)}


def _readers(gm, target: str) -> set[str]:
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target)
    return {u.target if u.op == "call_module" else u.name for u in node.users}


def test_auto_sites_go_where_a_layer_reads_dense_values():
    report = ConversionReport()
    gm = prepare(SiluNet().eval(), _cfg(), report)
    # not in front of the stem (it reads the image); the conv after the analog SiLU, the conv after a conv, the two
    # convs reading g (ONE shared site) and the linear head reading a mean of dense values
    assert _sites(gm) == {"silu_identity": "silu", "conv1_identity": "conv1", "gelu_identity": "gelu",
                          "mean_identity": "mean"}
    assert _readers(gm, "gelu_identity") == {"left", "right"}
    gelu = next(n for n in gm.graph.nodes if n.name == "gelu")
    assert "add_1" in {u.name for u in gelu.users}  # the residual add keeps the exact dense value
    entry = report.entry("insert_identity_sites")
    assert entry.modified and entry.counts == {"dense": 4}
    kinds = stream_kinds(gm, _cfg())
    by_name = {n.name: k for n, k in kinds.items()}
    assert by_name["x"] == "input" and by_name["stem"] == "dense" and by_name["gelu_identity"] == "events"
    assert by_name["add"] == "dense"  # conv outputs
    # idempotent: a second run finds every layer reading events (or the image) and changes nothing
    again = insert_identity_sites(gm, _cfg(), ConversionReport())
    assert not again.modified and len(_sites(gm)) == 4


def test_all_also_spike_encodes_the_input_and_off_inserts_nothing():
    gm = prepare(SiluNet().eval(), _cfg(identity_neurons="all"), ConversionReport())
    assert _sites(gm)["x_identity"] == "x" and len(_sites(gm)) == 5
    with pytest.raises(UnsupportedOpError, match="identity_neurons is 'off'") as info:
        prepare(SiluNet().eval(), _cfg(identity_neurons="off"), ConversionReport())
    assert {n.name for n in info.value.nodes} == {"silu", "gelu"}
    assert "§4.7" in str(info.value)


def test_relu_networks_get_no_site_in_auto_mode():
    """Every layer of a ReLU CNN reads spikes (or the image): auto changes nothing."""
    gm = prepare(SpellingsNet().eval(), _cfg(), ConversionReport())
    assert _sites(gm) == {}


def test_a_nonlinear_model_whose_layers_read_no_dense_value_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU(), nn.Flatten())
    with pytest.raises(UnsupportedOpError, match="no Conv/Linear layer reads a dense value"):
        prepare(model.eval(), _cfg(), ConversionReport())


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_identity_neurons_are_signed_and_the_converted_graph_is_the_ann(coding):
    model = SiluNet().eval()
    x = torch.rand(16, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=_cfg(coding, timesteps=4))
    identity = {n: m for n, m in res.snn.neurons() if n.endswith("_identity")}
    assert len(identity) == 4 and set(identity) <= set(res.thresholds)
    for m in identity.values():
        assert isinstance(m, SpikingNeuron) and m.signed and not m.relu_constrained
    counts = res.report.entry("replace_activations").counts
    assert counts["SpikingNeuron(identity)"] == 4
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_identity_neurons_carry_negative_values_and_converge(coding):
    """The decoded output of every identity neuron approaches its decoded input as T grows, negative values
    included, and the whole SNN approaches the ANN (max thresholds on the evaluated images: no clipping; both step
    modes agree)."""
    model = SiluNet().eval()
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=_cfg(coding, timesteps=32, identity_threshold="max"))
    snn = res.snn
    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, (a[0], o)))
             for n, m in snn.neurons() if n.endswith("_identity")]
    with torch.no_grad():
        out = snn(x)
    for h in hooks:
        h.remove()
    T = 32
    steps = torch.arange(1, T + 1, dtype=torch.float32)
    assert len(seen) == len([n for n, _ in snn.neurons() if n.endswith("_identity")]) > 0  # every one was called
    for name, (inp, o) in seen.items():
        neuron = snn.gm.get_submodule(name)
        inp, o = inp.reshape(T, -1, *inp.shape[1:]), o.reshape(T, -1, *o.shape[1:])
        view = (-1,) + (1,) * (inp.dim() - 1)
        if coding == "rate":
            decoded_in, decoded_out = (inp.cumsum(0) / steps.view(view), o.cumsum(0) / steps.view(view))
        else:
            decoded_in = neuron.bias + ((inp - neuron.bias) / steps.view(view)).cumsum(0)
            decoded_out = (o / steps.view(view)).cumsum(0)
        assert (decoded_out[-1] < 0).any(), name  # signed: negative values are represented
        err = [((decoded_out[t] - decoded_in[t]).norm() / decoded_in[t].norm()).item() for t in (0, T - 1)]
        # rate IF: error ≤ θ/(2T) per neuron, about 2 % here; differential MT: well under 1 %
        shrink, bound = (0.25, 0.05) if coding == "rate" else (0.1, 0.02)
        assert err[1] < shrink * err[0] and err[1] < bound, (name, err)
    with torch.no_grad():
        ann = model(x)
        assert ((out[-1] - ann).norm() / ann.norm()) < 0.05
        torch.testing.assert_close(snn(x[:4], mode="single"), out[:, :4], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("scale", "tail"), [(1.0, "both"), (2.5, "both"), (1.0, "upper")])
def test_identity_thresholds_are_a_percentile_of_the_input_times_c(scale, tail):
    """``both``: the percentile of |x|; ``upper``: of the signed input (the reference's rule); times c."""
    model = SiluNet().eval()
    x = torch.rand(24, 1, 8, 8)
    res = convert(model, forward_loop=[x[:12], x[12:]],
                  config=_cfg(threshold_scale=scale, identity_threshold="99%", identity_tail=tail))
    values = {}
    gm = prepare(model, _cfg(), ConversionReport())
    hooks = [gm.get_submodule(t).register_forward_hook(lambda m, a, o, t=t: values.__setitem__(t, o))
             for t in _sites(gm)]
    with torch.no_grad():
        gm(x)
    for h in hooks:
        h.remove()
    assert len(values) == 4
    for name, v in values.items():
        v = v.abs() if tail == "both" else v
        expected = torch.quantile(_groups(v, "channel").double(), 0.99, dim=1).clamp_min(0) * scale
        torch.testing.assert_close(res.thresholds[name].reshape(-1).double(), expected.float().double(),
                                   rtol=1e-5, atol=1e-6)
    sites = {s["site"]: s for s in res.calibration.sites}
    assert sites["gelu_identity"]["kind"] == "identity" and sites["gelu_identity"]["scale"] == scale
    assert sites["gelu_identity"]["method"] == "99%" and sites["gelu_identity"]["tail"] == tail


def test_identity_options_are_validated():
    with pytest.raises(ConfigError, match="identity_threshold"):
        _cfg(identity_threshold="iterate")
    with pytest.raises(ConfigError, match="identity_neurons"):
        _cfg(identity_neurons="some")
    with pytest.raises(ConfigError, match="threshold_scale"):
        _cfg(threshold_scale=0)
    with pytest.raises(ConfigError, match="identity_tail"):
        _cfg(identity_tail="lower")
    assert _cfg(identity_threshold="max").identity_threshold.method == "max"
    with pytest.raises(ConfigError, match=r"identity_levels must be an integer in \[1, 16\]"):
        _cfg(identity_levels=0)
    with pytest.raises(ConfigError, match="identity_levels=6 needs multi-threshold neurons"):
        _cfg("rate", identity_levels=6)
    assert _cfg(levels=3).replace(identity_levels=None).identity_n == 3
    assert (_cfg().identity_n, _cfg(levels=3).identity_n, _cfg("rate", neuron="mt", levels=3).identity_n) == (6, 6, 3)
    single = _cfg(neuron="if")  # the differential preset with single-threshold neurons: n = 1 everywhere
    assert (single.levels, single.identity_n) == (1, 1)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_identity_levels_apply_to_identity_neurons_only(coding):
    """``identity_levels`` sets n of the identity neurons; ReLU neurons keep ``levels``; the thresholds (percentile
    of |x|) do not depend on n."""
    model = GatedNet().eval()
    x = torch.rand(8, 1, 12, 12)
    base = _cfg(coding, timesteps=3, neuron="mt", levels=3).replace(identity_levels=None)
    a = convert(model, forward_loop=[x], config=base)
    b = convert(model, forward_loop=[x], config=base.replace(identity_levels=6))
    for res, n_identity in ((a, 3), (b, 6)):
        levels = {name: m.n_levels for name, m in res.snn.neurons()}
        assert {v for k, v in levels.items() if k.endswith("_identity")} == {n_identity}
        assert {v for k, v in levels.items() if not k.endswith("_identity")} == {3}
    assert all(torch.equal(a.thresholds[k], b.thresholds[k]) for k in a.thresholds)


def test_layers_after_identity_neurons_read_spikes_in_the_energy_metric():
    model = SiluNet().eval()
    x = torch.rand(8, 1, 8, 8)
    auto = input_kinds(convert(model, forward_loop=[x], config=_cfg(timesteps=2)).snn)
    assert auto == {"stem": "analog", "conv1": "spike", "proj": "spike", "left": "spike", "right": "spike",
                    "fc": "spike"}
    every = input_kinds(convert(model, forward_loop=[x], config=_cfg(timesteps=2, identity_neurons="all")).snn)
    assert set(every.values()) == {"spike"}


def test_gated_net_sites_and_artifact_round_trip(tmp_path):
    """GatedNet: sites after the analog SiLU stem, in front of the SE gate's first conv and of the head (LayerNorm
    output); the artifact rebuilds the same SNN, and an artifact written before identity neurons existed (no
    ``identity_neurons`` key) is read as "off", one without ``identity_levels`` with n = ``levels``."""
    model = GatedNet().eval()
    x = torch.rand(8, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=_cfg(timesteps=3),
                  source=ModelSource.python(f"{NETS}:GatedNet"))
    assert sorted(n for n in res.thresholds if n.endswith("_identity")) == [
        "adaptive_avg_pool2d_identity", "norm_identity", "stem_act_identity"]
    path = res.save(tmp_path / "art")
    snn = load(path)
    with torch.no_grad():
        assert torch.equal(snn(x), res.snn(x))
    doc = json.loads((path / "config.json").read_text())
    assert doc["config"]["identity_levels"] == 6
    del doc["config"]["identity_neurons"], doc["config"]["identity_levels"]
    (path / "config.json").write_text(json.dumps(doc))
    (path / "manifest.json").unlink()  # (a folder written before manifests existed)
    old = load_artifact(path).config  # written before identity_levels existed: identity neurons had n = levels
    assert old.identity_neurons == "off" and old.identity_levels is None and old.identity_n == old.levels == 4


def test_cli_reports_identity_sites_and_refuses_off_on_a_relu_free_model(tmp_path):
    runner = CliRunner()
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\n"
                   "def build():\n"
                   "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 4, 3, padding=1),"
                   " nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    data = ["--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist", "--calib-images", "64",
            "--eval-images", "32"]
    result = runner.invoke(app, [f"{net}:build", "--coding", "differential", "-T", "2", *data,
                                 "--identity-neurons", "off"])
    assert result.exit_code == 1
    assert "--identity-neurons is 'off'" in result.output and "Traceback" not in result.output
    report = tmp_path / "r.json"
    result = runner.invoke(app, [f"{net}:build", "--coding", "differential", "-T", "2", *data,
                                 "--report", str(report), "--threshold-scale", "2", "--identity-levels", "5"])
    assert result.exit_code == 0, result.output
    assert "0 ReLU site(s) + 2 identity neuron site(s) (99.9% of |x| x 2, n = 5)" in " ".join(result.output.split())
    doc = json.loads(report.read_text())
    assert doc["config"]["identity_neurons"] == "auto" and doc["config"]["threshold_scale"] == 2.0
    assert doc["config"]["identity_levels"] == 5 and doc["config"]["levels"] == 4
    result = runner.invoke(app, [f"{net}:build", *data, "--identity-neurons", "sometimes"])
    assert result.exit_code == 2 and "--identity-neurons 'sometimes' is not valid" in result.output


def test_the_upper_tail_silences_a_negative_channel_both_tails_do_not():
    """A channel whose values are all negative (SiLU of a negative pre-activation): the reference's upper-tail
    percentile gives θ = 0 (the neuron is silent, the next layer loses the channel); the default takes |x|."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.SiLU(), nn.Conv2d(2, 3, 3), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].bias.copy_(torch.tensor([-4.0, 1.0]))
    x = torch.rand(8, 1, 6, 6)
    both = convert(model, forward_loop=[x], config=_cfg(timesteps=4)).thresholds["_1_identity"].reshape(-1)
    upper = convert(model, forward_loop=[x], config=_cfg(timesteps=4, identity_tail="upper")
                    ).thresholds["_1_identity"].reshape(-1)
    assert upper[0] == 0 and both[0] > 0.05
    torch.testing.assert_close(upper[1], both[1])


# --- attention: matrix products of two activations (method.md §5.2) with identity neurons on both operands -------


def _matmul_units(snn) -> dict:
    from snnconvert.convert.passes.spikify import is_matmul_unit

    return {n: m for n, m in snn.stateful() if is_matmul_unit(m)}


def test_attention_matmuls_become_product_units_fed_by_identity_neurons():
    model = TinyViT().eval()
    x = torch.rand(16, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=_cfg(timesteps=4))
    gm = res.snn.gm
    units = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in _matmul_units(res.snn)]
    assert len(units) == 2
    neurons = set(res.snn.neuron_names)
    for node in units:  # both operands are identity neurons' spikes
        assert [a.target for a in node.args if a.op == "call_module"] == [a.target for a in node.args]
        assert all(a.target in neurons and a.target.endswith("_identity") for a in node.args)
    counts = res.report.entry("replace_activations").counts
    assert counts["GradedUnit(matmul)"] == 2 and counts["GradedUnit(softmax)"] == 1
    # token tensors: per-feature thresholds ([C], the last dim) in front of Linear layers, per head in front of
    # the products
    assert res.thresholds["norm1_identity"].shape == (8,)
    assert res.thresholds["softmax_identity"].shape == (2, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-6)


def test_token_channel_tokens_is_the_reference_rule():
    """``token_channel="tokens"``: thresholds on token tensors run along dim 1 (one per token position, the
    reference's "channel"), exactly the per-row statistic of the tensor moved to ``[N, B*C]``; the attention
    operands' sites (per head, dim 1) are unchanged."""
    model = TinyViT().eval()
    x = torch.rand(16, 1, 12, 12)
    cfg = _cfg(timesteps=4, identity_threshold="max")
    features = convert(model, forward_loop=[x], config=cfg).thresholds
    tokens = convert(model, forward_loop=[x], config=cfg.replace(token_channel="tokens")).thresholds
    assert features["norm1_identity"].shape == (8,) and tokens["norm1_identity"].shape == (9, 1)
    with torch.no_grad():
        h = model.norm1(model.embed(x).flatten(2).transpose(1, 2))  # [B, 9, 8]: the site's input
    torch.testing.assert_close(tokens["norm1_identity"], h.abs().amax((0, 2)).view(9, 1))
    torch.testing.assert_close(features["norm1_identity"], h.abs().amax((0, 1)))
    assert torch.equal(features["softmax_identity"], tokens["softmax_identity"])  # [B, heads, N, N]: dim 1 both
    with pytest.raises(ConfigError, match="token_channel 'last' is not valid"):
        cfg.replace(token_channel="last")
    from snnconvert.convert.coding.rules import check_broadcast

    with pytest.raises(ConfigError, match=r"of shape \(9, 1\) does not broadcast to the per-step shape \(1, 16, 8\): "
                       "values per token .* hold for the sequence length they were calibrated at"):
        check_broadcast("site norm1_identity: threshold", tokens["norm1_identity"].shape, torch.Size((1, 16, 8)))


def test_a_converted_transformer_approaches_the_ann():
    model = TinyViT().eval()
    x = torch.rand(16, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=_cfg(timesteps=16))
    with torch.no_grad():
        out, ann = res.snn(x), model(x)
        single = res.snn(x[:3], mode="single")
    errors = [((out[t] - ann).norm() / ann.norm()).item() for t in range(16)]
    assert errors[-1] < 0.05 and errors[-1] < 0.2 * errors[0], errors
    torch.testing.assert_close(single, out[:, :3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_product_units_are_counted_by_their_nonzero_patterns(coding):
    """TOT of a product unit = its dense multiply-adds; its SOP at each step = the multiply-adds of its product
    terms over their non-zero patterns (recomputed here from the unit's recorded inputs); both step modes agree."""
    from snnconvert.runtime import evaluate

    model = TinyViT().eval()
    x = torch.rand(8, 1, 12, 12)
    T = 3
    res = convert(model, forward_loop=[x], config=_cfg(coding, timesteps=T))
    units = _matmul_units(res.snn)
    seen = {}
    hooks = [u.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a)) for n, u in units.items()]
    with torch.no_grad():
        multi = evaluate(res.snn, [(x, torch.zeros(8, dtype=torch.long))], timesteps=T)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        single = evaluate(res.snn, [(x, torch.zeros(8, dtype=torch.long))], timesteps=T, mode="single")
    layers = multi.ops["layers"]
    assert len(units) == 2 and set(seen) == set(units)  # q·kᵀ and attn·v, both called
    for name in units:
        assert layers[name]["input"] == "spike"
        a, b = (v.reshape(T, 8, *v.shape[1:]) for v in seen[name])
        # q·kᵀ: [B, 2 heads, 9, 4] x [B, 2, 4, 9] (or attn·v: [B, 2, 9, 9] x [B, 2, 9, 4])
        n, k, m = a.shape[-2], a.shape[-1], b.shape[-1]
        assert layers[name]["tot_macs"] == 2 * n * k * m
        expected = _product_term_counts(a, b, units[name].biases if coding == "differential" else None)
        assert layers[name]["sop_per_step"] == pytest.approx(expected)
        assert layers[name]["sop_per_step"] == pytest.approx(single.ops["layers"][name]["sop_per_step"])
        assert expected[1] > 0 and expected[2] > 0


def _product_term_counts(a, b, biases):
    """method.md §8 written out for a product unit's recorded inputs [T, B, ...]: per step the multiply-adds of
    R_A∘δB, δA∘R_B and δA∘δB over their non-zero patterns (R: the running decoded operands before the step;
    differential: R += δ/t from the captured biases; rate: δ is the raw input, R its running mean, and from step 2
    the expansion of t·f(S_t/t) − (t−1)·f(S_{t−1}/(t−1)) keeps an R_A∘R_B term), per image."""
    def pairs(x, y):
        return float(((x != 0).double() @ (y != 0).double()).sum())

    r_a = torch.zeros_like(a[0]) if biases is None else biases[0].expand_as(a[0])
    r_b = torch.zeros_like(b[0]) if biases is None else biases[1].expand_as(b[0])
    counts = []
    for t in range(1, a.shape[0] + 1):
        d_a, d_b = (a[t - 1], b[t - 1]) if biases is None else (a[t - 1] - biases[0], b[t - 1] - biases[1])
        n = pairs(r_a, d_b) + pairs(d_a, r_b) + pairs(d_a, d_b)
        if biases is None and t > 1:
            n += pairs(r_a, r_b)
        counts.append(n / a.shape[1])
        if biases is None:
            r_a, r_b = r_a + (d_a - r_a) / t, r_b + (d_b - r_b) / t
        else:
            r_a, r_b = r_a + d_a / t, r_b + d_b / t
    return counts


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_kernel_backends_run_identity_neurons_bit_for_bit(backend, coding):
    """Signed, unconstrained neurons with per-feature ([C], last dim) and per-head thresholds on the kernel
    backends: the same outputs as the torch reference (Triton: interpreter only, when available)."""
    from snnconvert.runtime import backend_status
    from snnconvert.runtime import compile as compile_snn

    available, reason = backend_status(backend, "cpu")
    if not available:
        pytest.skip(reason)
    model = TinyViT().eval()
    x = torch.rand(4, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=_cfg(coding, timesteps=3))
    with torch.no_grad():
        assert torch.equal(compile_snn(res.snn, backend=backend)(x), res.snn(x))


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_import_of_a_transformer_converts_like_the_module(tmp_path, dynamo):
    """torch's two exporters (dynamic batch: the head split is a Reshape of computed shapes) give the same identity
    sites and product units; the converted ONNX graph is the ANN and its SNN approaches it."""
    pytest.importorskip("onnx")
    model = TinyViT().eval()
    path = tmp_path / "vit.onnx"
    example = (torch.rand(2, 1, 12, 12),)
    if dynamo:
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=["input"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    else:
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    x = torch.rand(16, 1, 12, 12)
    cfg = _cfg(timesteps=16)
    a, b = convert(model, forward_loop=[x], config=cfg), convert(str(path), forward_loop=[x], config=cfg)
    identity = [n for n in b.thresholds if n.endswith("_identity")]
    assert len(identity) == sum(1 for n in a.thresholds if n.endswith("_identity")) == 9
    assert len(_matmul_units(b.snn)) == 2
    with torch.no_grad():
        ann = model(x)
        torch.testing.assert_close(b.snn.ann_forward(x), ann, rtol=1e-4, atol=1e-5)
        out = b.snn(x)
    assert ((out[-1] - ann).norm() / ann.norm()) < 0.05


def test_identity_sites_leave_the_relu_thresholds_unchanged():
    """The percentile observers of identity sites take three calibration passes; the ReLU sites' moment observers
    still see the data once: their thresholds and value counts are those of a conversion without identity sites."""
    model = GatedNet().eval()
    x = torch.rand(8, 1, 12, 12)
    with_sites = convert(model, forward_loop=[x], config=_cfg(timesteps=4))
    without = convert(model, forward_loop=[x], config=_cfg(timesteps=4, identity_neurons="off"))
    assert len(without.thresholds) == 2 and set(without.thresholds) < set(with_sites.thresholds)
    for name, theta in without.thresholds.items():
        assert torch.equal(with_sites.thresholds[name], theta), name
    values = {s["site"]: s["values"] for s in with_sites.calibration.sites}
    assert all(values[s["site"]] == s["values"] for s in without.calibration.sites)


def test_functional_layers_get_sites_too():
    """``F.conv2d`` / ``F.linear`` with parameter weights read their dense inputs through an identity neuron."""
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.w1, self.w2 = nn.Parameter(torch.randn(4, 1, 3, 3)), nn.Parameter(torch.randn(4, 4, 3, 3))
            self.fc = nn.Parameter(torch.randn(10, 4))

        def forward(self, x):
            h = F.silu(F.conv2d(x, self.w1))
            h = F.gelu(F.conv2d(h, self.w2))
            return F.linear(h.mean((2, 3)), self.fc)

    gm = prepare(Functional().eval(), _cfg(), ConversionReport())
    assert _sites(gm) == {"silu_identity": "silu", "mean_identity": "mean"}
