"""Graph passes: structure after each pass, numeric equality with the ANN, idempotence, support errors."""
from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TOLERANCES
from nets import SpellingsNet, Unsupported

from snnconvert.convert import RATE_DEFAULT, convert
from snnconvert.convert.errors import ConfigError, TraceError, UnsupportedOpError
from snnconvert.convert.frontend import trace_module
from snnconvert.convert.passes import NORMALIZE_PASSES
from snnconvert.convert.passes.normalize import (
    UPPER_CLIP_ATTR,
    canonicalize_activations,
    decompose_bounded_relu,
    drop_dropout_and_identity,
    fold_bn,
    functional_layers_to_modules,
    is_canonical_relu,
    move_maxpool_before_activation,
)
from snnconvert.convert.passes.support import check_supported
from snnconvert.convert.pipeline import ConversionReport, op_table, run_passes

TOL = TOLERANCES["pass_equivalence"]


def _x(n=4):
    return torch.rand(n, 1, 28, 28) * 2 - 0.5


def _run_all(model):
    gm = trace_module(model)
    report = ConversionReport()
    gm = run_passes(gm, NORMALIZE_PASSES, RATE_DEFAULT, report)
    return gm, report


def _rerun(pass_fn, gm):
    return pass_fn(gm, RATE_DEFAULT, ConversionReport()).modified


def test_canonicalize_finds_every_relu_spelling():
    model = SpellingsNet()
    gm = trace_module(model)
    report = ConversionReport()
    result = canonicalize_activations(gm, RATE_DEFAULT, report)
    assert result.modified
    counts = report.entry("canonicalize_activations").counts
    assert counts == {"nn.ReLU(inplace)": 1, "F.relu": 1, "torch.relu": 1, "Tensor.relu": 1, "nn.ReLU(shared)": 1}
    relus = [n for n in gm.graph.nodes if is_canonical_relu(gm, n)]
    assert len(relus) == 6  # five rewritten + the second call of the shared module, now its only user
    table = op_table(gm)
    assert "relu" not in table and ".relu" not in table
    x = _x()
    torch.testing.assert_close(gm(x), model.eval()(x), **TOL)
    assert not _rerun(canonicalize_activations, gm)


@pytest.mark.parametrize("spelling", ["clamp", "clamp_min", "relu_", "F.relu_inplace", "clamp_inf", "hardtanh_inf",
                                      "Hardtanh_inf", "hardtanh_inf_inplace", "threshold", "Threshold_inplace",
                                      "maximum_zeros", "zeros_max", "times_mask", "mask_float_times",
                                      "mul_mask_type_as", "where_positive", "LeakyReLU_0", "leaky_relu_0_inplace"])
