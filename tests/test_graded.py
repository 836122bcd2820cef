"""Non-ReLU non-linearities and element-wise products as graded units (method.md §5.1, §5.2 for ⊙, §6 "dispatch by
structure"): SiLU / Hardswish / sigmoid / LayerNorm / ... and gating products downstream of a neuron become
:class:`GradedUnit` s whose decoded output is exactly the function of their decoded inputs; the same nodes upstream
of every neuron stay plain (exact there); shape arithmetic, in-place activations and eval-mode stochastic depth of
real models (torchvision's ShuffleNetV2, MobileNetV3, RegNetY) are handled."""
from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from nets import GatedNet

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.errors import ConfigError, UnsupportedOpError


def _decode(out: torch.Tensor, coding: str) -> torch.Tensor:
    """Decoded values after every step of a ``[T, ...]`` stream: running mean (rate) or Σ d_τ/τ (differential)."""
    t = torch.arange(1, out.shape[0] + 1, dtype=out.dtype).view(-1, *([1] * (out.dim() - 1)))
    return out.cumsum(0) / t if coding == "rate" else (out / t).cumsum(0)


def _decode_input(x: torch.Tensor, bias: torch.Tensor | None, coding: str) -> torch.Tensor:
    """A unit's decoded input: the running mean (rate) or R_in,t = b + Σ (x_τ − b)/τ (differential)."""
    return _decode(x, coding) if coding == "rate" else bias + _decode(x - bias, coding)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_product_unit_decodes_to_the_product_of_decoded_inputs(coding):
    """⊙ with broadcasting (an SE gate [B, C, 1, 1] times a feature map): exact at every step, fp64."""
    torch.manual_seed(0)
    T = 9
    a, g = torch.randn(T, 2, 3, 4, 4).double(), torch.randn(T, 2, 3, 1, 1).double()
    unit = GradedUnit(operator.mul, coding=coding, n_inputs=2)
    ba, bg = torch.randn(1, 3, 4, 4).double(), torch.randn(1, 3, 1, 1).double()
    if coding == "differential":
        unit.biases = (ba, bg)
    out = unit.multistep(a, g)
    expected = _decode_input(a, ba, coding) * _decode_input(g, bg, coding)
    torch.testing.assert_close(_decode(out, coding), expected, rtol=1e-12, atol=1e-12)
    # the in-place fast loop, the reference loop and streaming agree bit for bit
    unit.fast_path = False
    assert torch.equal(unit.multistep(a, g), out)
    unit.fast_path = True
    unit.reset()
    assert torch.equal(torch.stack([unit.single_step(a[t], g[t]) for t in range(T)]), out)


@pytest.mark.parametrize("f", [nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.LayerNorm(5), nn.Softmax(dim=-1)],
                         ids=lambda f: type(f).__name__)
def test_graded_function_is_exact_on_decoded_input(f):
    torch.manual_seed(1)
    x = torch.randn(7, 3, 5).double()
    bias = torch.randn(1, 5).double()
    unit = GradedUnit(f.double(), coding="differential")
    unit.bias = bias
    expected = f(_decode_input(x, bias, "differential"))
    torch.testing.assert_close(_decode(unit.multistep(x), "differential"), expected, rtol=1e-10, atol=1e-10)


def test_unit_arity_is_checked():
    unit = GradedUnit(operator.mul, coding="rate", n_inputs=2)
    with pytest.raises(ConfigError, match="takes 2 input"):
        unit.single_step(torch.ones(2))
    with pytest.raises(ConfigError, match="n_inputs"):
        GradedUnit(operator.mul, coding="rate", n_inputs=0)


def _units(snn) -> dict[str, GradedUnit]:
    return {name: m for name, m in snn.stateful() if isinstance(m, GradedUnit)}


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_graph_after_conversion_and_ann_equality(coding):
    model = GatedNet().eval()
    x = torch.rand(6, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=8))
    gm = res.snn.gm
    units = _units(res.snn)
    assert sorted(u.n_inputs for u in units.values()) == [1, 1, 1, 1, 2]
    entry = res.report.entry("replace_activations")
    assert {k: v for k, v in entry.counts.items() if k.startswith("GradedUnit")} == {
        "GradedUnit(Hardswish)": 1, "GradedUnit(hardsigmoid)": 1, "GradedUnit(product)": 1,
        "GradedUnit(sigmoid)": 1, "GradedUnit(LayerNorm)": 1}  # and nothing upstream of the first neuron
    # the stem's SiLU sees the analog input layer: plain, and no activation is left in place
    plain = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.SiLU)]
    assert len(plain) == 1 and plain[0].args[0].target == "stem"
    assert not any(getattr(m, "inplace", False) for m in gm.modules())
    assert res.report.entry("out_of_place_activations").counts == {"nn.SiLU(inplace)": 1, "nn.Hardswish(inplace)": 1}
    # the converted graph run as an ANN is the model (the model's in-place stem did not change anything either)
    torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("mode", ["multi", "single"])
