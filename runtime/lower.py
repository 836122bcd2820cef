"""Lowering of a reference SNN to a backend: kernel-backed neurons and the network's compute precision.

:func:`lower_neurons` swaps every :class:`SpikingNeuron` of ``snn.gm`` for a :class:`KernelNeuron` of the chosen
backend, a subclass with the same interface (``threshold`` and ``bias`` buffers, capture mode, step modes ``"m"``
and ``"s"``, ``reset()``) whose time loop runs in one fused kernel per call: :class:`TritonNeuron`
(``runtime/kernels/neurons.py``; CUDA, or CPU under the Triton interpreter), :class:`NativeNeuron`
(``runtime/kernels/native.py``; C with OpenMP, CPU tensors) or :class:`InductorNeuron`
(``runtime/kernels/inductor.py``; the reference step functions compiled by ``torch.compile``, CPU and CUDA tensors).
So ``SpikingNetwork.raw`` / ``forward`` / ``evaluate`` work unchanged in multi- and single-step mode.

Not lowered, on purpose: the stateless layers (convolutions, linear layers, adds) stay torch modules, and the graded
units (:class:`GradedUnit`, e.g. the exact max-pool of spike-driven inputs, method.md §5) stay torch: they apply an
arbitrary ``f`` to running averages and are a small share of the work. A fused bounded-ReLU pair
(:class:`BoundedReLUPair`, ``runtime/fuse.py``) has its two neurons lowered like the others. Any other stateful module
cannot be lowered and raises :class:`UnsupportedOpError` listing every such node; nothing is left silently on the
reference path.

Precision (:func:`set_precision`, every backend). For fp16/bf16 every threshold is rounded once to the dtype,
θ' = θ.to(dtype).float(), and the neuron uses θ' for firing and for the reset. Every emitted value ±θ'·2^-i is
then exactly representable in the dtype (a power-of-two scaling of a representable number, as long as it stays
above the dtype's smallest normal number: checked, with a warning), so the cast of the fp32 neuron output to the
dtype is exact and the neuron state stays fp32. The stateless layers' parameters are cast to the dtype; stateful
units and their submodules keep fp32. Two cast nodes in ``snn.gm``'s graph convert the network input to the dtype
and its output back to fp32, so ``SpikingNetwork.raw`` (which feeds fp32) needs no change and decoding (running
means) is done in fp32.
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch import Tensor, nn

from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.errors import BackendUnavailableError, ConfigError, UnsupportedNode, UnsupportedOpError
from snnconvert.convert.passes.normalize import set_module
from snnconvert.convert.snn import SpikingNetwork
from snnconvert.runtime.fuse import BoundedReLUPair
from snnconvert.runtime.kernels import inductor, load_kernels, native, triton_status
from snnconvert.runtime.kernels.common import NeuronKernels

logger = logging.getLogger(__name__)

__all__ = ["DTYPES", "KERNEL_NEURONS", "KernelNeuron", "TritonNeuron", "NativeNeuron", "InductorNeuron",
           "lower_neurons", "set_precision"]

_CAST_META = "snnconvert_precision_cast"  # node.meta key marking the casts inserted by set_precision

#: Compute dtypes a compiled network can run in.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class KernelNeuron(SpikingNeuron):
    """A :class:`SpikingNeuron` whose multi-step loop and single steps run in fused kernels (one call per layer).

    Same constructor, buffers and step-mode contract as the reference; the arithmetic is the reference's, so the
    outputs are identical (tests/test_kernels.py). In step mode ``"s"`` the kernel is called with T = 1 and the
    state is carried between calls in fp32 buffers (a :class:`RateState` or :class:`DiffState`) until :meth:`reset`.
    Subclasses name their backend and return the kernel wrappers (``runtime/kernels/common.py``) for an input.

    Event counts: when ``count_events`` is set (the evaluation's event counter does it) and the kernels can count
    (``counts_events``), each call leaves the number of non-zero emitted values per step in ``last_events`` (int64
    [T], or [1] per single step), counted in the kernel instead of by another pass over the output.
    """

    backend: str = ""
    #: whether this backend's kernels count events (``count_events`` has an effect)
    counts_events: bool = False

    def __init__(self, threshold: Tensor | float, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self._state = None
        self.count_events = False
        self.last_events: Tensor | None = None

    def kernels(self, x: Tensor) -> NeuronKernels:
        """The kernel wrappers that run on ``x``'s device (BackendUnavailableError if none can)."""
        raise NotImplementedError

    @classmethod
    def from_reference(cls, neuron: SpikingNeuron) -> KernelNeuron:
        """A kernel-backed copy of ``neuron``: threshold, captured bias, parameters and step-mode attributes."""
        new = cls(neuron.threshold, kind=neuron.kind, coding=neuron.coding, n_levels=neuron.n_levels,
                  signed=neuron.signed, relu_constrained=neuron.relu_constrained)
        if neuron.bias is not None:
            new.bias = neuron.bias.detach().clone()
        new.step_mode, new.timesteps, new.capture = neuron.step_mode, neuron.timesteps, neuron.capture
        new.site = getattr(neuron, "site", None)
        new.train(neuron.training)
        return new

    def _call(self, x_seq: Tensor, state, store: bool):
        kernels = self.kernels(x_seq)
        events = None
        if self.count_events and kernels.counts_events:
            events = torch.zeros(x_seq.shape[0], dtype=torch.int64, device=x_seq.device)
        # the carried state is this module's own: kernels that can update it in place do (no allocation per step)
        common = dict(kind=self.kind, n_levels=self.n_levels, relu_constrained=self.relu_constrained, state=state,
                      store_state=store, in_place=kernels.in_place_state, events=events)
        if self.coding == "rate":
            result = kernels.rate_neuron_run(x_seq, self.threshold, signed=self.signed, **common)
        else:
            result = kernels.diff_neuron_run(x_seq, self.threshold, self._require_bias(), **common)
        self.last_events = events
        return result

    def multistep(self, x_seq: Tensor) -> Tensor:
        """Run T steps on a time-major input [T, B, *S] from the initial state (one kernel call)."""
        return self._call(x_seq, None, False)[0]

    def single_step(self, x_t: Tensor) -> Tensor:
        """Run one step on [B, *S] (a T = 1 call that reads and writes the carried state)."""
        out, self._state = self._call(x_t.unsqueeze(0), self._state, True)
        return out[0]

    def reset(self) -> None:
        """Clear the single-step state (threshold and captured bias are kept)."""
        super().reset()
        self._state = None
        self.last_events = None


class TritonNeuron(KernelNeuron):
    """Neurons in the Triton kernels (``runtime/kernels/neurons.py``): CUDA, or CPU under the interpreter."""

    backend = "triton"
    counts_events = True

    def kernels(self, x: Tensor) -> NeuronKernels:
        # a network compiled for CUDA and later moved to the CPU cannot run there without the interpreter
        kernels = load_kernels()
        if x.device.type != "cuda" and not kernels.INTERPRETED:
            raise BackendUnavailableError(triton_status(x.device)[1])
        return kernels.KERNELS


class NativeNeuron(KernelNeuron):
    """Neurons in the native C kernels (``runtime/kernels/native.py``): CPU tensors."""

    backend = "native"
    counts_events = True

    def kernels(self, x: Tensor) -> NeuronKernels:
        return native.KERNELS  # the wrappers reject non-CPU tensors with BackendUnavailableError


class InductorNeuron(KernelNeuron):
    """Neurons whose step loop ``torch.compile`` fuses (``runtime/kernels/inductor.py``): CPU and CUDA tensors."""

    backend = "inductor"
    counts_events = True

    def kernels(self, x: Tensor) -> NeuronKernels:
        return inductor.KERNELS  # the wrappers check the device (BackendUnavailableError with the reason)


#: Neuron class of each kernel backend.
KERNEL_NEURONS: dict[str, type[KernelNeuron]] = {"triton": TritonNeuron, "native": NativeNeuron,
                                                 "inductor": InductorNeuron}


def _unsupported(snn: SpikingNetwork, targets: list[str], backend: str) -> UnsupportedOpError:
    nodes = []
    for target in targets:
        module_type = type(snn.gm.get_submodule(target)).__name__
        users = [n for n in snn.gm.graph.nodes if n.op == "call_module" and n.target == target]
        names = [n.name for n in users] or [target]
        nodes += [UnsupportedNode(name=name, op="call_module", target=target, module_type=module_type)
                  for name in names]
    return UnsupportedOpError(nodes, hint=(
        f"the {backend} backend lowers SpikingNeuron modules (and keeps GradedUnit on torch); "
        "run this network with backend='torch'"))


def lower_neurons(snn: SpikingNetwork, backend: str, dtype: torch.dtype = torch.float32) -> SpikingNetwork:
    """Swap every spiking neuron of ``snn.gm`` for the ``backend``'s :class:`KernelNeuron` and set the compute
    precision, in place.

    Args:
        snn: the network to lower (the caller passes a copy; see ``snnconvert.runtime.compile``).
        backend: ``"triton"``, ``"native"`` or ``"inductor"`` (:data:`KERNEL_NEURONS`).
        dtype: compute dtype, one of :data:`DTYPES` (see :func:`set_precision`).

    Returns:
        ``snn``, lowered.

    Raises:
        UnsupportedOpError: a stateful module is neither a :class:`SpikingNeuron` nor a :class:`GradedUnit` (every
            such node is listed).
        BackendUnavailableError: the backend's kernels cannot be loaded.
        ConfigError: an unknown backend, an unsupported dtype, or a threshold that overflows it.
    """
    if backend not in KERNEL_NEURONS:
        raise ConfigError(f"no kernel backend {backend!r}; choose one of: {', '.join(KERNEL_NEURONS)}")
    _check_dtype(dtype)
    bad = []
    for name, module in snn.gm.named_modules():
        if isinstance(module, StepModule) and not isinstance(module, (SpikingNeuron, GradedUnit, BoundedReLUPair)):
            bad.append(name)
    bad += [name for name in snn.neuron_names if not isinstance(snn.gm.get_submodule(name), SpikingNeuron)
            and name not in bad]
    if bad:
        raise _unsupported(snn, bad, backend)
    if backend == "triton":
        load_kernels()
    elif backend == "native":
        native.load_library()
    neuron_cls = KERNEL_NEURONS[backend]
    # by the reference module's id: an aliased neuron (also the members of a fused pair) stays one module
    lowered: dict[int, KernelNeuron] = {}
    for name, module in list(snn.gm.named_modules(remove_duplicate=False)):
        if isinstance(module, SpikingNeuron):
            if id(module) not in lowered:
                lowered[id(module)] = neuron_cls.from_reference(module)
            set_module(snn.gm, name, lowered[id(module)])
    set_precision(snn, dtype)
    logger.info("lowered %d spiking neuron(s) to %s kernels; %d graded unit(s) stay on torch (%s)",
                len(lowered), backend, len(snn.unit_names), dtype)
    return snn


# ---------------------------------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------------------------------


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in DTYPES)
        raise ConfigError(f"dtype {dtype} is not supported for a compiled network; choose one of: {names}")