def test_canonicalize_other_spellings(spelling):
    """Every ReLU spelling becomes one canonical ReLU; an upper bound of +inf bounds nothing (a bounded ReLU with
    a = inf failed calibration: r − relu(r − a) computed inf − inf)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.hardtanh = nn.Hardtanh(0.0, float("inf"))
            self.threshold = nn.Threshold(0.0, 0.0, inplace=True)
            self.leaky = nn.LeakyReLU(0.0)

        def forward(self, x):
            y = self.fc(x)
            if spelling == "threshold":
                y = F.threshold(y, 0.0, 0.0)
            elif spelling == "Threshold_inplace":
                self.threshold(y)
            elif spelling == "maximum_zeros":
                y = torch.maximum(y, torch.zeros_like(y))
            elif spelling == "zeros_max":
                y = torch.max(torch.zeros_like(y), y)
            elif spelling == "LeakyReLU_0":
                y = self.leaky(y)
            elif spelling == "leaky_relu_0_inplace":
                F.leaky_relu(y, 0.0, inplace=True)
            elif spelling == "times_mask":
                y = y * (y > 0)
            elif spelling == "mask_float_times":
                y = (y >= 0).float() * y
            elif spelling == "mul_mask_type_as":
                y = torch.mul(y, (y > 0).type_as(y))
            elif spelling == "where_positive":
                y = torch.where(y > 0, y, 0.0)
            elif spelling == "clamp_inf":
                y = y.clamp(0, float("inf"))
            elif spelling == "hardtanh_inf":
                y = F.hardtanh(y, 0.0, float("inf"))
            elif spelling == "Hardtanh_inf":
                y = self.hardtanh(y)
            elif spelling == "hardtanh_inf_inplace":
                F.hardtanh(y, 0.0, float("inf"), inplace=True)
            elif spelling == "clamp":
                y = torch.clamp(y, min=0)
            elif spelling == "clamp_min":
                y = y.clamp_min(0)
            elif spelling == "relu_":
                y = torch.relu_(y)
            else:
                y = F.relu(y, inplace=True)
            return y + 1

    model = Net().eval()
    gm = trace_module(model)
    assert canonicalize_activations(gm, RATE_DEFAULT, ConversionReport()).modified
    assert sum(is_canonical_relu(gm, n) for n in gm.graph.nodes) == 1
    x = torch.randn(5, 4)
    torch.testing.assert_close(gm(x), model(x), **TOL)
    report = ConversionReport()  # the mask is gone with the product: nothing is left to refuse
    check_supported(gm, RATE_DEFAULT, report)
    assert not any(n.target in (operator.gt, operator.ge, torch.gt, "gt", "float", "type_as") for n in gm.graph.nodes)


def test_masks_that_are_not_a_relu_stay_and_are_named():
    """x * (x < 0), x * (other > 0) and a mask read twice are not ReLUs of x: listed, with what a comparison is."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            mask = y > 0
            return y * (y < 0) + y * (x > 0) + y * mask + mask.sum()

    with pytest.raises(UnsupportedOpError) as info:
        convert(Net(), forward_loop=[torch.randn(4, 4)])
    assert {n.name for n in info.value.nodes} == {"lt", "gt", "gt_1"}
    assert "a comparison of activations (a 0/1 mask" in str(info.value)


def test_threshold_and_maximum_that_are_not_relus_stay():
    """F.threshold(x, 0.1, 0) and torch.maximum(x, zeros_like(other)) are not ReLUs of x."""
    class Net(nn.Module):
        def forward(self, x):
            return F.threshold(x, 0.1, 0.0) + torch.maximum(x, torch.zeros_like(x[:, :1]))

    gm = trace_module(Net())
    assert not canonicalize_activations(gm, RATE_DEFAULT, ConversionReport()).modified


def test_clamp_with_max_is_not_a_relu():
    class Net(nn.Module):
        def forward(self, x):
            return torch.clamp(x, min=0, max=6)

    gm = trace_module(Net())
    assert not canonicalize_activations(gm, RATE_DEFAULT, ConversionReport()).modified
    report = ConversionReport()
    check_supported(gm, RATE_DEFAULT, report)  # not a ReLU: a clipping function, a graded unit (until the
    assert report.passes[-1].counts["graded"] == 1  # bounded-ReLU pass makes it two neurons)


