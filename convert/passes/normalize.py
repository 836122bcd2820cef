"""Normalisation passes: one canonical graph before calibration and spiking replacement.

Every pass has the signature ``pass_fn(gm, cfg, report) -> PassResult``, records what it changed in the report and
is idempotent (a second run reports ``modified=False``).
"""
from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from snnconvert.convert.frontend import reads_metadata
from snnconvert.convert.passes.spellings import (
    INPLACE_SPELLINGS,
    RELU_FUNCTIONS,
    arg,
    bounded_relu_ceiling,
    first_input,
    masked_by_sign,
    relu_input,
    relu_spelling,
)
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                    nn.Identity)
DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                     torch.dropout)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d)


def is_canonical_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a ``call_module`` node whose module is an ``nn.ReLU`` (not in place) used by this node only."""
    if node.op != "call_module":
        return False
    module = gm.get_submodule(node.target)
    if type(module) is not nn.ReLU or module.inplace:
        return False
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target) == 1


#: attribute set on the second ReLU of a decomposed bounded ReLU (its calibration sees mostly zeros by design)
UPPER_CLIP_ATTR = "snnconvert_upper_clip"


def decompose_bounded_relu(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Rewrite every bounded ReLU ``min(max(x, 0), a)`` (ReLU6, Hardtanh(0, a), clamp(0, a)) as
    ``r − relu(r − a)`` with ``r = relu(x)``: two canonical ReLU sites joined by affine ops, exact for every x.

    Each ReLU becomes its own spiking neuron with its own threshold; the second one fires only where r exceeds a,
    so it is mostly silent (its module carries ``snnconvert_upper_clip = True`` so calibration does not warn about
    its silent channels). The upper neuron reads the lower neuron's output, not x: in the SNN the lower neuron
    saturates (at θ in rate coding, near θ·H_t in differential coding), and ``relu(x) − relu(x − a)`` would then
    subtract the excess over a a second time (for x > a > θ it gives θ − (x − a) instead of min(θ, a)), while
    ``r − relu(r − a)`` is min(r, a) for whatever r the lower neuron delivers. In-place variants
    (``nn.ReLU6(inplace=True)``) are handled like in-place ReLUs.

    Before: ``y = relu6(conv(x))``
    After:  ``r = relu6_lo(conv(x)); y = r - relu6_hi(r - 6.0)``
    """
    entry = PassEntry(name="decompose_bounded_relu", modified=False)
    for node in list(gm.graph.nodes):
        found = bounded_relu_ceiling(gm, node)
        if found is None:
            continue
        spelling, ceiling = found
        source = first_input(node)
        inplace = node.op == "call_module" and getattr(gm.get_submodule(node.target), "inplace", False)
        inplace = inplace or (node.op == "call_function" and bool(arg(node, 3 if node.target is F.hardtanh else 1,
                                                                         "inplace", False)))
        later_users = _later_users(gm, node, source) if inplace else []
        base = node.name if node.op != "call_module" else node.name + "_act"
        low_name = unique_name(gm, base + "_lo")
        gm.add_submodule(low_name, nn.ReLU())
        high_name = unique_name(gm, base + "_hi")
        upper = nn.ReLU()
        setattr(upper, UPPER_CLIP_ATTR, True)
        gm.add_submodule(high_name, upper)
        with gm.graph.inserting_after(node):
            low = gm.graph.call_module(low_name, (source,))
        with gm.graph.inserting_after(low):
            shifted = gm.graph.call_function(operator.sub, (low, ceiling))
        with gm.graph.inserting_after(shifted):
            high = gm.graph.call_module(high_name, (shifted,))
        with gm.graph.inserting_after(high):
            out = gm.graph.call_function(operator.sub, (low, high))
        for new in (low, shifted, high):
            new.meta = dict(node.meta)
        _replace_activation(gm, node, source, out, later_users, entry, spelling)
    return finish_pass(gm, entry, report)


def _later_users(gm: fx.GraphModule, node: fx.Node, source) -> list[fx.Node]:
    """Users of ``source`` placed after the in-place op ``node``: they saw its result, not its input."""
    if not isinstance(source, fx.Node):
        return []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return [u for u in source.users if u is not node and order[u] > order[node]]


