"""Fused bounded-ReLU pairs (runtime/fuse.py): graph structure after fusion, bit-identical outputs and event counts
against the unfused network on the torch and native backends, the native pair kernel against its composition, and
the cases that must stay unfused."""
from __future__ import annotations

import copy
import operator
import re
import shutil
from pathlib import Path

import pytest
import torch
from nets import ClipNet

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.errors import ConfigError
from snnconvert.runtime import backend_status, compile, evaluate
from snnconvert.runtime.fuse import BoundedReLUPair, fuse_bounded_relu_pairs
from snnconvert.runtime.kernels import inductor, native
from snnconvert.runtime.kernels.common import PairState

T = 6

SETTINGS = [("rate", "if", 1), ("rate", "mt", 3), ("differential", "mt", 4), ("differential", "if", 1)]
SETTING_IDS = [f"{c}-{k}{n}" for c, k, n in SETTINGS]


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(11)
    data = torch.rand(16, 1, 11, 11) * 2
    out = {}
    for coding, kind, n in SETTINGS:
        cfg = ConversionConfig.for_coding(coding, timesteps=T, neuron=kind, levels=n, threshold="max")
        out[(coding, kind, n)] = convert(ClipNet(side=11), forward_loop=[data], config=cfg).snn
    return data, out


def _native_or_skip() -> None:
    if shutil.which(native.build_command(Path("x"))[0]) is None:
        pytest.skip("no C compiler on the PATH for the native kernels")


def _pairs(snn) -> list[BoundedReLUPair]:
    return [m for _, m in snn.stateful() if isinstance(m, BoundedReLUPair)]


def test_fusion_replaces_each_decomposed_bounded_relu(nets):
    _, snns = nets
    snn = snns[("differential", "mt", 4)]
    program = compile(snn, "torch")
    pairs = _pairs(program)
    assert len(pairs) == 3
    assert sorted(p.ceiling for p in pairs) == [1.5, 2.0, 6.0]
    assert program.neuron_names == snn.neuron_names  # the ReLU sites are unchanged
    graph = program.gm.graph
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    for pair in pairs:
        lo_name, hi_name = pair.site_names
        assert pair.lo is program.gm.get_submodule(lo_name) and pair.hi is program.gm.get_submodule(hi_name)
        assert lo_name not in called and hi_name not in called  # run by the pair only
        assert isinstance(pair.lo, SpikingNeuron) and pair.lo is not snn.gm.get_submodule(lo_name)
    # the plain ReLU and the identity neuron in front of conv4 (it reads the max-pool unit after the clamp pair)
    # stay neuron calls; no subtraction of the decomposition is left
    assert sorted(name.endswith("_identity") for name in snn.neuron_names if name in called) == [False, True]
    assert not any(n.op == "call_function" and n.target is operator.sub for n in graph.nodes)
    # the caller's network is untouched
    assert not _pairs(snn) and any(n.target is operator.sub for n in snn.gm.graph.nodes)


# the inductor backend on the differential MT setting in multi-step mode only (every configuration compiles for
# seconds; the pair test below runs its single steps and a rate setting)
_NETWORK_CASES = [pytest.param(setting, backend, mode, id=f"{mode}-{sid}-{backend}")
                  for setting, sid in zip(SETTINGS, SETTING_IDS)
                  for backend in ("torch", "native", "triton", "inductor") for mode in ("multi", "single")
                  if backend != "inductor" or (setting == ("differential", "mt", 4) and mode == "multi")]


@pytest.mark.parametrize(("setting", "backend", "mode"), _NETWORK_CASES)
def test_fused_network_equals_unfused(nets, setting, backend, mode):
    if backend != "torch":
        _kernels_or_skip(backend, "cpu")
    data, snns = nets
    snn = snns[setting]
    x, labels = data[:5], torch.arange(5)
    # inductor at T = 4: one 4-step graph per variant instead of a 4- and a 2-step one (compile time)
    steps = 4 if backend == "inductor" else T
    fused = compile(snn, backend)
    plain = compile(snn, "torch", fuse=False)
    assert len(_pairs(fused)) == 3 and not _pairs(plain)
    with torch.no_grad():
        assert torch.equal(fused(x, steps, mode=mode), plain(x, steps, mode=mode))
    got = evaluate(fused, [(x, labels)], timesteps=steps, mode=mode)
    want = evaluate(plain, [(x, labels)], timesteps=steps, mode=mode)
    assert got.snn_accuracy == want.snn_accuracy
    assert got.events_per_step == want.events_per_step
    assert got.site_events == want.site_events
    assert got.ops == want.ops  # synaptic operations, and the layers after a pair count as spike-fed
    upper = [p.site_names[1] for p in _pairs(fused)]
    assert sum(got.site_events[name]["events"] for name in upper) > 0  # the upper neurons did fire


