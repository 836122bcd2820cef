"""Differential coding at network level (method.md §12.1-4, §12.12, §12.19-20)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import TOLERANCES
from nets import SpellingsNet

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding.diff import DiffCoding
from snnconvert.runtime import evaluate
from snnconvert.runtime.energy import E_AC_PJ, E_MAC_PJ, SynapticOpCounter


def _diff(**kw):
    return ConversionConfig.for_coding("differential", **kw)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(5)
    return torch.rand(32, 1, 28, 28)


def test_encode_decode_round_trip():
    """decode(encode(x) + y0) = x + y0 at every step, for a non-zero output offset y0 (the capture's output)."""
    coding = DiffCoding()
    x = torch.randn(3, 4)
    seq = coding.encode(x, 7)
    assert torch.equal(seq[0], x) and not seq[1:].any()

    class Offset:
        output_offset = torch.randn(1, 4)

    decoded = coding.decode(seq + Offset.output_offset, Offset())
    for t in range(7):
        torch.testing.assert_close(decoded[t], x + Offset.output_offset, rtol=0, atol=1e-6)


def test_decode_is_the_running_sum_of_differences_over_t():
    """method.md §2.6 written out: r_0 = y0, r_t = r_{t-1} + (y_t − y0)/t, on arbitrary raw outputs; and §12.2: the
    rate-equivalent input s_t = r_{t-1} + d_t has running mean r_t."""
    g = torch.Generator().manual_seed(4)
    y = torch.randn(9, 3, 5, generator=g, dtype=torch.float64)

    class Offset:
        output_offset = torch.randn(1, 5, generator=g, dtype=torch.float64)

    y0 = Offset.output_offset
    decoded = DiffCoding().decode(y, Offset())
    r, expected = y0.expand(3, 5), []
    for t in range(1, 10):
        r = r + (y[t - 1] - y0) / t
        expected.append(r)
    torch.testing.assert_close(decoded, torch.stack(expected), rtol=0, atol=1e-12)
    d = y - y0  # a unit's differential outputs (its offset removed)
    r_unit = DiffCoding.decode_unit(d)
    s = d + torch.cat([torch.zeros_like(r_unit[:1]), r_unit[:-1]])
    mean = s.cumsum(0) / torch.arange(1, 10, dtype=s.dtype).view(-1, 1, 1)
    torch.testing.assert_close(mean, r_unit, rtol=0, atol=1e-12)


class LinearOnly(nn.Module):
    """conv, BN, avg-pool, residual add, concat, linear: no ReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 14 * 14, 10)
        self.bn.running_mean.uniform_(-1, 1)

    def forward(self, x):
        a = self.bn(self.conv1(x))
        b = self.conv2(a) + a
        return self.fc(torch.flatten(torch.cat([self.pool(a), self.pool(b)], 1), 1))


def test_network_without_relu_reproduces_ann_at_every_step(data):
    """Differential coding of linear maps is exact (identity neurons off: "auto" would quantise conv2's and the
    head's dense inputs)."""
    model = LinearOnly().eval()
    res = convert(model, forward_loop=[data], config=_diff(timesteps=5, identity_neurons="off"))
    with torch.no_grad():
        out, ann = res.snn(data), model(data)
    for t in range(5):
        torch.testing.assert_close(out[t], ann, rtol=1e-5, atol=1e-5)


def _spellings_offsets(model: SpellingsNet) -> dict[str, torch.Tensor]:
    """Every unit's b in SpellingsNet written out from the ANN's own modules: the unit's input when the image is
    zero and every stateful unit upstream is silent (method.md §3). The max-pools are reordered in front of the
    neurons, and a layer fed by a silent unit sees zeros, so its b is its (BN-affected) bias."""
    with torch.no_grad():
        z6 = torch.zeros(1, 6, 14, 14)
        b = {
            "act_inplace_act": model.pool(model.bn1(model.conv1(torch.zeros(1, 1, 28, 28)))),
            "relu": model.bn2(model.conv2(z6)),
            "relu_1": model.bn3(model.conv3(z6)),
            "pool_pool_1_unit": model.conv4(z6),  # the graded max-pool reads conv4 before the ReLU
            "relu_2": torch.zeros(1, 6, 7, 7),  # fed by the silent max-pool unit
            "shared_act": torch.zeros(1, 294),  # the second ReLU of a ReLU: fed by a silent neuron
            "shared": model.fc1(torch.zeros(1, 294)),
        }
        return {**b, "output": model.fc2(torch.zeros(1, 16))}


def test_precomputed_offsets_equal_step0_capture(data):
    model = SpellingsNet().eval()
    res = convert(model, forward_loop=[data], config=_diff(timesteps=4))
    snn = res.snn
    snn(data[:2])  # precomputes with a batch of one
    pre = {name: m.bias.clone() for name, m in snn.stateful()}
    # independently of capture_offsets: every unit's b and the output offset written out from the ANN's modules
    expected = _spellings_offsets(model)
    assert set(pre) == set(expected) - {"output"}
    for name, b in pre.items():
        torch.testing.assert_close(b, expected[name], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(snn.output_offset, expected["output"], rtol=0, atol=1e-6)
    # the pitfall of method.md §11.2 would give the units behind a neuron the ANN's response to a zero image instead
    with torch.no_grad():
        ann_zero = model.bn2(model.conv2(torch.relu(expected["act_inplace_act"])))
    assert (ann_zero - pre["relu"]).abs().max() > 1e-2
    # the step-0 pass on a zero batch of any size gives the same b in every row (no dependence on batch size)
    y0 = snn.capture_offsets(torch.zeros(6, 1, 28, 28))
    for name, m in snn.stateful():
        assert m.bias.shape[0] == 6
        for row in m.bias:
            torch.testing.assert_close(row, pre[name][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(y0, expected["output"].expand_as(y0), rtol=0, atol=1e-6)
    snn.invalidate()


def test_bias_constant_changes_only_offsets(data):
    model = SpellingsNet().eval()
    cfg = _diff(timesteps=6, threshold="max")
    res = convert(model, forward_loop=[data], config=cfg)
    snn = res.snn
    with torch.no_grad():
        before = snn(data[:4])
        biases = {n: m.bias.clone() for n, m in snn.stateful()}
        snn.gm.fc2.bias += 0.5  # output layer: only y0 and the decoded output shift
        snn.invalidate()
        after = snn(data[:4])
    torch.testing.assert_close(after, before + 0.5, rtol=1e-5, atol=1e-5)
    for n, m in snn.stateful():
        assert torch.equal(m.bias, biases[n])
    with torch.no_grad():
        snn.gm.conv3.bias += 0.25  # hidden conv: only the unit it feeds; those behind a neuron see it silent
        snn.invalidate()
        snn(data[:1])
    changed = {n for n, m in snn.stateful() if not torch.equal(m.bias, biases[n])}
    assert changed == {"relu_1"}
    delta = dict(snn.stateful())["relu_1"].bias - biases["relu_1"]
    torch.testing.assert_close(delta, torch.full_like(delta, 0.25), rtol=0, atol=1e-6)


def test_bias_change_shifts_the_decoded_output_as_in_the_ann(data):
    """§12.4 on a network without neurons (exact): a changed hidden bias moves the SNN's output at every step exactly
    as it moves the ANN's."""
    model = LinearOnly().eval()
    res = convert(model, forward_loop=[data], config=_diff(timesteps=4, identity_neurons="off"))
    with torch.no_grad():
        model.conv2.bias += 0.3
        res.snn.gm.conv2.bias += 0.3
        res.snn.invalidate()
        out, ann = res.snn(data[:8]), model(data[:8])
    for t in range(4):
        torch.testing.assert_close(out[t], ann, rtol=1e-5, atol=1e-5)


def test_decoded_relu_outputs_never_negative(data):
    res = convert(SpellingsNet(), forward_loop=[data], config=_diff(timesteps=12))
    decoded = {}

    def hook(name):
        def fn(module, args, out):
            if module.capture:
                return
            d = out.reshape(12, -1)
            t = torch.arange(1, 13, dtype=d.dtype).view(-1, 1)
            decoded[name] = (d / t).cumsum(0)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in res.snn.neurons()]
    with torch.no_grad():
        res.snn(torch.randn(16, 1, 28, 28) * 3)  # far outside the calibration range
    for h in handles:
        h.remove()
    for name, r in decoded.items():
        assert r.min() >= -1e-6, name


def test_single_step_equals_multi_step(data):
    res = convert(SpellingsNet(), forward_loop=[data], config=_diff(timesteps=8))
    with torch.no_grad():
        torch.testing.assert_close(res.snn(data[:6], mode="single"), res.snn(data[:6]),
                                   **TOLERANCES["single_vs_multi"])


def test_fewer_events_than_rate_at_equal_T(data):
    model = SpellingsNet().eval()
    labels = model(data).argmax(-1)
    events = {}
    for coding in ("rate", "differential"):
        cfg = ConversionConfig.for_coding(coding, timesteps=8, neuron="mt", levels=4, threshold="99.9%")
        res = convert(model, forward_loop=[data], config=cfg)
        events[coding] = sum(evaluate(res.snn, [(data, labels)], ann=model).events_per_step)
    assert events["differential"] < events["rate"], events


def test_sop_counter_on_hand_built_conv():
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    net = nn.Sequential(nn.ReLU(), conv)
    res = convert(net, forward_loop=[torch.ones(1, 1, 4, 4)],
                  config=ConversionConfig.for_coding("rate", timesteps=1, threshold="max"))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 5.0  # corner: fan-out 4 positions x 3 channels
    x[0, 0, 1, 1] = 5.0  # interior: fan-out 9 positions x 3 channels
    counter = SynapticOpCounter(res.snn, 1)
    with torch.no_grad():
        res.snn(x)
    counter.close()
    counter.counts.images = 1
    ops = counter.counts.to_dict()
    assert ops["layers"]["1"]["sop_per_step"] == [3 * (4 + 9)]
    assert ops["ann_macs_per_image"] == 3 * (4 * 4 + 8 * 6 + 4 * 9)  # Σ over outputs of in-bounds taps
    ratio = E_AC_PJ * 39 / (E_MAC_PJ * ops["ann_macs_per_image"])
    assert ops["energy_ratio_reference"] == pytest.approx([ratio])


@pytest.mark.parametrize("coding", ["differential", "rate"])
@pytest.mark.parametrize("mode", ["multi", "single"])
def test_energy_ratios_against_hand_counts(coding, mode):
    """§8 on conv → ReLU → conv over 4x4 images, T = 3, counted by hand: SOP_l,t = Σ over the non-zero inputs of
    their fan-out (3x3 taps in bounds: 4 at a corner, 6 on an edge, 9 inside, times the output channels); the analog
    first layer reads the image once in differential coding (zeros after step 1) and at every step in rate coding;
    the zero-input capture adds nothing (nor shifts the steps in single-step mode); the reference ratio prices every
    operation as an AC, the extended one the analog layer's as MACs."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1)).eval()
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 1, 2], x[1, 0, 3, 1], x[1, 0, 2, 2] = 1.0, 0.7, 0.4, 0.9
    T = 3
    cfg = ConversionConfig.for_coding(coding, timesteps=T, neuron="mt", levels=4, threshold="max")
    res = convert(net, forward_loop=[torch.rand(8, 1, 4, 4)], config=cfg)
    (site, neuron), = res.snn.neurons()
    spikes = []
    hook = neuron.register_forward_hook(lambda m, a, out: None if m.capture else spikes.append(out.clone()))
    counter = SynapticOpCounter(res.snn, T)
    with torch.no_grad():
        res.snn(x, mode=mode)
    counter.close()
    hook.remove()
    counter.counts.images = 2
    ops = counter.counts.to_dict()

    rows = torch.tensor([2.0, 3.0, 3.0, 2.0])
    fanout = rows[:, None] * rows[None, :]  # in-bounds taps per input position
    per_step = torch.cat(spikes).reshape(T, 2, 2, 4, 4)  # [T, B, C, H, W]
    spike_sop = [float(((s != 0) * fanout).sum()) * 3 / 2 for s in per_step]
    image_sop = float(((x != 0) * fanout).sum()) * 2 / 2
    analog_sop = [image_sop, 0.0, 0.0] if coding == "differential" else [image_sop] * T
    assert sum(spike_sop) > 0
    assert ops["layers"]["0"]["input"] == "analog" and ops["layers"]["2"]["input"] == "spike"
    assert ops["layers"]["0"]["sop_per_step"] == pytest.approx(analog_sop, abs=1e-9)
    assert ops["layers"]["2"]["sop_per_step"] == pytest.approx(spike_sop, abs=1e-9)
    tot = {"0": 100.0 * 1 * 2, "2": 100.0 * 2 * 3}
    assert ops["ann_macs_per_image"] == sum(tot.values())
    for name, sops in (("0", analog_sop), ("2", spike_sop)):
        assert ops["layers"][name]["tot_macs"] == tot[name]
        assert ops["layers"][name]["sop_rate"] == pytest.approx(sum(sops) / (T * tot[name]))
    cum_mac = torch.tensor(analog_sop, dtype=torch.float64).cumsum(0)
    cum_ac = torch.tensor(spike_sop, dtype=torch.float64).cumsum(0)
    denominator = E_MAC_PJ * sum(tot.values())
    assert ops["energy_ratio_reference"] == pytest.approx((E_AC_PJ * (cum_ac + cum_mac) / denominator).tolist())
    assert ops["energy_ratio_extended"] == pytest.approx(
        ((E_AC_PJ * cum_ac + E_MAC_PJ * cum_mac) / denominator).tolist())


def test_functional_and_transposed_layers_are_counted():
    """``F.conv2d`` / ``F.linear`` with parameter weights become modules and, like a ConvTranspose2d, are counted:
    every layer appears with its dense MACs, the first (image-fed) one as analog."""
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.w = nn.Parameter(torch.randn(4, 1, 3, 3) * 0.5)
            self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
            self.fc = nn.Parameter(torch.randn(10, 2 * 28 * 28) * 0.05)

        def forward(self, x):
            h = F.relu(F.conv2d(x, self.w, None, 2, 1))  # [4, 14, 14]
            h = F.relu(self.up(h))  # [2, 28, 28]
            return F.linear(h.flatten(1), self.fc)

    data = torch.rand(16, 1, 28, 28)
    res = convert(Net().eval(), forward_loop=[data], config=_diff(timesteps=4))
    ops = evaluate(res.snn, [(data, torch.zeros(16, dtype=torch.long))]).ops
    layers = ops["layers"]
    assert {v["input"] for v in layers.values()} == {"analog", "spike"} and len(layers) == 3
    assert sorted(v["tot_macs"] for v in layers.values()) == sorted([
        4 * 9 * 14 * 14 - 4 * (3 * 14 + 3 * 14 - 1),  # 3x3 stride 2 pad 1 on 28x28: border taps read padding
        4 * 14 * 14 * 2 * 4,  # every input entry reaches 2 channels x 4 taps
        2 * 28 * 28 * 10])
    assert sum(v["input"] == "analog" for v in layers.values()) == 1
    assert all(sum(v["sop_per_step"]) > 0 for v in layers.values())


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_fanout_count_equals_all_ones_convolution(groups):
    """SOP counting: the channel-summed count equals the direct all-ones convolution of the 0/1 mask."""
    import torch.nn.functional as F

    from snnconvert.runtime.energy import _fanout_count

    layer = nn.Conv2d(6, 12, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=groups)
    mask = (torch.rand(5, 6, 11, 9) < 0.3).float()
    ones = torch.ones(12, 6 // groups, 3, 2)
    direct = F.conv2d(mask, ones, None, (2, 1), (1, 0), (1, 2), groups).flatten(1).sum(1).double()
    assert torch.equal(_fanout_count(layer, mask), direct)
    linear = nn.Linear(30, 7)
    m2 = (torch.rand(4, 30) < 0.5).float()
    assert torch.equal(_fanout_count(linear, m2), m2.sum(1).double() * 7)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_fanout_count_padding_modes(mode):
    """Reflect, replicate and circular padding read border entries again: each read is a synaptic operation, as the
    layer itself with all-ones weights counts them (they were counted with the zero-padding geometry)."""
    from snnconvert.runtime.energy import _fanout_count

    for kwargs in ({"padding": 1}, {"padding": 2, "stride": 2, "groups": 2}, {"padding": "same", "dilation": 2}):
        layer = nn.Conv2d(4, 6, 3, padding_mode=mode, bias=False, **kwargs)
        nn.init.ones_(layer.weight)
        x = torch.randn(3, 4, 8, 7) * (torch.rand(3, 4, 8, 7) < 0.4)
        direct = layer((x != 0).float()).detach().flatten(1).sum(1).double()
        assert torch.equal(_fanout_count(layer, x), direct), kwargs
        dense = layer(torch.ones(1, 4, 8, 7)).detach().sum().double()
        assert float(_fanout_count(layer, torch.ones(1, 4, 8, 7))[0]) == dense  # TOT: the dense MACs


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fanout_count_transposed_convolution(dims):
    """Transposed convolutions: the count equals the all-ones transposed convolution of the 0/1 mask (taps that land
    in the cropped border, padding and output_padding, do not count)."""
    import torch.nn.functional as F

    from snnconvert.runtime.energy import _fanout_count

    conv_cls = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    functional = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    spatial = (7, 6, 5)[:dims]
    for kwargs in ({"stride": 2, "padding": 1, "output_padding": 1, "groups": 3}, {"stride": 1, "dilation": 2}):
        layer = conv_cls(6, 9, 3, **kwargs)
        x = torch.randn(4, 6, *spatial) * (torch.rand(4, 6, *spatial) < 0.4)
        ones = torch.ones(6, 9 // layer.groups, *([3] * dims))
        direct = functional((x != 0).float(), ones, None, layer.stride, layer.padding, layer.output_padding,
                            layer.groups, layer.dilation)
        assert torch.equal(_fanout_count(layer, x), direct.flatten(1).sum(1).double()), kwargs


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fanout_count_other_ranks_and_same_padding(dims):
    """The fan-out map also holds for 1-d/3-d convolutions and padding='same' (stride 1)."""
    import torch.nn.functional as F

    from snnconvert.runtime.energy import _fanout_count

    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    functional = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    spatial = (9, 7, 5)[:dims]
    for kwargs in ({"padding": "same", "groups": 3}, {"padding": 2, "stride": 2, "dilation": 2, "groups": 1}):
        layer = conv_cls(6, 9, 3, **kwargs)
        x = torch.randn(4, 6, *spatial) * (torch.rand(4, 6, *spatial) < 0.4)
        ones = torch.ones(9, 6 // layer.groups, *([3] * dims))
        direct = functional((x != 0).float(), ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        assert torch.equal(_fanout_count(layer, x), direct.flatten(1).sum(1).double()), kwargs


def test_changed_weights_are_noticed_without_invalidate(data):
    """The captured offsets depend on the layers' weights: an in-place change (an optimizer step, load_state_dict)
    captures them again on the next call, as invalidate() would."""
    import copy

    res = convert(SpellingsNet().eval(), forward_loop=[data], config=_diff(timesteps=4))
    snn = res.snn
    with torch.no_grad():
        snn(data[:2])
        snn.gm.conv3.bias.add_(0.25)
        state = {k: v + 0.1 if k == "gm.fc1.bias" else v for k, v in snn.state_dict().items()}
        snn.load_state_dict(state)
        fresh = copy.deepcopy(snn)
        fresh.invalidate()
        torch.testing.assert_close(snn(data[:4]), fresh(data[:4]), rtol=0, atol=0)
        before = snn.capture_cache_key
        snn(data[:4])
        assert snn.capture_cache_key == before  # unchanged weights: the cache holds
        # writes through .data are not versions of the tensor: the key holds the weights' content too
        snn.gm.conv3.bias.data.mul_(torch.arange(snn.gm.conv3.bias.numel()) % 2)  # a mask
        snn.gm.fc1.bias.data = snn.gm.fc1.bias.data + 0.5
        fresh = copy.deepcopy(snn)
        fresh.invalidate()
        torch.testing.assert_close(snn(data[:4]), fresh(data[:4]), rtol=0, atol=0)
