"""NIR export: the exported graph, run in discrete time, equals the converted SNN at every step (bit for bit where
the arithmetic is exact, dyadic weights, inputs and thresholds, ties on cut-offs included); what NIR cannot express
is refused with every node listed; the file is written atomically and reads back; the CLI flags."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import ConfigError, ExportError

nir = pytest.importorskip("nir")
import snnconvert.runtime.nir as nir_module  # noqa: E402
from snnconvert.runtime.nir import (  # noqa: E402
    check_nir,
    export_nir,
    host_input,
    run_nir,
    to_nir,
    write_nir,
)


class Residual(nn.Module):
    """Convolutions (one grouped), a residual add, an average pool, flatten, constant offsets and scales."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a) + a)
        h = self.pool(b).flatten(1)
        h = F.relu(self.fc1(h) - 0.25)
        return self.fc2(-(0.5 - h * 0.5) / 2.0)  # c·x, c - x, -x and x / c map to Scale / offset nodes


def _dyadic(shape, lo, hi, denom, gen):
    return torch.randint(lo, hi + 1, shape, generator=gen).float() / denom


def _exact_case(neuron: str, levels: int, T: int, signed_site: bool = False):
    """A converted Residual whose weights, inputs and thresholds are small dyadic numbers: every sum is exact in
    float32, so the runtime and the NIR graph must agree bit for bit."""
    gen = torch.Generator().manual_seed(3)
    model = Residual().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_dyadic(p.shape, -4, 4, 8, gen))
    x = _dyadic((6, 1, 8, 8), 0, 16, 16, gen)
    result = convert(model, forward_loop=[x], config=ConversionConfig(coding="rate", timesteps=T, neuron=neuron,
                                                                       levels=levels, threshold="max"))
    snn = result.snn
    for _, n in snn.neurons():
        n.threshold.copy_(2.0 ** torch.randint(-2, 2, n.threshold.shape, generator=gen).float())
    if signed_site:  # the last site as a signed, unconstrained neuron (what identity sites use)
        last = list(snn.neurons())[-1][1]
        last.signed, last.relu_constrained = True, False
    snn.invalidate()
    return snn, x


@pytest.mark.parametrize("neuron,levels,signed", [("if", 1, False), ("mt", 4, False), ("mt", 3, True),
                                                  ("if", 1, True)])
def test_graph_equals_snn_bit_for_bit_on_exact_arithmetic(neuron, levels, signed):
    T = 12
    snn, x = _exact_case(neuron, levels, T, signed)
    graph = to_nir(snn, x)
    want = snn.raw(x, T)
    got = run_nir(graph, x.unsqueeze(0).expand(T, *x.shape))
    assert torch.equal(got, want)
    assert want.abs().sum() > 0
    # membranes land exactly on cut-offs here: a graph whose Thresholds are the cut-offs themselves (NIR fires on
    # u > t) differs, so the >= case is exercised and the exported cut-off (next float below) is what makes it equal
    monkey = pytest.MonkeyPatch()
    monkey.setattr(nir_module, "_strict", lambda cut, amp: cut.astype(np.float32))
    try:
        naive = run_nir(to_nir(snn, x), x.unsqueeze(0).expand(T, *x.shape))
    finally:
        monkey.undo()
    assert not torch.equal(naive, want)
    # one neuron site = one integrator, one Threshold per level (and per sign), its two Scales
    sites = len(list(snn.neurons()))
    kinds = [type(v).__name__ for v in graph.nodes.values()]
    assert kinds.count("I") == sites and graph.metadata["neuron_sites"] == sites
    per_site = levels * (2 if signed else 1)
    assert kinds.count("Threshold") == (sites - 1) * levels + (per_site if signed else levels)
    # generator and versions recorded; the grouped convolution is written dense (NIR 1.0 types a conv's input as
    # weight.shape[1] channels)
    assert graph.metadata["generator"].startswith("snnconvert ") and graph.metadata["nir_version"] == nir.version
    assert graph.nodes["c2"].weight.shape == (4, 4, 3, 3) and graph.nodes["c2"].groups == 1


