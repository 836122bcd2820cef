"""Triton neuron kernels vs their torch twins, the kernel-backed network vs the torch backend, backend errors.

On a machine without CUDA the kernels run on CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1`` is
set in conftest.py before triton is imported); on a GPU machine the same tests run on CUDA tensors (``gpu``
marker) and the CPU cases skip unless the interpreter was requested.

Tolerances (architecture.md §6, TOLERANCES in conftest.py): spikes bit-exact (``torch.equal``) on dyadic inputs
(k/64, power-of-two thresholds); fp32 random inputs within ``kernel_vs_ref_fp32`` (the arithmetic is the twin's,
so in practice equal); fp16/bf16 outputs exact after the threshold rounding of point 3 (compared with
``torch.equal``); the whole network within ``triton_vs_torch_network``. A subprocess also compiles every kernel for
sm_90 without a GPU (the interpreter never runs triton's compiler) and checks the PTX for approximate divisions and
fused multiply-adds, which would break bit-exactness.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES
from nets import SpellingsNet

pytest.importorskip("triton")

from snnconvert.convert import ConversionConfig, convert  # noqa: E402
from snnconvert.convert.coding import neurons as ref  # noqa: E402
from snnconvert.convert.coding.neurons import SpikingNeuron  # noqa: E402
from snnconvert.convert.coding.stepping import StepModule  # noqa: E402
from snnconvert.convert.errors import BackendUnavailableError, ConfigError, UnsupportedOpError  # noqa: E402
from snnconvert.runtime import compile, triton_status  # noqa: E402
from snnconvert.runtime.kernels import load_kernels  # noqa: E402
from snnconvert.runtime.lower import TritonNeuron  # noqa: E402

K = load_kernels()
REPO = Path(__file__).resolve().parents[1]

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
STEPS = [1, 3, 8, 33]

# (name, kernel, twin, keyword arguments, differential?)
VARIANTS = [
    ("if_rate", K.if_rate_multistep, ref.if_rate_multistep_ref, {}, False),
    ("if_rate_signed", K.if_rate_multistep, ref.if_rate_multistep_ref, {"signed": True}, False),
    ("if_rate_signed_identity", K.if_rate_multistep, ref.if_rate_multistep_ref,
     {"signed": True, "relu_constrained": False}, False),
    *[(f"mt_rate_n{n}{suffix}", K.mt_rate_multistep, ref.mt_rate_multistep_ref, {"n_levels": n, **kw}, False)
      for n in (1, 2, 4)
      for suffix, kw in (("", {}), ("_signed", {"signed": True}),
                         ("_signed_identity", {"signed": True, "relu_constrained": False}))],
    *[(f"mt_diff_n{n}{suffix}", K.mt_diff_multistep, ref.mt_diff_multistep_ref, {"n_levels": n, **kw}, True)
      for n in (1, 2, 4) for suffix, kw in (("", {}), ("_identity", {"relu_constrained": False}))],
    ("if_diff", K.if_diff_multistep, ref.if_diff_multistep_ref, {}, True),
    ("if_diff_identity", K.if_diff_multistep, ref.if_diff_multistep_ref, {"relu_constrained": False}, True),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    ok, reason = triton_status(request.param)
    if not ok:
        pytest.skip(reason)
    return request.param


def _dyadic(shape, lo: int = -96, hi: int = 160) -> torch.Tensor:
    """Values k/64 in [lo/64, hi/64): sums and differences of a few of them are exact in fp32."""
    return torch.randint(lo, hi, shape).float() / 64


def _pow2(shape) -> torch.Tensor:
    return 2.0 ** torch.randint(-2, 2, shape).float()


def _cases(T: int):
    """(x [T, *S], θ, b) with odd sizes and every θ layout: scalar, per neuron, per channel [C, 1, 1]."""
    return [
        (_dyadic((T, 1)), 1.0, 0.25),
        (_dyadic((T, 7)), _pow2((7,)), _dyadic((7,))),
        (_dyadic((T, 1000)), torch.tensor(0.5), None),
        (_dyadic((T, 3, 5, 7)), _pow2((3, 1, 1)), _dyadic((5, 7))),
        (_dyadic((T, 2, 3, 4, 5)), _pow2((3, 1, 1)), _dyadic((1, 3, 4, 5))),
    ]


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _run(fn, x, th, b, kw, diff):
    return fn(x, th, b, **kw) if diff else fn(x, th, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels vs twins
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize(("name", "kernel", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_dyadic_inputs_are_bit_exact(device, T, name, kernel, twin, kw, diff):
    for x, th, b in _cases(T):
        x, th, b = _to(x, device), _to(th, device), _to(b, device)
        got, want = _run(kernel, x, th, b, kw, diff), _run(twin, x, th, b, kw, diff)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert torch.equal(got, want), f"{name}, T={T}, S={tuple(x.shape[1:])}: {int((got != want).sum())} differ"


@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize(("name", "kernel", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_random_fp32_inputs_match_twin(device, T, name, kernel, twin, kw, diff):
    x = torch.randn(T, 2, 3, 5, 7, device=device)
    th = torch.rand(3, 1, 1, device=device) + 0.3
    b = 0.3 * torch.randn(1, 3, 5, 7, device=device)
    torch.testing.assert_close(_run(kernel, x, th, b, kw, diff), _run(twin, x, th, b, kw, diff),
                               **TOLERANCES["kernel_vs_ref_fp32"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(("name", "kernel", "twin", "kw", "diff"), VARIANTS, ids=VARIANT_IDS)
def test_low_precision_output_is_exact(device, dtype, name, kernel, twin, kw, diff):
    # point 3 of the issue: θ' = θ rounded to the dtype; every emitted value ±θ'·2^-i is exact in the dtype
    x = (0.7 * torch.randn(8, 2, 3, 5, 7, device=device)).to(dtype)
    th = (torch.rand(3, 1, 1, device=device) + 0.3).to(dtype).float()
    b = (0.3 * torch.randn(1, 3, 5, 7, device=device)).to(dtype).float()
    low = _run(kernel, x, th, b, kw, diff)
    full = _run(kernel, x.float(), th, b, kw, diff)
    assert low.dtype == dtype
    assert torch.equal(low.float(), full)
    assert torch.equal(full.to(dtype).float(), full)  # representable
    torch.testing.assert_close(low, _run(twin, x, th, b, kw, diff), **TOLERANCES["kernel_vs_ref_lowp"])


def test_threshold_table_layouts():
    shape = torch.Size([2, 3, 4, 5])
    for value in (1.5, torch.tensor(2.0), torch.rand(3, 1, 1), torch.rand(5), torch.rand(4, 5), torch.rand(3, 4, 5),
                  torch.rand(1, 3, 4, 5), torch.rand(3, 1, 5), torch.rand(2, 1, 1, 1)):
        table, inner, k = K._table("threshold", value, shape, torch.device("cpu"))
        idx = torch.arange(shape.numel())
        want = torch.as_tensor(value, dtype=torch.float32).expand(shape).reshape(-1)
        assert torch.equal(table[(idx // inner) % k], want), getattr(value, "shape", value)
    assert K._table("threshold", torch.rand(3, 1, 1), shape, torch.device("cpu"))[1:] == (20, 3)


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


@pytest.mark.parametrize(("name", "coding", "kw"), STATEFUL, ids=[s[0] for s in STATEFUL])
def test_single_steps_and_split_runs_equal_multistep(device, name, coding, kw):
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


@pytest.mark.parametrize(("coding", "kind", "n_levels"), [("rate", "if", 1), ("rate", "mt", 4),
                                                          ("differential", "mt", 4), ("differential", "if", 1)])
def test_triton_neuron_module_matches_reference(device, coding, kind, n_levels):
    neuron = SpikingNeuron(torch.rand(3, 1, 1) + 0.3, kind=kind, coding=coding, n_levels=n_levels).to(device)
    T, x = 5, torch.randn(5 * 2, 3, 4, 4, device=device)
    neuron.capture = True
    neuron(torch.randn(1, 3, 4, 4, device=device))  # a differential neuron captures its bias; a rate one ignores it
    neuron.capture = False
    lowered = TritonNeuron.from_reference(neuron)
    assert isinstance(lowered, SpikingNeuron) and torch.equal(lowered.threshold, neuron.threshold)
    for module in (neuron, lowered):
        module.step_mode, module.timesteps = "m", T
    want = neuron(x)
    assert torch.equal(lowered(x), want)
    lowered.step_mode = "s"
    lowered.reset()
    steps = torch.cat([lowered(x_t) for x_t in x.reshape(T, 2, 3, 4, 4)])
    assert torch.equal(steps, want)


def test_wrapper_constraints():
    x = torch.randn(4, 6)
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
        K.rate_neuron_run(torch.randn(1, 7), 1.0, kind="mt", n_levels=2, state=state)
    assert K.if_rate_multistep(torch.empty(3, 0), 1.0).shape == (3, 0)


# ---------------------------------------------------------------------------------------------------------------------
# End to end: compile(backend="triton") vs compile(backend="torch")
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(3)
    data = torch.rand(8, 1, 28, 28)
    return data, {coding: convert(SpellingsNet(), forward_loop=[data],
                                  config=ConversionConfig.for_coding(coding, timesteps=4)).snn
                  for coding in ("rate", "differential")}


@pytest.mark.parametrize("mode", ["multi", "single"])
@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_network_triton_equals_torch_backend(device, converted, coding, mode):
    data, snns = converted
    snn = snns[coding]
    x = data[:2].to(device)
    program = compile(snn, "triton", device=device)
    reference = compile(snn, "torch", device=device)
    assert program is not snn and type(snn.gm.get_submodule(snn.neuron_names[0])) is SpikingNeuron
    assert all(isinstance(m, TritonNeuron) for _, m in program.neurons())
    with torch.no_grad():
        got, want = program(x, 4, mode=mode), reference(x, 4, mode=mode)
    torch.testing.assert_close(got, want, **TOLERANCES["triton_vs_torch_network"])


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_network_bf16_both_backends(device, converted, coding):
    data, snns = converted
    snn, x = snns[coding], data[:2].to(device)
    program = compile(snn, "triton", device=device, dtype=torch.bfloat16)
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


def test_unlowerable_stateful_module_is_listed(converted):
    class Mystery(StepModule):
        def reset(self):
            pass

    snn = copy.deepcopy(converted[1]["rate"])
    name = snn.neuron_names[1]
    snn.gm.add_submodule(name, Mystery())
    if not triton_status("cpu")[0] and not torch.cuda.is_available():
        pytest.skip("no triton device")
    with pytest.raises(UnsupportedOpError, match="Mystery") as err:
        compile(snn, "triton", device="cpu" if triton_status("cpu")[0] else "cuda")
    assert any(n.target == name for n in err.value.nodes)


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


def test_triton_without_interpreter_or_gpu_is_unavailable():
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
    rate = ["x_ptr", "out_ptr", "th_ptr", "m_in_ptr", "c_in_ptr", "m_out_ptr", "c_out_ptr",
            "T", "N", "TH_INNER", "TH_K"]
    diff = ["x_ptr", "out_ptr", "th_ptr", "b_ptr", "r_in_in_ptr", "r_out_in_ptr", "r_in_out_ptr", "r_out_out_ptr",
            "T", "T0", "N", "TH_INNER", "TH_K", "B_INNER", "B_K"]
    cases = [
        ("_if_rate_multistep_fwd_kernel", rate, {"SIGNED": True, "NEED_C": True}),
        ("_mt_rate_multistep_fwd_kernel", rate, {"N_LEVELS": 4, "SIGNED": True, "NEED_C": True}),
        ("_mt_diff_multistep_fwd_kernel", diff, {"N_LEVELS": 4, "RELU_CONSTRAINED": True, "RECIPROCAL_DIV": True}),
        ("_if_diff_multistep_fwd_kernel", diff, {"RELU_CONSTRAINED": True, "RECIPROCAL_DIV": False}),
    ]
    result = {}
    for name, args, consts in cases:
        for x_type in ("*fp32", "*bf16"):
            consts = {**consts, "HAS_STATE_IN": True, "STORE_STATE": True, "BLOCK": 1024}
            sig = {a: (x_type if a in ("x_ptr", "out_ptr") else "*fp32" if a.endswith("_ptr") else "i32")
                   for a in args}
            sig.update({k: "constexpr" for k in consts})
            src = ASTSource(fn=getattr(K, name).fn, signature=sig, constexprs=consts)
            ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"]
            result[name + x_type] = sorted(set(re.findall(r"(?:div|fma|rcp)\\.[a-z0-9.]+", ptx)))
    print(json.dumps(result))
""")


def test_kernels_compile_for_a_gpu_without_one():
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
    assert len(instructions) == 8
    for name, found in instructions.items():
        assert not any(i.startswith(("div.full", "div.approx", "fma", "rcp.approx")) for i in found), (name, found)