def test_every_unit_in_a_network_is_exact_on_its_decoded_inputs(coding, mode):
    """Inside the whole network (capture pass, static prefix, neurons upstream), each graded unit's decoded output
    equals f(its decoded inputs) at every step; and the SNN converges to the ANN (identity neurons off: with them, a
    rate-coded identity neuron saturates at θ where the 4-image calibration set is exceeded)."""
    model = GatedNet().eval()
    x = torch.rand(4, 1, 12, 12)
    T = 12
    res = convert(model, forward_loop=[x],
                  config=ConversionConfig.for_coding(coding, timesteps=T, identity_neurons="off"))
    out = _assert_units_exact(res.snn, x, T, coding, mode)
    with torch.no_grad():
        ann = model(x)
    errors = [((out[t] - ann).norm() / ann.norm()).item() for t in range(T)]
    assert errors[-1] < 0.5 * errors[1]


def _assert_units_exact(snn, x: torch.Tensor, T: int, coding: str, mode: str) -> torch.Tensor:
    """Each graded unit's decoded output equals f(its decoded inputs) at every step of ``snn(x, T)`` (returned)."""
    seen: dict[str, list] = {}

    def hook(name):
        def record(module, args, out):
            if not (module.capture or module.analog):
                seen.setdefault(name, []).append(([a.detach().double() for a in args], out.detach().double()))
        return record

    handles = [u.register_forward_hook(hook(name)) for name, u in _units(snn).items()]
    with torch.no_grad():
        out = snn(x, T, mode=mode)
    for h in handles:
        h.remove()
    for name, unit in _units(snn).items():
        calls = seen[name]
        if mode == "multi":
            (args, o), = calls
            args, o = [a.reshape(T, -1, *a.shape[1:]) for a in args], o.reshape(T, -1, *o.shape[1:])
        else:
            args = [torch.stack([c[0][i] for c in calls]) for i in range(unit.n_inputs)]
            o = torch.stack([c[1] for c in calls])
        biases = unit.biases if coding == "differential" else (None,) * unit.n_inputs
        decoded_in = [_decode_input(a, None if b is None else b.double(), coding) for a, b in zip(args, biases)]
        expected = torch.stack([unit.f(*(d[t].float() for d in decoded_in)).double() for t in range(T)])
        torch.testing.assert_close(_decode(o, coding), expected, rtol=1e-4, atol=1e-5, msg=name)
    return out


def test_a_model_without_relu_is_refused_without_identity_neurons():
    """With identity neurons off, nothing would spike: refused, listing the non-linearities (tests/test_identity.py
    converts it with them)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.GELU(), nn.Flatten())
    with pytest.raises(UnsupportedOpError) as info:
        convert(model, forward_loop=[torch.rand(2, 1, 8, 8)], config=ConversionConfig(identity_neurons="off"))
    assert {n.name for n in info.value.nodes} == {"_1", "_3"}
    assert "no ReLU" in str(info.value) and "§4.7" in str(info.value)


class _MatmulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x)).flatten(2)
        return torch.cumsum(y @ y.transpose(1, 2), 1).flatten(1)


def test_matrix_products_are_units_and_other_ops_stay_unsupported():
    """``y @ y.T`` of two activations is a product unit (tests/test_identity.py); the cumsum is still listed."""
    with pytest.raises(UnsupportedOpError) as info:
        convert(_MatmulNet(), forward_loop=[torch.rand(2, 1, 8, 8)])
    assert {n.name for n in info.value.nodes} == {"cumsum"}


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_allowed_analog_nodes_run_as_exact_units(coding):
    """``allow_ann_ops`` now means "exact on decoded values" (a graded unit), not "applied to every step's raw
    input" (which is wrong for any non-linear op in differential coding)."""
    torch.manual_seed(0)
    model = _MatmulNet().eval()
    x = torch.rand(4, 1, 8, 8)
    cfg = ConversionConfig.for_coding(coding, timesteps=16, allow_ann_ops=("matmul", "cumsum"))
    res = convert(model, forward_loop=[x], config=cfg)
    assert res.report.analog_nodes == ["cumsum"]  # the matrix product is supported as a unit without opt-in
    assert sorted(u.n_inputs for u in _units(res.snn).values()) == [1, 2]
    with torch.no_grad():
        out, ann = res.snn(x, 16), model(x)
    torch.testing.assert_close(res.snn.ann_forward(x), ann)
    assert ((out[-1] - ann).norm() / ann.norm()) < 0.1


