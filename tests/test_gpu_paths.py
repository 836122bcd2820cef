"""Library paths on a CUDA device (skipped without one; bench/gpu_check.sh runs them): calibration observers on
device tensors, evaluation counters, the static prefix. Each is compared with the same run on the CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime import evaluate

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 convolutions and matmuls on the GPU (TF32 would make the CPU comparison meaningless)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 7 * 7, 5)

    def forward(self, x):
        y = F.relu(F.max_pool2d(self.stem(x), 2))
        y = F.relu(F.max_pool2d(self.conv(y), 2))
        return self.fc(y.flatten(1))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 28, 28, generator=g), torch.randint(0, 5, (24,), generator=g)


@pytest.mark.parametrize("threshold", ["max", "99.9%", "iterate"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_calibration_and_evaluation_on_cuda_match_cpu(threshold, coding):
    torch.manual_seed(0)
    model = _Net().eval()
    x, y = _data()
    cfg = ConversionConfig.for_coding(coding, timesteps=4, threshold=threshold)
    results = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        res = convert(m, forward_loop=[x.to(device)], config=cfg)
        thresholds = {name: n.threshold.detach().cpu() for name, n in res.snn.neurons()}
        report = evaluate(res.snn, [(x, y)], ann=m, device=device)
        results[device] = (thresholds, report)
    for name, theta in results["cpu"][0].items():
        torch.testing.assert_close(results["cuda"][0][name], theta, rtol=1e-4, atol=1e-6)
    cpu, gpu = results["cpu"][1], results["cuda"][1]
    assert gpu.images == cpu.images == 24
    assert len(gpu.events_per_step) == 4 and len(gpu.ops["sop_per_step"]) == 4
    assert gpu.ops["ann_macs_per_image"] == cpu.ops["ann_macs_per_image"]
    # thresholds agree to 1e-4: a few events (and their synaptic operations) may differ, no more
    assert abs(sum(gpu.events_per_step) - sum(cpu.events_per_step)) <= 0.02 * sum(cpu.events_per_step) + 1
    assert abs(sum(gpu.ops["sop_per_step"]) - sum(cpu.ops["sop_per_step"])) <= 0.02 * sum(cpu.ops["sop_per_step"]) + 1
    assert gpu.ops["energy_ratio_reference"][-1] == pytest.approx(cpu.ops["energy_ratio_reference"][-1], rel=0.02)


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_static_prefix_on_cuda_matches_the_full_run(coding):
    """cuDNN may pick other kernels for B and T·B rows, so the prefix's first-step values can differ in the last
    bits from the full run's (the zero sample's are exact); the outputs must agree to rounding."""
    torch.manual_seed(1)
    model = _Net().eval().cuda()
    x, _ = _data()
    res = convert(model, forward_loop=[x.cuda()], config=ConversionConfig.for_coding(coding, timesteps=5))
    assert res.snn.static_prefix() is not None
    with torch.no_grad():
        elided = res.snn(x.cuda(), 5)
        res.snn.elide_static_prefix = False
        full = res.snn(x.cuda(), 5)
    torch.testing.assert_close(elided, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
@pytest.mark.parametrize(("backend", "dtype"), [("torch", torch.float32), ("triton", torch.float32),
                                                ("triton", torch.bfloat16), ("triton", torch.float16)],
                         ids=["torch", "triton-fp32", "triton-bf16", "triton-fp16"])
def test_fused_bounded_relu_pairs_on_cuda_equal_unfused(backend, dtype, coding, mode):
    """Fused ReLU6 pairs (runtime/fuse.py) on CUDA tensors: the torch backend's pair and the Triton pair kernel (with
    the graph's roundings in fp16/bf16, the bounds 6, 1.5 and 2 being exact there): same outputs and event counts as
    the unfused network on the same device and backend (the pairs count events on the device)."""
    from nets import ClipNet

    from snnconvert.runtime import compile
    from snnconvert.runtime.fuse import BoundedReLUPair

    x, y = _data()
    res = convert(ClipNet(), forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=4))
    fused = compile(res.snn, backend, device="cuda", dtype=dtype)
    plain = compile(res.snn, backend, device="cuda", dtype=dtype, fuse=False)
    assert sum(isinstance(m, BoundedReLUPair) for _, m in fused.stateful()) == 3
    with torch.no_grad():
        assert torch.equal(fused(x.cuda(), 4, mode=mode), plain(x.cuda(), 4, mode=mode))
    got = evaluate(fused, [(x, y)], timesteps=4, mode=mode, device="cuda")
    want = evaluate(plain, [(x, y)], timesteps=4, mode=mode, device="cuda")
    assert got.events_per_step == want.events_per_step and got.site_events == want.site_events


def test_the_command_calibrates_checks_and_saves_on_cuda(tmp_path):
    """``--device cuda`` calibrates, checks and evaluates on the GPU (the ANN and the traced SNN live there): the
    thresholds, the check's ratios and the accuracy match the CPU run; the saved folder holds CPU tensors and is
    evaluated again on the GPU."""
    import json
    from pathlib import Path

    import numpy as np
    from typer.testing import CliRunner

    from snnconvert.cli.main import app
    from snnconvert.runtime import load_result

    rng = np.random.default_rng(0)
    data = tmp_path / "pool.npz"
    np.savez(data, x=rng.random((160, 1, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 160))
    nets = Path(__file__).parent / "nets.py"
    docs = {}
    for device in ("cpu", "cuda"):
        report = tmp_path / f"{device}.json"
        args = [f"{nets}:SpellingsNet", "--calib-data", f"npz:{data}", "--calib-images", 64, "--eval-images", 64,
                "-T", 4, "--device", device, "--report", report, "--output", tmp_path / f"snn_{device}"]
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        docs[device] = json.loads(report.read_text())
    cpu, gpu = docs["cpu"], docs["cuda"]
    assert gpu["runtime"]["device"] == "cuda"
    for a, b in zip(cpu["thresholds"]["sites"], gpu["thresholds"]["sites"], strict=True):
        assert a["site"] == b["site"]
        for key in ("min", "mean", "max"):
            assert b["threshold"][key] == pytest.approx(a["threshold"][key], rel=1e-4, abs=1e-6)
    for a, b in zip(cpu["calibration_check"]["sites"], gpu["calibration_check"]["sites"], strict=True):
        assert b["ratio"] == pytest.approx(a["ratio"], rel=1e-4)
    assert abs(gpu["snn_accuracy"][-1] - cpu["snn_accuracy"][-1]) <= 2 / 64 * 100  # a near tie may flip, no more
    saved, ann = load_result(tmp_path / "snn_cuda")
    assert all(t.device.type == "cpu" for t in saved.thresholds.values())
    again = CliRunner().invoke(app, [str(tmp_path / "snn_cuda"), "--device", "cuda"])
    assert again.exit_code == 0, again.output
