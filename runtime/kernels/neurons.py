"""Fused multi-step Triton kernels for the spiking neurons of ``convert/coding/neurons.py`` (method.md §4).

Provenance: written for snnconvert (issue #6). The layout follows the Triton tutorials (``01-vector-add.py``) and
Liger's element-wise kernels; the time loop with the state held in registers and ``"T"`` in the autotune key follows
SpikingJelly's ``triton_kernel/neuron_kernel/integrate_and_fire.py``. No code is copied from either.

One kernel per neuron kind: rate IF, rate multi-threshold (MT), differential MT, differential IF, plus one for a
decomposed bounded ReLU (``y = r − hi(r − a)``, ``r = lo(x)``: two neurons and two subtractions, ``runtime/fuse.py``).
Each program owns ``BLOCK`` neurons, reads its input column ``[T, BLOCK]`` once, loops over the T steps with the
state in fp32 registers and writes the emitted values ``[T, BLOCK]`` once. The arithmetic is the reference's,
operation by operation (``_rate_step`` / ``_diff_step``, one ``_rate_lane`` / ``_diff_lane`` per step), so spikes
are bit-identical to the ``*_ref`` twins:

- the MT rule walks the n cut-offs from the smallest level to the largest, overwriting, with comparisons only (no
  log2), exactly as ``mt_fire``; levels are ``θ·2^-i`` (exact power-of-two scaling), cut-offs ``0.75·level``;
- divisions by t are IEEE round-to-nearest (``tl.math.div_rn``; Triton's ``/`` is an approximate division on
  NVIDIA). The torch reference divides by t on CPU but multiplies by the fp32 reciprocal fl(1/t) on CUDA (ATen's
  ``div_true_kernel_cuda`` turns ``tensor / python_scalar`` into ``tensor * (1/scalar)``); the constexpr
  ``RECIPROCAL_DIV`` reproduces whichever form the twin uses on the input's device;
- launches pass ``enable_fp_fusion=False``: a contracted ``t·(R_in − R_out) + θ/2`` (fma) would round differently;
- the pair kernel rounds r − a and r − h to the network's dtype as the unfused graph does (``_rounded``: torch
  computes a reduced-precision subtraction in fp32 and rounds once, to nearest even; done with integer arithmetic for
  bf16 because the interpreter's ``.to(bfloat16)`` truncates). The single-neuron kernels store their emitted values
  the same way; those are exact in the dtype when the thresholds were rounded to it (``runtime/lower.py`` does), and
  otherwise round to nearest as the torch twins' casts do, on CUDA and in the interpreter alike.

Event counts (``events=``): each program stores, per step, the number of non-zero emitted values of every cell of
``_CELL`` neurons into an int32 ``[T, cells]`` buffer (a pair: ``[2, T, cells]``), which the launcher sums. Stores,
not atomics: every autotuning configuration writes the same cells with the same values, so a tuning run leaves the
right counts, and no buffer needs zeroing.

θ and the differential bias b arrive as compact per-element tables (``TH_INNER``/``TH_K``, ``B_INNER``/``B_K``;
``runtime/kernels/common.py``, which also holds the argument checks and the public wrappers shared with the native
C kernels of ``native.py``).

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

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.testing import do_bench

from snnconvert.runtime.kernels.common import SUPPORTED_DTYPES, DiffState, NeuronKernels, PairState, RateState

logger = logging.getLogger(__name__)

__all__ = [
    "INTERPRETED",
    "interpreter_probe",
    "SUPPORTED_DTYPES",
    "RateState",
    "DiffState",
    "if_rate_multistep",
    "mt_rate_multistep",
    "mt_diff_multistep",
    "if_diff_multistep",
    "rate_neuron_run",
    "diff_neuron_run",
    "bounded_relu_pair_run",
    "PairState",
    "KERNELS",
]

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
_PAIR_NO_SPEC = ["T", "T0", "TH_LO_INNER", "TH_LO_K", "B_LO_INNER", "B_LO_K", "TH_HI_INNER", "TH_HI_K", "B_HI_INNER",
                 "B_HI_K"]

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


#: Neurons per event-count cell: each program stores its per-step event counts per cell of _CELL neurons (BLOCK is a
#: multiple of it), so every autotuning configuration writes the same cells with the same values (idempotent, no
#: atomics, no zeroing) and the launcher sums the cells.
_CELL = tl.constexpr(256)


@triton.jit
def _rate_lane(x, m, c, th, IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, SIGNED: tl.constexpr,
               NEED_C: tl.constexpr):
    # one step of _rate_step: charge, fire, reset by subtraction, C += s
    m = m + x
    if IS_IF:
        s = _if_fire(m, c, th, SIGNED, NEED_C)
    else:
        s = _mt_fire(m, c, th, N_LEVELS, SIGNED, NEED_C)
    m = m - s
    if NEED_C:
        c = c + s
    return s, m, c


@triton.jit
def _diff_lane(x, t, inv_t, r_in, r_out, th, b, IS_IF: tl.constexpr, N_LEVELS: tl.constexpr,
               RELU_CONSTRAINED: tl.constexpr, RECIPROCAL_DIV: tl.constexpr):
    # one step of _diff_step: R_in' = R_in + (x − b)/t; m = t·(R_in' − R_out); C = t·R_out; R_out += d/t
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
    return d, r_in_new, r_out


@triton.jit
def _rate_init(th, m_in_ptr, c_in_ptr, offs, mask, IS_IF: tl.constexpr, NEED_C: tl.constexpr,
               HAS_STATE_IN: tl.constexpr, BLOCK: tl.constexpr):
    # (m, C) at entry: the carried state, or m = θ/2 (IF) / 0 (MT) and C = 0
    if HAS_STATE_IN:
        m = tl.load(m_in_ptr + offs, mask=mask, other=0.0)
    elif IS_IF:
        m = tl.zeros([BLOCK], dtype=tl.float32) + th * 0.5
    else:
        m = tl.zeros([BLOCK], dtype=tl.float32)
    c = tl.zeros([BLOCK], dtype=tl.float32)
    if NEED_C and HAS_STATE_IN:
        c = tl.load(c_in_ptr + offs, mask=mask, other=0.0)
    return m, c


@triton.jit
def _diff_init(b, r_in_ptr, r_out_ptr, offs, mask, HAS_STATE_IN: tl.constexpr, BLOCK: tl.constexpr):
    # (R_in, R_out) at entry: the carried state, or R_in = b, R_out = 0
    if HAS_STATE_IN:
        r_in = tl.load(r_in_ptr + offs, mask=mask, other=0.0)
        r_out = tl.load(r_out_ptr + offs, mask=mask, other=0.0)
    else:
        r_out = tl.zeros([BLOCK], dtype=tl.float32)
        r_in = r_out + b
    return r_in, r_out


@triton.jit
def _step_counter(t, one, RECIPROCAL_DIV: tl.constexpr):
    # the next step t + 1 (an fp32 vector: exact up to 2^24, and div_rn needs two tensors of one shape) and, where
    # the twin multiplies by the reciprocal, fl(1/(t + 1))
    t = t + 1.0
    inv_t = one
    if RECIPROCAL_DIV:
        inv_t = tl.math.div_rn(one, t)
    return t, inv_t


@triton.jit
def _rounded(x, DT: tl.constexpr):
    # fp32 x rounded to DT (nearest, ties to even) and back to fp32: how torch rounds a reduced-precision result. bf16
    # by integer arithmetic (c10's rounding), so that CUDA (cvt.rn) and the interpreter (whose `.to(bfloat16)`
    # truncates) agree; finite values only
    if DT == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    elif DT == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _lanes(N, BLOCK: tl.constexpr):
    # this program's neurons (offsets, mask), its event-count cells (indices, mask) and the number of cells
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    cells = pid * (BLOCK // _CELL) + tl.arange(0, BLOCK // _CELL)
    n_cells = (N + _CELL - 1) // _CELL
    return offs, offs < N, cells, cells < n_cells, n_cells


@triton.jit
def _table(ptr, offs, mask, INNER, K):
    # a compact per-element table: element e reads ptr[(e // INNER) % K]
    return tl.load(ptr + (offs // INNER) % K, mask=mask, other=0.0)


@triton.jit
def _count_cells(cnt_ptrs, value, mask, cell_mask, BLOCK: tl.constexpr):
    # this step's non-zero emitted values per cell of _CELL neurons
    nz = ((value != 0) & mask).to(tl.int32)
    tl.store(cnt_ptrs, tl.sum(tl.reshape(nz, [BLOCK // _CELL, _CELL]), axis=1), mask=cell_mask)


@triton.jit
def _rate_body(
    x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr, cnt_ptr,
    T, N, TH_INNER, TH_K,
    IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr,
    HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    offs, mask, cells, cell_mask, n_cells = _lanes(N, BLOCK)
    th = _table(th_ptr, offs, mask, TH_INNER, TH_K)
    m, c = _rate_init(th, m_in_ptr, c_in_ptr, offs, mask, IS_IF, NEED_C, HAS_STATE_IN, BLOCK)
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    cnt_ptrs = cnt_ptr + cells
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        s, m, c = _rate_lane(x, m, c, th, IS_IF, N_LEVELS, SIGNED, NEED_C)
        s = _rounded(s, out_ptr.dtype.element_ty)  # exact where θ was rounded to the dtype (module header)
        tl.store(out_ptrs, s.to(out_ptr.dtype.element_ty), mask=mask)
        if COUNT:
            _count_cells(cnt_ptrs, s, mask, cell_mask, BLOCK)
            cnt_ptrs += n_cells
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
    cnt_ptr,  # [T, cdiv(N, _CELL)] int32 non-zero outputs per step and cell (written if COUNT)
    T, N, TH_INNER, TH_K,
    SIGNED: tl.constexpr, NEED_C: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    _rate_body(x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr, cnt_ptr, T, N, TH_INNER, TH_K,
               True, 1, SIGNED, NEED_C, HAS_STATE_IN, STORE_STATE, COUNT, BLOCK)


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
    cnt_ptr,  # [T, cdiv(N, _CELL)] int32 non-zero outputs per step and cell (written if COUNT)
    T, N, TH_INNER, TH_K,
    N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr, HAS_STATE_IN: tl.constexpr,
    STORE_STATE: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    _rate_body(x_ptr, out_ptr, th_ptr, m_in_ptr, c_in_ptr, m_out_ptr, c_out_ptr, cnt_ptr, T, N, TH_INNER, TH_K,
               False, N_LEVELS, SIGNED, NEED_C, HAS_STATE_IN, STORE_STATE, COUNT, BLOCK)


@triton.jit
def _diff_body(
    x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr, cnt_ptr,
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr,
    STORE_STATE: tl.constexpr, RECIPROCAL_DIV: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    offs, mask, cells, cell_mask, n_cells = _lanes(N, BLOCK)
    th = _table(th_ptr, offs, mask, TH_INNER, TH_K)
    b = _table(b_ptr, offs, mask, B_INNER, B_K)
    r_in, r_out = _diff_init(b, r_in_in_ptr, r_out_in_ptr, offs, mask, HAS_STATE_IN, BLOCK)
    t = tl.zeros([BLOCK], dtype=tl.float32) + T0
    one = tl.full([BLOCK], 1.0, dtype=tl.float32)
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    cnt_ptrs = cnt_ptr + cells
    for _ in range(T):
        t, inv_t = _step_counter(t, one, RECIPROCAL_DIV)
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        d, r_in, r_out = _diff_lane(x, t, inv_t, r_in, r_out, th, b, IS_IF, N_LEVELS, RELU_CONSTRAINED,
                                    RECIPROCAL_DIV)
        d = _rounded(d, out_ptr.dtype.element_ty)
        tl.store(out_ptrs, d.to(out_ptr.dtype.element_ty), mask=mask)
        if COUNT:
            _count_cells(cnt_ptrs, d, mask, cell_mask, BLOCK)
            cnt_ptrs += n_cells
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
    cnt_ptr,  # [T, cdiv(N, _CELL)] int32 non-zero outputs per step and cell (written if COUNT)
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    N_LEVELS: tl.constexpr, RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    RECIPROCAL_DIV: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    _diff_body(x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr, cnt_ptr,
               T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
               False, N_LEVELS, RELU_CONSTRAINED, HAS_STATE_IN, STORE_STATE, RECIPROCAL_DIV, COUNT, BLOCK)


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
    cnt_ptr,  # [T, cdiv(N, _CELL)] int32 non-zero outputs per step and cell (written if COUNT)
    T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
    RELU_CONSTRAINED: tl.constexpr, HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr,
    RECIPROCAL_DIV: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):
    _diff_body(x_ptr, out_ptr, th_ptr, b_ptr, r_in_in_ptr, r_out_in_ptr, r_in_out_ptr, r_out_out_ptr, cnt_ptr,
               T, T0, N, TH_INNER, TH_K, B_INNER, B_K,
               True, 1, RELU_CONSTRAINED, HAS_STATE_IN, STORE_STATE, RECIPROCAL_DIV, COUNT, BLOCK)


@triton.autotune(configs=_configs(), key=_KEY, do_bench=_quick_bench)
@triton.jit(do_not_specialize=_PAIR_NO_SPEC)
def _bounded_relu_pair_fwd_kernel(
    x_ptr,  # [T, N] input of the lower neuron, fp32 | fp16 | bf16
    out_ptr,  # [T, N] y = r − hi(r − a) with r = lo(x), dtype of x
    th_lo_ptr,  # [TH_LO_K] fp32 θ of lo; element e uses th_lo[(e // TH_LO_INNER) % TH_LO_K]
    b_lo_ptr,  # [B_LO_K] fp32 captured bias of lo (differential coding; unread otherwise)
    th_hi_ptr,  # [TH_HI_K] fp32 θ of hi
    b_hi_ptr,  # [B_HI_K] fp32 captured bias of hi (differential coding; unread otherwise)
    s_in_ptr,  # [4, N] fp32 state at entry, rows lo m|R_in, lo C|R_out, hi m|R_in, hi C|R_out (if HAS_STATE_IN)
    s_out_ptr,  # [4, N] fp32 state after the last step, same rows (written if STORE_STATE)
    cnt_ptr,  # [2, T, cdiv(N, _CELL)] int32 non-zero outputs of lo, then hi, per step and cell (written if COUNT)
    ceiling,  # fp32 bound a
    T, T0, N, TH_LO_INNER, TH_LO_K, B_LO_INNER, B_LO_K, TH_HI_INNER, TH_HI_K, B_HI_INNER, B_HI_K,
    DIFF: tl.constexpr, IS_IF: tl.constexpr, N_LEVELS: tl.constexpr, SIGNED: tl.constexpr, NEED_C: tl.constexpr,
    HAS_STATE_IN: tl.constexpr, STORE_STATE: tl.constexpr, RECIPROCAL_DIV: tl.constexpr, COUNT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The unfused graph's four operations per element and step: r = lo(x) (emitted in the dtype DT), r − a rounded
    # to DT, h = hi(r − a) in DT, y = r − h rounded to DT (torch computes a reduced-precision subtraction in fp32 and
    # rounds once; the casts are no-ops in fp32).
    DT = out_ptr.dtype.element_ty
    offs, mask, cells, cell_mask, n_cells = _lanes(N, BLOCK)
    th_lo = _table(th_lo_ptr, offs, mask, TH_LO_INNER, TH_LO_K)
    th_hi = _table(th_hi_ptr, offs, mask, TH_HI_INNER, TH_HI_K)
    if DIFF:
        b_lo = _table(b_lo_ptr, offs, mask, B_LO_INNER, B_LO_K)
        b_hi = _table(b_hi_ptr, offs, mask, B_HI_INNER, B_HI_K)
        lo0, lo1 = _diff_init(b_lo, s_in_ptr, s_in_ptr + N, offs, mask, HAS_STATE_IN, BLOCK)
        hi0, hi1 = _diff_init(b_hi, s_in_ptr + 2 * N, s_in_ptr + 3 * N, offs, mask, HAS_STATE_IN, BLOCK)
    else:
        b_lo = th_lo
        b_hi = th_hi
        lo0, lo1 = _rate_init(th_lo, s_in_ptr, s_in_ptr + N, offs, mask, IS_IF, NEED_C, HAS_STATE_IN, BLOCK)
        hi0, hi1 = _rate_init(th_hi, s_in_ptr + 2 * N, s_in_ptr + 3 * N, offs, mask, IS_IF, NEED_C, HAS_STATE_IN,
                              BLOCK)
    t = tl.zeros([BLOCK], dtype=tl.float32) + T0
    one = tl.full([BLOCK], 1.0, dtype=tl.float32)
    inv_t = one
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    cnt_ptrs = cnt_ptr + cells
    hi_cells = T * n_cells
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        if DIFF:
            t, inv_t = _step_counter(t, one, RECIPROCAL_DIV)
            r, lo0, lo1 = _diff_lane(x, t, inv_t, lo0, lo1, th_lo, b_lo, IS_IF, N_LEVELS, NEED_C, RECIPROCAL_DIV)
        else:
            r, lo0, lo1 = _rate_lane(x, lo0, lo1, th_lo, IS_IF, N_LEVELS, SIGNED, NEED_C)
        r = _rounded(r, DT)
        shifted = _rounded(r - ceiling, DT)
        if DIFF:
            h, hi0, hi1 = _diff_lane(shifted, t, inv_t, hi0, hi1, th_hi, b_hi, IS_IF, N_LEVELS, NEED_C,
                                     RECIPROCAL_DIV)
        else:
            h, hi0, hi1 = _rate_lane(shifted, hi0, hi1, th_hi, IS_IF, N_LEVELS, SIGNED, NEED_C)
        h = _rounded(h, DT)
        tl.store(out_ptrs, _rounded(r - h, DT).to(DT), mask=mask)  # exact in DT: the cast does not round
        if COUNT:
            _count_cells(cnt_ptrs, r, mask, cell_mask, BLOCK)
            _count_cells(cnt_ptrs + hi_cells, h, mask, cell_mask, BLOCK)
            cnt_ptrs += n_cells
        x_ptrs += N
        out_ptrs += N
    if STORE_STATE:
        tl.store(s_out_ptr + offs, lo0, mask=mask)
        tl.store(s_out_ptr + N + offs, lo1, mask=mask)
        tl.store(s_out_ptr + 2 * N + offs, hi0, mask=mask)
        tl.store(s_out_ptr + 3 * N + offs, hi1, mask=mask)


#: Whether these kernels were built for the Triton interpreter: fixed when this module was imported, because
#: ``@triton.jit`` reads TRITON_INTERPRET when it decorates a function.
INTERPRETED: bool = _interpreting()


@triton.jit
def _loop_probe_kernel(out_ptr, T):
    # the kernels' loop shape: a runtime trip count T and a loop-carried fp32 value
    acc = tl.zeros([1], dtype=tl.float32)
    for _ in range(T):
        acc += 1.0
    tl.store(out_ptr + tl.arange(0, 1), acc)


def interpreter_probe() -> None:
    """Run a kernel with a runtime loop bound through the interpreter on a CPU tensor; raise what the interpreter
    raises. Some interpreter releases cannot: triton 3.6's turns the bound into a Python int with ``int()`` of a
    one-element array, which numpy 2.4.6 rejects (triton 3.7.1 and 3.8.0 squeeze it first). Only for an interpreted
    module."""
    out = torch.zeros(1)
    _loop_probe_kernel[(1,)](out, 3)
    if out.item() != 3.0:
        raise RuntimeError(f"a 3-step loop gave {out.item()}")

# ---------------------------------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------------------------------


def _grid(n: int):
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)


def _cells(events: Tensor | None, lead: tuple[int, ...], n: int, device) -> Tensor | None:
    """The per-cell event counts a launch writes when ``events`` is asked for (every cell is written: no zeroing)."""
    if events is None:
        return None
    return torch.empty(*lead, triton.cdiv(n, _CELL.value), dtype=torch.int32, device=device)


def _add_counts(events: Tensor | None, cells: Tensor | None) -> None:
    if events is not None:
        events += cells.sum(-1)


def _launch_rate(x, out, th, m_in, c_in, m_out, c_out, *, kind, n_levels, signed, need_c, events=None) -> None:
    """:class:`~snnconvert.runtime.kernels.common.RateLaunch` of the Triton kernels (unused pointers get ``out``)."""
    T, n = x.shape
    cells = _cells(events, (T,), n, x.device)
    common = dict(SIGNED=signed, NEED_C=need_c, HAS_STATE_IN=m_in is not None, STORE_STATE=m_out is not None,
                  COUNT=cells is not None, enable_fp_fusion=False)
    args = (x, out, th.values, _or(m_in, out), _or(c_in, out), _or(m_out, out), _or(c_out, out), _or(cells, out),
            T, n, th.inner, th.k)
    if kind == "if":
        _if_rate_multistep_fwd_kernel[_grid(n)](*args, **common)
    else:
        _mt_rate_multistep_fwd_kernel[_grid(n)](*args, N_LEVELS=n_levels, **common)
    _add_counts(events, cells)


def _launch_diff(x, out, th, b, r_in_in, r_out_in, r_in_out, r_out_out, *, t0, kind, n_levels,
                 relu_constrained, events=None) -> None:
    """:class:`~snnconvert.runtime.kernels.common.DiffLaunch` of the Triton kernels."""
    T, n = x.shape
    cells = _cells(events, (T,), n, x.device)
    common = dict(RELU_CONSTRAINED=relu_constrained, HAS_STATE_IN=r_in_in is not None,
                  STORE_STATE=r_in_out is not None, RECIPROCAL_DIV=x.device.type == "cuda", COUNT=cells is not None,
                  enable_fp_fusion=False)
    args = (x, out, th.values, b.values, _or(r_in_in, out), _or(r_out_in, out), _or(r_in_out, out),
            _or(r_out_out, out), _or(cells, out), T, t0, n, th.inner, th.k, b.inner, b.k)
    if kind == "mt":
        _mt_diff_multistep_fwd_kernel[_grid(n)](*args, N_LEVELS=n_levels, **common)
    else:
        _if_diff_multistep_fwd_kernel[_grid(n)](*args, **common)
    _add_counts(events, cells)


def _launch_pair(x, out, tables, state_in, state_out, *, ceiling, diff, kind, n_levels, signed, need_c, t0,
                 events=None) -> None:
    """:class:`~snnconvert.runtime.kernels.common.PairLaunch` of the Triton kernels."""
    T, n = x.shape
    cells = _cells(events, (2, T), n, x.device)
    th_lo, b_lo, th_hi, b_hi = tables
    _bounded_relu_pair_fwd_kernel[_grid(n)](
        x, out, th_lo.values, b_lo.values, th_hi.values, b_hi.values, _or(state_in, out), _or(state_out, out),
        _or(cells, out), float(ceiling), T, t0, n, th_lo.inner, th_lo.k, b_lo.inner, b_lo.k, th_hi.inner, th_hi.k,
        b_hi.inner, b_hi.k, DIFF=diff, IS_IF=kind == "if", N_LEVELS=n_levels if kind == "mt" else 1, SIGNED=signed,
        NEED_C=need_c, HAS_STATE_IN=state_in is not None, STORE_STATE=state_out is not None,
        RECIPROCAL_DIV=diff and x.device.type == "cuda", COUNT=cells is not None, enable_fp_fusion=False)
    _add_counts(events, cells)


def _or(t: Tensor | None, dummy: Tensor) -> Tensor:
    return dummy if t is None else t


# ---------------------------------------------------------------------------------------------------------------------
# Public wrappers (runtime/kernels/common.py): the signatures of the *_ref twins in convert/coding/neurons.py
# ---------------------------------------------------------------------------------------------------------------------

KERNELS = NeuronKernels("triton", _launch_rate, _launch_diff, launch_pair=_launch_pair, counts_events=True)
rate_neuron_run = KERNELS.rate_neuron_run
bounded_relu_pair_run = KERNELS.bounded_relu_pair_run
diff_neuron_run = KERNELS.diff_neuron_run
if_rate_multistep = KERNELS.if_rate_multistep
mt_rate_multistep = KERNELS.mt_rate_multistep
mt_diff_multistep = KERNELS.mt_diff_multistep
if_diff_multistep = KERNELS.if_diff_multistep