class _SortNet(nn.Module):
    """Calls that return several values, of which the model uses one: ``torch.sort(h).values``, ``torch.topk(h)[0]``
    (``select="indices"``: the integer indices; ``select="tuple"``: the whole tuple)."""

    def __init__(self, select: str = "values") -> None:
        super().__init__()
        torch.manual_seed(3)
        self.select = select
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 8 * 3, 5)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.select == "indices":
            return self.fc(torch.sort(h, dim=-1).indices[..., :3].float().flatten(1))
        if self.select == "tuple":
            return self.fc(torch.cat(torch.sort(h, dim=-1), dim=-1)[..., :3].flatten(1))
        if self.select == "unpacked":  # the indices unpacked and never read
            top, _ = torch.sort(h, -1, descending=True)
            return self.fc(torch.cat([h[..., :2], top[..., :1]], -1).flatten(1))
        return self.fc(torch.sort(h, dim=-1).values[..., 5:].flatten(1) + torch.topk(h, 3, dim=-1)[0].flatten(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_one_value_of_an_allowed_call_returning_several_is_an_exact_unit(coding):
    model, x = _SortNet().eval(), torch.rand(4, 1, 8, 8)
    cfg = ConversionConfig.for_coding(coding, timesteps=6, allow_ann_ops=("sort", "topk"), identity_neurons="off")
    res = convert(model, forward_loop=[x], config=cfg)
    assert res.report.analog_nodes == ["sort", "topk"]  # .values and [0] belong to their calls
    counts = res.report.entry("replace_activations").counts
    assert {k: v for k, v in counts.items() if k.startswith("GradedUnit")} == {"GradedUnit(sort)": 1,
                                                                              "GradedUnit(topk)": 1}
    targets = [n.target for n in res.snn.gm.graph.nodes]
    assert torch.sort not in targets and torch.topk not in targets  # only inside the units
    _assert_units_exact(res.snn, x, 6, coding, "multi")
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))
    with pytest.raises(ConfigError, match=r"takes 'indices' of sort, not a float tensor"):
        convert(_SortNet("indices").eval(), forward_loop=[x], config=cfg)
    with pytest.raises(ConfigError, match=r"node sort returns several values .* cat use\(s\) the whole tuple"):
        convert(_SortNet("tuple").eval(), forward_loop=[x], config=cfg)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_values_unpacked_with_unused_indices_convert_and_only_the_call_is_listed(coding):
    """``top, _ = torch.sort(h, -1)``: the unused indices were refused as "not a float tensor"; without the opt-in,
    ``torch.sort(h).values`` listed the ``.values`` read as a second unsupported node."""
    model, x = _SortNet("unpacked").eval(), torch.rand(4, 1, 8, 8)
    with pytest.raises(UnsupportedOpError) as info:
        convert(model, forward_loop=[x])
    assert [n.name for n in info.value.nodes] == ["sort"]
    cfg = ConversionConfig.for_coding(coding, timesteps=6, allow_ann_ops=("sort",), identity_neurons="off")
    res = convert(model, forward_loop=[x], config=cfg)
    assert res.report.analog_nodes == ["sort"]
    _assert_units_exact(res.snn, x, 6, coding, "multi")
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


