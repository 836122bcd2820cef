"""Fused neuron kernels vs their torch twins, kernel-backed networks vs the torch backend, backend errors.

Two kernel implementations share these tests (``impl`` fixture): the Triton kernels and the native C kernels. On a
machine without CUDA the Triton kernels run on CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1`` is
set in conftest.py before triton is imported); on a GPU machine the same tests run on CUDA tensors (``gpu`` marker)
and the Triton CPU cases skip unless the interpreter was requested. The native kernels run on CPU tensors; their
tests skip only when no C compiler is on the PATH (a failing build fails them). The inductor kernels (the reference
step loops compiled by torch.compile) join the state, module, network, event and error tests (``ALL_IMPLS``) and
have their own twin test on a subset of the variants: every configuration and loop length compiles for seconds, so
the full variant x T matrix would take a quarter of an hour.

Tolerances (architecture.md §6, TOLERANCES in conftest.py): spikes bit-exact (``torch.equal``) on dyadic inputs
(k/64, power-of-two thresholds); fp32 random inputs within ``kernel_vs_ref_fp32`` (the arithmetic is the twin's,
so in practice equal); fp16/bf16 outputs exact after the threshold rounding of point 3 (compared with
``torch.equal``); the whole network within ``triton_vs_torch_network``. A subprocess also compiles every Triton
kernel for sm_90 without a GPU (the interpreter never runs triton's compiler) and checks the PTX for approximate
divisions and fused multiply-adds, which would break bit-exactness.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES
from nets import SpellingsNet

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding import neurons as ref
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.errors import BackendUnavailableError, ConfigError, UnsupportedOpError
from snnconvert.runtime import backend_status, compile
from snnconvert.runtime.kernels import inductor, native
from snnconvert.runtime.kernels.common import NeuronKernels, make_table
from snnconvert.runtime.lower import KERNEL_NEURONS, KernelNeuron

REPO = Path(__file__).resolve().parents[1]
STEPS = [1, 3, 8, 33]


@dataclass(frozen=True)
class Impl:
    backend: str  # "triton" | "native" | "inductor"
    device: str

    @property
    def kernels(self) -> NeuronKernels:
        if self.backend == "triton":
            from snnconvert.runtime.kernels import load_kernels

            return load_kernels().KERNELS
        return inductor.KERNELS if self.backend == "inductor" else native.KERNELS

    @property
    def neuron_cls(self) -> type[KernelNeuron]:
        return KERNEL_NEURONS[self.backend]


IMPLS = [
    pytest.param(Impl("triton", "cpu"), id="triton-cpu"),
    pytest.param(Impl("triton", "cuda"), id="triton-cuda", marks=pytest.mark.gpu),
    pytest.param(Impl("native", "cpu"), id="native-cpu"),
]
INDUCTOR_IMPLS = [
    pytest.param(Impl("inductor", "cpu"), id="inductor-cpu"),
    pytest.param(Impl("inductor", "cuda"), id="inductor-cuda", marks=pytest.mark.gpu),
]
ALL_IMPLS = IMPLS + INDUCTOR_IMPLS


def _skip_unless_runnable(impl: Impl) -> None:
    if impl.backend == "native" and shutil.which(native.build_command(Path("x"))[0]) is None:
        pytest.skip("no C compiler on the PATH for the native kernels")
    if impl.backend == "triton":
        pytest.importorskip("triton")
    ok, reason = backend_status(impl.backend, impl.device)
    if not ok and impl.backend == "native":
        pytest.fail(reason)  # a compiler is here, so the build must work
    if not ok and impl.backend == "inductor" and impl.device == "cpu" and shutil.which("g++"):
        pytest.fail(reason)
    if not ok:
        pytest.skip(reason)


@pytest.fixture(params=IMPLS)
def impl(request) -> Impl:  # tests marked ``parametrize("impl", ALL_IMPLS, indirect=True)`` also run the inductor
    _skip_unless_runnable(request.param)
    return request.param


# (name, wrapper name, twin, keyword arguments, differential?)
VARIANTS = [
    ("if_rate", "if_rate_multistep", ref.if_rate_multistep_ref, {}, False),
    ("if_rate_signed", "if_rate_multistep", ref.if_rate_multistep_ref, {"signed": True}, False),
    ("if_rate_signed_identity", "if_rate_multistep", ref.if_rate_multistep_ref,
     {"signed": True, "relu_constrained": False}, False),
    *[(f"mt_rate_n{n}{suffix}", "mt_rate_multistep", ref.mt_rate_multistep_ref, {"n_levels": n, **kw}, False)
      for n in (1, 2, 4)
      for suffix, kw in (("", {}), ("_signed", {"signed": True}),
                         ("_signed_identity", {"signed": True, "relu_constrained": False}))],
    *[(f"mt_diff_n{n}{suffix}", "mt_diff_multistep", ref.mt_diff_multistep_ref, {"n_levels": n, **kw}, True)
      for n in (1, 2, 4) for suffix, kw in (("", {}), ("_identity", {"relu_constrained": False}))],
    ("if_diff", "if_diff_multistep", ref.if_diff_multistep_ref, {}, True),
    ("if_diff_identity", "if_diff_multistep", ref.if_diff_multistep_ref, {"relu_constrained": False}, True),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


def _dyadic(shape, lo: int = -96, hi: int = 160) -> torch.Tensor:
    """Values k/64 in [lo/64, hi/64): sums and differences of a few of them are exact in fp32."""
    return torch.randint(lo, hi, shape).float() / 64


def _pow2(shape) -> torch.Tensor:
    return 2.0 ** torch.randint(-2, 2, shape).float()


def _cases(T: int):
    """(x [T, *S], θ, b) with odd sizes and every θ layout: scalar, per neuron, per channel [C, 1, 1]; the last
    two are larger than one native block (512 elements) with a channel length (300) that does not divide it."""
    return [
        (_dyadic((T, 1)), 1.0, 0.25),
        (_dyadic((T, 7)), _pow2((7,)), _dyadic((7,))),
        (_dyadic((T, 1000)), torch.tensor(0.5), None),
        (_dyadic((T, 3, 5, 7)), _pow2((3, 1, 1)), _dyadic((5, 7))),
        (_dyadic((T, 2, 3, 4, 5)), _pow2((3, 1, 1)), _dyadic((1, 3, 4, 5))),
        (_dyadic((T, 2, 5, 300)), _pow2((5, 1)), _dyadic((5, 300))),
        (_dyadic((T, 3, 411)), _pow2((3, 411)), _dyadic((411,))),
    ]


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _run(fn, x, th, b, kw, diff):
    return fn(x, th, b, **kw) if diff else fn(x, th, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels vs twins
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize(("name", "wrapper", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_dyadic_inputs_are_bit_exact(impl, T, name, wrapper, twin, kw, diff):
    kernel = getattr(impl.kernels, wrapper)
    for x, th, b in _cases(T):
        x, th, b = _to(x, impl.device), _to(th, impl.device), _to(b, impl.device)
        got, want = _run(kernel, x, th, b, kw, diff), _run(twin, x, th, b, kw, diff)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert torch.equal(got, want), f"{name}, T={T}, S={tuple(x.shape[1:])}: {int((got != want).sum())} differ"


@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize(("name", "wrapper", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_random_fp32_inputs_match_twin(impl, T, name, wrapper, twin, kw, diff):
    kernel, device = getattr(impl.kernels, wrapper), impl.device
    x = torch.randn(T, 2, 3, 5, 7, device=device)
    th = torch.rand(3, 1, 1, device=device) + 0.3
    b = 0.3 * torch.randn(1, 3, 5, 7, device=device)
    torch.testing.assert_close(_run(kernel, x, th, b, kw, diff), _run(twin, x, th, b, kw, diff),
                               **TOLERANCES["kernel_vs_ref_fp32"])


# The inductor kernels compile every configuration and loop length, so they run four of the variants (rate IF and MT
# signed, differential MT and IF; the module, network and pair tests add unsigned and identity neurons) at T = 9
# (loops of 8 and 1 steps with the state carried between them), and every table layout of _cases on one variant.
INDUCTOR_VARIANTS = [v for v in VARIANTS if v[0] in ("if_rate_signed", "mt_rate_n4_signed", "mt_diff_n4", "if_diff")]


def _bits_equal(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("impl", INDUCTOR_IMPLS, indirect=True)
@pytest.mark.parametrize(("name", "wrapper", "twin", "kw", "diff"), INDUCTOR_VARIANTS,
                         ids=[v[0] for v in INDUCTOR_VARIANTS])
def test_inductor_loops_equal_twin_bit_for_bit(impl, name, wrapper, twin, kw, diff):
    kernel, device = getattr(impl.kernels, wrapper), impl.device
    silent = _pow2((3, 1, 1))
    silent[1] = 0.0  # a silent channel: the twins write −0.0 where the negative test holds
    for x, th, b in ((_dyadic((9, 2, 3, 4, 5)), silent, _dyadic((1, 3, 4, 5))),
                     (torch.randn(9, 2, 3, 4, 5), torch.rand(3, 1, 1) + 0.3, 0.3 * torch.randn(1, 3, 4, 5))):
        x, th, b = _to(x, device), _to(th, device), _to(b, device)
        got, want = _run(kernel, x, th, b, kw, diff), _run(twin, x, th, b, kw, diff)
        assert _bits_equal(got, want), f"{name}: {int((got != want).sum())} differ"


@pytest.mark.parametrize("impl", INDUCTOR_IMPLS, indirect=True)
def test_inductor_every_table_layout(impl):
    for x, th, b in _cases(2):
        x, th, b = _to(x, impl.device), _to(th, impl.device), _to(b, impl.device)
        got = impl.kernels.mt_diff_multistep(x, th, b, n_levels=4)
        assert _bits_equal(got, ref.mt_diff_multistep_ref(x, th, b, n_levels=4)), tuple(x.shape)


def test_inductor_table_views():
    # every layout of _cases (and a table that is not a split of N) as [1, inner] rows of an [outer, inner] split
    from snnconvert.runtime.kernels.common import expand_table

    for x, th, b in _cases(1):
        S = x.shape[1:]
        tables = [make_table("threshold", th, S, x.device), make_table("bias", 0.0 if b is None else b, S, x.device)]
        dims, views = inductor.table_views(S.numel(), tables)
        assert len(dims) == 2 and dims[0] * dims[1] == S.numel()
        if S == (2, 3, 4, 5):  # per-channel θ and per-sample b: the batch is the outer dimension
            assert dims == [2, 60]
        for table, view in zip(tables, views):
            assert torch.equal(view.expand(dims).reshape(-1), expand_table(table, S.numel()))
    odd = make_table("bias", torch.arange(6.0), torch.Size([6]), torch.device("cpu"))._replace(inner=4, k=6)
    dims, (view,) = inductor.table_views(36, [odd])  # not a split of N: expanded over all of it
    assert dims == [1, 36] and torch.equal(view.reshape(-1), expand_table(odd, 36))


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 9, 13, 33])
def test_inductor_loop_lengths(T):
    chunks = inductor._chunks(T)
    assert chunks[0][0] == 0 and chunks[-1][1] == T and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert {e - s for s, e in chunks} <= {1, 2, 4, inductor.STEPS_PER_GRAPH}


def test_inductor_unavailable_and_limit_errors(monkeypatch):
    env = {**os.environ, "CXX": "/nonexistent/g++"}
    script = "from snnconvert.runtime import backend_status; print(backend_status('inductor', 'cpu'))"
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(False" in proc.stdout and "no C++ compiler was found" in proc.stdout
    ok, reason = backend_status("inductor", "meta")
    assert not ok and "CPU and CUDA devices only" in reason
    if not backend_status("inductor", "cpu")[0]:
        pytest.skip("no C++ compiler for inductor here")

    # past the recompile limit dynamo would run the eager code silently: the launchers raise instead
    def loop(x, out, *, mode: str):
        out.copy_(x * 2 if mode == "double" else x * 3)

    monkeypatch.setattr(inductor, "RECOMPILE_LIMIT", 1)
    x, out = torch.randn(5), torch.empty(5)
    inductor._run(loop, x, out, mode="double")  # the first variant
    assert torch.equal(out, x * 2)
    with pytest.raises(BackendUnavailableError, match="compiled 1 variants of a neuron loop in this process"):
        inductor._run(loop, x, out, mode="triple")  # a second one


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("name", "wrapper", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_low_precision_output_is_exact(impl, dtype, name, wrapper, twin, kw, diff):
    # point 3 of the issue: θ' = θ rounded to the dtype; every emitted value ±θ'·2^-i is exact in the dtype
    kernel, device = getattr(impl.kernels, wrapper), impl.device
    x = (0.7 * torch.randn(8, 2, 3, 5, 7, device=device)).to(dtype)
    th = (torch.rand(3, 1, 1, device=device) + 0.3).to(dtype).float()
    b = (0.3 * torch.randn(1, 3, 5, 7, device=device)).to(dtype).float()
    low = _run(kernel, x, th, b, kw, diff)
    full = _run(kernel, x.float(), th, b, kw, diff)
    assert low.dtype == dtype
    assert torch.equal(low.float(), full)
    assert torch.equal(full.to(dtype).float(), full)  # representable
    assert torch.equal(low, _run(twin, x, th, b, kw, diff))  # exact values: the twin gives the same bits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_output_rounds_to_nearest(impl, dtype):
    # thresholds NOT rounded to the dtype: the emitted values are rounded to nearest (ties to even) like the twin's
    # cast, also under the interpreter (whose own bf16 cast truncates)
    K, device = impl.kernels, impl.device
    x = (0.7 * torch.randn(6, 2, 3, 5, 7, device=device)).to(dtype)
    th = torch.rand(3, 1, 1, device=device) + 0.3
    b = 0.3 * torch.randn(1, 3, 5, 7, device=device)
    for run in (lambda x: K.mt_rate_multistep(x, th, n_levels=4, signed=True),
                lambda x: K.mt_diff_multistep(x, th, b, n_levels=4)):
        full = run(x.float())
        assert not torch.equal(full.to(dtype).float(), full)  # some values do round
        assert torch.equal(run(x), full.to(dtype))


def test_every_block_size_holds_whole_event_cells(monkeypatch):
    pytest.importorskip("triton")
    from snnconvert.runtime.kernels import load_kernels

    K = load_kernels()
    monkeypatch.setattr(K, "_interpreting", lambda: False)  # the GPU configurations, autotuned and fixed
    blocks = [c.kwargs["BLOCK"] for c in K._configs()] + [K._INTERPRET_BLOCK, K._DEFAULT_BLOCK]
    monkeypatch.setenv("SNNCONVERT_TRITON_AUTOTUNE", "0")
    blocks += [c.kwargs["BLOCK"] for c in K._configs()]
    assert len(blocks) > 3 and all(b % K._CELL.value == 0 and b // K._CELL.value >= 2 for b in blocks)


def test_threshold_table_layouts():
    shape = torch.Size([2, 3, 4, 5])
    for value in (1.5, torch.tensor(2.0), torch.rand(3, 1, 1), torch.rand(5), torch.rand(4, 5), torch.rand(3, 4, 5),
                  torch.rand(1, 3, 4, 5), torch.rand(3, 1, 5), torch.rand(2, 1, 1, 1)):
        table, inner, k = make_table("threshold", value, shape, torch.device("cpu"))
        idx = torch.arange(shape.numel())
        want = torch.as_tensor(value, dtype=torch.float32).expand(shape).reshape(-1)
        assert torch.equal(table[(idx // inner) % k], want), getattr(value, "shape", value)
    assert make_table("threshold", torch.rand(3, 1, 1), shape, torch.device("cpu"))[1:] == (20, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Native kernels only: the generic level loop (n > 8), threads, edge values
# ---------------------------------------------------------------------------------------------------------------------

NATIVE = Impl("native", "cpu")


@pytest.mark.parametrize("n_levels", [3, 8, 9, 12])
def test_native_unrolled_and_generic_level_counts_match_twin(n_levels):
    # n <= 8 runs an unrolled specialisation, n > 8 the generic loop: both must be the twin's arithmetic
    _skip_unless_runnable(NATIVE)
    K = NATIVE.kernels
    for T in (1, 8):
        for x, th, b in _cases(T):
            for kw in ({}, {"relu_constrained": False}):
                assert torch.equal(K.mt_diff_multistep(x, th, b, n_levels=n_levels, **kw),
                                   ref.mt_diff_multistep_ref(x, th, b, n_levels=n_levels, **kw))
            for kw in ({}, {"signed": True}, {"signed": True, "relu_constrained": False}):
                assert torch.equal(K.mt_rate_multistep(x, th, n_levels=n_levels, **kw),
                                   ref.mt_rate_multistep_ref(x, th, n_levels=n_levels, **kw))


def test_native_results_do_not_depend_on_threads_and_keep_edge_values():
    _skip_unless_runnable(NATIVE)
    K = NATIVE.kernels
    x = torch.randn(5, 4, 7, 300)  # 8 400 elements per step: 17 blocks over the threads
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    th = torch.rand(7, 1) + 0.3
    th[2] = 0.0  # a silent channel: the twin writes −0.0 where its negative test holds
    b = 0.3 * torch.randn(7, 300)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((K.mt_diff_multistep(x, th, b, n_levels=4),
                            K.mt_rate_multistep(x, th, n_levels=4, signed=True),
                            K.if_rate_multistep(x, th, signed=True)))
    finally:
        torch.set_num_threads(threads)
    want = (ref.mt_diff_multistep_ref(x, th, b, n_levels=4), ref.mt_rate_multistep_ref(x, th, n_levels=4, signed=True),
            ref.if_rate_multistep_ref(x, th, signed=True))
    for got in results:
        for g, w in zip(got, want):
            assert torch.equal(g.isnan(), w.isnan())
            assert torch.equal(torch.nan_to_num(g), torch.nan_to_num(w))
            assert torch.equal(g.signbit(), w.signbit())  # −0.0 kept


# ---------------------------------------------------------------------------------------------------------------------
# State in / state out: single-step streaming == multi-step
# ---------------------------------------------------------------------------------------------------------------------

STATEFUL = [
    ("if_rate_signed", "rate", {"kind": "if", "signed": True}),
    ("mt_rate_n4_signed", "rate", {"kind": "mt", "n_levels": 4, "signed": True}),
    ("mt_rate_n2", "rate", {"kind": "mt", "n_levels": 2}),
    ("mt_diff_n4", "diff", {"kind": "mt", "n_levels": 4}),
    ("mt_diff_n2_identity", "diff", {"kind": "mt", "n_levels": 2, "relu_constrained": False}),
    ("if_diff", "diff", {"kind": "if"}),
]


# the inductor kernels on one of them (each loop length compiles; the network tests run single steps of both codings)
_STATEFUL_CASES = [pytest.param(impl.values[0], *case, id=f"{case[0]}-{impl.id}", marks=impl.marks)
                   for impl in ALL_IMPLS for case in STATEFUL
                   if impl.values[0].backend != "inductor" or case[0] == "mt_diff_n4"]


@pytest.mark.parametrize(("impl", "name", "coding", "kw"), _STATEFUL_CASES, indirect=["impl"])
def test_single_steps_and_split_runs_equal_multistep(impl, name, coding, kw):
    K, device = impl.kernels, impl.device
    T = 9
    x = torch.randn(T, 2, 3, 5, device=device)
    th = torch.rand(3, 1, device=device) + 0.3
    b = 0.3 * torch.randn(1, 3, 5, device=device)

    def run(xs, state, store=True):
        if coding == "rate":
            return K.rate_neuron_run(xs, th, state=state, store_state=store, **kw)
        return K.diff_neuron_run(xs, th, b, state=state, store_state=store, **kw)

    full, full_state = run(x, None)
    state, steps = None, []
    for t in range(T):
        out, state = run(x[t:t + 1], state)
        steps.append(out)
    assert torch.equal(torch.cat(steps), full)
    head, mid = run(x[:4], None)
    tail, end = run(x[4:], mid)
    assert torch.equal(torch.cat([head, tail]), full)
    for a, c in ((state, full_state), (end, full_state)):
        for field in ("m", "c", "r_in", "r_out"):
            if getattr(c, field, None) is not None:
                assert torch.equal(getattr(a, field), getattr(c, field)), field
    if coding == "diff":
        assert state.t == end.t == full_state.t == T
    empty, same = run(x[:0], mid)  # T = 0 passes the state through
    assert empty.shape[0] == 0 and torch.equal(same.r_in if coding == "diff" else same.m,
                                               mid.r_in if coding == "diff" else mid.m)


# the inductor kernels on one setting per coding (each configuration compiles for seconds; the loop tests above run
# all four configurations bit for bit)
_MODULE_SETTINGS = [("rate", "if", 1), ("rate", "mt", 4), ("differential", "mt", 4), ("differential", "if", 1)]
_MODULE_CASES = [pytest.param(impl.values[0], *setting, id=f"{'-'.join(map(str, setting))}-{impl.id}",
                              marks=impl.marks)
                 for impl in ALL_IMPLS for setting in _MODULE_SETTINGS
                 if impl.values[0].backend != "inductor" or setting in (("rate", "if", 1), ("differential", "mt", 4))]


@pytest.mark.parametrize(("impl", "coding", "kind", "n_levels"), _MODULE_CASES, indirect=["impl"])
def test_kernel_neuron_module_matches_reference(impl, coding, kind, n_levels):
    device = impl.device
    neuron = SpikingNeuron(torch.rand(3, 1, 1) + 0.3, kind=kind, coding=coding, n_levels=n_levels).to(device)
    T, x = 5, torch.randn(5 * 2, 3, 4, 4, device=device)
    neuron.capture = True
    neuron(torch.randn(1, 3, 4, 4, device=device))  # a differential neuron captures its bias; a rate one ignores it
    neuron.capture = False
    lowered = impl.neuron_cls.from_reference(neuron)
    assert isinstance(lowered, SpikingNeuron) and torch.equal(lowered.threshold, neuron.threshold)
    for module in (neuron, lowered):
        module.step_mode, module.timesteps = "m", T
    want = neuron(x)
    assert torch.equal(lowered(x), want)
    lowered.step_mode = "s"
    lowered.reset()
    steps = torch.cat([lowered(x_t) for x_t in x.reshape(T, 2, 3, 4, 4)])
    assert torch.equal(steps, want)


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_wrapper_constraints(impl):
    K = impl.kernels
    x = torch.randn(4, 6, device=impl.device)
    with pytest.raises(ConfigError, match="fp32, fp16 or bf16"):
        K.if_rate_multistep(x.double(), 1.0)
    with pytest.raises(ConfigError, match="n_levels"):
        K.mt_rate_multistep(x, 1.0, n_levels=0)
    with pytest.raises(ConfigError, match="does not broadcast"):
        K.mt_diff_multistep(x, torch.ones(5), None, n_levels=2)
    with pytest.raises(ConfigError, match="kind='if'"):
        K.rate_neuron_run(x, 1.0, kind="if", n_levels=2)
    _, state = K.rate_neuron_run(x, 1.0, kind="mt", n_levels=2, store_state=True)
    with pytest.raises(ConfigError, match="reset the neuron"):
        K.rate_neuron_run(torch.randn(1, 7, device=impl.device), 1.0, kind="mt", n_levels=2, state=state)
    assert K.if_rate_multistep(torch.empty(3, 0, device=impl.device), 1.0).shape == (3, 0)
    with pytest.raises(ConfigError, match="inference-only"):  # no silently missing gradient
        K.if_rate_multistep(x.clone().requires_grad_(), 1.0)
    with torch.no_grad():
        K.if_rate_multistep(x.clone().requires_grad_(), 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# End to end: compile(backend="triton" | "native") vs compile(backend="torch")
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(3)
    data = torch.rand(8, 1, 28, 28)
    return data, {coding: convert(SpellingsNet(), forward_loop=[data],
                                  config=ConversionConfig.for_coding(coding, timesteps=4)).snn
                  for coding in ("rate", "differential")}


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_network_kernels_equal_torch_backend(impl, converted, coding, mode):
    data, snns = converted
    snn = snns[coding]
    x = data[:2].to(impl.device)
    program = compile(snn, impl.backend, device=impl.device)
    reference = compile(snn, "torch", device=impl.device)
    assert program is not snn and type(snn.gm.get_submodule(snn.neuron_names[0])) is SpikingNeuron
    assert all(isinstance(m, impl.neuron_cls) for _, m in program.neurons())
    with torch.no_grad():
        got, want = program(x, 4, mode=mode), reference(x, 4, mode=mode)
    torch.testing.assert_close(got, want, **TOLERANCES["triton_vs_torch_network"])


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_network_bf16_both_backends(impl, converted, coding):
    data, snns = converted
    device = impl.device
    snn, x = snns[coding], data[:2].to(device)
    program = compile(snn, impl.backend, device=device, dtype=torch.bfloat16)
    reference = compile(snn, "torch", device=device, dtype=torch.bfloat16)
    for net in (program, reference):
        for name, neuron in net.neurons():
            original = snn.gm.get_submodule(name).threshold
            assert torch.equal(neuron.threshold.cpu(), original.to(torch.bfloat16).float())
    assert next(snn.gm.parameters()).dtype == torch.float32  # the caller's network is untouched
    with torch.no_grad():
        got, want = program(x, 4), reference(x, 4)
        full = compile(snn, "torch", device=device)(x, 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOLERANCES["triton_vs_torch_network"])
    assert float((got - full).abs().max()) < 0.1  # bf16 layers: close to the fp32 network, not equal


# ---------------------------------------------------------------------------------------------------------------------
# Errors: explicit backends, no silent fallback
# ---------------------------------------------------------------------------------------------------------------------


def test_backend_and_dtype_errors(converted):
    snn = converted[1]["rate"]
    with pytest.raises(ConfigError, match="backend 'cupy'"):
        compile(snn, "cupy")
    with pytest.raises(ConfigError, match="dtype"):
        compile(snn, "torch", dtype=torch.float64)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA device"):
            compile(snn, "triton", device="cuda")
    with pytest.raises(BackendUnavailableError, match="CPU tensors only"):
        compile(snn, "native", device="cuda")


def test_native_network_moved_to_a_gpu_raises(converted):
    # a network compiled for the native backend and moved to CUDA does not silently run elsewhere
    _skip_unless_runnable(NATIVE)
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    data, snns = converted
    program = compile(snns["differential"], "native").to("cuda")
    with pytest.raises(BackendUnavailableError, match="CPU tensors only"):
        program(data[:2].cuda(), 4)


@pytest.mark.parametrize("backend", ["triton", "native"])
def test_unlowerable_stateful_module_is_listed(converted, backend):
    class Mystery(StepModule):
        def reset(self):
            pass

    snn = copy.deepcopy(converted[1]["rate"])
    name = snn.neuron_names[1]
    snn.gm.add_submodule(name, Mystery())
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    _skip_unless_runnable(Impl(backend, device))
    with pytest.raises(UnsupportedOpError, match="Mystery") as err:
        compile(snn, backend, device=device)
    assert any(n.target == name for n in err.value.nodes)
    assert f"the {backend} backend" in str(err.value)


_NATIVE_BUILD_SCRIPT = textwrap.dedent("""
    import json
    from snnconvert.convert.errors import BackendUnavailableError
    from snnconvert.runtime import backend_status
    print(json.dumps(backend_status("native", "cpu")))