def test_nirtorch_runs_the_written_file_bit_for_bit(tmp_path):
    """An independent executor: nirtorch wires the read-back graph (edge sums, recurrent edges, convolutions,
    pools, flatten) one sample at a time, as NIR is defined; the neuron primitives follow NIR's equations
    (I: v += dt·r·in, Threshold: in > t, Scale). nirtorch 2.6's own Affine mapping drops the bias (it sets
    ``weight.bias``), so Affine is mapped here too."""
    nirtorch = pytest.importorskip("nirtorch")
    T, dt = 10, 1e-4
    snn, x = _exact_case("mt", 4, T, signed_site=True)
    graph = write_nir(to_nir(snn, x, dt=dt), tmp_path / "net.nir")

    class Integrator(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.gain = torch.tensor(dt * np.asarray(node.r, np.float64), dtype=torch.float32)

        def forward(self, x, state=None):
            v = (torch.zeros_like(x) if state is None else state) + self.gain * x
            return v, v

    class Step(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.t = torch.from_numpy(node.threshold)

        def forward(self, x):
            return (x > self.t).float()

    class Gain(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.s = torch.from_numpy(node.scale)

        def forward(self, x):
            return x * self.s

    def affine(node):
        m = nn.Linear(node.weight.shape[1], node.weight.shape[0])
        m.weight.data, m.bias.data = torch.from_numpy(node.weight), torch.from_numpy(node.bias)
        return m

    module = nirtorch.nir_to_torch(graph, {nir.I: Integrator, nir.Threshold: Step, nir.Scale: Gain, nir.Affine: affine})
    runs = []
    for sample in x:
        state, outs = None, []
        for _ in range(T):
            out, state = module(sample, state)
            outs.append(out)
        runs.append(torch.stack(outs))
    assert torch.equal(torch.stack(runs, 1).detach(), snn.raw(x, T))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.cls = nn.Linear(4 * 4 * 4, 5)
        self.box = nn.Linear(4 * 4 * 4, 4)

    def forward(self, x):
        f = F.avg_pool2d(F.relu(self.conv(x)), 2).flatten(1)
        return {"cls": self.cls(f), "parts": (F.relu(self.box(f)), None)}


def test_every_output_of_a_multi_head_model_is_an_output_node(tmp_path):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    snn = convert(TwoHeads().eval(), forward_loop=[x], config=ConversionConfig(coding="rate", timesteps=6,
                                                                                  neuron="mt", levels=2)).snn
    graph = export_nir(snn, x, tmp_path / "heads.nir")
    assert sorted(n for n, v in graph.nodes.items() if isinstance(v, nir.Output)) == ["output.cls", "output.parts.0"]
    raw = run_nir(graph, x.unsqueeze(0).expand(6, *x.shape))
    assert raw["output.cls"].shape == (6, 6, 5) and raw["output.parts.0"].shape == (6, 6, 4)
    check = check_nir(graph, snn, x)
    assert check.same_top1 == 6 and check.max_abs <= 1e-5 * check.scale, check.text


def test_written_file_reads_back_and_runs_the_same(tmp_path):
    T = 6
    snn, x = _exact_case("mt", 2, T)
    graph = to_nir(snn, x, dt=1e-3)
    back = export_nir(snn, x, tmp_path / "net.nir", dt=1e-3)  # to_nir + write_nir
    assert (tmp_path / "net.nir").is_file() and [p.name for p in tmp_path.iterdir()] == ["net.nir"]
    umask = os.umask(0)
    os.umask(umask)  # written through a temporary file, yet with a plainly created file's permissions
    assert (tmp_path / "net.nir").stat().st_mode & 0o777 == 0o666 & ~umask
    assert float(back.metadata["dt"]) == 1e-3 and int(back.metadata["timesteps"]) == T
    seq = x.unsqueeze(0).expand(T, *x.shape)
    assert torch.equal(run_nir(back, seq), run_nir(graph, seq))
    assert torch.equal(run_nir(back, seq), snn.raw(x, T))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    snn, x = _exact_case("if", 1, 4)
    graph = to_nir(snn, x)

    def broken(path, g, **kw):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nir, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_nir(graph, tmp_path / "net.nir")
    assert list(tmp_path.iterdir()) == []


def test_runner_semantics_on_a_hand_built_graph():
    """Independent of the exporter: I + Threshold + a recurrent reset edge, integrated by hand."""
    one = np.ones(1, np.float32)
    graph = nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([1])}), "u": nir.I(r=one * 10.0),
               "z": nir.Threshold(threshold=one * 0.5), "out": nir.Scale(scale=one * 2.0),
               "reset": nir.Scale(scale=-one), "o": nir.Output(output_type={"output": np.array([1])})},
        edges=[("in", "u"), ("u", "z"), ("z", "out"), ("z", "reset"), ("reset", "u"), ("out", "o")],
        metadata={"dt": 0.1})
    got = run_nir(graph, torch.full((6, 1, 1), 0.25)).flatten().tolist()
    # u: 0.25, 0.5 (not > 0.5), 0.75 fire, 0.75 - 1 + 0.25 = 0, 0.25, 0.5
    assert got == [0.0, 0.0, 2.0, 0.0, 0.0, 0.0]
    # NIR's hard-reset IF (run for comparisons): v 0.25, 0.5, 0.75 fire (v = 0), 0.25, 0.5, 0.75 fire, 0.25
    hard = nir.NIRGraph(nodes={"in": graph.nodes["in"], "n": nir.IF(r=one * 10.0, v_threshold=one * 0.5),
                               "o": graph.nodes["o"]}, edges=[("in", "n"), ("n", "o")], metadata={"dt": 0.1})
    assert run_nir(hard, torch.full((7, 1, 1), 0.25)).flatten().tolist() == [0, 0, 1, 0, 0, 1, 0]