class _AdditiveMask(nn.Module):
    """Attention written by hand with an additive mask (what ONNX exports of masked attention hold): ``fill`` in the
    masked entries, -inf or a large finite number (the same softmax)."""

    def __init__(self, fill: float) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.qkv, self.fc = nn.Linear(8, 24), nn.Linear(8, 3)
        keep = (torch.rand(5, 5) > 0.4) | torch.eye(5, dtype=torch.bool)
        self.register_buffer("mask", torch.zeros(5, 5).masked_fill(~keep, fill))

    def forward(self, x):  # x [B, 5, 8]
        q, k, v = self.qkv(F.relu(x)).chunk(3, dim=-1)
        return self.fc(F.relu(((q @ k.transpose(-2, -1)) * 8 ** -0.5 + self.mask).softmax(-1) @ v).mean(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("mode", ["multi", "single"])
def test_an_infinite_captured_bias_is_an_unchanged_input_not_nan(coding, mode):
    """A softmax unit behind an additive -inf mask captures b = -inf there; x_t − b is inf − inf where the input
    equals it, which the unit reads as 0 (unchanged): the SNN answers as with a finite mask of the same softmax."""
    x = torch.randn(4, 5, 8)
    outs = []
    for fill in (float("-inf"), -1e4):
        model = _AdditiveMask(fill).eval()
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=6))
        with torch.no_grad():
            outs.append(res.snn(x, mode=mode))
    assert not torch.isnan(outs[0]).any()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


class _Shuffle(nn.Module):
    """ShuffleNetV2's channel shuffle: reshapes computed from traced sizes (``c // groups``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        a, z = x.chunk(2, dim=1)
        return torch.cat((a, F.relu(self.conv2(x))), 1).mean((2, 3))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_shape_arithmetic_is_static(coding):
    model = _Shuffle().eval()
    x = torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=4))
    assert any(n.target is operator.floordiv for n in res.snn.gm.graph.nodes)
    assert not _units(res.snn)
    with torch.no_grad():
        single, multi = res.snn(x, 4, mode="single"), res.snn(x, 4)
    torch.testing.assert_close(single, multi, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


def test_shape_values_scale_tensors_without_being_products():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = F.relu(self.conv(x))
            return y.sum((2, 3)) / (y.shape[2] * y.shape[3])

    res = convert(Net(), forward_loop=[torch.rand(2, 1, 6, 6)])
    assert not _units(res.snn)


def test_eval_stochastic_depth_is_dropped():
    tv_ops = pytest.importorskip("torchvision.ops")

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.sd = tv_ops.StochasticDepth(0.2, "row")

        def forward(self, x):
            return x + self.sd(F.relu(self.conv(x)))

    model = Block().eval()
    x = torch.rand(2, 2, 6, 6)
    res = convert(model, forward_loop=[x])  # traced through (a torch.fx.wrap function): in eval mode, no node
    assert res.report.entry("drop_dropout_and_identity").counts == {}
    assert "stochastic_depth" not in str(res.snn.gm.code)
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))
    traced = torch.fx.symbolic_trace(model)  # a user's own fx trace keeps the call: the pass drops it
    assert "stochastic_depth" in str(traced.code)
    res = convert(traced, forward_loop=[x])
    assert res.report.entry("drop_dropout_and_identity").counts == {"stochastic_depth": 1}
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


def test_graded_units_survive_pickle_and_artifacts(tmp_path):
    """A functional unit with a constant tensor argument (``F.layer_norm`` with weights from get_attr) pickles and
    reloads to identical outputs."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(1, 4, 3)
            self.w, self.b = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4))

        def forward(self, x):
            y = F.relu(self.conv(x)).mean((2, 3))
            return F.layer_norm(F.silu(y), (4,), self.w, self.b) * y

    model = Net().eval()
    x = torch.rand(3, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=6))
    assert len(_units(res.snn)) == 3
    with torch.no_grad():
        before = res.snn(x)
    torch.save(res.snn, tmp_path / "snn.pt")
    again = torch.load(tmp_path / "snn.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(x), before)
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


def test_native_backend_keeps_units_on_torch_and_matches():
    from snnconvert.runtime import compile as compile_snn
    from snnconvert.runtime.kernels.native import native_status

    available, reason = native_status("cpu")
    if not available:
        pytest.skip(reason)
    model = GatedNet().eval()
    x = torch.rand(4, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=6))
    with torch.no_grad():
        assert torch.equal(compile_snn(res.snn, backend="native")(x), res.snn(x))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_y_400mf", "shufflenet_v2_x0_5", "efficientnet_b0"])