class BoundedNet(nn.Module):
    """Every bounded-ReLU spelling once, plus an in-place ReLU6 whose input is reused afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.r6 = nn.ReLU6()
        self.r6_inplace = nn.ReLU6(inplace=True)
        self.ht = nn.Hardtanh(0.0, 2.5)

    def forward(self, x):
        y = self.conv(x) * 4
        a = self.r6(y) + F.relu6(y) + self.ht(y) + F.hardtanh(y, 0.0, 3.0)
        b = torch.clamp(y, 0, 1.5) + y.clamp(min=0, max=2.0) + torch.clip(y, 0.0, 0.5)
        z = y + 0.0
        c = self.r6_inplace(z)
        return a + b + c + z  # z is the in-place ReLU6's result for the ANN


def test_decompose_bounded_relu_every_spelling():
    model = BoundedNet().eval()
    gm = trace_module(model)
    report = ConversionReport()
    assert decompose_bounded_relu(gm, RATE_DEFAULT, report).modified
    counts = report.entry("decompose_bounded_relu").counts
    assert counts == {"nn.ReLU6": 2, "F.relu6": 1, "nn.Hardtanh(0, a)": 1, "F.hardtanh(0, a)": 1,
                      "torch.clamp(0, a)": 1, "Tensor.clamp(0, a)": 1, "torch.clip(0, a)": 1}
    table = op_table(gm)
    assert table["ReLU"] == 16 and "ReLU6" not in table and "Hardtanh" not in table and "clamp" not in table
    relus = [n for n in gm.graph.nodes if is_canonical_relu(gm, n)]
    assert len(relus) == 16 and sum(getattr(gm.get_submodule(n.target), UPPER_CLIP_ATTR, False) for n in relus) == 8
    for high in (n for n in relus if getattr(gm.get_submodule(n.target), UPPER_CLIP_ATTR, False)):
        shifted = high.args[0]  # relu_hi(relu_lo(x) - a): the upper site reads the lower site's output
        assert shifted.target is operator.sub and is_canonical_relu(gm, shifted.args[0])
        assert not getattr(gm.get_submodule(shifted.args[0].target), UPPER_CLIP_ATTR, False)
    x = _x() * 3
    torch.testing.assert_close(gm(x), model(x), **TOL)
    assert not _rerun(decompose_bounded_relu, gm)
    check_supported(gm, RATE_DEFAULT, ConversionReport())


def test_clipping_with_other_bounds_is_a_graded_unit_not_a_neuron():
    class Net(nn.Module):
        def forward(self, x):
            return torch.clamp(x, min=-1, max=6) + F.hardtanh(x)

    gm, _ = _run_all(Net())
    assert not any(is_canonical_relu(gm, n) for n in gm.graph.nodes)  # not rewritten into neurons
    report = ConversionReport()
    check_supported(gm, RATE_DEFAULT, report)
    assert report.passes[-1].counts["graded"] == 2


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_relu6_network_converts_and_clips(coding):
    """A ReLU6 net converts; the decoded SNN output follows relu6 (including the clip at 6) as T grows."""
    from snnconvert.convert import ConversionConfig

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 64)
            with torch.no_grad():
                self.fc.weight.copy_(torch.linspace(-2.0, 12.0, 64).view(64, 1))
                self.fc.bias.zero_()

        def forward(self, x):
            return F.relu6(self.fc(x))

    model = Net().eval()
    x = torch.ones(1, 1)
    cfg = ConversionConfig.for_coding(coding, timesteps=64, threshold="max", granularity="layer")
    res = convert(model, forward_loop=lambda m: m(torch.rand(256, 1)), config=cfg)
    with torch.no_grad():
        out, ref = res.snn(x)[-1], model(x)
    assert float(ref.max()) == 6.0
    assert (out - ref).abs().max() < 0.25, (out - ref).abs().max()


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_relu6_with_threshold_below_the_ceiling_clips_once(coding):
    """Rate coding with θ_lo = 3 < 6, θ_hi = 2: the lower neuron saturates at 3 and the output is min(x, 3), never
    less: the upper neuron reads the lower neuron's output, so it stays silent (relu(x) − relu(x − 6) would give
    3 − 2 = 1 for x = 12). Differential coding (no saturation at θ): min(x, 6) with θ_lo = 8, θ_hi = 4."""
    from snnconvert.convert import ConversionConfig, convert_with_thresholds

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 8)
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([-1.0, 0.5, 1.0, 2.0, 5.0, 7.0, 9.0, 12.0]).view(8, 1))
                self.fc.bias.zero_()

        def forward(self, x):
            return F.relu6(self.fc(x))

    model = Net().eval()
    T = 32
    cfg = ConversionConfig.for_coding(coding, timesteps=T, granularity="layer")
    low, high = (3.0, 2.0) if coding == "rate" else (8.0, 4.0)
    thresholds = {"relu6_lo": torch.tensor(low), "relu6_hi": torch.tensor(high)}
    snn, _ = convert_with_thresholds(model, thresholds, cfg)
    assert {name for name, _ in snn.neurons()} == set(thresholds)
    pre = model.fc(torch.ones(1, 1)).detach()
    with torch.no_grad():
        out = snn(torch.ones(1, 1), T)
    assert float(out.min()) >= 0
    if coding == "rate":  # saturates at θ_lo = 3; below it, the rate bound θ/(2T)
        torch.testing.assert_close(out[-1], pre.clamp(0, 3.0), rtol=0, atol=3.0 / (2 * T) + 1e-6)
    else:  # the upper neuron follows a time-varying input here, so a looser bound than the static one
        torch.testing.assert_close(out[-1], pre.clamp(0, 6.0), rtol=0, atol=0.05)


def test_fold_bn_structure_numerics_idempotence():
    model = SpellingsNet()
    gm = trace_module(model)
    canonicalize_activations(gm, RATE_DEFAULT, ConversionReport())
    report = ConversionReport()
    assert fold_bn(gm, RATE_DEFAULT, report).modified
    gm.recompile()
    assert "BatchNorm2d" not in op_table(gm)
    assert report.entry("fold_bn").counts == {"BatchNorm2d": 3}
    x = _x()
    torch.testing.assert_close(gm(x), model.eval()(x), **TOL)
    assert not _rerun(fold_bn, gm)


def test_fold_bn_skips_shared_conv_output():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    gm = trace_module(Net())
    report = ConversionReport()
    assert not fold_bn(gm, RATE_DEFAULT, report).modified
    assert "other consumers" in report.entry("fold_bn").skipped["bn"]


class _FunctionalNet(nn.Module):
    """Functional layers: a weight-standardised conv followed by BN, a strided conv with keyword arguments, a
    dynamic (input-dependent) kernel, and an ``F.linear`` with a transposed weight and no bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 1, 3, 3)), nn.Parameter(torch.randn(6))
        self.bn = nn.BatchNorm2d(6).eval()
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.w2 = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.fc = nn.Parameter(torch.randn(6 * 7 * 7, 10))

    def forward(self, x):
        w = (self.w1 - self.w1.mean((1, 2, 3), keepdim=True)) / (self.w1.std((1, 2, 3), keepdim=True) + 1e-5)
        h = F.relu(self.bn(F.conv2d(x, w, self.b1, padding=1)))
        h = F.relu(F.conv2d(input=h, weight=self.w2, bias=None, stride=2, padding=1, groups=2))
        k = h.mean((0, 2, 3)).view(6, 1, 1, 1)
        h = F.max_pool2d(h, 2) + F.conv2d(F.max_pool2d(h, 2), k, groups=6)
        return F.linear(h.flatten(1), self.fc.t())


