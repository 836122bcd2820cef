"""Inductor neuron kernels: the reference neurons' own step functions, compiled by ``torch.compile`` into one fused
loop per call (TorchInductor: C++ with OpenMP on CPU tensors, generated Triton on CUDA tensors).

Why. The torch backend runs a step of a differential multi-threshold neuron as some 30 element-wise passes over
memory; on models with few MACs per neuron (depthwise convolutions) these dominate. Here the time loop of a call is
traced into one graph and inductor fuses it into a single pass: each element's state stays in registers across the
steps, x is read once and the output written once. The traced code *is* the reference: ``rate_step`` /
``diff_step`` / ``rate_init`` / ``diff_init`` of ``convert/coding/neurons.py`` (the ``torch.where`` chains of
``mt_fire`` become branch-free selects), so nothing is re-implemented. On CPU tensors the outputs equal the torch
twins bit for bit, −0.0 of silent units included (tests/test_kernels.py, test_fuse.py, test_cli.py; inductor compiles
with ``-ffp-contract=off`` and keeps true divisions; its ``-fno-signed-zeros`` can flip the sign of a zero in the
carried state, which no later value depends on: states are equal in value). The same tests exist for CUDA tensors
(``gpu`` marker) but have not run: no GPU so far, and ``bench/gpu_check.sh`` leaves them out of its time budget.

Compilation. ``fullgraph=True`` (a graph break is an error, never a silent eager fallback) and dynamic shapes: a
network compiles one graph per neuron configuration (kind, n, flags), loop length, and whether the call reads a
carried state, stores one and counts events, 2–15 s each on two cores on its first call (multi-step evaluation of a
network: one or two graphs per configuration); inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) shortens it in
later processes. The time
loop is unrolled, so a call runs in graphs of :data:`STEPS_PER_GRAPH` steps and the rest in powers of two (T = 13:
8, 4 and 1 steps) with the state carried between them: at most four loop lengths per configuration, whatever T.
Recompilations are allowed up to :data:`RECOMPILE_LIMIT` per function and then raise (dynamo's default would run the
eager code silently). A failing compiler raises :class:`BackendUnavailableError` with the cause.

Layout. The wrappers (``common.py``) pass x as [T, N] and θ / b as compact tables. A flat index ``e // inner % k``
does not vectorise in inductor's C++ code (8x slower, measured), so the launchers view N as [outer, inner] with the
batch in ``outer`` and give every table as a [1, inner] tensor (:func:`table_views`): one iteration space for all
operands, contiguous in the inner dimension.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from snnconvert.convert.coding.rules import diff_init, diff_step, rate_init, rate_step
from snnconvert.convert.errors import BackendUnavailableError, first_line
from snnconvert.runtime.kernels.common import NeuronKernels, Table, expand_table

logger = logging.getLogger(__name__)

__all__ = ["STEPS_PER_GRAPH", "RECOMPILE_LIMIT", "KERNELS", "inductor_status", "table_views"]

#: Time steps unrolled in one compiled graph (a power of two; longer calls run several graphs, the state carried
#: between them).
STEPS_PER_GRAPH = 8
#: Compiled variants allowed per loop function (shapes are dynamic; variants differ in the neuron configuration, loop
#: length and which state / event arguments are given).
RECOMPILE_LIMIT = 256


# ---------------------------------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------------------------------


@functools.cache
def _cxx_compiler() -> str | None:
    """The C++ compiler inductor will use on CPU tensors, or None if none is found."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        name = get_cpp_compiler()
    except Exception:  # noqa: BLE001 -- any failure of the search means there is no usable compiler
        return None
    return name if shutil.which(name) or os.path.isfile(name) else None


def inductor_status(device: str | torch.device) -> tuple[bool, str]:
    """Can the inductor neuron kernels run on tensors of ``device``? ``(ok, reason)`` (nothing is compiled)."""
    device = torch.device(device)
    if importlib.util.find_spec("torch._inductor") is None:
        return False, "this torch build has no TorchInductor (torch._inductor); use backend='torch' or 'native'"
    if device.type == "cpu":
        compiler = _cxx_compiler()
        if compiler is None:
            return False, ("the inductor backend on CPU compiles C++, but no C++ compiler was found; install g++ "
                           "(or set CXX), or use backend='native' (or 'torch')")
        return True, f"torch.compile (inductor) neuron loops, C++ with OpenMP ({compiler})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, (f"the inductor backend on device '{device}' needs a CUDA device, but torch sees none; "
                           "use device='cpu'")
        if importlib.util.find_spec("triton") is None:
            return False, "the inductor backend on CUDA generates Triton code, but triton is not installed"
        return True, "torch.compile (inductor) neuron loops, generated Triton on CUDA"
    return False, f"the inductor backend supports CPU and CUDA devices only, got '{device}'; use backend='torch'"