def test_torchvision_models_with_gates_and_shuffles(name):
    """Real architectures: converted graphs equal the model as ANNs; EfficientNet (SiLU only, no ReLU) spikes through
    identity neurons only (refused without them)."""
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = getattr(tvm, name)(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    if name == "efficientnet_b0":
        with pytest.raises(UnsupportedOpError, match="no ReLU"):
            convert(model, forward_loop=[x], config=ConversionConfig(identity_neurons="off"))
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=2))
    if name == "efficientnet_b0":
        assert res.thresholds and all(n.endswith("_identity") for n in res.thresholds)
    with torch.no_grad():
        torch.testing.assert_close(res.snn.ann_forward(x), model(x), rtol=1e-4, atol=1e-5)
        assert torch.isfinite(res.snn(x)).all()
    assert isinstance(res.snn.gm, fx.GraphModule)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_onnx_import_of_a_gated_net_converts_like_the_module(tmp_path, coding):
    """Sigmoid, HardSigmoid, HardSwish, Mul and LayerNormalization from torch's exporter become the same units."""
    pytest.importorskip("onnx")
    model = GatedNet().eval()
    path = tmp_path / "gated.onnx"
    torch.onnx.export(model, (torch.rand(2, 1, 12, 12),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    x = torch.rand(4, 1, 12, 12)
    cfg = ConversionConfig.for_coding(coding, timesteps=6)
    a, b = convert(model, forward_loop=[x], config=cfg), convert(str(path), forward_loop=[x], config=cfg)
    assert sorted(u.n_inputs for u in _units(b.snn).values()) == sorted(u.n_inputs for u in _units(a.snn).values())
    with torch.no_grad():
        torch.testing.assert_close(b.snn(x), a.snn(x), rtol=1e-4, atol=1e-5)


def test_cli_lists_the_graded_units(tmp_path):
    import json

    from typer.testing import CliRunner

    from snnconvert.cli.main import app

    nets = Path(__file__).parent / "nets.py"
    report = tmp_path / "r.json"
    result = CliRunner().invoke(app, [f"{nets}:GatedNet", "--calib-data", "fashion-mnist", "--eval-data",
                                      "fashion-mnist", "--calib-images", "16", "--eval-images", "8", "-T", "2",
                                      "--coding", "differential", "--report", str(report)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "graded units (dense outputs): Hardswish x1, hardsigmoid x1, product x1, sigmoid x1, LayerNorm x1" in text
    units = json.loads(report.read_text())["graded_units"]
    assert len(units) == 5
    nonzero = sum(sum(u["nonzero_per_step"]) for u in units.values())
    assert f"graded units: {nonzero:.0f} non-zero dense values per image over 2 steps" in text


@pytest.mark.parametrize("expr", ["square", "reciprocal", "pow"])
def test_one_input_products_and_quotients_are_functions(expr):
    """``y * y``, ``1 / y`` and ``y ** 2`` are functions of one input (one-input units), exact on averages."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.conv = nn.Conv2d(1, 3, 3)

        def forward(self, x):
            y = F.relu(self.conv(x)).mean((2, 3))
            return {"square": lambda: y * y, "reciprocal": lambda: 1.0 / (y + 1.0), "pow": lambda: y ** 2}[expr]()

    model = Net().eval()
    x = torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=8))
    assert [u.n_inputs for u in _units(res.snn).values()] == [1]
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


def test_functions_of_parameters_alone_are_constants():
    """``sigmoid(self.gate)`` (a learned scalar) does not depend on the input: a constant like a bias, in both
    codings (differential coding captures it with the offsets)."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.conv = nn.Conv2d(1, 3, 3)
            self.gate = nn.Parameter(torch.tensor([0.3, -1.0, 2.0]))

        def forward(self, x):
            y = F.relu(self.conv(x)).mean((2, 3))
            return y * torch.sigmoid(self.gate) + torch.exp(self.gate)

    model = Net().eval()
    x = torch.rand(4, 1, 8, 8)
    for coding in ("rate", "differential"):
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=8))
        assert not _units(res.snn)
        torch.testing.assert_close(res.snn.ann_forward(x), model(x))
        with torch.no_grad():
            out = res.snn(x)
        assert ((out[-1] - model(x)).norm() / model(x).norm()) < 0.1


@pytest.mark.parametrize("mode", ["multi", "single"])
def test_evaluation_counts_the_units_dense_outputs_apart_from_events(mode):
    from snnconvert.runtime import evaluate
    from snnconvert.runtime.sweep import truncate

    model = GatedNet().eval()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    T = 5
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=T))
    expected: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {}

    def hook(name):
        def count(module, args, out):
            if not (module.capture or module.analog):
                sizes[name] = out[0].numel()
                per_step = out.reshape(T, -1).ne(0).sum(1) if module.step_mode == "m" else out.ne(0).sum().view(1)
                expected[name] = torch.cat([expected.get(name, torch.zeros(0, dtype=torch.int64)), per_step])
        return count

    handles = [u.register_forward_hook(hook(n)) for n, u in _units(res.snn).items()]
    ev = evaluate(res.snn, [(x, y)], mode=mode)
    for h in handles:
        h.remove()
    assert set(ev.unit_outputs) == set(_units(res.snn))
    for name, unit in ev.unit_outputs.items():
        assert unit["nonzero_per_step"] == (expected[name].double() / 6).tolist()
        assert unit["outputs_per_image"] == sizes[name]
        assert unit["nonzero_per_output"] == pytest.approx(sum(unit["nonzero_per_step"]) / sizes[name])
    # what the energy ratios leave out: every unit evaluates all its elements, every neuron updates, at every step
    left_out = ev.ops["not_in_energy"]
    assert left_out["graded_unit_outputs_per_step"] == sum(sizes.values())
    neurons = sum(e["neurons_per_image"] for e in ev.site_events.values())
    assert left_out["neuron_updates_per_step"] == neurons > 0
    cut = truncate(ev, 2)
    for name, unit in cut.unit_outputs.items():
        assert unit["nonzero_per_step"] == ev.unit_outputs[name]["nonzero_per_step"][:2]
        assert unit["nonzero"] == pytest.approx(sum(unit["nonzero_per_step"]) * 6)


