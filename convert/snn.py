"""The reference SNN: a GraphModule whose ReLUs are spiking neurons, run over time with plain PyTorch.

Execution modes (identical results, tested):

- multi-step (default): the encoded input ``[T, B, ...]`` is folded to ``[T*B, ...]`` and goes layer by layer
  through the graph; every stateless layer sees one big batch, every neuron unfolds it to ``[T, B, ...]`` and runs
  its T-step loop. The stateless layers in front of the first stateful unit see a static input pattern and run on
  ``[B, ...]`` only (``static_prefix.py``; ``elide_static_prefix = False`` turns this off);
- single-step (streaming): one step at a time through the whole graph, neurons keep their state between calls
  (call :meth:`SpikingNetwork.reset` between samples). Memory is bounded by one step. The static prefix runs
  once (plus once on the zero sample in differential coding), not at every step.
"""
from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch
import torch.fx as fx
import torch.nn as nn

from snnconvert.convert.errors import ConfigError, check_float_images, first_line
from snnconvert.convert.frontend import GUARD_MARK
from snnconvert.convert.outputs import map_outputs
from snnconvert.convert.static_prefix import INPUT_PATTERNS, PrefixPhase, StaticPrefix, build_static_prefix

STEP_MODES = ("multi", "single")


def step_count(timesteps: object) -> int:
    """A number of time steps as given to a run: a positive integer (``2.7``, ``"4"`` or ``True`` are refused, not
    rounded)."""
    try:
        T = operator.index(timesteps)  # ints, numpy integers; not floats or strings
    except TypeError:
        T = None
    if T is None or isinstance(timesteps, bool) or T < 1:
        raise ConfigError(f"timesteps must be a positive integer, got {timesteps!r}")
    return T


@contextlib.contextmanager
def _guards_as_config_errors() -> Iterator[None]:
    """A shape guard of the traced graph (frontend.py) that fails on this input is a ConfigError, its message
    kept (other AssertionErrors pass)."""
    try:
        yield
    except AssertionError as err:
        if GUARD_MARK in str(err):
            raise ConfigError(str(err)) from err
        raise


def _cast_refused(how: str) -> ConfigError:
    return ConfigError(f"{how}: a converted SNN keeps its neuron state in float32 and its input is cast to its "
                       "layers' precision by its graph; run its layers in bf16/fp16 with "
                       "snnconvert.runtime.compile(snn, dtype=torch.bfloat16) (or torch.float16)")


