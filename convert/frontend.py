"""torch.fx front end: trace a user's ``nn.Module`` on a deep copy in eval mode.

The user's model is never modified: it is deep-copied once here, the copy is put in eval mode and traced. Leaf
modules follow torch.fx's default policy (modules from ``torch.nn`` are leaves), so layers stay ``call_module``
nodes that passes can match with ``isinstance``.

Branches on shapes (``if x.shape[-1] < 7:`` in timm's VGG head) cannot be traced symbolically. Given an example
input, the tracer evaluates such a condition on it and follows the branch it takes; the graph then holds a guard,
``torch._assert(condition)``, so that running the network on an input for which the branch would go the other way
fails loudly instead of computing something else. Branches on tensor *values* stay an error.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import logging
import operator
import traceback
from pathlib import Path

import torch
import torch.fx as fx
import torch.fx._symbolic_trace as fx_trace
import torch.utils._pytree as pytree
from torch.fx.passes.shape_prop import ShapeProp

from snnconvert.convert.errors import TraceError, first_line

log = logging.getLogger(__name__)

#: in the message of every guard of a branch on shapes (``SpikingNetwork`` turns a failing guard into a ConfigError)
GUARD_MARK = "was traced for inputs of shape"

_TRACE_HINT = (
    "torch.fx needs a model without data-dependent control flow (if/for on tensor values) or shapes; "
    "move such logic out of forward(), or export the model to ONNX and convert the .onnx file"
)


def trace_module(model: torch.nn.Module, example_input: torch.Tensor | None = None) -> fx.GraphModule:
    """Trace a deep copy of ``model`` in eval mode.

    Args:
        model: the user's ANN. It is not modified (its parameters, buffers and training flag stay as they are).
        example_input: a batch the model runs on; branches on shapes follow it (with a guard in the graph, see the
            module docstring). Without it such a branch is a TraceError.

    Returns:
        A ``GraphModule`` in eval mode that owns its own copies of every parameter.

    Raises:
        TraceError: tracing failed; the message names the cause and how to work around it.
    """
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):
        gm = copy_model(model)
        gm.eval()
        return gm
    try:
        work, tracer, graph = _trace(model, example_input, inline=True)
        opaque = {}
    except TraceError as exc:  # through a wrapped function too: keep them opaque, name why (support lists them)
        try:
            work, tracer, graph = _trace(model, example_input, inline=False)
        except TraceError:
            raise exc from None
        opaque = {n.target: str(exc).split("; ")[0] for n in graph.nodes
                  if n.op == "call_function" and _is_wrapped_function(n.target)}
        if not opaque:
            raise exc from None
    if tracer.branches:
        log.info("%s: %d shape-dependent branch(es) followed for input shape %s (guarded): %s",
                 type(model).__name__, len(tracer.branches), list(example_input.shape), "; ".join(tracer.branches))
    _drop_fixed_arguments(graph)
    _namedtuples_into_output(graph)
    gm = fx.GraphModule(work, graph, class_name=type(model).__name__)
    gm.meta["shape_branches"] = list(tracer.branches)  # "file:line: taken" (recorded in the conversion report)
    gm.meta["opaque_functions"] = opaque  # wrapped function -> why tracing through it failed (support.py)
    gm.eval()
    return gm


def _namedtuples_into_output(graph: fx.Graph) -> None:
    """A ``NamedTuple`` the model returns (``Out(boxes, scores)``) is recorded by torch.fx as a call of its class;
    one that only the output reads becomes part of the output structure (a named tuple of nodes), like a plain
    tuple, so that each field is decoded as an output."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")

    def in_dict(value, node: fx.Node, inside: bool = False) -> bool:  # fx's code for a dict value omits its class
        if isinstance(value, (tuple, list)):
            return any(in_dict(v, node, inside) for v in value)
        if isinstance(value, dict):
            return any(in_dict(v, node, True) for v in value.values())
        return inside and value is node

    for node in list(graph.nodes):
        cls = node.target
        if node.op == "call_function" and isinstance(cls, type) and issubclass(cls, tuple) \
                and hasattr(cls, "_fields") and set(node.users) == {output} and not in_dict(output.args, node):
            try:
                value = cls(*node.args, **node.kwargs)
            except TypeError:  # not built from its fields alone
                continue
            output.args = fx.node.map_arg(output.args, lambda n, node=node, value=value: value if n is node else n)
            graph.erase_node(node)


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` (the user's module is never modified).

    Raises:
        TraceError: the model cannot be deep-copied (a pruned weight computed by ``torch.nn.utils.prune`` after a
            forward pass is a non-leaf tensor; hooks or attributes holding such tensors).
    """
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - torch's "deepcopy protocol" error and the like
        raise TraceError(f"cannot copy {type(model).__name__} ({first_line(exc)}): the converter works on a deep "
                         "copy; make the weights plain parameters first (for torch.nn.utils.prune: "
                         "prune.remove(module, 'weight'))") from exc


def _trace(model: torch.nn.Module, example_input, inline: bool) -> tuple[torch.nn.Module, "_ShapeBranchTracer",
                                                                           fx.Graph]:
    """Trace a deep copy of ``model`` in eval mode (tracing may run it: the example input follows branches); with
    ``inline``, through the functions registered with ``torch.fx.wrap`` as well."""
    work = copy_model(model)
    work.eval()
    _plain_weights(work)
    tracer = _ShapeBranchTracer(example_input, inline=inline)
    tracer.record_stack_traces = True
    state = {name: id(t) for name, t in (*work.named_parameters(), *work.named_buffers())}
    try:
        graph = tracer.trace(work, concrete_args=_defaulted_arguments(work))
    except TraceError as exc:
        raise TraceError(f"cannot trace {type(model).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any tracer failure becomes one clear error
        where = _user_frame((f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__))
        at = f" at {where}" if where else ""
        hint = _TRACE_HINT
        if isinstance(exc, TypeError) and ("cannot be interpreted as an integer" in str(exc)
                                           or "indices must be integers" in str(exc)):
            hint = ("a traced size used where Python needs an int (range(x.size(1)), a list index): write "
                    "int(x.size(1)), read on the example input and guarded")
        elif "is not installed as a submodule" in str(exc):
            hint = ("a module created inside forward (nn.ReLU()(x)) is not part of the model: create it in __init__ "
                    "(self.act = nn.ReLU()) or call its function (F.relu(x))")
        elif isinstance(exc, TypeError) and ("positional argument" in str(exc) or "Proxy" in str(exc)):
            hint = ("a tensor built inside forward (torch.ones(1, 6, 4)) and given a traced size (.expand(B, ...)): "
                    "build it from the input (x.new_ones(1, 6, 4)) or register it as a buffer, so that it traces")
        raise TraceError(f"cannot trace {type(model).__name__}{at}: {type(exc).__name__}: {first_line(exc)}; "
                         f"{hint}") from exc
    _check_state_kept(work, state, type(model).__name__)
    return work, tracer, graph


def _check_state_kept(work: torch.nn.Module, state: dict[str, int], model_name: str) -> None:
    """A forward that assigns one of the model's parameters or buffers (``self.n = self.n + 1``, ``self.n += 1``: a
    counter, a running statistic) changes the model at every call; the graph cannot hold that update.

    Raises:
        TraceError: naming the tensors assigned.
    """
    prefix = {name: id(t) for name, t in (*work.named_parameters(), *work.named_buffers())}
    changed = sorted(name for name in state if prefix.get(name) != state[name])
    if changed:
        raise TraceError(f"{model_name}'s forward assigns its own state ({', '.join(changed)}: e.g. self.n += 1 or "
                         "self.n = self.n + 1), a new value at every call, which the spiking network cannot follow; "
                         "keep the update outside forward (or under `if self.training:`, as batch norm does)")


def _plain_weights(work: torch.nn.Module) -> None:
    """Weights computed by a reparametrization (``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm``,
    the older ``weight_norm`` / ``spectral_norm`` hooks) become plain parameters of their value in eval mode, in the
    working copy: the passes fold batch norms into them like any weight."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for name, module in work.named_modules():
        if parametrize.is_parametrized(module):
            # not parametrize.remove_parametrizations: it deletes the tensor's property from the module's class,
            # which the copy shares with the caller's module (whose weight would be gone)
            with torch.no_grad():
                values = {tensor: getattr(module, tensor).detach().clone() for tensor in module.parametrizations}
            trainable = {tensor: any(isinstance(p, torch.nn.Parameter) for p in chain.parameters(recurse=False))
                         for tensor, chain in module.parametrizations.items()}
            del module.parametrizations
            module.__class__ = module.__class__.__bases__[0]  # the layer's own class (ParametrizedConv2d -> Conv2d)
            for tensor, value in values.items():
                if trainable[tensor]:
                    module.register_parameter(tensor, torch.nn.Parameter(value))
                else:
                    module.register_buffer(tensor, value)
                log.info("%s.%s: reparametrization evaluated once (a plain parameter)", name or "model", tensor)
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                with torch.no_grad():
                    hook.remove(module)  # the weight's current value as a parameter (no power iteration)
                del module._forward_pre_hooks[key]
                log.info("%s.%s: %s evaluated once (a plain parameter)", name or "model", hook.name,
                         type(hook).__name__)


#: tensor attributes that are metadata, not values
_METADATA_ATTRS = ("shape", "ndim", "device", "dtype")
#: methods that read only their tensor's metadata (``x.new_zeros(h, w)`` builds a tensor of x's dtype and device)
_METADATA_METHODS = ("size", "dim", "numel", "nelement", "new_zeros", "new_ones", "new_full", "new_empty")
#: functions that read only their first argument's metadata
_LIKE_FUNCTIONS = (torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like)


def reads_metadata(node: fx.Node) -> bool:
    """``x.size()``, ``x.dim()``, ``x.numel()``, ``x.shape``, ``x.ndim``, ``x.device``, ``x.dtype`` or ``len(x)``: a
    node that reads its input's shape or other metadata, not its values (e.g. timm's ``torch._assert(x.ndim == 4)``
    in front of every BatchNorm, LeViT's ``x.device``)."""
    if node.op == "call_method":
        return node.target in _METADATA_METHODS
    return node.op == "call_function" and (node.target in _LIKE_FUNCTIONS or node.target is len or (
        node.target is getattr and len(node.args) > 1 and node.args[1] in _METADATA_ATTRS))


def _defaulted_arguments(model: torch.nn.Module) -> dict | None:
    """``forward``'s parameters after the input, fixed at their defaults (timm's ``forward(x, attn_mask=None)``):
    the network converts for one input. A second parameter without a default is a TraceError."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: trace as is
        return None
    fixed = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            names = ", ".join(q.name for q in params)
            raise TraceError(f"forward({names}) takes more than one input; snnconvert converts models with one input "
                             f"tensor: give {p.name!r} a default or wrap the model in a module with one input")
        fixed[p.name] = p.default
    return fixed or None


def _without_var_arguments(fn):
    """``fn`` without its ``*args`` / ``**kwargs`` (Ultralytics' ``forward(self, x, *args, **kwargs)``): torch.fx would
    pass a traced placeholder for each (and ``**placeholder`` fails); the converted network takes none, so they are
    empty. Returns ``fn`` itself when it has neither, else a function of its named parameters calling it."""
    inner = inspect.unwrap(fn)
    code = getattr(inner, "__code__", None)
    if code is None or not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return fn
    params = inspect.signature(inner).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    header = ", ".join(positional + (["*", *keyword] if keyword else []))
    call = ", ".join(positional + [f"{k}={k}" for k in keyword])
    namespace = {"_snnconvert_forward": fn}
    exec(f"def forward({header}):\n    return _snnconvert_forward({call})\n", namespace)  # noqa: S102 - names only
    return namespace["forward"]


def _drop_fixed_arguments(graph: fx.Graph) -> None:
    """Remove the placeholders of the arguments fixed at their defaults (:func:`_defaulted_arguments`) and torch.fx's
    checks of their values (``torch._assert(is_causal == False)``): the graph takes the one input."""
    def is_check(node: fx.Node) -> bool:
        return node.op == "call_function" and not node.users and (
            node.target is torch._assert or getattr(node.target, "__name__", "") == "_assert_is_none")

    for ph in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        for user in list(ph.users):
            if is_check(user):  # _assert_is_none(arg)
                graph.erase_node(user)
            elif user.op == "call_function" and user.target is operator.eq and all(map(is_check, user.users)):
                for check in list(user.users):  # _assert(arg == value)
                    graph.erase_node(check)
                graph.erase_node(user)
        if not ph.users:
            graph.erase_node(ph)


def depends_on_values(node, memo: dict) -> bool:
    """Whether ``node`` is computed from the network input's values (its shape and other metadata, and arithmetic on
    them, do not count); False for a non-node argument. ``memo`` caches the answer per node. Iterative: a fresh memo
    on a node deep in a large graph (thousands of ancestors) does not recurse."""
    if not isinstance(node, fx.Node):
        return False
    stack = [node]
    while stack:
        current = stack[-1]
        if current in memo:
            stack.pop()
            continue
        if current.op == "placeholder" or reads_metadata(current):
            memo[current] = current.op == "placeholder"
            stack.pop()
            continue
        sources = _value_sources(current)
        if any(memo.get(a) for a in sources):
            memo[current] = True
            stack.pop()
            continue
        pending = next((a for a in sources if a not in memo), None)
        if pending is None:
            memo[current] = False
            stack.pop()
        else:  # one source at a time: the first that depends on values answers, as a short-circuit `any` would
            stack.append(pending)
    return memo[node]


def _value_sources(node: fx.Node) -> list[fx.Node]:
    """The inputs whose values ``node``'s values come from: all of them, except the dtype-and-device argument of
    ``x.to(q)`` / ``x.type_as(q)``."""
    if node.op == "call_method" and node.target in ("to", "type_as") and len(node.args) > 1 \
            and isinstance(node.args[1], fx.Node):
        return [a for a in (node.args[0], *node.args[2:], *node.kwargs.values()) if isinstance(a, fx.Node)]
    return list(node.all_input_nodes)


def _outside_torch(function) -> bool:
    return inspect.isfunction(function) and \
        (getattr(function, "__module__", None) or "torch").split(".")[0] != "torch"


def _is_wrapped_function(target) -> bool:
    """A Python function outside torch that its module registered with ``torch.fx.wrap`` (torchvision's Swin
    attention, ``stochastic_depth``): torch.fx records it as one opaque call."""
    return _outside_torch(target) and any(
        name == target.__name__ and frame.get("__name__") == target.__module__
        for (_, name), frame in fx_trace._wrapped_fns_to_patch.items())


@contextlib.contextmanager
def _unwrapped():
    """While tracing, torch.fx replaces every function registered with ``torch.fx.wrap`` by a recorder of one opaque
    call. Leave those outside torch unreplaced for the duration (their bodies are traced like any code; shape
    branches in them follow the example input), as torch.fx itself patches module globals only while it traces."""
    table = fx_trace._wrapped_fns_to_patch
    lifted = {key: frame for key, frame in table.items() if _outside_torch(frame.get(key[1]))}
    for key in lifted:
        del table[key]
    try:
        yield
    finally:
        table.update(lifted)


#: torch factories that take a size as separate numbers (``torch.ones(n, n)``)
_SIZED_FACTORIES = ("ones", "zeros", "empty")  # sizes as varargs or one sequence
#: factories whose data or other arguments can be traced values (recorded as one call when they are)
_VALUE_FACTORIES = ("full", "eye", "arange", "tensor", "as_tensor")


@functools.cache
def _warm_up_node_creation() -> None:
    """Trace a one-node function once per process, before anything is patched: torch.fx's first stack-recording
    node imports torch._dynamo, torch._inductor and torch.export (300+ modules), and dynamo keeps the torch functions
    it finds at import as the ones it knows. Imported while :func:`_factories_recorded` patches ``torch.zeros``, every
    later ``torch.compile`` of code calling the real ``torch.zeros`` fails (the inductor backend's neuron loops)."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    tracer.trace(_PlusOne())  # a module: fx filters the recorded stack from the first `forward` frame on


class _PlusOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


@contextlib.contextmanager
def _factories_recorded():
    """While tracing, a tensor factory given traced sizes or values (``torch.ones(n, n)`` with ``n = x.shape[1]``: a
    causal mask in the style of torch's docs; ``torch.tensor(x.shape[-2:])``) is recorded as one call with the
    sizes packed in a tuple, as torch.fx records ``torch.ones((n, n))``: torch's own argument parsing fails on
    proxies, or reads them as Python ints (``__index__``: a size fixed at the example's). As torch.fx patches module
    globals, only while it traces."""
    _warm_up_node_creation()
    saved = {name: getattr(torch, name) for name in (*_SIZED_FACTORIES, *_VALUE_FACTORIES)}

    def recorded(name, fn):
        def call(*args, **kwargs):
            proxy = next((a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)
            if proxy is None:
                return fn(*args, **kwargs)
            if name in _SIZED_FACTORIES and len(args) > 1:
                args = (tuple(args),)
            return proxy.tracer.create_proxy("call_function", fn, args, kwargs)
        return call

    for name, fn in saved.items():
        setattr(torch, name, recorded(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def autocast_off() -> contextlib.AbstractContextManager:
    """Every ``torch.autocast`` block a no-op, silently: the model's eager forward computes in float32 as its traced
    graph does (for comparing the two)."""
    return _autocast_unrecorded(None)


@contextlib.contextmanager
def _autocast_unrecorded(tracer: fx.Tracer | None):
    """While tracing, ``with torch.autocast(...)`` blocks (timm's EfficientViT attention: ``device_type=v.device.type,
    enabled=False``; any spelling: ``torch.amp.autocast``, ``torch.cuda.amp.autocast``) are no-ops: a graph does not
    record autocast, and the converted network computes in float32. A traced ``device_type`` is accepted; a block that
    would enable autocast (lower precision in the ANN) gets a warning naming its line. An autocast made before
    tracing (``@torch.autocast(...)`` on a forward, made at import; a context kept on the module) is entered as a
    no-op too, with the same warning (naming the module being traced) when it is enabled."""
    cls = torch.amp.autocast_mode.autocast
    original = cls.__init__, cls.__enter__, cls.__exit__

    def warn(what: str) -> None:
        if tracer is None:
            return
        where = _user_frame((f.filename, f.lineno) for f in traceback.extract_stack()) or "?"
        module = tracer.scope.module_path
        if module:
            where = f"{where} (in module {module!r})"
        log.warning("torch.autocast %s %s is not part of the traced graph: the converted network computes this block "
                    "in float32, not in the ANN's reduced precision", what, where)

    def unrecorded(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        if enabled is not False:
            warn("at")
        original[0](self, "cpu", enabled=False)

    def entered(self):
        if self._enabled:  # made before tracing: a decorator or a stored context
            warn("made before tracing (a decorator or a stored context) and entered at")
        return self

    def exited(self, *exc_info) -> bool:
        return False

    cls.__init__, cls.__enter__, cls.__exit__ = unrecorded, entered, exited
    try:
        yield
    finally:
        cls.__init__, cls.__enter__, cls.__exit__ = original


class _PythonValues:
    """The Python values a model takes from shapes (``len(x.shape)``, ``int(x.shape[2])``, ``math.sqrt(n)``), read
    on the example input, with a guard (:meth:`_ShapeBranchTracer.python_value`). Not ``__index__``: torch's argument
    parser reads it before ``__torch_function__``, which would fix ``torch.roll(x, x.size(-1) // 2)`` at the
    example's size; ``range(x.size(1))`` is spelled ``range(int(x.size(1)))`` (the TraceError says so)."""

    def __len__(self) -> int:
        return self.tracer.python_value(self, len)

    def __int__(self) -> int:
        return self.tracer.python_value(self, int)

    def __float__(self) -> float:
        return self.tracer.python_value(self, float)


class _Proxy(_PythonValues, fx.Proxy):
    """fx's Proxy, plus item assignment (``mask[:, :k] = 1``) recorded as an ``operator.setitem`` node, and the
    Python values of :class:`_PythonValues` (on attributes too: ``len(x.shape)``)."""

    def __setitem__(self, key, value) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __getattr__(self, k: str) -> fx.proxy.Attribute:
        return _Attribute(self, k)


class _Attribute(_PythonValues, fx.proxy.Attribute):
    pass


class _ShapeBranchTracer(fx.Tracer):
    """``fx.Tracer`` that follows branches on shapes for an example input and guards them (module docstring)."""

    def __init__(self, example: torch.Tensor | None = None, inline: bool = True) -> None:
        super().__init__()
        self.example = example
        self.inline = inline
        self.branches: list[str] = []  # "file:line: taken" of every branch followed
        self._evaluating = False  # while True, modules and parameters act as themselves (no recording)
        self._runs: dict[bool, fx.Interpreter] = {}  # the example, the example twice -> the nodes' values so far
        self._inputs: dict[bool, torch.Tensor] = {}  # ... and the input each one runs on
        # buffers are graph nodes like parameters (``self.mask[None].expand(B, ...)`` with a traced B; a buffer read
        # as a tensor cannot take traced sizes)
        self.proxy_buffer_attributes = True

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        return super().create_args_for_root(_without_var_arguments(root_fn), is_module, concrete_args)

    def trace(self, root, concrete_args=None):
        unwrapped = _unwrapped() if self.inline else contextlib.nullcontext()
        with unwrapped, _factories_recorded(), _autocast_unrecorded(self):
            return super().trace(root, concrete_args)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        node = obj.node
        where = node_source(node) or node.name
        if self.example is None:
            raise TraceError(f"a branch on a traced value at {where}; {_TRACE_HINT} (a branch on shapes alone "
                             "traces when an example input is given: example_inputs=, as the CLI does)")
        if depends_on_values(node, {}):
            raise TraceError(f"a branch on tensor values at {where} (data-dependent control flow); {_TRACE_HINT}")
        taken = bool(self._evaluate(node))
        if self.example.dim() and bool(self._evaluate(node, doubled=True)) != taken:
            raise TraceError(f"a branch at {where} goes one way for a batch of {len(self.example)} and the other for "
                             f"{2 * len(self.example)}, and the converted graph serves every batch size (the SNN runs "
                             "its time steps in the batch dim): make the condition independent of the batch size, "
                             "e.g. compare x.shape[1:] instead of x.shape (a cache keyed on the input shape may have a "
                             "switch that recomputes it at every call)")
        # not `not_`: re-tracing the generated code (torch.save of a GraphModule does) must not branch again
        condition = obj if taken else self.create_proxy("call_function", operator.eq, (obj, False), {})
        message = (f"the model {GUARD_MARK} {list(self.example.shape)}, and a shape-dependent branch at {where} goes "
                   "the other way for this input; convert it again for this input size")
        self.create_proxy("call_function", torch._assert, (condition, message), {})
        self.branches.append(f"{where}: {taken}")
        return taken

    def iter(self, obj: fx.Proxy):
        """``list(x.chunk(2, 1))``, ``for t in x.split(4, 1)``, ``f(*x.shape)``: the items of a traced sequence whose
        length the example input gives (torch.fx itself only unpacks into a fixed number of names)."""
        return iter([self.create_proxy("call_function", operator.getitem, (obj, i), {})
                     for i in range(self.python_value(obj, len, "iteration"))])

    def python_value(self, obj: fx.Proxy, cast, what: str | None = None) -> int | float:
        """The Python value a model takes from a traced value, ``cast(value)`` on the example input (``len`` for
        ``len()`` and iteration, ``int``, ``float``), and a guard in the graph that checks it on every later input
        (as for shape branches).

        Raises:
            TraceError: no example input; a number read from tensor values; a value that changes with the batch
                size (the graph serves every batch size).
        """
        node = obj.node
        what = what or f"{cast.__name__}()"
        where = _user_frame((f.filename, f.lineno) for f in traceback.extract_stack()) or node.name
        if self.example is None:
            raise TraceError(f"{what} of a traced value at {where}; {_TRACE_HINT} (values taken from shapes trace "
                             "when an example input is given: example_inputs=, as the CLI does)")
        counted = cast is len
        if not counted and depends_on_values(node, {}):
            raise TraceError(f"{what} from tensor values at {where} (data-dependent); {_TRACE_HINT}")

        value = cast(self._evaluate(node))
        if self.example.dim() and cast(self._evaluate(node, doubled=True)) != value:  # batch 2b, not b
            raise TraceError(f"{what} at {where} changes with the batch size, and the converted graph serves every "
                             "batch size; keep the batch dim a traced size (x.shape[0], x.size(0)) or loop over "
                             f"another dim; {_TRACE_HINT}")
        read = self.create_proxy("call_function", cast, (obj,), {})
        message = (f"the model {GUARD_MARK} {list(self.example.shape)}, and {what} at {where} gives {value} there but "
                   "not for this input; convert it again for this input size")
        self.create_proxy("call_function", torch._assert,
                          (self.create_proxy("call_function", operator.eq, (read, value), {}), message), {})
        self.branches.append(f"{where}: {what} = {value}")
        return value

    def _evaluate(self, node: fx.Node, doubled: bool = False):
        """The value of ``node`` (in the graph built so far) on the example input (``doubled``: on the example twice,
        a batch of 2b: what changes with the batch size), computed with the tracer's patches of ``nn.Module`` calls and
        attribute reads switched to plain behaviour. Incremental: the values of the nodes run before are kept, so a
        trace that reads many branches and sizes runs its graph once per input, not once per read (in-place ops keep
        their effect, as in one forward pass)."""
        if doubled not in self._runs:
            self._runs[doubled] = fx.Interpreter(self.root, garbage_collect_values=False, graph=self.graph)
            # a copy: an in-place op of the model on its input must not write into the caller's example
            self._inputs[doubled] = torch.cat([self.example, self.example]) if doubled else self.example.clone()
        run = self._runs[doubled]
        run.args_iter = iter([self._inputs[doubled]])
        self._evaluating = True
        try:
            with torch.no_grad():
                for n in self.graph.nodes:
                    if n not in run.env:
                        run.env[n] = run.run_node(n)
                    if n is node:
                        return run.env[n]
        finally:
            self._evaluating = False
        raise AssertionError(f"{node} is not in the traced graph")


class _ShapeProp(ShapeProp):
    """torch's ShapeProp, remembering the node it runs (to name it when it fails)."""

    node: fx.Node | None = None

    def run_node(self, n: fx.Node):
        self.node = n
        return super().run_node(n)


def annotate_shapes(gm: fx.GraphModule, example_input: torch.Tensor) -> None:
    """Store ``node.meta["tensor_meta"]`` (shape, dtype) for every node by running ``example_input`` once.

    Raises:
        RuntimeError: the model fails on the input: "node <name>: <the error's first line>" (torch's ShapeProp
            prints a traceback to stderr before it raises; that print is swallowed, the error keeps its cause).
    """
    prop = _ShapeProp(gm)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(example_input.clone())  # a model may write into its input
    except Exception as exc:  # noqa: BLE001 - any failure of the model itself
        where = f"node {prop.node.name}: " if prop.node is not None else ""
        raise RuntimeError(where + first_line(exc.__cause__ or exc)) from exc


def node_source(node: fx.Node) -> str | None:
    """``file:line`` of the user code that created ``node`` (innermost frame outside torch and this module), if
    recorded."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = []
    for line in trace.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            path, _, rest = line[len('File "'):].partition('"')
            frames.append((path, rest.split("line", 1)[-1].split(",", 1)[0].strip()))
    return _user_frame(frames)


def _user_frame(frames) -> str | None:
    """``file:line`` of the innermost of ``(filename, lineno)`` frames outside torch and ``snnconvert.convert``."""
    own = str(Path(torch.__file__).parent), str(Path(__file__).parent) + "/"
    user = [f"{path}:{line}" for path, line in frames if not path.startswith(own)]
    return user[-1] if user else None