def test_fused_offsets_equal_unfused_capture(nets):
    data, snns = nets
    snn = snns[("differential", "mt", 4)]
    fused, plain = compile(snn, "torch"), compile(snn, "torch", fuse=False)
    with torch.no_grad():
        fused(data[:2], T), plain(data[:2], T)
    for name in snn.neuron_names:
        assert torch.equal(fused.gm.get_submodule(name).bias, plain.gm.get_submodule(name).bias)
    assert torch.equal(fused.output_offset, plain.output_offset)


# (backend, device) of the kernel implementations with a pair kernel; CUDA runs in bench/gpu_check.sh
KERNEL_IMPLS = [pytest.param(("native", "cpu"), id="native-cpu"), pytest.param(("triton", "cpu"), id="triton-cpu"),
                pytest.param(("triton", "cuda"), id="triton-cuda", marks=pytest.mark.gpu)]
INDUCTOR_IMPLS = [pytest.param(("inductor", "cpu"), id="inductor-cpu"),
                  pytest.param(("inductor", "cuda"), id="inductor-cuda", marks=pytest.mark.gpu)]


def _kernels_or_skip(backend: str, device: str):
    if backend == "native":
        _native_or_skip()
        return native.KERNELS
    if backend == "inductor":
        ok, reason = backend_status(backend, device)
        if not ok:
            pytest.skip(reason)
        return inductor.KERNELS
    pytest.importorskip("triton")
    ok, reason = backend_status(backend, device)
    if not ok:
        pytest.skip(reason)
    from snnconvert.runtime.kernels import load_kernels

    return load_kernels().KERNELS


_PAIR_SETTINGS = [("rate", "if", 1, False), ("rate", "mt", 3, False), ("rate", "mt", 2, True),
                  ("differential", "mt", 4, True), ("differential", "mt", 9, True), ("differential", "if", 1, True)]
# every setting at every T on the native and Triton kernels; the inductor loops (each configuration and loop length
# compiles for seconds) on a signed rate setting at T = 2 (step by step too) and a differential one at T = 9 (an
# 8-step and a 1-step loop)
_PAIR_CASES = [pytest.param(impl.values[0], T, *setting, id=f"{impl.id}-T{T}-{'-'.join(map(str, setting))}",
                            marks=impl.marks)
               for impl in KERNEL_IMPLS for T in (1, 3, 8, 33) for setting in _PAIR_SETTINGS]
_PAIR_CASES += [pytest.param(impl.values[0], T, *setting, id=f"{impl.id}-T{T}-{'-'.join(map(str, setting))}",
                             marks=impl.marks)
                for impl in INDUCTOR_IMPLS for T, setting in ((2, _PAIR_SETTINGS[2]), (9, _PAIR_SETTINGS[3]))]