def test_a_shared_activation_module_works_in_low_precision():
    """``self.act`` (a PReLU, with a parameter) called in front of the first neuron and after it: the unit gets its
    own fp32 copy, the plain call site is cast with the layers, so bf16 runs."""
    from snnconvert.runtime import compile as compile_snn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(7)
            self.c1, self.c2, self.act, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.PReLU(), nn.Linear(4, 10)

        def forward(self, x):
            y = F.relu(self.c2(self.act(self.c1(x))))
            return self.fc(self.act(y - 0.5).mean((2, 3)))

    model = Net().eval()
    x = torch.rand(4, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=8))
    with torch.no_grad():
        full = res.snn(x)
        low = compile_snn(res.snn, backend="torch", dtype=torch.bfloat16)(x)
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))
    assert (low[-1] - full[-1]).abs().max() < 0.05 * full[-1].abs().max()


class _Reductions(nn.Module):
    """Reductions over a sample's dims and element-wise max/min, as real models write them: CBAM's spatial attention
    (channel max and mean), L2-normalised embeddings, a channel-wise max of two branches, statistics."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.kind = kind
        self.conv, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.gate, self.fc = nn.Conv2d(2, 1, 3, padding=1), nn.Linear(6 * 8 * 8, 5)
        self.cap = nn.Parameter(torch.full((6, 1, 1), 0.3))

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.kind == "cbam":  # torch.max(h, 1, keepdim=True)[0] next to the mean
            stats = torch.cat([torch.max(h, 1, keepdim=True)[0], h.mean(1, keepdim=True)], 1)
            h = h * torch.sigmoid(self.gate(stats))
        elif self.kind == "amax_values":
            h = h - h.amax(dim=(2, 3), keepdim=True) + h.max(dim=1, keepdim=True).values
        elif self.kind == "normalize":
            h = F.normalize(h, dim=1)
        elif self.kind == "maximum":
            h = torch.maximum(h, F.relu(self.conv2(h))) - torch.minimum(h, self.cap)
        elif self.kind == "max_two":  # the two-tensor spellings of torch.max / Tensor.min
            g = F.relu(self.conv2(h))
            h = torch.max(h, g) - h.min(g)
        else:  # "std"
            h = h / (h.std(dim=(2, 3), keepdim=True) + 1)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("kind", ["cbam", "amax_values", "normalize", "maximum", "max_two", "std"])
def test_reductions_over_a_sample_are_exact_graded_units(kind, coding):
    """Channel max (CBAM), amax, F.normalize, maximum/minimum of two tensors and statistics were "not convertible";
    each is a known function of its decoded inputs, so a graded unit: exact at every step."""
    model, x = _Reductions(kind).eval(), torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=6,
                                                                              identity_neurons="off"))
    assert not res.report.analog_nodes
    _assert_units_exact(res.snn, x, 6, coding, "multi")
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


class _Piecewise(nn.Module):
    """Element-wise functions written with a selection whose mask comes from the input (the dynamo exporter's
    Softplus, a hand-written leaky ReLU, Hardshrink with masked_fill, a floor from full_like) and the modules
    nn.Threshold, nn.RReLU (eval: a fixed slope) and nn.Softmax2d."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.kind = kind
        self.conv, self.fc = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6 * 8 * 8, 5)
        self.module = {"threshold": nn.Threshold(0.1, -1.0), "rrelu": nn.RReLU(), "softmax2d": nn.Softmax2d()}.get(kind)

    def forward(self, x):
        h = F.relu(self.conv(x)) - 0.2
        if self.kind == "softplus":
            h = torch.where(h * 2 > 20, h, torch.log1p(torch.exp(h * 2)) / 2)
        elif self.kind == "leaky":
            h = torch.where(h > 0, h, 0.1 * h)
        elif self.kind == "hardshrink":
            h = h.masked_fill(h.abs() < 0.3, 0)
        elif self.kind == "floor":
            h = torch.where(h > 0.1, h, torch.full_like(h, 0.05))
        else:
            h = self.module(h)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize("kind", ["softplus", "leaky", "hardshrink", "floor", "threshold", "rrelu", "softmax2d"])
