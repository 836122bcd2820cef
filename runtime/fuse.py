"""Fusion of decomposed bounded ReLUs into one stateful unit per site pair (``compile(..., fuse=True)``).

Conversion rewrites every bounded ReLU ``min(max(x, 0), a)`` (ReLU6, Hardtanh(0, a), clamp(0, a)) as two ReLU sites
joined by two subtractions (``convert/passes/normalize.py``, ``decompose_bounded_relu``)::

    r = lo(x); h = hi(r - a); y = r - h

In the SNN both ReLUs are spiking neurons, and the four operations each make a full pass over a ``[T·B, ...]``
tensor. On models with few MACs per activation (MobileNet: depthwise convolutions) these passes cost as much as the
convolutions. :func:`fuse_bounded_relu_pairs` replaces the four graph nodes by one :class:`BoundedReLUPair` module
that runs them element by element, in the same order and precision, so the outputs are bit-identical:

- kernel backends: one kernel call runs both neurons and both subtractions per element and step and counts both
  neurons' events: the native C kernel (``snn_pair_run`` in ``runtime/kernels/native_neurons.c``; fp32) and the
  Triton kernel (``_bounded_relu_pair_fwd_kernel`` in ``runtime/kernels/neurons.py``; fp32, fp16 and bf16, with the
  graph's roundings to the dtype: r − a and r − h are computed in fp32 and rounded once, as torch does);
- torch backend: the neurons' fast path (``convert/coding/fastpath.py``) runs chunk by chunk of the batch, all T
  steps of a chunk at a time, with both neurons' state and the intermediate values in cache;
- otherwise (single-step mode on the torch backend, autograd, a neuron the fast path cannot run, a dtype the pair
  kernel does not read, a bound not exact in fp16/bf16: ``pair_ceiling_exact``): the members' own calls and the two
  subtractions, as in the unfused graph.

In single-step mode the kernel path carries both neurons' state itself (one T = 1 kernel call per step).

The two neurons stay the network's neurons (``snn.neurons()``, the ReLU sites of thresholds and reports); the pair
holds them as submodules and reports each one's events per step (``count_events`` / ``last_events``), which the
evaluation's event counter credits to the two site names. ``snnconvert.runtime.compile`` fuses fp32 networks on
every backend and fp16/bf16 networks on the Triton backend: the torch backend's fast path and the native kernel are
fp32 only, so in low precision they would only compose the members' calls.
"""
from __future__ import annotations

import logging
import math
import operator

import torch
import torch.fx as fx
from torch import Tensor

from snnconvert.convert.coding.fastpath import (
    FastBuffers,
    batch_chunks,
    fast_diff_step,
    fast_rate_step,
)
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.coding.rules import diff_init, prepare_bias, prepare_input, rate_init
from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.snn import SpikingNetwork
from snnconvert.runtime.kernels.common import NeuronKernels, PairState, pair_ceiling_exact

logger = logging.getLogger(__name__)

__all__ = ["BoundedReLUPair", "fuse_bounded_relu_pairs", "fused_pairs"]

#: The neuron fields both members of a pair must share.
_SHARED_FIELDS = ("coding", "kind", "n_levels", "signed", "relu_constrained")


