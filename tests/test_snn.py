"""Reference SNN (rate coding): step modes agree, error shrinks with T, artifacts reload identically."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES
from nets import FunctionalPoolNet, SpellingsNet

from snnconvert.convert import ConversionConfig, ModelSource, convert
from snnconvert.convert.errors import ArtifactError, ConfigError
from snnconvert.runtime import compile, evaluate, load

NETS = str(Path(__file__).parent / "nets.py")


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(3)
    return torch.rand(48, 1, 28, 28)


@pytest.fixture(scope="module")
def converted(data):
    model = SpellingsNet()
    res = convert(model, forward_loop=[data[:24], data[24:]], config=ConversionConfig(timesteps=32),
                  source=ModelSource.python(f"{NETS}:SpellingsNet"))
    return model.eval(), res


def test_single_step_equals_multi_step(converted, data):
    _, res = converted
    with torch.no_grad():
        multi = res.snn(data[:8], 16, mode="multi")
        single = res.snn(data[:8], 16, mode="single")
    torch.testing.assert_close(single, multi, **TOLERANCES["single_vs_multi"])


def test_streaming_api_matches(converted, data):
    _, res = converted
    snn, x, T = res.snn, data[:4], 8
    with torch.no_grad():
        expected = snn.raw(x, T)
        snn.set_step_mode("s")
        snn.reset()
        steps = torch.stack([snn.gm(x_t) for x_t in snn.coding.encode(x, T)])
    torch.testing.assert_close(steps, expected, **TOLERANCES["single_vs_multi"])


def test_error_shrinks_as_T_doubles(data):
    # max thresholds: no clipping error, so the error of soft-reset IF neurons must keep shrinking with T
    model = SpellingsNet().eval()
    res = convert(model, forward_loop=[data], config=ConversionConfig(threshold="max"))
    with torch.no_grad():
        ann = model(data)
        errors = [float((res.snn(data, T)[-1] - ann).abs().mean()) for T in (8, 16, 32, 64, 128)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # soft-reset IF error ~ 1/T: doubling T twice must cut it at least by 2
    assert errors[-1] < errors[-3] / 2, errors


def test_decoded_output_is_running_mean_of_raw(converted, data):
    _, res = converted
    with torch.no_grad():
        raw = res.snn.raw(data[:4], 6)
        decoded = res.snn(data[:4], 6)
    for t in range(6):
        torch.testing.assert_close(decoded[t], raw[: t + 1].mean(0), rtol=1e-6, atol=1e-6)


def test_save_and_load_give_identical_outputs(converted, data, tmp_path):
    _, res = converted
    path = res.save(tmp_path / "snn")
    assert sorted(p.name for p in path.iterdir()) == [
        "ann_state.pt", "config.json", "manifest.json", "report.json", "source.json", "thresholds.pt"]
    again = load(path)
    with torch.no_grad():
        torch.testing.assert_close(again(data[:8]), res.snn(data[:8]), rtol=0, atol=0)
    res.save(path)  # overwriting an artifact is atomic and allowed
    assert not list(tmp_path.glob(".snn*")), "temporary folders left behind"


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_whole_network_pickles(data, tmp_path, coding, backend):
    """``torch.save`` of a whole SNN (not only the artifact of ``save``) round-trips, also with functional max-pools
    in graded units and on a kernel backend."""
    import shutil

    from snnconvert.convert.coding.units import GradedUnit

    if backend == "native" and shutil.which("cc") is None:
        pytest.skip("no C compiler for the native backend")
    res = convert(FunctionalPoolNet(), forward_loop=[data], config=ConversionConfig.for_coding(coding, timesteps=3))
    units = [m for _, m in res.snn.stateful() if isinstance(m, GradedUnit)]
    assert len(units) == 1 and units[0].f.target is torch.nn.functional.max_pool2d
    program = compile(res.snn, backend)
    torch.save(program, tmp_path / "snn.pt")
    again = torch.load(tmp_path / "snn.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(data[:6]), program(data[:6]))
    reloaded = [m for _, m in again.stateful() if isinstance(m, GradedUnit)][0]
    assert reloaded.f.target is torch.nn.functional.max_pool2d


def test_save_refuses_non_artifact_target_and_sourceless_result(converted, data, tmp_path):
    _, res = converted
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an snnconvert artifact"):
        res.save(tmp_path / "busy")
    sourceless = convert(SpellingsNet(), forward_loop=[data])
    with pytest.raises(ArtifactError, match="no model source"):
        sourceless.save(tmp_path / "x")
    with pytest.raises(ArtifactError, match="missing"):
        load(tmp_path / "busy")


def test_evaluate_reports_accuracy_at_every_step_and_events(converted, data):
    model, res = converted
    labels = model(data).argmax(-1)
    batches = [(data[:20], labels[:20]), (data[20:], labels[20:])]
    report = evaluate(res.snn, batches, ann=model, timesteps=16)
    assert report.ann_accuracy == 1.0 and report.images == 48
    assert len(report.snn_accuracy) == 16 and all(0 <= a <= 1 for a in report.snn_accuracy)
    # events: each IF neuron emits at most one event per step
    per_image_neurons = sum(s["neurons_per_image"] for s in report.site_events.values())
    assert len(report.events_per_step) == 16
    assert all(0 < e <= per_image_neurons for e in report.events_per_step)
    single = evaluate(res.snn, batches, ann=model, timesteps=16, mode="single")
    assert single.snn_accuracy == report.snn_accuracy
    assert single.events_per_step == pytest.approx(report.events_per_step)


def test_top5_ranks_the_label_like_argmax_ranks_ties():
    from snnconvert.runtime.scores import hits as _hits

    torch.manual_seed(0)
    out, y = torch.randn(3, 40, 12), torch.randint(0, 12, (40,))
    top1, top5 = _hits(out, y)  # distinct outputs: top-5 is "the label is among topk(5)"
    assert top1.tolist() == [int((o.argmax(-1) == y).sum()) for o in out]
    assert top5.tolist() == [int((o.topk(5, dim=-1).indices == y[:, None]).any(-1).sum()) for o in out]
    # all outputs equal (a silent network): argmax says class 0, so top-5 must say classes 0..4
    top1, top5 = _hits(torch.zeros(2, 12, 10), torch.arange(12) % 10)
    assert top1.tolist() == [2, 2] and top5.tolist() == [7, 7]  # labels 0..4, then 10 % 10 and 11 % 10
    # ties between the label and a larger class index: the label ranks first; with a smaller index it ranks after
    out = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    assert _hits(out, torch.tensor([1]))[1].item() == 1 and _hits(out, torch.tensor([6]))[1].item() == 0
    assert _hits(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))[1] is None  # 5 classes: no top-5


def test_evaluate_reports_top5_for_ann_and_snn(converted, data):
    model, res = converted
    torch.manual_seed(1)
    labels = torch.randint(0, 10, (48,))  # random labels: top-1 and top-5 differ
    report = evaluate(res.snn, [(data[:20], labels[:20]), (data[20:], labels[20:])], ann=model, timesteps=6)
    with torch.no_grad():
        ann_out, snn_out = model(data), res.snn(data, 6)
    in_top5 = (ann_out.topk(5, dim=-1).indices == labels[:, None]).any(-1)
    assert report.ann_accuracy_top5 == pytest.approx(float(in_top5.float().mean()))
    assert len(report.snn_accuracy_top5) == 6
    for t in range(6):  # written out: classes ranked by output, ties to the smaller class index (argmax's rule)
        hits = sum(sorted(range(10), key=lambda c: (-snn_out[t, i, c].item(), c)).index(int(labels[i])) < 5
                   for i in range(48))
        assert report.snn_accuracy_top5[t] == pytest.approx(hits / 48, abs=1e-12)
        assert report.snn_accuracy_top5[t] >= report.snn_accuracy[t]
    assert report.ann_accuracy_top5 >= report.ann_accuracy
    assert report.to_dict()["snn_accuracy_top5"] == report.snn_accuracy_top5
    assert evaluate(res.snn, [(data[:8], labels[:8])], timesteps=2).ann_accuracy_top5 is None  # no ANN


def test_backends_are_explicit(converted):
    _, res = converted
    program = compile(res.snn, "torch")
    assert program is not res.snn and program.gm is not res.snn.gm  # a copy: the caller's network is not changed
    with pytest.raises(ConfigError, match="backend 'cupy'"):
        compile(res.snn, "cupy")
    # "triton" without a GPU and without the interpreter: tests/test_kernels.py (subprocess) checks the error


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "to_bf16", "type_half", "parent_half"])
def test_casting_the_whole_snn_names_the_way_to_lower_precision(converted, cast):
    """``snn.half()`` made the thresholds fp16 and failed at the first call with torch's "Input type (float) and
    bias type (c10::Half)"; casts say how precision is set."""
    _, res = converted
    snn = compile(res.snn, "torch")
    with pytest.raises(ConfigError, match=r"run its layers in bf16/fp16 with snnconvert.runtime.compile\(snn, "
                                          r"dtype=torch.bfloat16\)"):
        if cast == "to_bf16":
            snn.to(torch.bfloat16)
        elif cast == "type_half":
            snn.type(torch.half)
        elif cast == "parent_half":
            torch.nn.Sequential(snn).half()
        else:
            getattr(snn, cast)()
    assert snn.to("cpu") is snn and snn.float() is snn