@pytest.mark.parametrize(("impl", "T_steps", "coding", "kind", "n_levels", "signed"), _PAIR_CASES)
def test_pair_kernel_equals_composition(impl, T_steps, coding, kind, n_levels, signed):
    K = _kernels_or_skip(*impl)
    device = impl[1]
    gen = torch.Generator().manual_seed(T_steps * 31 + n_levels)
    shape = (3, 5, 13, 11)  # 715 elements per image: blocks cross image and channel boundaries
    x = torch.randn(T_steps, *shape, generator=gen) * 3
    th_lo = torch.rand(5, 1, 1, generator=gen) * 2
    th_lo[1] = 0.0  # a silent channel
    th_hi = torch.rand(5, 1, 1, generator=gen)
    b_lo = torch.randn(1, *shape[1:], generator=gen) * 0.5
    b_hi = torch.full((1, *shape[1:]), -0.75)
    flags = dict(kind=kind, coding=coding, n_levels=n_levels, signed=signed)
    for dtype in K.pair_dtypes if T_steps <= 8 else (torch.float32,):  # T = 33: fp32 only (interpreter time)
        # thresholds rounded to the dtype, as compile() does, so that every emitted value is exact in it
        t_lo, t_hi = (t.to(dtype).float().to(device) for t in (th_lo, th_hi))
        bl, bh = (b.to(device) for b in (b_lo, b_hi)) if coding == "differential" else (None, None)
        xd = x.to(device, dtype)
        # the unfused graph: the two neurons' kernels and the two subtractions in the dtype (inductor on the CPU: the
        # reference neurons, which its single-neuron loops equal bit for bit in test_kernels.py; every loop compiles
        # for seconds. On CUDA, untested so far, its own loops)
        lo, hi = SpikingNeuron(t_lo, **flags), SpikingNeuron(t_hi, **flags)
        lo.bias, hi.bias = bl, bh
        if impl == ("inductor", "cpu"):
            r = lo.multistep(xd)
            h = hi.multistep(r - 0.75)
        elif coding == "rate":
            r = K.rate_neuron_run(xd, t_lo, kind=kind, n_levels=n_levels, signed=signed)[0]
            h = K.rate_neuron_run(r - 0.75, t_hi, kind=kind, n_levels=n_levels, signed=signed)[0]
        else:
            r = K.diff_neuron_run(xd, t_lo, bl, kind=kind, n_levels=n_levels)[0]
            h = K.diff_neuron_run(r - 0.75, t_hi, bh, kind=kind, n_levels=n_levels)[0]
        if dtype == torch.float32 and device == "cpu" and impl[0] != "inductor":  # and the reference neurons (above)
            assert torch.equal(lo.multistep(xd), r) and torch.equal(hi.multistep(r - 0.75), h)
        events = torch.zeros(2, T_steps, dtype=torch.int64, device=device)
        got, state = K.bounded_relu_pair_run(xd, 0.75, t_lo, t_hi, bl, bh, events=events, **flags)
        assert state is None and got.dtype == dtype
        assert torch.equal(got, r - h), dtype
        assert torch.equal(events[0], r.reshape(T_steps, -1).ne(0).sum(1))
        assert torch.equal(events[1], h.reshape(T_steps, -1).ne(0).sum(1))
        assert int(events[1].sum()) > 0  # the upper neuron fired
        # step by step on a carried state (single-step mode; T = 33 only in two uneven runs, to keep the interpreter
        # cases short): the same values
        state, steps = None, []
        for t in range(T_steps if T_steps <= 8 else 0):
            out, state = K.bounded_relu_pair_run(xd[t:t + 1], 0.75, t_lo, t_hi, bl, bh, state=state, store_state=True,
                                                 in_place=K.in_place_state, **flags)
            steps.append(out)
        if steps:
            assert state.t == T_steps and torch.equal(torch.cat(steps), got)
        if impl[0] == "inductor" and T_steps > 8:  # its 8- and 1-step graphs above carry the state between them already
            continue
        first, state = K.bounded_relu_pair_run(xd[:1], 0.75, t_lo, t_hi, bl, bh, store_state=True, **flags)
        rest, _ = K.bounded_relu_pair_run(xd[1:], 0.75, t_lo, t_hi, bl, bh, state=state, **flags)
        assert torch.equal(torch.cat([first, rest]), got)


@pytest.mark.parametrize("impl", KERNEL_IMPLS + INDUCTOR_IMPLS)
def test_pair_kernel_rejects_bad_arguments(impl):
    K = _kernels_or_skip(*impl)
    x = torch.rand(2, 4, device=impl[1])
    run = K.bounded_relu_pair_run
    with pytest.raises(ConfigError, match="fp32"):  # fp64 anywhere, fp16 on the native kernel
        run(x.double(), 6.0, 1.0, 1.0, coding="rate", kind="if")
    if impl[0] in ("native", "inductor"):
        with pytest.raises(ConfigError, match="pair kernel takes float32 inputs"):
            run(x.half(), 6.0, 1.0, 1.0, coding="rate", kind="if")
    with pytest.raises(ConfigError, match=r"shape \[2, 2\]"):
        run(x, 6.0, 1.0, 1.0, coding="rate", kind="if", events=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ConfigError, match="broadcast"):
        run(x, 6.0, torch.ones(3), 1.0, coding="rate", kind="if")
    with pytest.raises(ConfigError, match=r"pair state must be .*\[4, 4\]"):
        run(x, 6.0, 1.0, 1.0, coding="rate", kind="if", state=PairState(torch.empty(2, 4, device=impl[1]), 1))
    if impl[0] == "triton":  # torch rounds such a bound differently on CPU and CUDA
        with pytest.raises(ConfigError, match="not exact in torch.bfloat16"):
            run(x.bfloat16(), 0.7, 1.0, 1.0, coding="rate", kind="if")
    with pytest.raises(ConfigError, match="coding must be"):
        run(x, 6.0, 1.0, 1.0, coding="temporal", kind="if")
    with pytest.raises(ConfigError, match="inference-only"):
        run(x.clone().requires_grad_(), 6.0, 1.0, 1.0, coding="rate", kind="if")
    # T = 0: nothing runs, the state passes through (or is the initial state)
    out, state = run(x[:0], 6.0, 1.0, 1.0, 0.5, 0.25, coding="differential", kind="mt", n_levels=4, store_state=True)
    assert out.shape == (0, 4) and state.t == 0
    assert state.rows.tolist() == [[0.5] * 4, [0.0] * 4, [0.25] * 4, [0.0] * 4]