""")


@pytest.mark.parametrize(("cc", "expect"), [("/nonexistent/cc", "was not found"),
                                            ("cc -include /nonexistent/header.h", "failed")])
def test_native_build_problems_are_one_clear_line(tmp_path, cc, expect):
    env = {**os.environ, "CC": cc, "SNNCONVERT_CACHE_DIR": str(tmp_path)}
    if expect == "failed" and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    proc = subprocess.run([sys.executable, "-c", _NATIVE_BUILD_SCRIPT], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ok, reason = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not ok and expect in reason and "backend='torch'" in reason and "\n" not in reason
    assert not list((tmp_path / "native").glob("*.so"))  # no half-written library left behind


def test_native_library_is_cached_per_source(tmp_path):
    _skip_unless_runnable(NATIVE)
    env = {**os.environ, "SNNCONVERT_CACHE_DIR": str(tmp_path)}
    for _ in range(2):  # the second process loads the library the first one built
        proc = subprocess.run([sys.executable, "-c", _NATIVE_BUILD_SCRIPT], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])[0], proc.stderr
    assert len(list((tmp_path / "native").iterdir())) == 1


_NO_DEVICE_SCRIPT = textwrap.dedent("""
    import json, os
    import torch
    from snnconvert.convert import ConversionConfig, convert
    from snnconvert.convert.errors import BackendUnavailableError
    from snnconvert.runtime import compile, triton_status
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    snn = convert(model, forward_loop=[torch.rand(8, 4)], config=ConversionConfig(timesteps=2)).snn
    result = {}
    try:
        compile(snn, "triton")
        result["compile"] = "no error"
    except BackendUnavailableError as exc:
        result["compile"] = str(exc)
    import snnconvert.runtime.kernels.neurons  # loaded in compiled mode (no interpreter requested)
    os.environ["TRITON_INTERPRET"] = "1"
    result["late"] = triton_status("cpu")
    print(json.dumps(result))
