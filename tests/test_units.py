"""Graded units (method.md §5.1, §12.13/15): decoded output equals f(decoded input) at every step."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from nets import SpellingsNet

from snnconvert.convert import convert
from snnconvert.convert.coding.units import GradedUnit


def _decode(out: torch.Tensor, coding: str) -> torch.Tensor:
    t = torch.arange(1, out.shape[0] + 1, dtype=out.dtype).view(-1, *([1] * (out.dim() - 1)))
    if coding == "rate":
        return out.cumsum(0) / t
    return (out / t).cumsum(0)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1)])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_graded_maxpool_is_exact_on_decoded_input(pool, coding):
    torch.manual_seed(0)
    T, x = 9, torch.randn(9, 2, 3, 6, 6).double()
    unit = GradedUnit(pool, coding=coding)
    bias = torch.randn(1, 3, 6, 6).double()
    if coding == "differential":
        unit.bias = bias
        decoded_in = bias + _decode(x - bias, coding)  # R_in,t = b + Σ (x_τ − b)/τ
    else:
        decoded_in = _decode(x, coding)
    out = unit.multistep(x)
    expected = torch.stack([pool(decoded_in[t]) for t in range(T)])
    torch.testing.assert_close(_decode(out, coding), expected, rtol=1e-12, atol=1e-12)
    unit.reset()
    single = torch.stack([unit.single_step(x[t]) for t in range(T)])
    torch.testing.assert_close(single, out, rtol=0, atol=0)


def test_capture_stores_bias_and_outputs_zeros():
    unit = GradedUnit(nn.MaxPool2d(2), coding="differential")
    unit.capture = True
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(unit(x), torch.zeros(1, 2, 2, 2))
    assert torch.equal(unit.bias, x)


def test_only_spike_fed_maxpools_become_units():
    res = convert(SpellingsNet(), forward_loop=[torch.rand(4, 1, 28, 28)])
    units = {n.target for n in res.snn.gm.graph.nodes
             if n.op == "call_module" and isinstance(res.snn.gm.get_submodule(n.target), GradedUnit)}
    plain = [n for n in res.snn.gm.graph.nodes
             if n.op == "call_module" and type(res.snn.gm.get_submodule(n.target)) is nn.MaxPool2d]
    assert len(units) == 1 and len(plain) == 1
    assert plain[0].args[0].target == "conv1"  # the first pool reads the analog input layer
    assert res.snn.unit_names == sorted(units)


class _FunctionalPools(nn.Module):
    """Functional max-pools behind neurons, with positional and keyword pool arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        y = torch.relu(nn.functional.max_pool2d(self.conv2(y), 2))  # kernel size positional
        return nn.functional.max_pool2d(y, kernel_size=3, stride=2, padding=1).flatten(1)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_functional_maxpool_units_bind_their_arguments(coding):
    from snnconvert.convert import ConversionConfig

    torch.manual_seed(1)
    model = _FunctionalPools().eval()
    x = torch.rand(6, 1, 12, 12)
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding(coding, threshold="max"))
    units = [m for _, m in res.snn.stateful() if isinstance(m, GradedUnit)]
    assert len(units) == 2
    probe = torch.randn(2, 4, 12, 12)
    assert torch.equal(units[0].f(probe), nn.functional.max_pool2d(probe, 2))
    assert torch.equal(units[1].f(probe), nn.functional.max_pool2d(probe, 3, 2, 1))
    with torch.no_grad():
        out = res.snn(x, 16)
    assert out.shape == (16, 6, 4 * 3 * 3)
    torch.testing.assert_close(out[-1], model(x), rtol=0.1, atol=0.1)