def _round_thresholds(snn: SpikingNetwork, dtype: torch.dtype) -> None:
    tiny = torch.finfo(dtype).tiny
    for name, module in snn.gm.named_modules():
        if not isinstance(module, SpikingNeuron):
            continue
        rounded = module.threshold.to(dtype).float()
        if not torch.isfinite(rounded).all():
            raise ConfigError(f"{name}: a threshold ({float(module.threshold.max()):.4g}) overflows {dtype}; "
                              "use bfloat16 or float32")
        smallest = rounded * 2.0 ** -(module.n_levels - 1)
        n_sub = int(((smallest > 0) & (smallest < tiny)).sum())
        if n_sub:
            logger.warning("%s: %d threshold(s) give levels below the smallest normal %s number; their emitted "
                           "values are not exact in %s", name, n_sub, dtype, dtype)
        module.threshold = rounded


def _cast_stateless(snn: SpikingNetwork, dtype: torch.dtype) -> None:
    keep: set[int] = set()  # stateful units and everything under them compute in fp32
    for module in snn.gm.modules():
        if isinstance(module, StepModule):
            keep.update(id(m) for m in module.modules())
    for module in snn.gm.modules():
        if id(module) in keep:
            continue
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for key, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                module._buffers[key] = b.to(dtype)
    for node in snn.gm.graph.nodes:  # plain tensor constants fetched by get_attr (not parameters or buffers)
        if node.op != "get_attr":
            continue
        owner_name, _, leaf = node.target.rpartition(".")
        owner = snn.gm.get_submodule(owner_name) if owner_name else snn.gm
        value = getattr(owner, leaf, None)
        if (isinstance(value, Tensor) and not isinstance(value, nn.Parameter) and leaf not in owner._buffers
                and value.is_floating_point() and id(owner) not in keep):
            setattr(owner, leaf, value.to(dtype))