""")


def test_the_interpreter_requested_for_the_tests_runs_the_kernels():
    # conftest asks for the interpreter; if the installed one cannot run a loop with a runtime bound, every Triton CPU
    # case below skips with the reason: fail once here so that such an environment is not a quiet sea of skips
    pytest.importorskip("triton")
    from snnconvert.runtime.kernels import interpreter_defect, interpreter_requested
    if not interpreter_requested():
        pytest.skip("TRITON_INTERPRET is not set for this run")
    assert interpreter_defect() is None, backend_status("triton", "cpu")[1]


def test_a_defective_interpreter_is_unavailable_with_one_line(monkeypatch):
    pytest.importorskip("triton")
    import snnconvert.runtime.kernels as kernels_pkg
    if not kernels_pkg.interpreter_requested():
        pytest.skip("TRITON_INTERPRET is not set for this run")
    monkeypatch.setattr(kernels_pkg, "interpreter_defect",
                        lambda: "TypeError: only 0-dimensional arrays can be converted to Python scalars")
    ok, reason = backend_status("triton", "cpu")
    assert not ok and "\n" not in reason
    assert "Triton interpreter of triton" in reason and "0-dimensional" in reason and "backend='native'" in reason
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU())
    snn = convert(model, forward_loop=[torch.rand(8, 4)], config=ConversionConfig(timesteps=2)).snn
    with pytest.raises(BackendUnavailableError, match="Triton interpreter of triton"):
        compile(snn, "triton")


def test_interpreter_probe_reports_the_interpreters_own_error(monkeypatch):
    # the probe unwraps the interpreter's InterpreterError to the error underneath, on one line
    pytest.importorskip("triton")
    import snnconvert.runtime.kernels as kernels_pkg
    if not kernels_pkg.interpreter_requested():
        pytest.skip("TRITON_INTERPRET is not set for this run")
    module = kernels_pkg.load_kernels()

    class InterpreterError(Exception):
        pass

    def broken():
        try:
            raise TypeError("only 0-dimensional arrays\ncan be converted")
        except TypeError as exc:
            raise InterpreterError(repr(exc)) from exc

    monkeypatch.setattr(module, "interpreter_probe", broken)
    kernels_pkg.interpreter_defect.cache_clear()
    try:
        assert kernels_pkg.interpreter_defect() == "TypeError: only 0-dimensional arrays"
    finally:
        kernels_pkg.interpreter_defect.cache_clear()


def test_triton_without_interpreter_or_gpu_is_unavailable():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", _NO_DEVICE_SCRIPT], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "TRITON_INTERPRET=1" in result["compile"] and "\n" not in result["compile"]
    ok, reason = result["late"]
    assert not ok and "after the triton kernels were loaded" in reason


_COMPILE_SCRIPT = textwrap.dedent("""
    import json, re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from snnconvert.runtime.kernels import neurons as K
    assert not K.INTERPRETED
    rate = ["x_ptr", "out_ptr", "th_ptr", "m_in_ptr", "c_in_ptr", "m_out_ptr", "c_out_ptr", "cnt_ptr",
            "T", "N", "TH_INNER", "TH_K"]
    diff = ["x_ptr", "out_ptr", "th_ptr", "b_ptr", "r_in_in_ptr", "r_out_in_ptr", "r_in_out_ptr", "r_out_out_ptr",
            "cnt_ptr", "T", "T0", "N", "TH_INNER", "TH_K", "B_INNER", "B_K"]
    pair = ["x_ptr", "out_ptr", "th_lo_ptr", "b_lo_ptr", "th_hi_ptr", "b_hi_ptr", "s_in_ptr", "s_out_ptr", "cnt_ptr",
            "ceiling", "T", "T0", "N", "TH_LO_INNER", "TH_LO_K", "B_LO_INNER", "B_LO_K", "TH_HI_INNER", "TH_HI_K",
            "B_HI_INNER", "B_HI_K"]
    pair_flags = {"IS_IF": False, "N_LEVELS": 4, "SIGNED": True, "NEED_C": True}
    cases = [
        ("_if_rate_multistep_fwd_kernel", rate, {"SIGNED": True, "NEED_C": True}),
        ("_mt_rate_multistep_fwd_kernel", rate, {"N_LEVELS": 4, "SIGNED": True, "NEED_C": True}),
        ("_mt_diff_multistep_fwd_kernel", diff, {"N_LEVELS": 4, "RELU_CONSTRAINED": True, "RECIPROCAL_DIV": True}),
        ("_if_diff_multistep_fwd_kernel", diff, {"RELU_CONSTRAINED": True, "RECIPROCAL_DIV": False}),
        ("_bounded_relu_pair_fwd_kernel", pair, {"DIFF": True, "RECIPROCAL_DIV": True, **pair_flags}),
        ("_bounded_relu_pair_fwd_kernel", pair, {"DIFF": False, "RECIPROCAL_DIV": False, **pair_flags}),
    ]
    result = {}
    for name, args, consts in cases:
        for x_type in ("*fp32", "*bf16"):
            consts = {**consts, "HAS_STATE_IN": True, "STORE_STATE": True, "COUNT": True, "BLOCK": 1024}
            sig = {a: (x_type if a in ("x_ptr", "out_ptr") else "*i32" if a == "cnt_ptr"
                       else "*fp32" if a.endswith("_ptr") else "fp32" if a == "ceiling" else "i32") for a in args}
            sig.update({k: "constexpr" for k in consts})
            src = ASTSource(fn=getattr(K, name).fn, signature=sig, constexprs=consts)
            ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"]
            key = f"{name}{'-diff' if consts.get('DIFF') else ''}{x_type}"
            result[key] = sorted(set(re.findall(r"(?:div|fma|rcp|cvt)\\.[a-z0-9.]+", ptx)))
    print(json.dumps(result))