def _zoo(name: str, coding: str = "rate", **kw):
    from snnconvert.models_zoo import get_model

    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return convert(get_model(name), forward_loop=[x], config=ConversionConfig(coding=coding, timesteps=8,
                                                                              **kw)).snn, x


def test_differential_coding_is_refused_in_one_line():
    snn, x = _zoo("fmnist-resnet", "differential")
    with pytest.raises(ConfigError, match="needs rate coding"):
        to_nir(snn, x, host_prefix=True)


def test_graded_units_are_listed_all_at_once():
    snn, x = _zoo("fmnist-vgg")
    with pytest.raises(ExportError) as info:
        to_nir(snn, x)
    assert [n.name for n in info.value.nodes] == snn.unit_names  # the three max-pool units, nothing else
    assert all("MaxPool2d" in n.reason for n in info.value.nodes)


def test_host_prefix_takes_the_stem_max_pool_off_the_graph(tmp_path):
    snn, x = _zoo("fmnist-resnet", neuron="mt", levels=4)
    with pytest.raises(ExportError, match=r"(?s)pool: call_module pool.*host_prefix=True"):
        to_nir(snn, x)
    graph = to_nir(snn, x, host_prefix=True)
    assert "stem_0" not in graph.nodes and graph.nodes["input"].input_type["input"].tolist() == list(
        host_input(snn, x).shape[1:])
    for exported in (graph, export_nir(snn, x, tmp_path / "g.nir", host_prefix=True)):  # also as read back
        check = check_nir(exported, snn, x)  # the graph's metadata says that x goes through the prefix first
        assert check.same_top1 == 8 and check.max_abs <= 1e-3 * check.scale, check.text