def _check_device(device: torch.device) -> None:
    ok, reason = inductor_status(device)
    if not ok:
        raise BackendUnavailableError(reason)


# ---------------------------------------------------------------------------------------------------------------------
# Table views
# ---------------------------------------------------------------------------------------------------------------------


def table_views(n: int, tables: Sequence[Table]) -> tuple[list[int], list[Tensor]]:
    """A split ``[outer, inner]`` of ``n`` and each table as a tensor ``[1, inner]`` (or ``[1, 1]`` for a scalar)
    broadcastable to it: ``outer`` is the longest prefix of the element index over which no table varies (the batch,
    for per-channel and per-sample tables), and each varying table is expanded to the ``inner`` elements of one
    period (a per-sample tensor: small next to the [T, N] input). Every operand of the compiled loop then has the
    same iteration space, which inductor fuses into one loop nest (tables of different shapes, as θ [1, C, 1] next to
    b [1, C, H·W], split it into several nests that pass intermediates through memory: 2x slower, measured).
    """
    varying = [tab for tab in tables if tab.k > 1]
    outer = min((n // (tab.k * tab.inner) for tab in varying), default=1)
    if outer < 1 or any(n % (tab.k * tab.inner) for tab in varying):
        outer = 1  # not a split of n (never produced by make_table): expand over all of n
    inner = n // outer
    return [outer, inner], [tab.values.view(1, 1) if tab.k == 1 else expand_table(tab, inner).view(1, inner)
                            for tab in tables]


# ---------------------------------------------------------------------------------------------------------------------
# The traced loops (plain torch; each call of a launcher runs them through torch.compile)
# ---------------------------------------------------------------------------------------------------------------------


def _count(steps: list[Tensor], events: Tensor) -> None:
    events.add_(torch.stack([(s != 0).sum() for s in steps]))


def _emit(out: Tensor | None, steps: list[Tensor], events: Tensor | None) -> Tensor | None:
    """The steps' outputs, stacked: returned when ``out`` is None (inductor writes them from the fused loop into the
    graph's own output buffer), else copied into ``out`` (a call split into several graphs: one more pass). Writing
    each step straight into ``out`` instead makes inductor split the loop into several nests, one of them serial
    (2–4x slower, measured). ``events``: each step's number of non-zero values is added to it."""
    if events is not None:
        _count(steps, events)
    if out is None:
        return torch.stack(steps)
    out.copy_(torch.stack(steps))
    return None


def _rate_loop(x: Tensor, out: Tensor | None, th: Tensor, m: Tensor | None, c: Tensor | None, m_out: Tensor | None,
               c_out: Tensor | None, events: Tensor | None, *, kind: str, n_levels: int, signed: bool,
               need_c: bool) -> Tensor | None:
    """``rate_step`` over the steps of x [T, *D] into out (None: returned, :func:`_emit`); state m, c (None: the
    initial state) into m_out, c_out."""
    if m is None:
        m, c = rate_init(x.shape[1:], th, kind=kind, signed=signed, relu_constrained=need_c)
    steps = []
    for i in range(x.shape[0]):
        s, m, c = rate_step(x[i], m, c, th, kind=kind, n_levels=n_levels, signed=signed, relu_constrained=need_c)
        steps.append(s)
    if m_out is not None:
        m_out.copy_(m)
    if c_out is not None:
        c_out.copy_(c)
    return _emit(out, steps, events)


def _diff_loop(x: Tensor, out: Tensor | None, th: Tensor, b: Tensor, r_in: Tensor | None, r_out: Tensor | None,
               r_in_out: Tensor | None, r_out_out: Tensor | None, t0: Tensor, events: Tensor | None, *, kind: str,
               n_levels: int, relu_constrained: bool) -> Tensor | None:
    """``diff_step`` for steps t0+1 … t0+T of x [T, *D] (t0: a 0-dim fp32 tensor, so that the step number is data,
    not a constant compiled into the graph)."""
    if r_in is None:
        r_in, r_out = diff_init(x.shape[1:], b)
    steps = []
    for i in range(x.shape[0]):
        d, r_in, r_out = diff_step(x[i], t0 + (i + 1), r_in, r_out, th, b, kind=kind, n_levels=n_levels,
                                    relu_constrained=relu_constrained)
        steps.append(d)
    if r_in_out is not None:
        r_in_out.copy_(r_in)
        r_out_out.copy_(r_out)
    return _emit(out, steps, events)


def _pair_loop(x: Tensor, out: Tensor | None, th_lo: Tensor, b_lo: Tensor, th_hi: Tensor, b_hi: Tensor,
               rows: Tensor | None, rows_out: Tensor | None, t0: Tensor, events: Tensor | None, *, ceiling: float,
               diff: bool, kind: str, n_levels: int, signed: bool, need_c: bool) -> Tensor | None:
    """A bounded-ReLU pair ``r = lo(x); y = r − hi(r − ceiling)`` per step, the unfused graph's operations in its
    order; ``rows`` [4, *D]: lo's two state rows, then hi's (``PairState``)."""
    shape = x.shape[1:]
    if rows is not None:
        a0, a1, h0, h1 = rows[0], rows[1], rows[2], rows[3]
    elif diff:
        (a0, a1), (h0, h1) = diff_init(shape, b_lo), diff_init(shape, b_hi)
    else:
        (a0, a1), (h0, h1) = (rate_init(shape, th, kind=kind, signed=signed, relu_constrained=need_c)
                              for th in (th_lo, th_hi))
    if not diff and not need_c:  # a rate neuron without the constraint carries no C (as the kernels)
        a1 = h1 = None
    ys, los, his = [], [], []
    for i in range(x.shape[0]):
        if diff:
            t = t0 + (i + 1)
            r, a0, a1 = diff_step(x[i], t, a0, a1, th_lo, b_lo, kind=kind, n_levels=n_levels,
                                   relu_constrained=need_c)
            h, h0, h1 = diff_step(r - ceiling, t, h0, h1, th_hi, b_hi, kind=kind, n_levels=n_levels,
                                   relu_constrained=need_c)
        else:
            r, a0, a1 = rate_step(x[i], a0, a1, th_lo, kind=kind, n_levels=n_levels, signed=signed,
                                   relu_constrained=need_c)
            h, h0, h1 = rate_step(r - ceiling, h0, h1, th_hi, kind=kind, n_levels=n_levels, signed=signed,
                                   relu_constrained=need_c)
        ys.append(r - h)
        los.append(r)
        his.append(h)
    if events is not None:
        _count(los, events[0])
        _count(his, events[1])
    if rows_out is not None:
        for row, value in zip(rows_out, (a0, a1, h0, h1)):
            row.copy_(value if value is not None else torch.zeros_like(a0))
    return _emit(out, ys, None)


@functools.cache
def _compiled(loop: Callable) -> Callable:
    return torch.compile(loop, fullgraph=True, dynamic=True)


def _compile_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor import exc as inductor_exc

    names = [(dynamo_exc, "BackendCompilerFailed"), (dynamo_exc, "FailOnRecompileLimitHit"),
             (inductor_exc, "InductorError"), (inductor_exc, "CppCompileError")]
    return tuple(getattr(module, name) for module, name in names if hasattr(module, name))


def _run(loop: Callable, *args, **flags) -> Tensor | None:
    """Run ``loop`` compiled (module docstring: recompile limit, errors). The two dynamo settings are set for the call
    and restored after it (what ``config.patch`` does, at a fraction of its cost per call)."""
    from torch._dynamo import config as dynamo_config

    saved = dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit
    try:
        dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit = RECOMPILE_LIMIT, True
        return _compiled(loop)(*args, **flags)
    except _compile_errors() as exc:
        if "recompile" in str(exc).lower() and "limit" in str(exc).lower():
            raise BackendUnavailableError(
                f"torch.compile (inductor) compiled {RECOMPILE_LIMIT} variants of a neuron loop in this process (one "
                "per neuron configuration, loop length and call form: many networks or settings in one process); "
                "run further networks in a new process (inductor's disk cache keeps the compiled code), or use "
                "backend='native' (CPU) / 'triton' (CUDA) or 'torch'") from exc
        raise BackendUnavailableError(f"torch.compile (inductor) failed on the neuron loop: {first_line(exc)[:300]}; "
                                      "use backend='native' (CPU) / 'triton' (CUDA) or 'torch'") from exc
    finally:
        dynamo_config.recompile_limit, dynamo_config.fail_on_recompile_limit_hit = saved


def _chunks(T: int) -> list[tuple[int, int]]:
    """Step ranges of one call: STEPS_PER_GRAPH-step graphs, then the rest in powers of two, largest first (T = 13:
    8, 4, 1), so that a configuration compiles at most log2(STEPS_PER_GRAPH) + 1 loop lengths whatever T is."""
    sizes = [STEPS_PER_GRAPH] * (T // STEPS_PER_GRAPH)
    rest = T % STEPS_PER_GRAPH
    sizes += [1 << i for i in reversed(range(rest.bit_length())) if rest >> i & 1]
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return list(zip(bounds, bounds[1:]))


def _carry(chunks: list[tuple[int, int]], state_in: list[Tensor | None], state_out: list[Tensor | None],
           make: Callable[[], list[Tensor | None]]):
    """(steps, state read, state written) per chunk: the caller's state in the first chunk and its output buffers in
    the last; in between two sets of scratch buffers in turn (never one tensor as input and output of a graph, which
    would compile an aliased variant)."""
    scratch = [make(), make()] if len(chunks) > 1 else []
    for j, chunk in enumerate(chunks):
        read = state_in if j == 0 else scratch[(j - 1) % 2]
        write = state_out if j == len(chunks) - 1 else scratch[j % 2]
        yield chunk, read, write


# ---------------------------------------------------------------------------------------------------------------------
# Launchers (common.RateLaunch / DiffLaunch / PairLaunch): a call in one graph returns the graph's own output
# ---------------------------------------------------------------------------------------------------------------------


def _step_counter(t0: int, device: torch.device) -> Tensor:
    return torch.tensor(float(t0), dtype=torch.float32, device=device)


def _run_chunks(loop: Callable, x: Tensor, out: Tensor, tables: Sequence[Table], state_in: list[Tensor | None],
                state_out: list[Tensor | None], scratch: list[bool], per_chunk: Callable[[int, int], tuple],
                lead: tuple[int, ...] = (), **flags) -> Tensor | None:
    """Run ``loop`` over the graphs of a call (:func:`_chunks`): x [T, N] and ``out`` viewed as [T, outer, inner],
    the tables as rows (:func:`table_views`), the state tensors ([*lead, N]: [N], or [4, N] for a pair) viewed to
    match and carried between graphs in scratch buffers (``scratch``: which state tensors exist); ``per_chunk(s, e)``
    gives the arguments that follow the state for steps s … e−1. Returns the graph's own output [T, N] when the call
    fits one graph, else None (written into ``out``)."""
    T, n = x.shape
    dims, views = table_views(n, tables)

    def shaped(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.view(*lead, *dims)

    xv, ov = x.view(T, *dims), out.view(T, *dims)

    def make() -> list[Tensor | None]:
        return [torch.empty(*lead, *dims, dtype=torch.float32, device=x.device) if need else None for need in scratch]

    chunks = _chunks(T)
    for (s, e), read, write in _carry(chunks, [shaped(t) for t in state_in], [shaped(t) for t in state_out], make):
        own = _run(loop, xv[s:e], None if len(chunks) == 1 else ov[s:e], *views, *read, *write, *per_chunk(s, e),
                   **flags)
    return None if own is None else own.view(T, n)


def _launch_rate(x: Tensor, out: Tensor, th: Table, m_in, c_in, m_out, c_out, *, kind: str, n_levels: int,
                 signed: bool, need_c: bool, events: Tensor | None = None) -> Tensor | None:
    return _run_chunks(_rate_loop, x, out, [th], [m_in, c_in], [m_out, c_out], [True, need_c],
                       lambda s, e: (None if events is None else events[s:e],),
                       kind=kind, n_levels=n_levels, signed=signed, need_c=need_c)


def _launch_diff(x: Tensor, out: Tensor, th: Table, b: Table, r_in_in, r_out_in, r_in_out, r_out_out, *, t0: int,
                 kind: str, n_levels: int, relu_constrained: bool, events: Tensor | None = None) -> Tensor | None:
    return _run_chunks(_diff_loop, x, out, [th, b], [r_in_in, r_out_in], [r_in_out, r_out_out], [True, True],
                       lambda s, e: (_step_counter(t0 + s, x.device), None if events is None else events[s:e]),
                       kind=kind, n_levels=n_levels, relu_constrained=relu_constrained)


def _launch_pair(x: Tensor, out: Tensor, tables: tuple[Table, Table, Table, Table], state_in, state_out, *,
                 ceiling: float, diff: bool, kind: str, n_levels: int, signed: bool, need_c: bool, t0: int,
                 events: Tensor | None = None) -> Tensor | None:
    return _run_chunks(_pair_loop, x, out, list(tables), [state_in], [state_out], [True],
                       lambda s, e: (_step_counter(t0 + s, x.device), None if events is None else events[:, s:e]),
                       lead=(4,), ceiling=float(ceiling), diff=diff, kind=kind, n_levels=n_levels, signed=signed,
                       need_c=need_c)


#: The public wrappers (``rate_neuron_run``, ``diff_neuron_run``, ``bounded_relu_pair_run``, the four
#: ``*_multistep`` twins) of the compiled loops. fp16/bf16 inputs are converted to fp32 (exact, ``common.py``).
KERNELS = NeuronKernels("inductor", _launch_rate, _launch_diff, kernel_dtypes=(torch.float32,),
                        check_device=_check_device, counts_events=True, launch_pair=_launch_pair)