class BoundedReLUPair(StepModule):
    """``y = r − hi(r − ceiling)`` with ``r = lo(x)`` as one stateful unit (module docstring).

    Args:
        lo, hi: the two spiking neurons (same class, coding, kind, n, flags); they stay registered under their site
            names in the network too.
        ceiling: the bound a > 0.
        site_names: the site names of lo and hi (the event counter credits their counts to them).
    """

    #: the pair counts its members' events itself when ``count_events`` is set (every backend)
    counts_events = True

    def __init__(self, lo: SpikingNeuron, hi: SpikingNeuron, ceiling: float, site_names: tuple[str, str]) -> None:
        super().__init__()
        self.lo = lo
        self.hi = hi
        self.ceiling = float(ceiling)
        self.site_names = tuple(site_names)
        self.count_events = False
        #: after a counted call: int64 [T] (multi-step) or [1] (single step) per site name
        self.last_events: dict[str, Tensor] | None = None
        self._state: PairState | None = None  # both neurons' carried state (kernel path, single-step mode)

    def extra_repr(self) -> str:
        return f"ceiling={self.ceiling}, sites={self.site_names}"

    def site_label(self) -> str:
        return " + ".join(self.site_names)

    # -- step modes ---------------------------------------------------------------------------------------------------

    def capture_input(self, x: Tensor) -> Tensor:
        r = self.lo.capture_input(x)
        return r - self.hi.capture_input(r - self.ceiling)

    def analog_forward(self, x: Tensor) -> Tensor:
        """The bounded ReLU the pair approximates, r − hi(r − a) with r = lo(x), each member analog."""
        r = self.lo.analog_forward(x)
        return r - self.hi.analog_forward(r - self.ceiling)

    def multistep(self, x_seq: Tensor) -> Tensor:
        events = self._new_events(x_seq.shape[0], x_seq.device)
        kernels = self._kernels(x_seq)
        if kernels is not None:
            out = self._kernel_run(kernels, x_seq, events)[0]
        else:
            out = self._torch_multistep(x_seq, events)
            if out is None:
                out = self._composed(x_seq, events, self.lo.multistep, self.hi.multistep)
        self._set_events(events)
        return out

    def single_step(self, x_t: Tensor) -> Tensor:
        events = self._new_events(1, x_t.device)
        kernels = self._kernels(x_t)
        if kernels is not None:  # one T = 1 kernel call on the pair's own carried state
            out, self._state = self._kernel_run(kernels, x_t.unsqueeze(0), events, self._state, store=True)
            out = out[0]
        else:
            out = self._composed(x_t.unsqueeze(0), events, lambda x: self.lo.single_step(x[0]).unsqueeze(0),
                                 lambda x: self.hi.single_step(x[0]).unsqueeze(0))[0]
        self._set_events(events)
        return out

    def reset(self) -> None:
        self.lo.reset()
        self.hi.reset()
        self.last_events = None
        self._state = None

    # -- implementations ----------------------------------------------------------------------------------------------

    def _kernels(self, x: Tensor) -> NeuronKernels | None:
        """The members' kernel wrappers when they run in kernels (``runtime/lower.py``) whose pair kernel reads x's
        dtype; None otherwise (reference neurons, or no pair kernel for this dtype)."""
        kernels_for = getattr(self.lo, "kernels", None)
        if kernels_for is None:
            return None
        kernels = kernels_for(x)  # BackendUnavailableError where the members' kernels cannot run either
        usable = x.dtype in kernels.pair_dtypes and pair_ceiling_exact(self.ceiling, x.dtype)
        return kernels if usable else None

    def _kernel_run(self, kernels: NeuronKernels, x_seq: Tensor, events: Tensor | None,
                    state: PairState | None = None, store: bool = False) -> tuple[Tensor, PairState | None]:
        lo, hi = self.lo, self.hi
        return kernels.bounded_relu_pair_run(
            x_seq, self.ceiling, lo.threshold, hi.threshold, lo.bias, hi.bias, coding=lo.coding, kind=lo.kind,
            n_levels=lo.n_levels, signed=lo.signed, relu_constrained=lo.relu_constrained, state=state,
            store_state=store, in_place=kernels.in_place_state, events=events)

    def _new_events(self, steps: int, device: torch.device) -> Tensor | None:
        """Per-step event counts of lo (row 0) and hi (row 1), on the input's device (no sync per step)."""
        return torch.zeros(2, steps, dtype=torch.int64, device=device) if self.count_events else None

    def _set_events(self, events: Tensor | None) -> None:
        self.last_events = None if events is None else dict(zip(self.site_names, events))

    def _composed(self, x_seq: Tensor, events: Tensor | None, run_lo, run_hi) -> Tensor:
        """The unfused operations on ``[T, ...]`` through the members' own calls; events counted from the members'
        kernels when they count, else from the outputs."""
        members = (self.lo, self.hi)
        kernel_counts = events is not None and all(getattr(m, "counts_events", False) for m in members)
        for m in members:
            if hasattr(m, "count_events"):
                m.count_events = kernel_counts
        try:
            r = run_lo(x_seq)
            h = run_hi(r - self.ceiling)
        finally:
            for m in members:
                if hasattr(m, "count_events"):
                    m.count_events = False
        if events is not None:
            for row, (m, value) in enumerate(zip(members, (r, h))):
                counted = m.last_events if kernel_counts else None
                events[row] += counted if counted is not None else value.reshape(value.shape[0], -1).ne(0).sum(1)
        return r - h

    def _torch_multistep(self, x: Tensor, events: Tensor | None) -> Tensor | None:
        """Both reference neurons' fast paths chunk by chunk of the batch (all T steps of a chunk at a time); None
        when a member is not a reference neuron or its fast path does not apply (the caller composes)."""
        lo, hi = self.lo, self.hi
        if any(getattr(m, "backend", "torch") != "torch" or not m.fast_path for m in (lo, hi)):
            return None
        dtype, _, th_lo = prepare_input(x, lo.threshold)
        th_hi = prepare_input(x, hi.threshold)[2]
        plan_lo, plan_hi = lo._fast_plan(th_lo, x), hi._fast_plan(th_hi, x)
        if plan_lo is None or plan_hi is None or x.dtype != dtype:
            return None
        diff = lo.coding == "differential"
        b_lo = prepare_bias(x, lo._require_bias(), dtype) if diff else None
        b_hi = prepare_bias(x, hi._require_bias(), dtype) if diff else None
        consts = plan_lo.consts + plan_hi.consts + ([b_lo, b_hi] if diff else [])
        flags = dict(kind=lo.kind, signed=lo.signed, relu_constrained=lo.relu_constrained)
        out = torch.empty_like(x)
        ceiling = self.ceiling
        buf = None
        # chunks of the neurons' own size (FAST_CHUNK_ELEMENTS; on fmnist-mobilenet, 2 threads, 2^17 to 2^18 is also
        # best for a pair, 2^16 and unchunked up to 1.4x slower)
        for sl in batch_chunks(x, consts):
            xc, oc = x[:, sl], out[:, sl]
            shape = xc.shape[1:]
            if buf is None or buf.m.shape != shape:
                buf = FastBuffers(shape, dtype, x.device, plan_lo)  # scratch only: shared (same flags and layout)
                r, h = (torch.empty(shape, dtype=dtype, device=x.device) for _ in range(2))
            if diff:
                s_lo, s_hi = diff_init(shape, b_lo), diff_init(shape, b_hi)
            else:
                s_lo, s_hi = rate_init(shape, th_lo, **flags), rate_init(shape, th_hi, **flags)
            for t in range(xc.shape[0]):
                if diff:
                    fast_diff_step(xc[t], t + 1, *s_lo, b_lo, plan_lo, r, buf)
                    torch.sub(r, ceiling, out=h)  # h holds r − a until hi overwrites it with its output
                    fast_diff_step(h, t + 1, *s_hi, b_hi, plan_hi, h, buf)
                else:
                    fast_rate_step(xc[t], *s_lo, plan_lo, r, buf)
                    torch.sub(r, ceiling, out=h)
                    fast_rate_step(h, *s_hi, plan_hi, h, buf)
                torch.sub(r, h, out=oc[t])
                if events is not None:
                    events[0, t] += torch.count_nonzero(r)
                    events[1, t] += torch.count_nonzero(h)
        return out