# each dtype in one of the two modes (the interpreter runs every network four times: ~13 s a case)
@pytest.mark.parametrize(("dtype", "mode"), [(torch.bfloat16, "multi"), (torch.float16, "single")],
                         ids=["bf16-multi", "fp16-single"])
def test_triton_low_precision_pairs_equal_unfused(nets, dtype, mode):
    """On the Triton backend fp16/bf16 pairs are fused (the kernel rounds r − a and r − h to the dtype as the graph
    does); a bound that is not exact in the dtype is fused in the graph but composed at run time."""
    _kernels_or_skip("triton", "cpu")
    data, snns = nets
    x, labels = data[:4], torch.arange(4)
    cfg = ConversionConfig.for_coding("differential", timesteps=T, threshold="max")
    inexact = convert(ClipNet(side=11, bounds=(0.7, 2.0)), forward_loop=[data], config=cfg).snn
    for snn in (snns[("differential", "mt", 4)], snns[("rate", "mt", 3)], inexact):
        fused = compile(snn, "triton", dtype=dtype)
        plain = compile(snn, "triton", dtype=dtype, fuse=False)
        assert len(_pairs(fused)) == 3 and not _pairs(plain)
        got = evaluate(fused, [(x, labels)], timesteps=T, mode=mode)
        want = evaluate(plain, [(x, labels)], timesteps=T, mode=mode)
        assert got.snn_accuracy == want.snn_accuracy and got.site_events == want.site_events
        with torch.no_grad():
            assert torch.equal(fused(x, T, mode=mode), plain(x, T, mode=mode))
    pair = next(p for p in _pairs(fused) if p.ceiling == pytest.approx(0.7))
    assert pair._kernels(torch.zeros(1, dtype=dtype)) is None  # composed: torch rounds 0.7 per device
    assert pair._kernels(torch.zeros(1)) is not None


def test_patterns_that_must_stay_unfused(nets):
    data, snns = nets
    snn = snns[("rate", "mt", 3)]
    for dtype in (torch.bfloat16, torch.float16):  # the torch fast path and the native kernel are fp32 only
        assert not _pairs(compile(snn, "torch", dtype=dtype))
    assert not _pairs(compile(snn, "torch", fuse=False))
    # a lower neuron whose output is also read elsewhere is left as converted; the other pairs are fused
    program = compile(snn, "torch", fuse=False)
    graph = program.gm.graph
    lo = next(n for n in graph.nodes if n.op == "call_module" and n.target == snn.neuron_names[0])
    shift = next(u for u in lo.users if u.args[1] == 6.0)
    hi = next(iter(shift.users))
    out = next(iter(hi.users))  # r − hi(r − 6)
    assert out.args == (lo, hi)
    with graph.inserting_after(out):
        extra = graph.call_function(operator.mul, (lo, 0.0))
    with graph.inserting_after(extra):
        total = graph.call_function(operator.add, (out, extra))
    out.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
    program.gm.recompile()
    program.invalidate()
    with torch.no_grad():
        want = program(data[:3], T)
        assert fuse_bounded_relu_pairs(program) == 2
        assert torch.equal(program(data[:3], T), want)
    assert snn.neuron_names[0] in {n.target for n in graph.nodes if n.op == "call_module"}


def test_torch_pair_with_autograd_and_copies(nets):
    data, snns = nets
    snn = snns[("differential", "mt", 4)]
    fused, plain = compile(snn, "torch"), compile(snn, "torch", fuse=False)
    x = data[:2].clone().requires_grad_()
    got = fused(x, T)  # the fast path is off under autograd: the members' own calls, same values
    assert got.requires_grad and torch.equal(got.detach(), plain(x, T).detach())
    clone = copy.deepcopy(fused)
    pair = _pairs(clone)[0]
    assert pair.lo is clone.gm.get_submodule(pair.site_names[0])  # aliasing survives the copy
    with torch.no_grad():
        assert torch.equal(clone(data[:2], T), plain(data[:2], T))


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_fused_pair_names_its_sites_when_per_neuron_thresholds_do_not_fit(coding):
    data = torch.rand(8, 1, 11, 11) * 2
    cfg = ConversionConfig.for_coding(coding, timesteps=3, threshold="max", granularity="neuron")
    program = compile(convert(ClipNet(side=11), forward_loop=[data], config=cfg).snn, "torch")
    first = _pairs(program)[0]  # the ReLU6 right after the first convolution: the first unit to see the input
    label = re.escape(" + ".join(first.site_names))
    with pytest.raises(ConfigError, match=rf"^site {label}: threshold: per-neuron values"):
        program(torch.rand(2, 1, 12, 12))
