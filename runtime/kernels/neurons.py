"""Fused multi-step Triton kernels for the spiking neurons of ``convert/coding/neurons.py`` (method.md §4).

Provenance: written for snnconvert (issue #6). The layout follows the Triton tutorials (``01-vector-add.py``) and
Liger's element-wise kernels; the time loop with the state held in registers and ``"T"`` in the autotune key follows
SpikingJelly's ``triton_kernel/neuron_kernel/integrate_and_fire.py``. No code is copied from either.

One kernel per neuron kind: rate IF, rate multi-threshold (MT), differential MT, differential IF. Each program owns
``BLOCK`` neurons, reads its input column ``[T, BLOCK]`` once, loops over the T steps with the state in fp32
registers and writes the emitted values ``[T, BLOCK]`` once. The arithmetic is the reference's, operation by
operation (``_rate_step`` / ``_diff_step``), so spikes are bit-identical to the ``*_ref`` twins:

- the MT rule walks the n cut-offs from the smallest level to the largest, overwriting, with comparisons only (no
  log2), exactly as ``mt_fire``; levels are ``θ·2^-i`` (exact power-of-two scaling), cut-offs ``0.75·level``;
- divisions by t are IEEE round-to-nearest (``tl.math.div_rn``; Triton's ``/`` is an approximate division on
  NVIDIA). The torch reference divides by t on CPU but multiplies by the fp32 reciprocal fl(1/t) on CUDA (ATen's
  ``div_true_kernel_cuda`` turns ``tensor / python_scalar`` into ``tensor * (1/scalar)``); the constexpr
  ``RECIPROCAL_DIV`` reproduces whichever form the twin uses on the input's device;
- launches pass ``enable_fp_fusion=False``: a contracted ``t·(R_in − R_out) + θ/2`` (fma) would round differently.

Per-element tables. θ and the differential bias b are stored compactly as a flat fp32 table ``[K]``; element ``e``
of the flattened per-step shape S reads ``table[(e // INNER) % K]``. A scalar gives K = 1; a per-channel θ
``[C, 1, 1]`` on S = ``[B, C, H, W]`` gives K = C, INNER = H·W; a captured bias ``[1, C, H, W]`` gives K = C·H·W,
INNER = 1. Any other broadcast pattern is expanded to the full S (K = N): correct, just one more read of N floats.

State in / state out. Every wrapper runs from the initial state; :func:`rate_neuron_run` / :func:`diff_neuron_run`
also take a state to start from and return the final state (separate in and out buffers, so an autotuning re-run
is idempotent), plus a step offset ``t0`` for differential coding. Single-step streaming is a chain of T = 1 calls
and gives the same bits as one T-step call.

Known limits:
- inputs fp32, fp16 or bf16 (state fp32, output in the input dtype); fp64 is rejected (use the torch reference);
- the step counter is kept as an fp32 value: exact up to t = 2^24;
- no backward pass (inference only); one launch per neuron layer per call (no fusion with the producing conv);
- under ``TRITON_INTERPRET=1`` a single configuration is used and the kernels are slow (tests only);
  ``SNNCONVERT_TRITON_AUTOTUNE=0`` (read at import) also disables tuning on a GPU, to keep test compilation short.
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.testing import do_bench

from snnconvert.convert.coding.neurons import check_levels
from snnconvert.convert.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "INTERPRETED",
    "SUPPORTED_DTYPES",
    "RateState",
    "DiffState",
    "if_rate_multistep",
    "mt_rate_multistep",
    "mt_diff_multistep",
    "if_diff_multistep",
    "rate_neuron_run",
    "diff_neuron_run",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------------------------------------------------
# Autotune configurations
# ---------------------------------------------------------------------------------------------------------------------

#: Neurons per program. Each thread keeps BLOCK / (32·num_warps) neurons' state in registers; 2..16 per thread keeps
#: 8..64-byte vector loads while N = 2^22 still gives >= 2048 programs to fill an H100/H200 (132 SMs).
_BLOCKS = (512, 1024, 2048)
_NUM_WARPS = (4, 8)
#: Under the interpreter every program is a Python loop over numpy blocks: one config, and a large block, because
#: the cost is per program-step (about 0.3 ms), not per element.
_INTERPRET_BLOCK = 1024
#: The single config used with SNNCONVERT_TRITON_AUTOTUNE=0 (read at import).
_DEFAULT_BLOCK = 1024


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _configs() -> list[triton.Config]:
    if _interpreting():
        return [triton.Config({"BLOCK": _INTERPRET_BLOCK}, num_warps=4)]
    if os.environ.get("SNNCONVERT_TRITON_AUTOTUNE", "1") == "0":
        # one config, no tuning: test runs compile each specialisation once instead of once per config
        return [triton.Config({"BLOCK": _DEFAULT_BLOCK}, num_warps=4)]
    return [
        triton.Config({"BLOCK": block}, num_warps=warps)
        for block, warps in itertools.product(_BLOCKS, _NUM_WARPS)
        if 2 <= block // (32 * warps) <= 16
    ]


def _quick_bench(kernel_call, quantiles):
    # The kernels are memory-bound and run for tens of µs at real sizes: 5 ms warm-up and 25 ms of repetitions per
    # config separate the configs well and keep first-call tuning under 0.2 s per (T, N, dtype) key.
    return do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


#: The autotuner adds the dtype of every tensor argument to this key (triton ≥ 3.0), so it is (T, N, dtypes).
_KEY = ["T", "N"]
#: Integer arguments whose value 1 / divisibility by 16 buys nothing: not specialised, so fewer compilations. N stays
#: specialised: N % 16 == 0 lets the compiler vectorise the masked loads and the row stride.
_RATE_NO_SPEC = ["T", "TH_INNER", "TH_K"]
_DIFF_NO_SPEC = ["T", "T0", "TH_INNER", "TH_K", "B_INNER", "B_K"]

# ---------------------------------------------------------------------------------------------------------------------
# Firing rules (same operation order as mt_fire / if_fire)
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _mt_fire(m, c, th, N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr):
    # smallest level first, overwrite: the last write is the smallest i whose test holds (mt_fire's walk)
    out = tl.zeros_like(m)
    for j in tl.static_range(N_LEVELS):
        level = th * (0.5 ** (N_LEVELS - 1 - j))  # exact power-of-two scaling
        cut = level * 0.75
        out = tl.where(m >= cut, level, out)
        if SIGNED:
            neg = m <= -cut
            if NEED_C:
                neg = neg & (c >= level)
            out = tl.where(neg, -level, out)
    return out


@triton.jit
def _if_fire(m, c, th, SIGNED: tl.constexpr, NEED_C: tl.constexpr):
    out = tl.where(m >= th, th, 0.0)
    if SIGNED:
        neg = m <= 0.0
        if NEED_C:
            neg = neg & (c >= th)
        out = tl.where(neg, -th, out)
    return out


@triton.jit
def _div_t(a, t, inv_t, RECIPROCAL_DIV: tl.constexpr):
    # a / t as the torch twin computes it on this device (module header); inv_t = fl(1/t) when RECIPROCAL_DIV
    if RECIPROCAL_DIV:
        return a * inv_t
    return tl.math.div_rn(a, t)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------


@triton.jit
def _rate_body(
    x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr,
    T, N, TH_INNER, TH_K,
    IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr,
    HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    th = tl.load(th_ptr + (offs // TH_INNER) % TH_K, mask=mask, other=0.0)
    if HAS_STATE_IN:
        m = tl.load(m_in_ptr + offs, mask=mask, other=0.0)
    elif IS_IF:
        m = tl.zeros([BLOCK], dtype=tl.float32) + th * 0.5
    else:
        m = tl.zeros([BLOCK], dtype=tl.float32)
    c = tl.zeros([BLOCK], dtype=tl.float32)
    if NEED_C and HAS_STATE_IN:
        c = tl.load(c_in_ptr + offs, mask=mask, other=0.0)
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        m = m + x
        if IS_IF:
            s = _if_fire(m, c, th, SIGNED, NEED_C)
        else:
            s = _mt_fire(m, c, th, N_LEVELS, SIGNED, NEED_C)
        m = m - s
        if NEED_C:
            c = c + s
        tl.store(out_ptrs, s.to(out_ptr.dtype.element_ty), mask=mask)
        x_ptrs += N
        out_ptrs += N
    if STORE_STATE:
        tl.store(m_out_ptr + offs, m, mask=mask)
        if NEED_C:
            tl.store(c_out_ptr + offs, c, mask=mask)


@triton.autotune(configs=_configs(), key=_KEY, do_bench=_quick_bench)
@triton.jit(do_not_specialize=_RATE_NO_SPEC)
def _if_rate_multistep_fwd_kernel(
    x_ptr,  # [T, N] input, fp32 | fp16 | bf16
    out_ptr,  # [T, N] emitted values (0 or ±θ), dtype of x
    th_ptr,  # [TH_K] fp32 θ; element e uses th[(e // TH_INNER) % TH_K]
    m_in_ptr,  # [N] fp32 membrane at entry (read if HAS_STATE_IN)
    c_in_ptr,  # [N] fp32 cumulative output at entry (read if HAS_STATE_IN and NEED_C)
    m_out_ptr,  # [N] fp32 membrane after the last step (written if STORE_STATE)
    c_out_ptr,  # [N] fp32 cumulative output after the last step (written if STORE_STATE and NEED_C)
    T, N, TH_INNER, TH_K,
    SIGNED: tl.constexpr, NEED_C: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _rate_body(x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr, T, N, TH_INNER, TH_K,
               True, 1, SIGNED, NEED_C, HAS_STATE_IN, STORE_STATE, BLOCK)


@triton.autotune(configs=_configs(), key=_KEY, do_bench=_quick_bench)
@triton.jit(do_not_specialize=_RATE_NO_SPEC)
def _mt_rate_multistep_fwd_kernel(
    x_ptr,  # [T, N] input, fp32 | fp16 | bf16
    out_ptr,  # [T, N] emitted values (0 or ±θ·2^-i), dtype of x
    th_ptr,  # [TH_K] fp32 θ; element e uses th[(e // TH_INNER) % TH_K]
    m_in_ptr,  # [N] fp32 membrane at entry (read if HAS_STATE_IN)
    c_in_ptr,  # [N] fp32 cumulative output at entry (read if HAS_STATE_IN and NEED_C)
    m_out_ptr,  # [N] fp32 membrane after the last step (written if STORE_STATE)
    c_out_ptr,  # [N] fp32 cumulative output after the last step (written if STORE_STATE and NEED_C)
    T, N, TH_INNER, TH_K,
    N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr, HAS_STATE_IN: tl.constexpr,
    STORE_STATE: tl.constexpr, BLOCK: tl.constexpr,
):
    _rate_body(x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr, T, N, TH_INNER, TH_K,
               False, N_LEVELS, SIGNED, NEED_C, HAS_STATE_IN, STORE_STATE, BLOCK)


@triton.jit
def _diff_body(
    x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr,
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr,
    STORE_STATE: tl.constexpr, RECIPROCAL_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    th = tl.load(th_ptr + (offs // TH_INNER) % TH_K, mask=mask, other=0.0)
    b = tl.load(b_ptr + (offs // B_INNER) % B_K, mask=mask, other=0.0)
    if HAS_STATE_IN:
        r_in = tl.load(r_in_in_ptr + offs, mask=mask, other=0.0)
        r_out = tl.load(r_out_in_ptr + offs, mask=mask, other=0.0)
    else:
        r_out = tl.zeros([BLOCK], dtype=tl.float32)
        r_in = r_out + b
    # the step counter as an fp32 vector: exact up to 2^24, and div_rn needs two tensors of one shape
    t = tl.zeros([BLOCK], dtype=tl.float32) + T0
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    one = tl.full([BLOCK], 1.0, dtype=tl.float32)
    for _ in range(T):
        t = t + 1.0
        inv_t = one
        if RECIPROCAL_DIV:
            inv_t = tl.math.div_rn(one, t)
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        u = x - b
        r_in_new = r_in + _div_t(u, t, inv_t, RECIPROCAL_DIV)
        m = t * (r_in_new - r_out)
        c = t * r_out
        if IS_IF:
            m = m + th * 0.5
            d = _if_fire(m, c, th, True, RELU_CONSTRAINED)
        else:
            d = _mt_fire(m, c, th, N_LEVELS, True, RELU_CONSTRAINED)
        r_out = r_out + _div_t(d, t, inv_t, RECIPROCAL_DIV)
        r_in = r_in_new
        tl.store(out_ptrs, d.to(out_ptr.dtype.element_ty), mask=mask)
        x_ptrs += N
        out_ptrs += N
    if STORE_STATE:
        tl.store(r_in_out_ptr + offs, r_in, mask=mask)
        tl.store(r_out_out_ptr + offs, r_out, mask=mask)


@triton.autotune(configs=_configs(), key=_KEY, do_bench=_quick_bench)
@triton.jit(do_not_specialize=_DIFF_NO_SPEC)
def _mt_diff_multistep_fwd_kernel(
    x_ptr,  # [T, N] raw input x_t (bias included), fp32 | fp16 | bf16
    out_ptr,  # [T, N] emitted differences (0 or ±θ·2^-i), dtype of x
    th_ptr,  # [TH_K] fp32 θ; element e uses th[(e // TH_INNER) % TH_K]
    b_ptr,  # [B_K] fp32 captured bias; element e uses b[(e // B_INNER) % B_K]
    r_in_in_ptr,  # [N] fp32 running input mean at entry (read if HAS_STATE_IN)
    r_out_in_ptr,  # [N] fp32 running output mean at entry (read if HAS_STATE_IN)
    r_in_out_ptr,  # [N] fp32 running input mean after the last step (written if STORE_STATE)
    r_out_out_ptr,  # [N] fp32 running output mean after the last step (written if STORE_STATE)
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    N_LEVELS: tl.constexpr, RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    RECIPROCAL_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    _diff_body(x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr,
               T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
               False, N_LEVELS, RELU_CONSTRAINED, HAS_STATE_IN, STORE_STATE, RECIPROCAL_DIV, BLOCK)


@triton.autotune(configs=_configs(), key=_KEY, do_bench=_quick_bench)
@triton.jit(do_not_specialize=_DIFF_NO_SPEC)
def _if_diff_multistep_fwd_kernel(
    x_ptr,  # [T, N] raw input x_t (bias included), fp32 | fp16 | bf16
    out_ptr,  # [T, N] emitted differences (0 or ±θ), dtype of x
    th_ptr,  # [TH_K] fp32 θ; element e uses th[(e // TH_INNER) % TH_K]
    b_ptr,  # [B_K] fp32 captured bias; element e uses b[(e // B_INNER) % B_K]
    r_in_in_ptr,  # [N] fp32 running input mean at entry (read if HAS_STATE_IN)
    r_out_in_ptr,  # [N] fp32 running output mean at entry (read if HAS_STATE_IN)
    r_in_out_ptr,  # [N] fp32 running input mean after the last step (written if STORE_STATE)
    r_out_out_ptr,  # [N] fp32 running output mean after the last step (written if STORE_STATE)
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    RECIPROCAL_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    _diff_body(x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr,
               T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
               True, 1, RELU_CONSTRAINED, HAS_STATE_IN, STORE_STATE, RECIPROCAL_DIV, BLOCK)


#: Whether these kernels were built for the Triton interpreter: fixed when this module was imported, because
#: ``@triton.jit`` reads TRITON_INTERPRET when it decorates a function.
INTERPRETED: bool = _interpreting()

# ---------------------------------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RateState:
    """Per-element state of a rate neuron after some steps: membrane m and cumulative output C (None if unused)."""

    m: Tensor  # [N] fp32
    c: Tensor | None  # [N] fp32


@dataclass
class DiffState:
    """Per-element state of a differential neuron: running means R_in, R_out and the number of steps done."""

    r_in: Tensor  # [N] fp32
    r_out: Tensor  # [N] fp32
    t: int


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ConfigError(f"x must be a torch.Tensor of shape [T, *S], got {type(x).__name__}")
    if x.dim() < 1:
        raise ConfigError("x must have shape [T, *S], got a 0-dim tensor")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"the triton neuron kernels take fp32, fp16 or bf16 inputs, got {x.dtype}; "
                          "use the torch reference (backend='torch') for other dtypes")


def _prepare_run(x: Tensor, threshold, kind: str, n_levels: int):
    """Checks shared by both launchers; returns ``(x contiguous, T, S, N, (θ table, INNER, K))``."""
    _check_input(x)
    if kind not in ("if", "mt"):
        raise ConfigError(f"kind must be 'if' or 'mt', got {kind!r}")
    check_levels(kind, n_levels)  # the reference neurons' rule and message
    x = x.contiguous()
    step_shape = x.shape[1:]
    return x, x.shape[0], step_shape, step_shape.numel(), _table("threshold", threshold, step_shape, x.device)


def _table(name: str, value, step_shape: torch.Size, device: torch.device) -> tuple[Tensor, int, int]:
    """Compact fp32 table of a per-element parameter: ``(table [K], INNER, K)`` with element e at
    ``table[(e // INNER) % K]`` (module header). Raises ConfigError if ``value`` does not broadcast to S."""
    v = torch.as_tensor(value, dtype=torch.float32, device=device)
    try:
        ok = torch.broadcast_shapes(v.shape, step_shape) == step_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ConfigError(f"{name} of shape {tuple(v.shape)} does not broadcast to the per-step shape "
                          f"{tuple(step_shape)}; use a scalar, per-channel ([C, 1, 1] or [C]) or per-neuron value")
    shape = [1] * (len(step_shape) - v.dim()) + list(v.shape)
    varying = [d for d, n in enumerate(shape) if n > 1]
    if not varying:
        return v.reshape(1).contiguous(), 1, 1
    lo, hi = varying[0], varying[-1] + 1
    if all(shape[d] == step_shape[d] for d in range(lo, hi)):
        k = 1
        for d in range(lo, hi):
            k *= step_shape[d]
        inner = 1
        for d in range(hi, len(step_shape)):
            inner *= step_shape[d]
        return v.reshape(-1).contiguous(), inner, k
    full = v.expand(step_shape).reshape(-1).contiguous()
    return full, 1, full.numel()


def _expand(table: Tensor, inner: int, k: int, n: int) -> Tensor:
    """The full per-element values [N] of a compact table (used only on the no-launch paths)."""
    idx = torch.arange(n, device=table.device)
    return table[(idx // inner) % k].clone()


def _grid(n: int):
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)


def _state_buffer(t: Tensor | None, n: int, device: torch.device, name: str) -> Tensor:
    if t is None:
        raise ConfigError(f"the carried state has no {name}; start from state=None (reset the neuron)")
    t = t.reshape(-1)
    if t.numel() != n or t.dtype != torch.float32:
        raise ConfigError(f"the carried state {name} has {t.numel()} {t.dtype} element(s) but the input has {n} per "
                          "step (fp32 state expected); reset the neuron when the input shape changes")
    return t.to(device).contiguous()


def rate_neuron_run(
    x: Tensor,
    threshold: Tensor | float,
    *,
    kind: str,
    n_levels: int = 1,
    signed: bool = False,
    relu_constrained: bool = True,
    state: RateState | None = None,
    store_state: bool = False,
) -> tuple[Tensor, RateState | None]:
    """Run a rate neuron (IF or MT) over the T steps of ``x [T, *S]`` from ``state`` (None: the initial state).

    Returns:
        The emitted values ``[T, *S]`` in the dtype of ``x`` and, if ``store_state``, the state after the last step
        (new buffers; ``state`` is not modified), else None.

    Raises:
        ConfigError: a bad kind, dtype, shape, ``n_levels`` or state.
    """
    x, T, step_shape, n, (th, th_inner, th_k) = _prepare_run(x, threshold, kind, n_levels)
    need_c = bool(signed and relu_constrained)
    out = torch.empty_like(x)
    if T == 0 or n == 0:  # nothing to launch; the state passes through unchanged
        if not store_state:
            return out, None
        if state is not None:
            c = _state_buffer(state.c, n, x.device, "c").clone() if need_c else None
            return out, RateState(_state_buffer(state.m, n, x.device, "m").clone(), c)
        m0 = _expand(th, th_inner, th_k, n) * 0.5 if kind == "if" else torch.zeros(n, device=x.device)
        return out, RateState(m0, torch.zeros(n, device=x.device) if need_c else None)
    new_state = None
    if store_state:
        new_state = RateState(torch.empty(n, dtype=torch.float32, device=x.device),
                              torch.empty(n, dtype=torch.float32, device=x.device) if need_c else None)
    m_in = c_in = out
    if state is not None:
        m_in = _state_buffer(state.m, n, x.device, "m")
        if need_c:
            c_in = _state_buffer(state.c, n, x.device, "c")
    m_out = new_state.m if new_state is not None else out
    c_out = new_state.c if new_state is not None and need_c else out
    common = dict(SIGNED=bool(signed), NEED_C=need_c, HAS_STATE_IN=state is not None, STORE_STATE=store_state,
                  enable_fp_fusion=False)
    args = (x, out, th, m_in, c_in, m_out, c_out, T, n, th_inner, th_k)
    if kind == "if":
        _if_rate_multistep_fwd_kernel[_grid(n)](*args, **common)
    else:
        _mt_rate_multistep_fwd_kernel[_grid(n)](*args, N_LEVELS=n_levels, **common)
    return out, new_state


def diff_neuron_run(
    x: Tensor,
    threshold: Tensor | float,
    bias: Tensor | float | None,
    *,
    kind: str,
    n_levels: int = 1,
    relu_constrained: bool = True,
    state: DiffState | None = None,
    store_state: bool = False,
) -> tuple[Tensor, DiffState | None]:
    """Run a differential neuron (MT or IF, always signed) over the T real steps of ``x [T, *S]``.

    With ``state`` None the neuron starts from R_in = b, R_out = 0 at step t = 1; otherwise it continues from
    ``state`` at step ``state.t + 1``.

    Returns:
        The emitted differences ``[T, *S]`` in the dtype of ``x`` and, if ``store_state``, the state after the last
        step (new buffers), else None.

    Raises:
        ConfigError: a bad kind, dtype, shape, ``n_levels`` or state.
    """
    x, T, step_shape, n, (th, th_inner, th_k) = _prepare_run(x, threshold, kind, n_levels)
    b, b_inner, b_k = _table("bias", 0.0 if bias is None else bias, step_shape, x.device)
    t0 = 0 if state is None else int(state.t)
    out = torch.empty_like(x)
    if T == 0 or n == 0:  # nothing to launch; the state passes through unchanged
        if not store_state:
            return out, None
        if state is not None:
            return out, DiffState(_state_buffer(state.r_in, n, x.device, "r_in").clone(),
                                  _state_buffer(state.r_out, n, x.device, "r_out").clone(), t0 + T)
        return out, DiffState(_expand(b, b_inner, b_k, n), torch.zeros(n, device=x.device), T)
    new_state = None
    if store_state:
        new_state = DiffState(torch.empty(n, dtype=torch.float32, device=x.device),
                              torch.empty(n, dtype=torch.float32, device=x.device), t0 + T)
    r_in_in = r_out_in = out
    if state is not None:
        r_in_in = _state_buffer(state.r_in, n, x.device, "r_in")
        r_out_in = _state_buffer(state.r_out, n, x.device, "r_out")
    r_in_out = new_state.r_in if new_state is not None else out
    r_out_out = new_state.r_out if new_state is not None else out
    common = dict(RELU_CONSTRAINED=bool(relu_constrained), HAS_STATE_IN=state is not None, STORE_STATE=store_state,
                  RECIPROCAL_DIV=x.device.type == "cuda", enable_fp_fusion=False)
    args = (x, out, th, b, r_in_in, r_out_in, r_in_out, r_out_out, T, t0, n, th_inner, th_k, b_inner, b_k)
    if kind == "mt":
        _mt_diff_multistep_fwd_kernel[_grid(n)](*args, N_LEVELS=n_levels, **common)
    else:
        _if_diff_multistep_fwd_kernel[_grid(n)](*args, **common)
    return out, new_state


# ---------------------------------------------------------------------------------------------------------------------
# Public wrappers: the signatures of the *_ref twins in convert/coding/neurons.py
# ---------------------------------------------------------------------------------------------------------------------


def if_rate_multistep(
    x: Tensor, threshold: Tensor | float, *, signed: bool = False, relu_constrained: bool = True
) -> Tensor:
    """Rate-coded IF neuron over T steps; the kernel twin of ``if_rate_multistep_ref`` (method.md §4.1, §4.2)."""
    return rate_neuron_run(x, threshold, kind="if", signed=signed, relu_constrained=relu_constrained)[0]


def mt_rate_multistep(
    x: Tensor,
    threshold: Tensor | float,
    *,
    n_levels: int,
    signed: bool = False,
    relu_constrained: bool = True,
) -> Tensor:
    """Rate-coded multi-threshold neuron over T steps; the kernel twin of ``mt_rate_multistep_ref`` (§4.5)."""
    return rate_neuron_run(
        x, threshold, kind="mt", n_levels=n_levels, signed=signed, relu_constrained=relu_constrained
    )[0]


def mt_diff_multistep(
    x: Tensor,
    threshold: Tensor | float,
    bias: Tensor | float | None,
    *,
    n_levels: int,
    relu_constrained: bool = True,
) -> Tensor:
    """Differential multi-threshold neuron over T real steps; the kernel twin of ``mt_diff_multistep_ref``
    (§4.6, §4.7)."""
    return diff_neuron_run(x, threshold, bias, kind="mt", n_levels=n_levels, relu_constrained=relu_constrained)[0]


def if_diff_multistep(
    x: Tensor,
    threshold: Tensor | float,
    bias: Tensor | float | None,
    *,
    relu_constrained: bool = True,
) -> Tensor:
    """Differential IF neuron over T real steps; the kernel twin of ``if_diff_multistep_ref`` (§4.3)."""
    return diff_neuron_run(x, threshold, bias, kind="if", relu_constrained=relu_constrained)[0]