def _replace_activation(gm: fx.GraphModule, node: fx.Node, source, new: fx.Node, later_users: list[fx.Node],
                        entry: PassEntry, spelling: str) -> None:
    """Route every use of ``node`` (and of an in-place op's input after it) to ``new``, drop ``node``, record it."""
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    for user in later_users:
        user.replace_input_with(source, new)
    entry.counts[spelling] = entry.counts.get(spelling, 0) + 1
    entry.nodes.append(new.name)
    entry.modified = True


def finish_pass(gm: fx.GraphModule, entry: PassEntry, report: ConversionReport) -> PassResult:
    """Record a pass in the report; after a change, drop unused submodules and recompile."""
    if entry.modified:
        gm.delete_all_unused_submodules()
        gm.recompile()
    report.passes.append(entry)
    return PassResult(gm, entry.modified)


def unique_name(gm: fx.GraphModule, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first name that is not an attribute of ``gm``."""
    name, k = base, 1
    while hasattr(gm, name):
        name, k = f"{base}_{k}", k + 1
    return name


def canonicalize_activations(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Rewrite every ReLU spelling into one form: a ``call_module`` of its own non-inplace ``nn.ReLU``.

    Spellings: ``nn.ReLU`` (also inplace and shared by several call sites), ``F.relu``, ``F.relu_``,
    ``torch.relu``, ``torch.relu_``, ``x.relu()``, ``x.relu_()``, ``clamp(min=0)`` without a max, Hardtanh and
    Threshold forms that are ReLUs (``F.hardtanh(x, 0, inf)``, ``F.threshold(x, 0, 0)``),
    ``torch.maximum(x, torch.zeros_like(x))``, ``x * (x > 0)`` (or ``>=``, the mask cast to a float) and
    ``torch.where(x > 0, x, 0)``.
    In-place spellings also redirect later users of the input to the ReLU's output, as the ANN saw them.

    Before: ``y = F.relu(conv1(x)); z = self.act(y)  # self.act = nn.ReLU(inplace=True)``
    After:  ``y = relu(conv1(x)); z = act(y)``  with ``relu``/``act`` fresh ``nn.ReLU()`` modules.
    """
    entry = PassEntry(name="canonicalize_activations", modified=False)
    for node in list(gm.graph.nodes):
        spelling = relu_spelling(gm, node)
        if spelling is None or is_canonical_relu(gm, node):
            continue
        if spelling == "nn.ReLU":
            spelling = "nn.ReLU(shared)"
        source = relu_input(node)
        masked = masked_by_sign(node)
        later_users = _later_users(gm, node, source) if spelling in INPLACE_SPELLINGS else []
        name = unique_name(gm, node.name if node.op != "call_module" else node.name + "_act")
        gm.add_submodule(name, nn.ReLU())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (source,))
        _replace_activation(gm, node, source, new, later_users, entry, spelling)
        for mask_node in masked[1] if masked else ():  # the mask (output first), where nothing else reads it
            if not mask_node.users:
                gm.graph.erase_node(mask_node)
    return finish_pass(gm, entry, report)