def test_functional_layers_to_modules_structure_numerics_idempotence():
    model = _FunctionalNet().eval()
    gm = trace_module(model)
    report = ConversionReport()
    assert functional_layers_to_modules(gm, RATE_DEFAULT, report).modified
    entry = report.entry("functional_layers_to_modules")
    assert entry.counts == {"F.conv2d": 2, "F.linear": 1}
    assert set(entry.skipped) == {"conv2d_2"} and "depends on the input" in entry.skipped["conv2d_2"]
    layers = {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
              and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear))}
    assert sorted(type(m).__name__ for m in layers.values()) == ["Conv2d", "Conv2d", "Linear"]
    strided = next(m for m in layers.values() if isinstance(m, nn.Conv2d) and m.groups == 2)
    assert (strided.stride, strided.padding, strided.bias, strided.in_channels) == ((2, 2), (1, 1), None, 6)
    linear = next(m for m in layers.values() if isinstance(m, nn.Linear))
    assert linear.bias is None and torch.equal(linear.weight, model.fc.detach().t())
    # the weight-standardisation nodes are gone (folded into the module), the dynamic kernel's are kept
    assert not any(n.op == "call_method" and n.target == "std" for n in gm.graph.nodes)
    x = _x()
    torch.testing.assert_close(gm(x), model(x), **TOL)
    assert not _rerun(functional_layers_to_modules, gm)
    # in the pipeline: BN now folds into the standardised conv
    gm, report = _run_all(model)
    assert "BatchNorm2d" not in op_table(gm) and report.entry("fold_bn").counts == {"BatchNorm2d": 1}
    torch.testing.assert_close(gm(x), model(x), **TOL)