def test_piecewise_functions_of_one_tensor_are_exact_graded_units(kind, coding):
    """A where / masked_fill whose mask and branches come from one tensor is one function of it (its comparison and
    selection were listed as "not convertible" / "mask computed from the input"): one exact graded unit."""
    from snnconvert.convert.passes.piecewise import PiecewiseFunction

    model, x = _Piecewise(kind).eval(), torch.rand(4, 1, 8, 8)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=6,
                                                                              identity_neurons="off"))
    fused = [m for m in res.snn.gm.modules() if isinstance(m, PiecewiseFunction)]
    assert len(fused) == (kind in ("softplus", "leaky", "hardshrink", "floor"))
    assert not [n for n in res.snn.gm.graph.nodes if n.target in (torch.where, "masked_fill", operator.gt)]
    _assert_units_exact(res.snn, x, 6, coding, "multi")
    torch.testing.assert_close(res.snn.ann_forward(x), model(x))


def test_a_selection_between_two_tensors_is_still_listed():
    """``where(a > b, a, b)`` of two separately computed tensors is no function of one tensor: listed, not fused."""
    class TwoSources(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)

        def forward(self, x):
            a, b = F.relu(self.a(x)), F.relu(self.b(x))
            return torch.where(a > b, a, b - a)

    with pytest.raises(UnsupportedOpError, match="mask computed from the input"):
        convert(TwoSources().eval(), forward_loop=[torch.rand(2, 1, 6, 6)])


def test_a_known_function_with_arguments_computed_in_the_graph_says_what_to_change():
    class DimFromGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            h = F.relu(self.conv(x))
            return torch.amax(h, dim=h.dim() - 1)

    with pytest.raises(UnsupportedOpError, match=r"amax .*a known function, but with other arguments computed in the "
                                                 r"graph .*give those arguments as constants \(dim=-1, a number\)"):
        convert(DimFromGraph().eval(), forward_loop=[torch.rand(2, 1, 6, 6)])


def test_local_response_norm_converts_as_a_graded_unit():
    """AlexNet's nn.LocalResponseNorm (a normalisation across channels) was left unconverted by the support check:
    now a graded unit, exact on decoded values, so the SNN converges to the ANN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.LocalResponseNorm(5, alpha=0.5, k=2.0),
                          nn.Conv2d(6, 4, 3)).eval()
    x = torch.rand(8, 1, 10, 10)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=16))
    assert [type(u.f).__name__ for u in _units(res.snn).values()] == ["LocalResponseNorm"]
    with torch.no_grad():
        ann, out = model(x), res.snn(x)
    assert float((out[-1] - ann).abs().max()) < 0.05 * float((out[0] - ann).abs().max())