def out_of_place_activations(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Make every other in-place activation out of place: ``nn.Hardswish(inplace=True)``, ``F.silu(x, inplace=True)``
    and the like. Stateful units and the static prefix pass tensors they still need (running averages, expanded
    views) to these functions, which must not write into them. Later users of the input are redirected to the output,
    as the ANN saw them. (ReLUs are canonicalised by :func:`canonicalize_activations`.)

    Before: ``y = act(x)`` (``act = nn.SiLU(inplace=True)``)  After: ``y = act(x)`` with ``act = nn.SiLU()``.
    """
    entry = PassEntry(name="out_of_place_activations", modified=False)
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            skip = type(module) is nn.ReLU or isinstance(module, _DROPOUT_MODULES)
            if skip or getattr(module, "inplace", False) is not True:
                continue
            fresh = copy.deepcopy(module)
            fresh.inplace = False
            set_module(gm, node.target, fresh)  # shared call sites all become out of place
            spelling = f"nn.{type(module).__name__}(inplace)"
        elif node.op == "call_function" and node.kwargs.get("inplace") is True and node.target not in RELU_FUNCTIONS:
            node.update_kwarg("inplace", False)
            spelling = f"{getattr(node.target, '__name__', node.target)}(inplace)"
        else:
            continue
        source = first_input(node)
        for user in _later_users(gm, node, source):
            user.replace_input_with(source, node)
        entry.counts[spelling] = entry.counts.get(spelling, 0) + 1
        entry.nodes.append(node.name)
        entry.modified = True
    return finish_pass(gm, entry, report)


def _value_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values (shape reads left out)."""
    return [user for user in node.users if not reads_metadata(user)]


def _single_user_module_node(gm: fx.GraphModule, node: fx.Node) -> bool:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target) == 1


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``target``."""
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


_FUNCTIONAL_LAYERS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, F.linear: 0}
_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


#: what :func:`_constant_value` returns for a value computed from the network input
_DYNAMIC = object()


def _constant_value(gm: fx.GraphModule, value, memo: dict):
    """The value of ``value`` (a node, or a list/tuple of nodes and literals) when it does not depend on the network
    input, evaluated once (``memo`` keeps each node's value); :data:`_DYNAMIC` when it does."""
    if isinstance(value, (list, tuple)):
        items = [_constant_value(gm, v, memo) for v in value]
        return _DYNAMIC if any(v is _DYNAMIC for v in items) else type(value)(items)
    if not isinstance(value, fx.Node):
        return value
    if value not in memo:
        memo[value] = _DYNAMIC
        if value.op == "get_attr":
            memo[value] = operator.attrgetter(value.target)(gm)
        elif value.op in ("call_function", "call_method", "call_module"):
            args = [_constant_value(gm, a, memo) for a in value.args]
            kwargs = {k: _constant_value(gm, v, memo) for k, v in value.kwargs.items()}
            if all(v is not _DYNAMIC for v in [*args, *kwargs.values()]):
                with torch.no_grad():
                    if value.op == "call_function":
                        memo[value] = value.target(*args, **kwargs)
                    elif value.op == "call_method":
                        memo[value] = getattr(args[0], value.target)(*args[1:], **kwargs)
                    else:
                        memo[value] = gm.get_submodule(value.target)(*args, **kwargs)
    return memo[value]


def _layer_arguments(node: fx.Node) -> dict:
    """``F.conv*`` / ``F.linear`` / ``F.batch_norm`` arguments by name (positional and keyword), defaults left
    out."""
    if node.target is F.batch_norm:
        params = _BN_PARAMS
    else:
        params = _CONV_PARAMS if _FUNCTIONAL_LAYERS[node.target] else _CONV_PARAMS[:3]
    named = dict(zip(params, node.args))
    named.update(node.kwargs)
    return named


_BN_PARAMS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class BatchNormAnyRank(nn.BatchNorm2d):
    """An eval-mode BatchNorm over dim 1 for inputs of any rank >= 2: what an ``F.batch_norm`` call with constant
    statistics becomes (timm's ``BatchNormAct2d`` calls it functionally). A ``BatchNorm2d`` for every pass (folded
    into the preceding conv like one), without its rank check: the call did not state one."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got {input.dim()}")


def _functional_layer(gm: fx.GraphModule, node: fx.Node, memo: dict) -> nn.Module | str:
    """The module an ``F.conv*`` / ``F.linear`` / ``F.batch_norm`` call is, or why it stays a call."""
    named = _layer_arguments(node)
    if node.target is F.batch_norm:
        return _batch_norm_module(gm, named, memo)
    weight, bias = (_constant_value(gm, named.get(k), memo) for k in ("weight", "bias"))
    geometry = {k: named[k] for k in _CONV_PARAMS[3:] if k in named}
    if weight is _DYNAMIC or bias is _DYNAMIC:
        return "the weight or bias depends on the input"
    if nodes_in(geometry):
        return "stride/padding/dilation/groups are computed at run time"
    dims = _FUNCTIONAL_LAYERS[node.target]
    if not isinstance(weight, torch.Tensor) or weight.ndim != (dims + 2 if dims else 2):
        return "the weight is not a layer's weight tensor"
    if dims:
        groups = int(geometry.get("groups", 1))
        layer = _CONV_MODULES[dims](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                                    stride=geometry.get("stride", 1), padding=geometry.get("padding", 0),
                                    dilation=geometry.get("dilation", 1), groups=groups, bias=bias is not None,
                                    device=weight.device, dtype=weight.dtype)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                          dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _batch_norm_module(gm: fx.GraphModule, named: dict, memo: dict) -> nn.Module | str:
    """``F.batch_norm(x, mean, var, weight, bias, training=False, momentum, eps)`` with constant statistics and
    affine parameters -> an eval-mode :class:`BatchNormAnyRank` holding copies of them."""
    values = {k: _constant_value(gm, named.get(k), memo) for k in ("running_mean", "running_var", "weight", "bias")}
    training, eps = _constant_value(gm, named.get("training", False), memo), named.get("eps", 1e-5)
    if any(v is _DYNAMIC for v in values.values()):
        return "the statistics or affine parameters depend on the input"
    mean, var, weight, bias = values["running_mean"], values["running_var"], values["weight"], values["bias"]
    if training is not False or not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return "batch statistics (training=True or no running statistics): not an affine map"
    if not isinstance(eps, (int, float)):
        return "eps is computed at run time"
    bn = BatchNormAnyRank(mean.numel(), eps=float(eps), affine=weight is not None or bias is not None,
                          device=mean.device, dtype=mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(mean.reshape(-1))
        bn.running_var.copy_(var.reshape(-1))
        if weight is not None:
            bn.weight.copy_(weight.reshape(-1))
        if bias is not None:
            bn.bias.copy_(bias.reshape(-1))
    return bn


def functional_layers_to_modules(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Turn ``F.conv1d/2d/3d`` and ``F.linear`` calls whose weight and bias are constants (parameters, or functions
    of parameters alone such as a weight standardisation, evaluated once here) into ``nn.Conv*`` / ``nn.Linear``
    modules, and eval-mode ``F.batch_norm`` calls with constant statistics (timm's ``BatchNormAct2d``) into
    BatchNorm modules: BN folds into them, identity sites and the energy metric (method.md §8) see them like any
    layer.

    Before: ``y = F.conv2d(x, self.w, self.b, 2, 1)``  After: ``y = conv2d(x)`` (``conv2d = nn.Conv2d(..., stride=2,
    padding=1)`` holding copies of ``w`` and ``b``). A call whose weight depends on the input (a dynamic kernel) or
    whose geometry is computed at run time stays functional; the reason is recorded in ``skipped``.
    """
    entry = PassEntry(name="functional_layers_to_modules", modified=False)
    memo: dict = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or (node.target not in _FUNCTIONAL_LAYERS and node.target is not F.batch_norm):
            continue
        layer = _functional_layer(gm, node, memo)
        if isinstance(layer, str):
            entry.skipped[node.name] = layer
            continue
        layer.train(gm.training)
        name = unique_name(gm, node.name)
        gm.add_submodule(name, layer)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (_layer_arguments(node)["input"],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        spelling = f"F.{node.target.__name__}"
        entry.counts[spelling] = entry.counts.get(spelling, 0) + 1
        entry.nodes.append(name)
        entry.modified = True
    if entry.modified:
        _erase_dead_constants(gm, memo)
    return finish_pass(gm, entry, report)


def nodes_in(value) -> list[fx.Node]:
    """The graph nodes inside an argument structure (nested tuples, lists, dicts)."""
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return found


def _erase_dead_constants(gm: fx.GraphModule, memo: dict) -> None:
    """Erase the constant nodes (evaluated in ``memo``: parameter reads, functions of them) no node uses any more."""
    for node in reversed(list(gm.graph.nodes)):
        if not node.users and memo.get(node, _DYNAMIC) is not _DYNAMIC and not node.is_impure():
            gm.graph.erase_node(node)


def fold_bn(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Fold eval-mode BatchNorm into the preceding Conv/Linear when the conv's only consumer is the BN.

    Before: ``y = bn(conv(x))``  After: ``y = conv(x)`` with ``conv`` = fused copy (weights scaled, bias shifted).
    A BN whose input is not a single-consumer Conv/Linear (or a conv module called at several sites) stays; the
    reason is recorded in ``skipped``.
    """
    entry = PassEntry(name="fold_bn", modified=False)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), bn_types):
            continue
        bn = gm.get_submodule(node.target)
        prev = node.args[0]
        reason = None
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"):
            reason = "input is not a Conv/Linear module"
        else:
            layer = gm.get_submodule(prev.target)
            conv_like = isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            if not (conv_like or isinstance(layer, nn.Linear)):
                reason = f"input is {type(layer).__name__}, not Conv/Linear"
            elif len(_value_users(prev)) != 1:  # shape reads (rank assertions) keep working on the fused output
                reason = "the conv output has other consumers"
            elif not _single_user_module_node(gm, prev):
                reason = "the conv module is called at several sites"
            elif bn.running_mean is None or bn.running_var is None:
                reason = "BatchNorm without running statistics"
        if reason:
            entry.skipped[node.name] = reason
            continue
        fused = fuse_conv_bn_eval(layer, bn) if conv_like else fuse_linear_bn_eval(layer, bn)
        set_module(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        entry.counts[type(bn).__name__] = entry.counts.get(type(bn).__name__, 0) + 1
        entry.nodes.append(node.name)
        entry.modified = True
    return finish_pass(gm, entry, report)


def _is_stochastic_depth(target) -> bool:
    """torchvision's ``stochastic_depth`` (identified by name: torchvision is not a dependency)."""
    return getattr(target, "__module__", "") == "torchvision.ops.stochastic_depth" and \
        getattr(target, "__name__", "") == "stochastic_depth"


def drop_dropout_and_identity(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Remove eval-mode Dropout (modules and functions), eval-mode stochastic depth (``training=False``, traced
    from torchvision's ``StochasticDepth``) and ``nn.Identity``: their output is their input."""
    entry = PassEntry(name="drop_dropout_and_identity", modified=False)
    for node in list(gm.graph.nodes):
        kind = None
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _DROPOUT_MODULES):
            kind = type(gm.get_submodule(node.target)).__name__
        elif node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
            if arg(node, 2, "training", False) is not True:
                kind = node.target.__name__
        elif node.op == "call_function" and _is_stochastic_depth(node.target):
            if arg(node, 3, "training", True) is False:
                kind = "stochastic_depth"
        if kind is None:
            continue
        source = first_input(node)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        entry.counts[kind] = entry.counts.get(kind, 0) + 1
        entry.nodes.append(node.name)
        entry.modified = True
    return finish_pass(gm, entry, report)


def is_maxpool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a max-pool node (module or function) that does not return indices."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, _MAXPOOL_MODULES) and not module.return_indices
    if node.op == "call_function" and node.target in _MAXPOOL_FUNCTIONS:
        return not arg(node, 6, "return_indices", False)
    return False


def move_maxpool_before_activation(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Swap ``ReLU -> MaxPool`` into ``MaxPool -> ReLU`` when the max-pool is the ReLU's only consumer.

    Valid because ReLU is monotone: ``max(relu(a), relu(b)) = relu(max(a, b))`` (zero padding of max-pool is -inf,
    so padding does not matter either). Fewer neurons, and the neuron quantises the pooled value (method.md §5.3).

    Before: ``p = maxpool(relu(x))``  After: ``p = relu(maxpool(x))``. Requires canonical ReLUs.
    """
    entry = PassEntry(name="move_maxpool_before_activation", modified=False)
    for relu in list(gm.graph.nodes):
        if not is_canonical_relu(gm, relu):
            continue
        users = list(relu.users)
        if len(users) != 1:
            if any(is_maxpool(gm, u) for u in users):
                entry.skipped[relu.name] = "the ReLU output has consumers besides the max-pool"
            continue
        pool = users[0]
        if not is_maxpool(gm, pool) or pool.args[0] is not relu:
            continue
        source = relu.args[0]
        pool.replace_all_uses_with(relu)
        pool.update_arg(0, source)
        relu.update_arg(0, pool)
        pool.append(relu)
        entry.counts["swapped"] = entry.counts.get("swapped", 0) + 1
        entry.nodes.append(f"{relu.name}<->{pool.name}")
        entry.modified = True
    if entry.modified:
        gm.recompile()
    report.passes.append(entry)
    return PassResult(gm, entry.modified)