class SpikingNetwork(nn.Module):
    """A converted spiking network (reference runtime).

    Args:
        gm: the graph with spiking neurons in place of ReLUs.
        coding: the coding strategy object (``encode`` / ``prepare`` / ``decode``).
        timesteps: default number of steps T.
        neuron_names: the submodule names of the neurons (ReLU site names).
        unit_names: the submodule names of the other stateful units (graded units: max-pools, other non-linear
            functions and products; fused neuron pairs added by ``snnconvert.runtime.compile``).

    Calling ``snn(x)`` with an analog batch ``x [B, ...]`` returns the decoded output after every step,
    ``[T, B, ...]`` (entry ``t-1`` is the network's answer after ``t`` steps). A model that returns a tuple, list
    or dict of tensors (several heads) gives the same structure with a ``[T, B, ...]`` tensor per output, each
    decoded on its own (``convert/outputs.py``).
    """

    def __init__(
        self, gm: fx.GraphModule, coding, timesteps: int, neuron_names: list[str], unit_names: list[str] = ()
    ) -> None:
        super().__init__()
        self.gm = gm
        self.coding = coding
        self.timesteps = timesteps
        self.neuron_names = list(neuron_names)
        self.unit_names = list(unit_names)
        self.step_mode = "m"
        self.capturing = False  # True during the zero-input capture pass (counters skip it)
        self.analog_pass = False  # True while ann_forward runs (counters skip it)
        self.capture_cache_key: tuple | None = None
        self.output_offset: torch.Tensor | None = None
        self.batch_folded = False  # a unit's per-step batch dim holds more than the images (coding/diff.py)
        self.elide_static_prefix = True
        self.prefix_phase: PrefixPhase | None = None  # set while a static-prefix layer runs (for the counters)
        self._prefix_cache: tuple[tuple, StaticPrefix | None] | None = None
        meta = next((n.meta.get("tensor_meta") for n in gm.graph.nodes if n.op == "placeholder"), None)
        #: the per-sample input shape the network was converted at (None: not known); named when another fails
        self.input_shape: tuple[int, ...] | None = tuple(meta.shape[1:]) if hasattr(meta, "shape") else None

    def _apply(self, fn, recurse: bool = True):
        """``nn.Module._apply`` (behind ``.to``, ``.cuda``, ``.half``, ``.type``, a parent module's casts) for devices;
        a cast of floating tensors to another dtype than float32 is refused: the neurons' state is fp32 and the
        layers' precision is set with ``snnconvert.runtime.compile(snn, dtype=...)``."""
        probe = fn(torch.zeros(1))
        if probe.is_floating_point() and probe.dtype != torch.float32:
            raise _cast_refused(f"casting the SNN to {probe.dtype}")
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        """Pickling (``torch.save`` of the whole network) leaves the static-prefix cache out: it holds graph nodes
        whose shape annotations torch's pickle protocol 2 cannot store, and it is rebuilt on the next call."""
        state = self.__dict__.copy()
        state["_prefix_cache"] = None
        return state

    def neurons(self) -> Iterator[tuple[str, nn.Module]]:
        """``(site name, neuron)`` pairs in graph order."""
        for name in self.neuron_names:
            yield name, self.gm.get_submodule(name)

    def stateful(self) -> Iterator[tuple[str, nn.Module]]:
        """Every stateful module: the neurons, then the graded units."""
        yield from self.neurons()
        for name in self.unit_names:
            yield name, self.gm.get_submodule(name)

    def reset(self) -> None:
        """Clear every neuron's and unit's streaming state (call between samples in single-step mode)."""
        for _, module in self.stateful():
            module.reset()

    def set_step_mode(self, step_mode: str, timesteps: int | None = None) -> None:
        """``"m"`` (inputs ``[T*B, ...]``, needs ``timesteps``) or ``"s"`` (one step per call) for every unit."""
        self.step_mode = step_mode
        for _, module in self.stateful():
            module.step_mode = step_mode
            module.timesteps = timesteps

    def capture_offsets(self, zeros: torch.Tensor) -> torch.Tensor:
        """Run the zero-input capture pass: every stateful unit stores its input as its bias b and outputs 0.

        Returns (and stores as ``output_offset``) the network output y0 of that pass, in the model's output
        structure. Used by differential coding; the result depends only on the weights, thresholds and the
        per-sample shape of ``zeros``.
        """
        modules = [m for _, m in self.stateful()]
        for m in modules:
            m.capture = True
        self.capturing = True
        try:
            with torch.no_grad():
                self.output_offset = self.gm(zeros)
        finally:
            self.capturing = False
            for m in modules:
                m.capture = False
        return self.output_offset

    def weights_key(self) -> tuple:
        """What the captured offsets depend on besides the input's shape: every parameter and every buffer of the
        layers (not of the stateful units, whose captured b it keys), by identity, version, storage and content. An
        in-place change (``load_state_dict``, an optimizer step, ``conv.bias.add_(1)``) or a replaced tensor changes
        the key, so the offsets are captured again on the next call; so does a write through ``.data``
        (``p.data.mul_(mask)``, ``p.data = w``), which torch does not count as a version: each tensor's sum and sum
        of squares (one pass over the weights, far less than one step of the network) are part of the key."""
        units = {id(m) for _, m in self.stateful()}
        tensors = [t for m in self.gm.modules() if id(m) not in units
                   for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
        identity = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
        if not tensors:
            return identity
        with torch.no_grad():
            sums = [torch.stack((t.sum(dtype=torch.float64), t.float().square().sum(dtype=torch.float64)))
                    for t in tensors]
            content = torch.stack([s.to(tensors[0].device) for s in sums])
        return identity + tuple(content.flatten().tolist())

    def invalidate(self) -> None:
        """Forget cached offsets (changed weights are noticed without it: :meth:`weights_key`)."""
        self.capture_cache_key = None
        self.output_offset = None
        self.batch_folded = False
        self._prefix_cache = None

    def static_prefix(self) -> StaticPrefix | None:
        """The graph's static input prefix and the rest of the graph (cached; rebuilt when the graph or a module
        changes), or None when no layer precedes the first stateful unit."""
        key = (self.gm.code, tuple((id(m), m.training) for m in self.gm.modules()))
        if self._prefix_cache is None or self._prefix_cache[0] != key:
            stateful = {name for name, _ in self.stateful()}
            self._prefix_cache = (key, build_static_prefix(self.gm, stateful))
        return self._prefix_cache[1]

    def ann_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The converted graph run as an ANN on ``x [B, ...]``: every stateful unit applies the function it
        approximates (ReLU, a bounded ReLU's clip, a graded unit's f) with no time steps. This is the ANN after the
        conversion passes (BN folded, max-pools moved): the reference the per-unit error diagnostics compare with."""
        with self.analog_mode(), _guards_as_config_errors():
            return self.gm(x.float())

    @contextlib.contextmanager
    def analog_mode(self) -> Iterator[None]:
        """Inside the block, ``self.gm`` is the converted ANN (see :meth:`ann_forward`); counters skip its calls."""
        modules = [m for _, m in self.stateful()]
        for m in modules:
            m.analog = True
        self.analog_pass = True
        try:
            yield
        finally:
            self.analog_pass = False
            for m in modules:
                m.analog = False

    def raw(self, x: torch.Tensor, timesteps: int | None = None, *, mode: str = "multi") -> torch.Tensor:
        """Encode ``x``, run T steps and return the RAW per-step outputs ``[T, B, ...]`` (not decoded; one such
        tensor per output for a model with several).

        Raises:
            ConfigError: bad T or mode, or an input for which a branch on shapes followed at tracing would go the
                other way (frontend.py: the graph's guard).
        """
        with _guards_as_config_errors():
            try:
                return self._raw(x, timesteps, mode)
            except RuntimeError as exc:  # a layer's shape error, counted in T·B rows: name the images instead
                given = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
                if self.input_shape is None or given is None or given == self.input_shape:
                    raise
                raise ConfigError(f"the SNN fails on images of shape {list(given)} ({first_line(exc)}); it was "
                                  f"converted for images of shape {list(self.input_shape)}: give images of that "
                                  "shape, or convert the model at the size it will run at") from exc

    def _raw(self, x: torch.Tensor, timesteps: int | None, mode: str) -> torch.Tensor:
        if mode not in STEP_MODES:
            raise ConfigError(f"step mode {mode!r} is not valid; choose one of: {', '.join(STEP_MODES)}")
        T = self.timesteps if timesteps is None else step_count(timesteps)
        check_float_images(x, "the SNN")
        x = x.float()
        self.coding.prepare(self, x)
        pattern = getattr(self.coding, "input_pattern", None)
        prefix = self.static_prefix() if self.elide_static_prefix and T > 1 and pattern in INPUT_PATTERNS else None
        if mode == "multi":
            self.set_step_mode("m", T)
            if prefix is not None:
                out = prefix(self, x, T, pattern)
            else:
                out = self.gm(self.coding.encode(x, T).reshape(T * x.shape[0], *x.shape[1:]))
            return map_outputs(lambda o: o.reshape(T, x.shape[0], *o.shape[1:]), out)
        self.set_step_mode("s")
        self.reset()
        try:
            if prefix is not None:
                steps = prefix.stream(self, x, T, pattern)
            else:
                seq = self.coding.encode(x, T)
                steps = [self.gm(seq[t]) for t in range(T)]
            return map_outputs(lambda *outs: torch.stack(outs), *steps)
        finally:
            self.reset()

    def forward(self, x: torch.Tensor, timesteps: int | None = None, *, mode: str = "multi") -> torch.Tensor:
        """Decoded output after every step, ``[T, B, ...]`` (per output for a model with several). A sample with a
        NaN or infinite value gets NaN outputs, as in the ANN (its neurons would never fire and the SNN would
        answer with confidence); found without a device sync."""
        decoded = self.coding.decode(self.raw(x, timesteps, mode=mode), self)
        invalid = ~torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(1) if x.dim() else None
        if invalid is None:
            return decoded

        def poisoned(out: torch.Tensor) -> torch.Tensor:
            if not out.is_floating_point() or out.dim() < 2 or out.shape[1] != x.shape[0]:
                return out
            return out.masked_fill(invalid.to(out.device).reshape(1, -1, *[1] * (out.dim() - 2)), float("nan"))

        return map_outputs(poisoned, decoded)