def _set_graph_casts(gm: fx.GraphModule, dtype: torch.dtype) -> None:
    """Replace earlier precision casts by ``x.to(dtype)`` after each input and ``.float()`` before the output.

    Before: ``conv1 = self.conv1(x)`` ... ``return fc2``
    After:  ``to = x.to(torch.bfloat16)``; ``conv1 = self.conv1(to)`` ... ``float_1 = fc2.float()``; ``return float_1``
    (for fp32 the casts are only removed). The casts are graph nodes, so they survive ``copy.deepcopy``.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.meta.get(_CAST_META):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    if dtype != torch.float32:
        for ph in [n for n in graph.nodes if n.op == "placeholder"]:
            with graph.inserting_after(ph):
                cast = graph.call_method("to", (ph, dtype))
            ph.replace_all_uses_with(cast, delete_user_cb=lambda user, cast=cast: user is not cast)
            cast.meta[_CAST_META] = "input"
        out = next(n for n in graph.nodes if n.op == "output")

        def to_fp32(arg: fx.Node) -> fx.Node:
            with graph.inserting_before(out):
                cast = graph.call_method("float", (arg,))
            cast.meta[_CAST_META] = "output"
            return cast

        out.args = tuple(fx.node.map_arg(a, to_fp32) for a in out.args)
    graph.lint()
    gm.recompile()


def set_precision(snn: SpikingNetwork, dtype: torch.dtype) -> SpikingNetwork:
    """Make ``snn`` compute in ``dtype`` (fp32, fp16 or bf16), in place; neuron state stays fp32.

    fp16/bf16: thresholds rounded to the dtype (θ' = θ.to(dtype).float(), used for firing and reset, so every
    emitted value is exact in the dtype), stateless layers cast to the dtype, input cast to the dtype and output
    cast back to fp32 by two nodes in ``snn.gm``'s graph. fp32: thresholds unchanged, layers in fp32, no casts. Cached
    differential offsets are dropped (they are recaptured at the new precision).

    Raises:
        ConfigError: an unsupported dtype, or a threshold that overflows it (fp16 above 65504).
    """
    _check_dtype(dtype)
    if dtype != torch.float32:
        _round_thresholds(snn, dtype)
    _cast_stateless(snn, dtype)
    _set_graph_casts(snn.gm, dtype)
    snn.invalidate()
    return snn