def test_dynamic_kernel_and_data_dependent_indices_are_refused_with_their_reasons():
    """A convolution whose kernel is computed from the input is bilinear, not a layer; an index_select by indices
    computed from the input routes data: both listed, never run per step. Indices from shapes alone are fine."""
    x = _x(8)
    with pytest.raises(UnsupportedOpError, match=r"conv2d_2: .*dynamic kernel"):
        convert(_FunctionalNet().eval(), forward_loop=[x], config=RATE_DEFAULT)

    class Routed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            fixed = torch.index_select(h, 1, torch.arange(h.size(1) - 1, -1, -1))  # shape-derived: a permutation
            routed = torch.index_select(h, 1, h.mean((0, 2, 3)).argsort())  # data-dependent
            return (fixed + routed).mean((2, 3))

    with pytest.raises(UnsupportedOpError, match=r"index_select_1: .*data-dependent selection") as info:
        convert(Routed().eval(), forward_loop=[x], config=RATE_DEFAULT)
    assert "index_select:" not in str(info.value).replace("index_select_1:", "")


def test_drop_dropout_and_identity():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Identity(), nn.FeatureAlphaDropout(0.2), nn.ReLU())
    gm = trace_module(model)
    assert drop_dropout_and_identity(gm, RATE_DEFAULT, ConversionReport()).modified
    gm.recompile()
    assert set(op_table(gm)) == {"Linear", "ReLU"}
    x = torch.randn(3, 4)
    torch.testing.assert_close(gm(x), model.eval()(x), **TOL)
    assert not _rerun(drop_dropout_and_identity, gm)


def test_maxpool_moves_before_relu():
    model = SpellingsNet()
    gm = trace_module(model)
    canonicalize_activations(gm, RATE_DEFAULT, ConversionReport())
    report = ConversionReport()
    assert move_maxpool_before_activation(gm, RATE_DEFAULT, report).modified
    gm.recompile()
    assert report.entry("move_maxpool_before_activation").counts == {"swapped": 2}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.MaxPool2d):
            assert not is_canonical_relu(gm, node.args[0]), "a max-pool still reads a ReLU"
            (user,) = node.users
            assert is_canonical_relu(gm, user)
    x = _x()
    torch.testing.assert_close(gm(x), model.eval()(x), **TOL)
    assert not _rerun(move_maxpool_before_activation, gm)


def test_maxpool_with_second_consumer_stays():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)

        def forward(self, x):
            y = self.relu(x)
            return self.pool(y).sum() + y.sum()

    gm = trace_module(Net())
    report = ConversionReport()
    assert not move_maxpool_before_activation(gm, RATE_DEFAULT, report).modified
    assert "besides the max-pool" in report.entry("move_maxpool_before_activation").skipped["relu"]


def test_full_pipeline_equal_and_idempotent():
    model = SpellingsNet()
    gm, _ = _run_all(model)
    x = _x(8)
    torch.testing.assert_close(gm(x), model.eval()(x), **TOL)
    report = ConversionReport()
    for pass_fn in NORMALIZE_PASSES:
        assert not pass_fn(gm, RATE_DEFAULT, report).modified, pass_fn.__name__


