"""Static input prefix (convert/static_prefix.py): the stateless layers in front of the first stateful unit run on
[B] instead of [T*B]; the graph split, bit-identical outputs and unchanged synaptic-operation counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime.energy import SynapticOpCounter


class StemNet(nn.Module):
    """Normalisation by constants, a stem conv and a max-pool before the first ReLU (the prefix), a prefix conv
    chain (stem2 reads stem's output directly, so its steps-2..T input is a non-zero bias map), a neuron on the raw
    input (so the input itself is a boundary value), then spiking layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.stem2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.skip = nn.Conv2d(1, 6, 2, stride=2)
        self.conv = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, image):
        x = (image - 0.25) * 2.0
        y = F.relu(self.pool(self.stem2(self.stem(x))))
        y = y + self.skip(F.relu(image))
        y = F.relu(F.max_pool2d(self.conv(y), 2))
        return self.fc(torch.flatten(y, 1))


class BatchSizeNet(nn.Module):
    """A reshape before the first ReLU: not a known per-sample op (reshapes may fold the batch), so it ends the
    prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y.reshape(-1, 4 * 8 * 8)
        return self.fc(F.relu(y))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(5)
    return torch.rand(10, 1, 28, 28, generator=g)


def _convert(model: nn.Module, images: torch.Tensor, coding: str, T: int):
    torch.manual_seed(0)
    # identity neurons off: StemNet's prefix conv chain (stem -> stem2) stays dense, which is what these tests need
    cfg = ConversionConfig.for_coding(coding, timesteps=T, identity_neurons="off")
    return convert(model.eval(), forward_loop=[images], config=cfg).snn


def _run(snn, x, T, elide: bool, mode: str = "multi", rows: list | None = None):
    """Outputs and operation counts of one run; ``rows`` collects the batch rows the stem layer sees per call."""
    snn.elide_static_prefix = elide
    counter = SynapticOpCounter(snn, T)
    hook = None if rows is None else snn.gm.stem.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            y = snn(x, T, mode=mode)
    finally:
        counter.close()
        if hook is not None:
            hook.remove()
        snn.elide_static_prefix = True
    return y, counter.counts.to_dict()


def test_graph_split_puts_stateless_stem_in_prefix(images):
    torch.manual_seed(1)
    snn = _convert(StemNet(), images, "differential", 4)
    prefix = snn.static_prefix()
    assert prefix is not None
    names = [n.name for n in prefix.nodes]
    assert names == ["image", "sub", "mul", "stem", "stem2", "pool"], names
    # the pool output feeds the first neuron; the raw input feeds the neuron in front of the skip conv
    assert [n.name for n in prefix.boundary] == ["image", "pool"]
    main_targets = [n.target for n in prefix.main.graph.nodes if n.op == "call_module"]
    assert "stem" not in main_targets and "stem2" not in main_targets and "pool" not in main_targets
    assert "skip" in main_targets and "conv" in main_targets
    assert [n.op for n in prefix.main.graph.nodes].count("placeholder") == 2
    assert snn.static_prefix() is prefix  # cached


@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("coding", ["differential", "rate"])
@pytest.mark.parametrize("T", [2, 5])
def test_elided_run_is_bit_identical_and_counts_the_same(images, coding, T, mode):
    torch.manual_seed(2)
    snn = _convert(StemNet(), images, coding, T)
    x = images[:7]
    rows_elided, rows_full = [], []
    y_elided, ops_elided = _run(snn, x, T, True, mode, rows_elided)
    y_full, ops_full = _run(snn, x, T, False, mode, rows_full)
    assert torch.equal(y_elided, y_full)
    # the prefix really ran on fewer rows: once per image (and one rest row) instead of at every step
    assert sum(rows_elided) < sum(rows_full) == T * len(x)
    if mode == "multi":
        assert rows_full == [T * len(x)] and T * len(x) not in rows_elided
    assert ops_elided["sop_per_step"] == ops_full["sop_per_step"]
    for name, layer in ops_full["layers"].items():
        assert ops_elided["layers"][name]["sop_per_step"] == layer["sop_per_step"], name
    if coding == "differential":  # steps 2..T: stem reads the normalised zero image (−0.5 everywhere), stem2 a
        # bias map; both non-zero, counted from the one-sample "rest" call in the elided run
        for name in ("stem", "stem2"):
            assert all(v > 0 for v in ops_full["layers"][name]["sop_per_step"][1:]), name
    # the other step mode: same values (up to the batch-size-dependent rounding of the layers)
    with torch.no_grad():
        other = snn(x, T, mode="single" if mode == "multi" else "multi")
    torch.testing.assert_close(other, y_full, rtol=1e-5, atol=1e-6)


def test_unknown_op_ends_the_prefix(images):
    torch.manual_seed(3)
    x = images[:, :, :8, :8]
    snn = _convert(BatchSizeNet(), x, "differential", 3)
    prefix = snn.static_prefix()
    assert prefix is not None and [n.name for n in prefix.nodes] == ["x", "stem"]
    y_elided, _ = _run(snn, x[:4], 3, True)
    y_full, _ = _run(snn, x[:4], 3, False)
    assert torch.equal(y_elided, y_full)


def test_prefix_is_rebuilt_when_a_module_is_swapped(images):
    torch.manual_seed(4)
    snn = _convert(StemNet(), images, "differential", 3)
    first = snn.static_prefix()
    snn.gm.stem2 = nn.Conv2d(6, 6, 3, padding=1)
    second = snn.static_prefix()
    assert second is not first
    snn.invalidate()
    y_elided, _ = _run(snn, images[:3], 3, True)
    y_full, _ = _run(snn, images[:3], 3, False)
    assert torch.equal(y_elided, y_full)


def test_no_prefix_when_the_first_op_is_stateful(images):
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(28 * 28, 4))
    snn = _convert(model, images, "rate", 2)
    assert snn.static_prefix() is None
    with torch.no_grad():
        assert snn(images[:2], 2).shape == (2, 2, 4)


def test_prefix_reads_buffer_constants(images):
    """A registered buffer (a get_attr node, as ONNX-imported normalisation constants are) feeds a prefix op."""

    class BufferNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.3]).view(1, 1, 1, 1))
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 28 * 28, 3)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x - self.mean)).flatten(1))

    torch.manual_seed(5)
    snn = _convert(BufferNet(), images, "differential", 3)
    prefix = snn.static_prefix()
    assert [n.op for n in prefix.nodes] == ["placeholder", "call_function", "call_module"]
    assert torch.equal(_run(snn, images[:4], 3, True)[0], _run(snn, images[:4], 3, False)[0])