def test_mobilenet_relu6_and_depthwise_convolutions_export():
    snn, x = _zoo("fmnist-mobilenet")
    graph = to_nir(snn, x)
    check = check_nir(graph, snn, x)
    assert check.same_top1 == 8 and check.max_abs <= 1e-3 * check.scale, check.text


def test_cli_writes_the_graph_and_refuses_in_one_line(tmp_path):
    runner = CliRunner()
    path = tmp_path / "resnet.nir"
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    ok = runner.invoke(app, ["fmnist-resnet", "-T", "4", "--calib-images", "64", "--eval-images", "32", "--nir",
                             str(path), "--nir-host-prefix", "--output", str(tmp_path / "snn"), "--report", str(report),
                             "--markdown", str(md)])
    assert ok.exit_code == 0, ok.output
    assert path.is_file() and "same top-1 on 16/16" in " ".join(ok.output.split())
    doc = json.loads(report.read_text())["nir"]  # the report records the export and its check
    assert doc["path"] == str(path.resolve()) and doc["host_prefix"] and doc["check"]["same_top1"] == 16
    assert doc["check"]["images"] == 16 and doc["check"]["timesteps"] == doc["timesteps"] == 4
    assert "## NIR export" in md.read_text() and f"{doc['nodes']} nodes" in md.read_text()
    report.unlink()
    md.unlink()
    graph = nir.read(path)
    assert graph.metadata["input"].startswith("output of the host prefix")
    # a saved SNN exports the same graph without calibration
    again = runner.invoke(app, [str(tmp_path / "snn"), "--nir", str(tmp_path / "resnet_again.nir"),
                                "--nir-host-prefix"])
    assert again.exit_code == 0, again.output
    other = nir.read(tmp_path / "resnet_again.nir")
    assert set(other.nodes) == set(graph.nodes) and sorted(other.edges) == sorted(graph.edges)
    assert all(np.array_equal(getattr(other.nodes[k], a), getattr(graph.nodes[k], a)) for k in graph.nodes
               for a in ("weight", "threshold", "scale") if hasattr(graph.nodes[k], a))
    for args, code, text in [
        (["--coding", "differential", "--nir", str(tmp_path / "d.nir")], 2, "--nir needs --coding rate"),
        (["--nir-host-prefix"], 2, "add --nir FILE.nir"),
        (["--nir", str(tmp_path / "resnet.nir" / "x.nir")], 2, "resnet.nir is a file, not a folder"),
    ]:
        bad = runner.invoke(app, ["fmnist-resnet", *args])
        lines = [ln for ln in bad.output.splitlines() if ln.strip()]
        assert bad.exit_code == code and len(lines) == 1 and text in lines[0], bad.output
    vgg = runner.invoke(app, ["fmnist-vgg", "-T", "4", "--calib-images", "32", "--eval-images", "16", "--nir",
                              str(tmp_path / "v.nir")])
    assert vgg.exit_code == 1 and "3 node(s) that NIR cannot express" in vgg.output and "Traceback" not in vgg.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.nir", "resnet_again.nir", "snn"]


class _Guarded(nn.Module):
    """A shape branch and a ``len(x.shape)`` read on the example: the traced graph holds ``torch._assert`` guards."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if y.shape[-1] > 4 and len(y.shape) == 4:
            y = F.avg_pool2d(y, 8)
        return self.fc(y.flatten(1))


def test_shape_guards_are_left_out_of_the_graph():
    """The guards were refused as getattr / len / eq / _assert with "no NIR primitive"."""
    x = torch.rand(16, 1, 8, 8)
    snn = convert(_Guarded().eval(), forward_loop=[x], config=ConversionConfig(timesteps=8),
                  example_inputs=x[:1]).snn
    assert any(n.target is torch._assert for n in snn.gm.graph.nodes)
    graph = to_nir(snn, x[:4])
    check = check_nir(graph, snn, x[:4])
    assert check.max_abs <= 1e-3 * check.scale, check.text
