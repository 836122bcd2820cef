"""What the fused neuron kernels share, whatever runs them: argument checks, parameter tables, carried state and
the public launch wrappers.

Three implementations plug in here: the Triton kernels (``neurons.py``; CUDA, or CPU under the interpreter), the
native C kernels (``native.py``; CPU) and the reference step loops compiled by ``torch.compile`` (``inductor.py``).
Each provides two *launchers* that run T steps of a rate or a differential neuron on prepared arguments;
:class:`NeuronKernels` wraps them into the public functions (``rate_neuron_run``, ``diff_neuron_run`` and the four
twins of the ``*_multistep_ref`` references), so argument checking, the state protocol and the T = 0 / N = 0 paths
are the same for all. This module imports neither triton nor a compiler.

Per-element tables. θ and the differential bias b are passed as a compact fp32 table ``[K]``; element ``e`` of the
flattened per-step shape S reads ``table[(e // INNER) % K]``. A scalar gives K = 1; a per-channel θ ``[C, 1, 1]`` on
S = ``[B, C, H, W]`` gives K = C, INNER = H·W; a captured bias ``[1, C, H, W]`` gives K = C·H·W, INNER = 1. Any other
broadcast pattern is expanded to the full S (K = N): correct, just one more read of N floats.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from snnconvert.convert.coding.rules import check_broadcast, check_levels
from snnconvert.convert.errors import ConfigError

__all__ = ["SUPPORTED_DTYPES", "Table", "RateState", "DiffState", "PairState", "RateLaunch", "DiffLaunch",
           "PairLaunch", "NeuronKernels", "make_table", "expand_table", "pair_ceiling_exact"]

#: Input dtypes of the public wrappers (state fp32, output in the input dtype).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Table(NamedTuple):
    """Compact per-element parameter: element e of the per-step shape reads ``values[(e // inner) % k]``."""

    values: Tensor  # [k] fp32, contiguous
    inner: int
    k: int


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


@dataclass
class PairState:
    """Both neurons' state of a fused bounded-ReLU pair (``runtime/fuse.py``) and the number of steps done.

    ``rows`` [4, N] fp32: lo's m (rate) or R_in (differential), lo's C or R_out, then the same two rows of hi.
    """

    rows: Tensor  # [4, N] fp32
    t: int


class RateLaunch(Protocol):
    def __call__(self, x: Tensor, out: Tensor, th: Table, m_in: Tensor | None, c_in: Tensor | None,
                 m_out: Tensor | None, c_out: Tensor | None, *, kind: str, n_levels: int, signed: bool,
                 need_c: bool, events: Tensor | None = None) -> Tensor | None:
        """Run T = x.shape[0] steps on ``x`` [T, N] into ``out`` [T, N]; state tensors [N] fp32 or None (not read /
        not written); ``events`` [T] int64 or None: add each step's number of non-zero outputs. Returns None, or a
        [T, N] tensor of its own holding the outputs (then ``out`` is not written; see :class:`NeuronKernels`)."""


class DiffLaunch(Protocol):
    def __call__(self, x: Tensor, out: Tensor, th: Table, b: Table, r_in_in: Tensor | None,
                 r_out_in: Tensor | None, r_in_out: Tensor | None, r_out_out: Tensor | None, *, t0: int, kind: str,
                 n_levels: int, relu_constrained: bool, events: Tensor | None = None) -> Tensor | None:
        """Run steps t0+1 … t0+T of ``x`` [T, N] into ``out`` [T, N]; state tensors [N] fp32 or None; ``events`` and
        the result as for :class:`RateLaunch`."""


class PairLaunch(Protocol):
    def __call__(self, x: Tensor, out: Tensor, tables: tuple[Table, Table, Table, Table], state_in: Tensor | None,
                 state_out: Tensor | None, *, ceiling: float, diff: bool, kind: str, n_levels: int, signed: bool,
                 need_c: bool, t0: int, events: Tensor | None = None) -> Tensor | None:
        """Run steps t0+1 … t0+T of a bounded-ReLU pair on ``x`` [T, N] into ``out`` [T, N] (x's dtype); tables
        θ_lo, b_lo, θ_hi, b_hi; state [4, N] fp32 or None; ``events`` [2, T] int64 or None (lo's and hi's counts);
        the result as for :class:`RateLaunch`."""


@functools.cache  # asked on every pair call (each step in single-step mode)
def pair_ceiling_exact(ceiling: float, dtype: torch.dtype) -> bool:
    """Whether the pair kernels reproduce the graph's ``r - ceiling`` in ``dtype``: always in fp32; in fp16/bf16 only
    when the bound is exact in the dtype (torch on the CPU rounds a Python scalar to the tensor's dtype before the
    subtraction, on CUDA to fp32; for an exact bound, as 6 of ReLU6, both are the same number)."""
    value = torch.tensor(float(ceiling), dtype=torch.float32)
    return dtype == torch.float32 or bool(value.to(dtype).float() == value)


def make_table(name: str, value, step_shape: torch.Size, device: torch.device) -> Table:
    """Compact fp32 table of a per-element parameter (module header). Raises ConfigError if ``value`` does not
    broadcast to S."""
    v = torch.as_tensor(value, dtype=torch.float32, device=device)
    check_broadcast(name, v.shape, step_shape)
    shape = [1] * (len(step_shape) - v.dim()) + list(v.shape)
    varying = [d for d, n in enumerate(shape) if n > 1]
    if not varying:
        return Table(v.reshape(1).contiguous(), 1, 1)
    lo, hi = varying[0], varying[-1] + 1
    if all(shape[d] == step_shape[d] for d in range(lo, hi)):
        k = 1
        for d in range(lo, hi):
            k *= step_shape[d]
        inner = 1
        for d in range(hi, len(step_shape)):
            inner *= step_shape[d]
        return Table(v.reshape(-1).contiguous(), inner, k)
    full = v.expand(step_shape).reshape(-1).contiguous()
    return Table(full, 1, full.numel())


def expand_table(table: Table, n: int) -> Tensor:
    """The table's values for the element indices 0 … n−1, a new [n] tensor (the full per-element values for n = N;
    one period of them for n a multiple of ``k·inner``)."""
    period = table.k * table.inner
    if n % period == 0:
        return table.values.repeat_interleave(table.inner).repeat(n // period)
    idx = torch.arange(n, device=table.values.device)
    return table.values[(idx // table.inner) % table.k]


def _state_buffer(t: Tensor | None, n: int, device: torch.device, name: str) -> Tensor:
    if t is None:
        raise ConfigError(f"the carried state has no {name}; start from state=None (reset the neuron)")
    t = t.reshape(-1)
    if t.numel() != n or t.dtype != torch.float32:
        raise ConfigError(f"the carried state {name} has {t.numel()} {t.dtype} element(s) but the input has {n} per "
                          "step (fp32 state expected); reset the neuron when the input shape changes")
    return t.to(device).contiguous()


def _state_outputs(store: bool, carried: list[Tensor | None] | None, needed: list[bool], n: int,
                   device: torch.device) -> list[Tensor | None]:
    """Where the launch writes the final state: None where it is not stored or not needed; the ``carried`` buffers
    themselves when the state is updated in place; new [n] fp32 buffers otherwise."""
    if not store:
        return [None] * len(needed)
    if carried is not None:
        return [buf if need else None for buf, need in zip(carried, needed)]
    return [torch.empty(n, dtype=torch.float32, device=device) if need else None for need in needed]


class NeuronKernels:
    """The public launch wrappers of one kernel implementation.

    Args:
        name: the backend's name, used in messages.
        launch_rate / launch_diff: the implementation's launchers (:class:`RateLaunch`, :class:`DiffLaunch`).
        kernel_dtypes: input dtypes the launchers read directly; other supported dtypes are converted to fp32 before
            the launch and the output back to the input dtype (exact: every emitted value ±θ·2^-i of a threshold
            rounded to the dtype is representable in it).
        check_device: raises if the launchers cannot run on a tensor's device (None: any device).
        in_place_state: the launchers may write the final state over the state they read (each element's state is
            read before it is written). Then ``in_place=True`` reuses a carried state's buffers (single-step
            streaming without a new allocation per step); the Triton launchers need separate buffers (an autotuning
            re-run must see the same input state).
        counts_events: the launchers accept ``events`` (per-step counts of non-zero outputs, computed in the
            kernel); the wrappers' ``events=`` argument needs it.
        launch_pair: the launcher of the fused bounded-ReLU pair kernel (:class:`PairLaunch`), or None. It reads the
            ``kernel_dtypes`` directly and reproduces the unfused graph's roundings in them (no conversion).

    A launcher may return a [T, N] output tensor of its own instead of writing into ``out`` (the compiled inductor
    loops: their own output buffer saves a copy); the wrappers then return that tensor.
    """

    def __init__(self, name: str, launch_rate: RateLaunch, launch_diff: DiffLaunch,
                 kernel_dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES,
                 check_device: Callable[[torch.device], None] | None = None, in_place_state: bool = False,
                 counts_events: bool = False, launch_pair: PairLaunch | None = None) -> None:
        self.name = name
        self.in_place_state = in_place_state
        self.counts_events = counts_events
        self._launch_rate = launch_rate
        self._launch_diff = launch_diff
        self._launch_pair = launch_pair
        self._kernel_dtypes = kernel_dtypes
        self._check_device = check_device

    @property
    def pair_dtypes(self) -> tuple[torch.dtype, ...]:
        """Input dtypes :meth:`bounded_relu_pair_run` takes (none without a pair kernel)."""
        return self._kernel_dtypes if self._launch_pair is not None else ()

    # -- argument handling shared by both codings ---------------------------------------------------------------------

    def _prepare(self, x: Tensor, threshold, kind: str, n_levels: int) -> tuple[Tensor, torch.Size, int, Table]:
        if not isinstance(x, Tensor):
            raise ConfigError(f"x must be a torch.Tensor of shape [T, *S], got {type(x).__name__}")
        if x.dim() < 1:
            raise ConfigError("x must have shape [T, *S], got a 0-dim tensor")
        if x.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"the {self.name} neuron kernels take fp32, fp16 or bf16 inputs, got {x.dtype}; "
                              "use the torch reference (backend='torch') for other dtypes")
        if x.requires_grad and torch.is_grad_enabled():
            raise ConfigError(f"the {self.name} neuron kernels are inference-only (no backward pass), but the input "
                              "requires grad; run under torch.no_grad() or use backend='torch'")
        if kind not in ("if", "mt"):
            raise ConfigError(f"kind must be 'if' or 'mt', got {kind!r}")
        check_levels(kind, n_levels)  # the reference neurons' rule and message
        if self._check_device is not None:
            self._check_device(x.device)
        step_shape = x.shape[1:]
        return x.contiguous(), step_shape, step_shape.numel(), make_table("threshold", threshold, step_shape,
                                                                          x.device)

    def _kernel_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(kernel input, kernel output) for ``x`` [T, *S]: viewed as [T, N], converted to fp32 if the launchers do
        not read x's dtype."""
        xk = x.reshape(x.shape[0], -1)
        if x.dtype not in self._kernel_dtypes:
            xk = xk.float()
        return xk, torch.empty_like(xk)

    def _check_options(self, in_place: bool, events: Tensor | None, shape: tuple[int, ...],
                       device: torch.device) -> dict:
        """Validate ``in_place`` and ``events`` (int64 of ``shape`` on ``device``); the launcher keyword arguments for
        ``events``."""
        if in_place and not self.in_place_state:
            raise ConfigError(f"the {self.name} neuron kernels cannot update a state in place; pass in_place=False")
        if events is None:
            return {}
        if not self.counts_events:
            raise ConfigError(f"the {self.name} neuron kernels do not count events; pass events=None")
        if events.dtype != torch.int64 or events.shape != shape or not events.is_contiguous() \
                or events.device != device:
            raise ConfigError(f"events must be a contiguous int64 tensor of shape {list(shape)} on {device}, got "
                              f"{'' if events.is_contiguous() else 'a non-contiguous '}{events.dtype} "
                              f"{tuple(events.shape)} on {events.device}")
        return {"events": events}

    @staticmethod
    def _finish(out: Tensor, x: Tensor) -> Tensor:
        return out.reshape(x.shape).to(x.dtype)

    # -- public wrappers ----------------------------------------------------------------------------------------------

    def rate_neuron_run(
        self,
        x: Tensor,
        threshold: Tensor | float,
        *,
        kind: str,
        n_levels: int = 1,
        signed: bool = False,
        relu_constrained: bool = True,
        state: RateState | None = None,
        store_state: bool = False,
        in_place: bool = False,
        events: Tensor | None = None,
    ) -> tuple[Tensor, RateState | None]:
        """Run a rate neuron (IF or MT) over the T steps of ``x [T, *S]`` from ``state`` (None: the initial state).

        Returns:
            The emitted values ``[T, *S]`` in the dtype of ``x`` and, if ``store_state``, the state after the last
            step (new buffers, ``state`` unchanged; with ``in_place`` the buffers of ``state`` when it has them),
            else None. ``events`` (int64 [T], kernels with ``counts_events``): each step's number of non-zero
            emitted values is added to it.

        Raises:
            ConfigError: a bad kind, dtype, shape, ``n_levels``, state or ``events``, or ``in_place`` / ``events``
                on kernels that do not support them.
        """
        x, _, n, th = self._prepare(x, threshold, kind, n_levels)
        extra = self._check_options(in_place, events, (x.shape[0],), x.device)
        need_c = bool(signed and relu_constrained)
        T = x.shape[0]
        if T == 0 or n == 0:  # nothing to launch; the state passes through unchanged
            out = torch.empty_like(x)
            if not store_state:
                return out, None
            if state is not None:
                c = _state_buffer(state.c, n, x.device, "c").clone() if need_c else None
                return out, RateState(_state_buffer(state.m, n, x.device, "m").clone(), c)
            m0 = expand_table(th, n) * 0.5 if kind == "if" else torch.zeros(n, device=x.device)
            return out, RateState(m0, torch.zeros(n, device=x.device) if need_c else None)
        m_in = c_in = None
        if state is not None:
            m_in = _state_buffer(state.m, n, x.device, "m")
            if need_c:
                c_in = _state_buffer(state.c, n, x.device, "c")
        m_out, c_out = _state_outputs(store_state, [m_in, c_in] if in_place and state is not None else None,
                                      [True, need_c], n, x.device)
        xk, out = self._kernel_io(x)
        own = self._launch_rate(xk, out, th, m_in, c_in, m_out, c_out, kind=kind, n_levels=n_levels,
                                signed=bool(signed), need_c=need_c, **extra)
        return self._finish(out if own is None else own, x), RateState(m_out, c_out) if store_state else None

    def diff_neuron_run(
        self,
        x: Tensor,
        threshold: Tensor | float,
        bias: Tensor | float | None,
        *,
        kind: str,
        n_levels: int = 1,
        relu_constrained: bool = True,
        state: DiffState | None = None,
        store_state: bool = False,
        in_place: bool = False,
        events: Tensor | None = None,
    ) -> tuple[Tensor, DiffState | None]:
        """Run a differential neuron (MT or IF, always signed) over the T real steps of ``x [T, *S]``.

        With ``state`` None the neuron starts from R_in = b, R_out = 0 at step t = 1; otherwise it continues from
        ``state`` at step ``state.t + 1``.

        Returns:
            The emitted differences ``[T, *S]`` in the dtype of ``x`` and, if ``store_state``, the state after the
            last step (new buffers; with ``in_place`` the buffers of ``state`` when it has them), else None.
            ``events`` as for :meth:`rate_neuron_run`.

        Raises:
            ConfigError: as for :meth:`rate_neuron_run`.
        """
        x, step_shape, n, th = self._prepare(x, threshold, kind, n_levels)
        extra = self._check_options(in_place, events, (x.shape[0],), x.device)
        b = make_table("bias", 0.0 if bias is None else bias, step_shape, x.device)
        t0 = 0 if state is None else int(state.t)
        T = x.shape[0]
        if T == 0 or n == 0:  # nothing to launch; the state passes through unchanged
            out = torch.empty_like(x)
            if not store_state:
                return out, None
            if state is not None:
                return out, DiffState(_state_buffer(state.r_in, n, x.device, "r_in").clone(),
                                      _state_buffer(state.r_out, n, x.device, "r_out").clone(), t0 + T)
            return out, DiffState(expand_table(b, n), torch.zeros(n, device=x.device), T)
        r_in_in = r_out_in = None
        if state is not None:
            r_in_in = _state_buffer(state.r_in, n, x.device, "r_in")
            r_out_in = _state_buffer(state.r_out, n, x.device, "r_out")
        r_in_out, r_out_out = _state_outputs(
            store_state, [r_in_in, r_out_in] if in_place and state is not None else None, [True, True], n, x.device)
        xk, out = self._kernel_io(x)
        own = self._launch_diff(xk, out, th, b, r_in_in, r_out_in, r_in_out, r_out_out, t0=t0, kind=kind,
                                n_levels=n_levels, relu_constrained=bool(relu_constrained), **extra)
        out = out if own is None else own
        return self._finish(out, x), DiffState(r_in_out, r_out_out, t0 + T) if store_state else None

    def bounded_relu_pair_run(
        self,
        x: Tensor,
        ceiling: float,
        th_lo: Tensor | float,
        th_hi: Tensor | float,
        b_lo: Tensor | float | None = None,
        b_hi: Tensor | float | None = None,
        *,
        coding: str,
        kind: str,
        n_levels: int = 1,
        signed: bool = False,
        relu_constrained: bool = True,
        state: PairState | None = None,
        store_state: bool = False,
        in_place: bool = False,
        events: Tensor | None = None,
    ) -> tuple[Tensor, PairState | None]:
        """A decomposed bounded ReLU ``y = r − hi(r − ceiling)``, ``r = lo(x)``, over the T steps of ``x [T, *S]``
        in one kernel call: the unfused graph's four operations per element, in its order and in x's dtype, so the
        result is bit-identical to running them one by one (``runtime/fuse.py``).

        Args:
            x: input ``[T, *S]`` in one of the kernels' dtypes (``kernel_dtypes``; not converted).
            ceiling: the bound a of the graph's ``r - a`` (in fp16/bf16 it must be exact in the dtype:
                :func:`pair_ceiling_exact`).
            th_lo, th_hi: the two neurons' thresholds (broadcastable to S).
            b_lo, b_hi: their captured biases (differential coding; ignored in rate coding).
            coding, kind, n_levels, signed, relu_constrained: shared by both neurons (``SpikingNeuron``'s fields;
                differential neurons are always signed).
            state: None (the initial state, steps 1 … T) or the state after earlier calls (steps state.t+1 …).
            store_state / in_place: return the state after the last step (new buffers, or with ``in_place`` on
                kernels with ``in_place_state`` the buffers of ``state``).
            events: int64 ``[2, T]`` or None: each step's non-zero emitted values of lo (row 0) and hi (row 1) are
                added to it.

        Returns:
            y ``[T, *S]`` in x's dtype, and the :class:`PairState` after the last step if ``store_state``.

        Raises:
            ConfigError: bad arguments (as for :meth:`rate_neuron_run`), a dtype the pair kernel does not read, or
                kernels without a pair kernel.
        """
        if self._launch_pair is None:
            raise ConfigError(f"the {self.name} kernels have no bounded-ReLU pair kernel; run the two neurons")
        if coding not in ("rate", "differential"):
            raise ConfigError(f"coding must be 'rate' or 'differential', got {coding!r}")
        x, step_shape, n, th_lo_tab = self._prepare(x, th_lo, kind, n_levels)
        if x.dtype not in self._kernel_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self._kernel_dtypes)
            raise ConfigError(f"the {self.name} bounded-ReLU pair kernel takes {names} inputs, got {x.dtype}; run the "
                              "two neurons instead (compile(..., fuse=False))")
        if not pair_ceiling_exact(ceiling, x.dtype):
            raise ConfigError(f"the bound {ceiling!r} is not exact in {x.dtype}: torch rounds it differently on CPU "
                              "and CUDA, so the pair kernel cannot reproduce r − a; run the two neurons instead")
        T = x.shape[0]
        extra = self._check_options(in_place, events, (2, T), x.device)
        diff = coding == "differential"
        sgn = True if diff else bool(signed)
        tables = (th_lo_tab, *(make_table(name, value, step_shape, x.device) for name, value in
                               (("bias", 0.0 if b_lo is None else b_lo), ("threshold", th_hi),
                                ("bias", 0.0 if b_hi is None else b_hi))))
        state_in = None
        if state is not None:
            rows = state.rows
            if rows.dtype != torch.float32 or rows.shape != (4, n) or not rows.is_contiguous() \
                    or rows.device != x.device:
                raise ConfigError(f"the carried pair state must be a contiguous fp32 tensor [4, {n}] on {x.device}, "
                                  f"got {rows.dtype} {tuple(rows.shape)}; reset the pair when the input shape changes")
            state_in = rows
        t0 = 0 if state is None else int(state.t)
        out = torch.empty_like(x)
        if T == 0 or n == 0:  # nothing to launch; the state passes through unchanged
            if not store_state:
                return out, None
            if state_in is not None:
                return out, PairState(state_in.clone(), t0)
            return out, PairState(self._pair_initial(tables, n, diff=diff, kind=kind), 0)
        if not store_state:
            state_out = None
        elif in_place and state_in is not None:
            state_out = state_in
        else:
            state_out = torch.empty(4, n, dtype=torch.float32, device=x.device)
        own = self._launch_pair(x.reshape(T, n), out.view(T, n), tables, state_in, state_out, ceiling=float(ceiling),
                                diff=diff, kind=kind, n_levels=n_levels, signed=sgn,
                                need_c=sgn and bool(relu_constrained), t0=t0, **extra)
        out = out if own is None else own.view(x.shape)
        return out, PairState(state_out, t0 + T) if store_state else None

    @staticmethod
    def _pair_initial(tables: tuple[Table, ...], n: int, *, diff: bool, kind: str) -> Tensor:
        """The initial pair state rows [4, n]: R_in = b, R_out = 0 (differential); m = θ/2 (IF) or 0, C = 0."""
        th_lo, b_lo, th_hi, b_hi = tables
        rows = torch.zeros(4, n, dtype=torch.float32, device=th_lo.values.device)
        if diff:
            rows[0], rows[2] = expand_table(b_lo, n), expand_table(b_hi, n)
        elif kind == "if":
            rows[0], rows[2] = expand_table(th_lo, n) * 0.5, expand_table(th_hi, n) * 0.5
        return rows

    # -- the twins of the *_multistep_ref references ------------------------------------------------------------------

    def if_rate_multistep(
        self, x: Tensor, threshold: Tensor | float, *, signed: bool = False, relu_constrained: bool = True
    ) -> Tensor:
        """Rate-coded IF neuron over T steps; the kernel twin of ``if_rate_multistep_ref`` (method.md §4.1, §4.2)."""
        return self.rate_neuron_run(x, threshold, kind="if", signed=signed, relu_constrained=relu_constrained)[0]

    def mt_rate_multistep(
        self, x: Tensor, threshold: Tensor | float, *, n_levels: int, signed: bool = False,
        relu_constrained: bool = True,
    ) -> Tensor:
        """Rate-coded multi-threshold neuron over T steps; the kernel twin of ``mt_rate_multistep_ref`` (§4.5)."""
        return self.rate_neuron_run(x, threshold, kind="mt", n_levels=n_levels, signed=signed,
                                    relu_constrained=relu_constrained)[0]

    def mt_diff_multistep(
        self, x: Tensor, threshold: Tensor | float, bias: Tensor | float | None, *, n_levels: int,
        relu_constrained: bool = True,
    ) -> Tensor:
        """Differential multi-threshold neuron over T real steps; the kernel twin of ``mt_diff_multistep_ref``
        (§4.6, §4.7)."""
        return self.diff_neuron_run(x, threshold, bias, kind="mt", n_levels=n_levels,
                                    relu_constrained=relu_constrained)[0]

    def if_diff_multistep(
        self, x: Tensor, threshold: Tensor | float, bias: Tensor | float | None, *, relu_constrained: bool = True
    ) -> Tensor:
        """Differential IF neuron over T real steps; the kernel twin of ``if_diff_multistep_ref`` (§4.3)."""
        return self.diff_neuron_run(x, threshold, bias, kind="if", relu_constrained=relu_constrained)[0]