""")


def test_triton_kernels_compile_for_a_gpu_without_one():
    pytest.importorskip("triton")
    # the interpreter does not run triton's compiler: compile every kernel for sm_90 (no device needed) so that a
    # frontend error shows up in CPU-only CI, and check that no approximate division or fma is emitted
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["SNNCONVERT_TRITON_AUTOTUNE"] = "0"
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "ImportError" in proc.stderr):
        pytest.skip(f"triton cannot compile for sm_90 here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    instructions = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(instructions) == 12
    for name, found in instructions.items():
        assert not any(i.startswith(("div.full", "div.approx", "fma", "rcp.approx")) for i in found), (name, found)
        if name.endswith("*bf16"):  # emitted values are stored with a round-to-nearest conversion
            assert any(i.startswith("cvt.rn.bf16") for i in found), (name, found)


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
def test_in_place_state_only_where_supported(impl):
    K = impl.kernels
    x = torch.randn(3, 2, 5, device=impl.device)
    th = torch.rand(5, device=impl.device) + 0.3
    b = 0.2 * torch.randn(5, device=impl.device)
    if not K.in_place_state:
        with pytest.raises(ConfigError, match="in place"):
            K.diff_neuron_run(x, th, b, kind="mt", n_levels=4, in_place=True)
        return
    for run, fields in ((lambda **kw: K.rate_neuron_run(x, th, kind="mt", n_levels=4, signed=True, **kw), ("m", "c")),
                        (lambda **kw: K.diff_neuron_run(x, th, b, kind="mt", n_levels=4, **kw), ("r_in", "r_out"))):
        _, start = run(store_state=True)
        kept = copy.deepcopy(start)
        want_out, want = run(state=kept, store_state=True)
        got_out, got = run(state=start, store_state=True, in_place=True)
        assert torch.equal(got_out, want_out)
        for field in fields:
            assert getattr(got, field).data_ptr() == getattr(start, field).data_ptr()  # the carried buffers
            assert torch.equal(getattr(got, field), getattr(want, field))


def test_event_counts_match_the_output(impl):  # the inductor's counts: pair, evaluation and CLI tests
    K = impl.kernels
    assert K.counts_events  # every implementation counts in its kernels
    T = 6
    x = torch.randn(T, 3, 7, 300, device=impl.device)  # 6 300 elements per step: several blocks, threads and cells
    th = torch.rand(7, 1, device=impl.device) + 0.3
    b = 0.3 * torch.randn(7, 300, device=impl.device)
    runs = [lambda x, ev: K.rate_neuron_run(x, th, kind="if", events=ev)[0],
            lambda x, ev: K.rate_neuron_run(x, th, kind="mt", n_levels=4, signed=True, events=ev)[0],
            lambda x, ev: K.diff_neuron_run(x, th, b, kind="mt", n_levels=4, events=ev)[0],
            lambda x, ev: K.diff_neuron_run(x, th, b, kind="if", relu_constrained=False, events=ev)[0]]
    for dtype in (torch.float32, torch.bfloat16):
        for run in runs:
            events = torch.full((T,), 5, dtype=torch.int64, device=impl.device)  # counts are added to what it holds
            out = run(x.to(dtype), events)
            assert torch.equal(events - 5, out.reshape(T, -1).ne(0).sum(1))
    with pytest.raises(ConfigError, match="int64 tensor of shape"):
        K.rate_neuron_run(x, th, kind="if", events=torch.zeros(T + 1, dtype=torch.int64, device=impl.device))


@pytest.mark.parametrize("impl", ALL_IMPLS, indirect=True)
@pytest.mark.parametrize("mode", ["multi", "single"])
def test_evaluation_counts_from_kernels_equal_torch_backend(impl, converted, mode):
    from snnconvert.runtime import evaluate

    data, snns = converted
    batches = [(data[:4], torch.tensor([0, 1, 2, 3])), (data[4:], torch.tensor([4, 5, 6, 7]))]
    reports = {backend: evaluate(compile(snns["differential"], backend, device=impl.device), batches, timesteps=4,
                                 mode=mode, device=impl.device)
               for backend in ("torch", impl.backend)}
    got, want = reports[impl.backend], reports["torch"]
    assert got.events_per_step == want.events_per_step and got.site_events == want.site_events
    assert got.ops == want.ops and got.snn_accuracy == want.snn_accuracy
    program = compile(snns["differential"], impl.backend, device=impl.device)
    evaluate(program, batches, timesteps=4, mode=mode, device=impl.device)
    assert not any(getattr(m, "count_events", False) for _, m in program.neurons())  # switched off afterwards