def _float_constant(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _match(gm: fx.GraphModule, node: fx.Node, neurons: set[str], calls: dict[str, int]):
    """``(hi node, shift node, out node, ceiling)`` when ``node`` is the lower neuron of ``r = lo(x);
    y = r − hi(r − a)`` and nothing else reads r, r − a or hi's output; else None."""
    if node.op != "call_module" or node.target not in neurons or len(node.args) != 1 or node.kwargs:
        return None
    users = list(node.users)
    if len(users) != 2:
        return None
    for shift in users:
        ceiling = _float_constant(shift.args[1]) if len(shift.args) == 2 else None
        if (shift.op != "call_function" or shift.target is not operator.sub or shift.args[0] is not node
                or shift.kwargs or ceiling is None or len(shift.users) != 1):
            continue
        hi = next(iter(shift.users))
        if hi.op != "call_module" or hi.target not in neurons or hi.args != (shift,) or hi.kwargs \
                or len(hi.users) != 1:
            continue
        out = next(iter(hi.users))
        if (out.op == "call_function" and out.target is operator.sub and out.args == (node, hi) and not out.kwargs
                and set(users) == {shift, out} and calls[node.target] == 1 and calls[hi.target] == 1):
            return hi, shift, out, ceiling
    return None


def fuse_bounded_relu_pairs(snn: SpikingNetwork) -> int:
    """Replace every decomposed bounded ReLU of ``snn.gm`` by a :class:`BoundedReLUPair`, in place.

    A pair is fused when both neurons are :class:`SpikingNeuron` of the same class and configuration, each called
    once in the graph, and no other node reads the intermediate values; anything else is left as it is. The pair
    module is added to ``snn.unit_names`` (so step modes, capture and reset reach it); the neurons stay registered
    under their site names.

    Returns:
        The number of pairs fused.
    """
    gm = snn.gm
    neurons = set(snn.neuron_names)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(gm.graph.nodes):
        found = _match(gm, node, neurons, calls)
        if found is None:
            continue
        hi_node, shift, out, ceiling = found
        lo, hi = gm.get_submodule(node.target), gm.get_submodule(hi_node.target)
        if type(lo) is not type(hi) or not isinstance(lo, SpikingNeuron) \
                or any(getattr(lo, f) != getattr(hi, f) for f in _SHARED_FIELDS):
            continue
        name = f"{node.target}_pair"
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, BoundedReLUPair(lo, hi, ceiling, (node.target, hi_node.target)))
        with gm.graph.inserting_before(node):
            pair = gm.graph.call_module(name, node.args)
        pair.meta = dict(out.meta)
        out.replace_all_uses_with(pair)
        for dead in (out, hi_node, shift, node):
            gm.graph.erase_node(dead)
        snn.unit_names.append(name)
        fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
        snn.invalidate()
        logger.info("fused %d bounded-ReLU neuron pair(s) into single units", fused)
    return fused


def fused_pairs(snn: SpikingNetwork) -> int:
    """The number of fused bounded-ReLU pairs in ``snn``."""
    return sum(isinstance(m, BoundedReLUPair) for _, m in snn.stateful())