def test_unsupported_ops_listed_all_at_once():
    with pytest.raises(UnsupportedOpError) as info:
        convert(Unsupported(), forward_loop=[torch.rand(2, 1, 8, 8)])
    names = {n.name for n in info.value.nodes}
    assert names == {"sort", "cumsum", "scaled_dot_product_attention"}
    text = str(info.value)
    assert "torch.sort" in text and "torch.cumsum" in text and "nets.py:" in text
    assert "(function is not convertible)" in text and "write the attention out" in text  # each node's reason
    assert "with attention dropout stays fused" in text  # and why the attention pass left it fused


def test_dropout_in_training_mode_is_named():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.dropout(F.relu(self.fc(x)), 0.5, training=True) + F.dropout(x, 0.5, training=self.training)

    with pytest.raises(UnsupportedOpError) as info:
        convert(Net(), forward_loop=[torch.randn(4, 4)])
    assert [n.name for n in info.value.nodes] == ["dropout"]  # the eval-mode one is removed
    assert "dropout with training=True (random at every call): pass training=self.training" in str(info.value)


def test_allow_ann_ops_is_explicit_and_reported():
    gm = trace_module(Unsupported())
    run_passes(gm, NORMALIZE_PASSES, RATE_DEFAULT, ConversionReport())
    cfg = RATE_DEFAULT.replace(allow_ann_ops=("sort", "cumsum", "scaled_dot_*"))
    report = ConversionReport()
    check_supported(gm, cfg, report)
    assert report.analog_nodes == ["sort", "cumsum", "scaled_dot_product_attention"]


def test_user_model_unchanged_by_conversion():
    model = SpellingsNet()
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = _x()
    convert(model, forward_loop=[x])
    assert model.training
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert isinstance(model.act_inplace, nn.ReLU) and model.act_inplace.inplace


def test_untraceable_model_raises_trace_error():
    class Net(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(TraceError, match="control flow"):
        trace_module(Net())


def test_failing_pass_is_named():
    def broken_pass(gm, cfg, report):
        raise RuntimeError("boom")

    from snnconvert.convert.pipeline import PassError

    gm = trace_module(SpellingsNet())
    with pytest.raises(PassError, match=r"pass broken_pass failed \(after canonicalize_activations\)"):
        run_passes(gm, [canonicalize_activations, broken_pass], RATE_DEFAULT, ConversionReport())


def test_inplace_relu_result_reaches_later_users():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            z = y * 2  # before the in-place op: sees the pre-activation
            y.relu_()
            return y + z + F.relu(y - 1)  # after: sees the activation

    model = Net().eval()
    gm = trace_module(model)
    assert canonicalize_activations(gm, RATE_DEFAULT, ConversionReport()).modified
    x = torch.randn(6, 4)
    torch.testing.assert_close(gm(x), model(x), **TOL)


def test_hand_made_thresholds_of_another_shape_are_refused_by_site():
    """A per-channel [C] vector on a conv site whose width is C broadcast along the width (0.26 from the ANN at T = 64
    against 0.014 with [C, 1, 1]); [3, 1, 1] on 8 channels failed only when the network ran, naming token_channel."""
    from snnconvert.convert import ConversionConfig, convert_with_thresholds

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 3)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).flatten(1))

    cfg = ConversionConfig.for_coding("rate", timesteps=4)
    for shape in ((), (8, 1, 1), (8, 8, 8)):
        snn, _ = convert_with_thresholds(Net().eval(), {"relu": torch.ones(shape)}, cfg, input_shape=(1, 8, 8))
        assert snn(torch.rand(2, 1, 8, 8)).shape == (4, 2, 3)
    for shape in ((8,), (3, 1, 1), (1, 8, 1)):
        with pytest.raises(ConfigError, match=rf"site relu: threshold of shape \[{', '.join(map(str, shape))}\] for "
                                              r"its per-sample shape \[8, 8, 8\]; give one value, one per channel "
                                              r"\[8, 1, 1\] or one per neuron \[8, 8, 8\]"):
            convert_with_thresholds(Net().eval(), {"relu": torch.ones(shape)}, cfg, input_shape=(1, 8, 8))
