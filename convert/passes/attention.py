"""Attention written out: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` become their matrix
products, softmax and projections as graph nodes, so the products and the softmax convert like any other node
(a normalisation pass, same signature and report entry as those of ``normalize.py``)."""
from __future__ import annotations

import operator
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.frontend import depends_on_values
from snnconvert.convert.passes.normalize import finish_pass, unique_name
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["masked_softmax", "write_out_attention"]


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """``softmax`` over the last dim of ``scores`` with an attention mask as ``F.scaled_dot_product_attention`` reads
    it: a boolean mask keeps the True entries (the others are -inf), a float mask is added. One function, so that a
    graded unit applies the mask to decoded scores (a -inf entry in a stream would decode to NaN). ``per_sample``:
    ``mask`` is one sample's block of a batch-major leading dim (Swin's windows folded into the batch), repeated for
    every sample of ``scores``."""
    if per_sample:
        mask = mask.repeat(scores.shape[0] // mask.shape[0], *[1] * (mask.dim() - 1))
    if mask.dtype == torch.bool:  # a fully masked row gives 0, as the fused call does (not softmax's NaN)
        return scores.masked_fill(~mask, float("-inf")).softmax(-1).masked_fill(~mask.any(-1, keepdim=True), 0.0)
    return (scores + mask).softmax(-1).masked_fill(torch.isneginf(mask).all(-1, keepdim=True), 0.0)


def _attention_graph(graph: fx.Graph, q: fx.Node, k: fx.Node, v: fx.Node, scale,
                     mask: tuple[fx.Node, bool] | None = None) -> fx.Node:
    """``softmax((q @ kᵀ) · scale [masked], -1) @ v`` as graph nodes (before the current insertion point); ``scale``
    None: ``q.size(-1) ** -0.5``, the fused call's default; ``mask``: a constant (``get_attr``) and whether it is one
    sample's, for :func:`masked_softmax`."""
    if scale is None:
        scale = graph.call_function(operator.pow, (graph.call_method("size", (q, -1)), -0.5))
    scores = graph.call_function(operator.mul, (
        graph.call_function(operator.matmul, (q, graph.call_method("transpose", (k, -2, -1)))), scale))
    if mask is None:
        weights = graph.call_function(F.softmax, (scores,), {"dim": -1})
    else:
        weights = graph.call_function(masked_softmax, (scores, mask[0]), {"per_sample": True} if mask[1] else {})
    return graph.call_function(operator.matmul, (weights, v))


class _Mask(NamedTuple):
    value: torch.Tensor | None
    per_sample: bool = False  # value is one sample's block of a leading dim that grows with the batch
    reason: str | None = None  # why there is no value


def _constant_mask(gm: fx.GraphModule, node, memo: dict) -> _Mask:
    """The value of an attention-mask argument that does not depend on the input's values (a buffer, a causal or
    relative-position mask built from parameters and shapes), computed ahead on zero inputs of the traced sample
    shape: for one sample, and for two to find a leading dim that grows with the batch (Swin's shifted-window mask
    expanded over the windows of every image)."""
    if not isinstance(node, fx.Node) or depends_on_values(node, memo):
        return _Mask(None, reason="an attention mask computed from the input")
    if node.op == "get_attr":
        return _Mask(operator.attrgetter(node.target)(gm).detach())
    placeholder = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    meta = None if placeholder is None else placeholder.meta.get("tensor_meta")
    if not hasattr(meta, "shape"):
        return _Mask(None, reason="an attention mask built from shapes, without a traced input shape")
    graph, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n is node:
            break
    graph.output(env[node])
    sub = fx.GraphModule(gm, graph)
    sub.graph.eliminate_dead_code()
    sub.recompile()
    try:
        with torch.no_grad():
            one, two = (sub(torch.zeros((n, *meta.shape[1:]), dtype=meta.dtype)) for n in (1, 2))
    except Exception as exc:  # noqa: BLE001 - the call then stays fused (check_supported lists it)
        return _Mask(None, reason=f"an attention mask that cannot be computed ahead ({type(exc).__name__})")
    if not isinstance(one, torch.Tensor):
        return _Mask(None, reason="an attention mask that is not a tensor")
    if one.shape == two.shape and torch.equal(one, two):
        return _Mask(one)
    if one.dim() and two.shape == (2 * one.shape[0], *one.shape[1:]) and torch.equal(two, torch.cat([one, one])):
        return _Mask(one, per_sample=True)
    return _Mask(None, reason="an attention mask that changes with the batch size")


def _causal_mask(q: fx.Node, k: fx.Node) -> _Mask:
    """``is_causal``'s mask (``ones(L, S).tril()``, True: attended) from the traced query and key lengths."""
    shapes = [getattr(n.meta.get("tensor_meta"), "shape", None) for n in (q, k)]
    if any(s is None or len(s) < 2 for s in shapes):
        return _Mask(None, reason="is_causal on an untraced shape")
    return _Mask(torch.ones(shapes[0][-2], shapes[1][-2], dtype=torch.bool).tril())


def _mask_node(gm: fx.GraphModule, node: fx.Node, mask: _Mask) -> tuple[fx.Node, bool]:
    """``mask`` as a buffer of ``gm``, read by a ``get_attr`` node before ``node``; and whether it is per sample."""
    name = unique_name(gm, f"{node.name}_mask")
    gm.register_buffer(name, mask.value)
    with gm.graph.inserting_before(node):
        return gm.graph.get_attr(name), mask.per_sample


def _sdpa_reason(named: dict) -> str | None:
    """Why a ``scaled_dot_product_attention`` call cannot be written out (None: it can; a mask is checked by
    :func:`_sdpa_mask`)."""
    if named.get("dropout_p", 0.0) != 0.0:
        return "attention dropout"
    if named.get("attn_mask") is not None and named.get("is_causal", False) is not False:
        return "both a mask and is_causal"
    if named.get("enable_gqa", False) is not False:
        return "grouped-query heads"
    if isinstance(named.get("scale"), fx.Node):
        return "a scale computed at run time"
    return None


def _mha_reason(mha: nn.MultiheadAttention, named: dict, node: fx.Node) -> str | None:
    """Why an ``nn.MultiheadAttention`` call cannot be written out (None: it can; an ``attn_mask`` is checked by
    :func:`_mha_mask`)."""
    if named.get("key_padding_mask") is not None:
        return "key_padding_mask"
    if named.get("is_causal", False) is not False and named.get("attn_mask") is None:
        return "is_causal without attn_mask"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    if any(u.op != "call_function" or u.target is not operator.getitem or (u.args[1] != 0 and u.users)
           for u in node.users):
        return "its attention weights are used"
    return None


def _mha_linears(mha: nn.MultiheadAttention) -> list[nn.Linear]:
    """The query, key, value and output projections of ``mha`` as plain ``nn.Linear`` copies."""
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.split(E)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = mha.in_proj_bias.split(E) if mha.in_proj_bias is not None else (None,) * 3
    pairs = [*zip(weights, biases), (mha.out_proj.weight, mha.out_proj.bias)]
    layers = []
    for w, b in pairs:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        layers.append(layer.train(mha.training))
    return layers


def _sdpa_mask(gm: fx.GraphModule, named: dict, memo: dict) -> _Mask | None:
    """The constant mask of a ``scaled_dot_product_attention`` call (None: it has none)."""
    if named.get("is_causal", False) is not False:
        return _causal_mask(named["query"], named["key"])
    return None if named.get("attn_mask") is None else _constant_mask(gm, named["attn_mask"], memo)


def _mha_mask(gm: fx.GraphModule, named: dict, memo: dict, heads: int) -> _Mask | None:
    """The constant ``attn_mask`` of an ``nn.MultiheadAttention`` call in :func:`masked_softmax`'s convention (a
    boolean MHA mask marks the entries NOT attended; None: it has none). A 3-d mask ``[B·H, L, S]`` (batch-major,
    as MHA reads it) that is the same for every sample becomes ``[H, L, S]``, broadcast over the written-out
    attention's ``[B, H, L, S]`` scores; one that differs between the samples of a fixed batch stays fused."""
    if named.get("attn_mask") is None:
        return None
    mask = _constant_mask(gm, named["attn_mask"], memo)
    if mask.value is not None and mask.value.dim() == 3:  # the heads folded into the batch
        if mask.value.shape[0] != heads:
            return _Mask(None, reason=f"a 3-d attention mask for a fixed batch ({mask.value.shape[0]} rows for "
                                      f"{heads} heads; build it from the batch size, or give a 2-d [L, S] mask)")
        mask = _Mask(mask.value)  # one sample's [H, L, S]: the same for every sample
    if mask.value is not None and mask.value.dim() not in (2, 3):
        return _Mask(None, reason=f"a {mask.value.dim()}-d attention mask (2-d [L, S] or 3-d [B·H, L, S] only)")
    if mask.value is not None and mask.value.dtype == torch.bool:
        return mask._replace(value=~mask.value)
    return mask


def _write_out_mha(gm: fx.GraphModule, node: fx.Node, mha: nn.MultiheadAttention, named: dict,
                   mask: fx.Node | None) -> fx.Node:
    """Replace an ``nn.MultiheadAttention`` call by its projections (Linear modules), heads (reshapes) and the
    written-out attention; returns the output node (what ``call[0]`` was)."""
    graph, H, hd = gm.graph, mha.num_heads, mha.head_dim
    names = []
    for i, layer in enumerate(_mha_linears(mha)):
        names.append(unique_name(gm, f"{node.name}_{('q', 'k', 'v', 'out')[i]}_proj"))
        gm.add_submodule(names[-1], layer)
    with graph.inserting_before(node):
        seqs = [named["query"], named["key"], named["value"]]
        if not mha.batch_first:  # [N, B, E] -> [B, N, E]
            seqs = [graph.call_method("transpose", (t, 0, 1)) for t in seqs]
        heads = []
        for name, t in zip(names, seqs):  # [B, N, E] -> [B, H, N, hd]
            proj = graph.call_module(name, (t,))
            b, n = graph.call_method("size", (t, 0)), graph.call_method("size", (t, 1))
            heads.append(graph.call_method("transpose", (graph.call_method("reshape", (proj, b, n, H, hd)), 1, 2)))
        out = _attention_graph(graph, *heads, None, mask)
        b, n = graph.call_method("size", (seqs[0], 0)), graph.call_method("size", (seqs[0], 1))
        merged = graph.call_method("reshape", (graph.call_method("transpose", (out, 1, 2)), b, n, mha.embed_dim))
        result = graph.call_module(names[3], (merged,))
        if not mha.batch_first:
            result = graph.call_method("transpose", (result, 0, 1))
    return result


def write_out_attention(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Write fused attention out, so that its products become units (method.md §5.2, §6):

    - ``F.scaled_dot_product_attention(q, k, v)`` (no dropout; timm's ViT attention in eval mode) becomes
      ``softmax((q @ kᵀ) · s, -1) @ v`` with s the call's ``scale`` or ``q.size(-1) ** -0.5``;
    - an ``nn.MultiheadAttention`` call (no key padding mask, its attention weights unused; torchvision's ViT)
      becomes its query/key/value projections as ``nn.Linear`` modules, a split into heads, the same written-out
      attention, the merge of the heads and the output projection.

    A mask that does not depend on the input's values (``is_causal``, a buffer, a relative-position or shifted-window
    mask built from parameters and shapes) is computed once, kept as a buffer and applied inside the softmax
    (:func:`masked_softmax`, one graded unit: exact on decoded scores). A mask computed from the input, dropout or
    grouped-query heads keep the call fused (check_supported lists it).
    """
    entry = PassEntry(name="write_out_attention", modified=False)
    memo: dict = {}
    sdpa_names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    mha_names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
                 "is_causal")
    for node in list(gm.graph.nodes):
        mha = gm.get_submodule(node.target) if node.op == "call_module" else None
        if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            named = {**dict(zip(sdpa_names, node.args)), **node.kwargs}
            reason, kind = _sdpa_reason(named), "scaled_dot_product_attention"
        elif isinstance(mha, nn.MultiheadAttention):
            named = {**dict(zip(mha_names, node.args)), **node.kwargs}
            reason, kind = _mha_reason(mha, named, node), "MultiheadAttention"
        else:
            continue
        mask = (None if reason else _sdpa_mask(gm, named, memo) if mha is None
                else _mha_mask(gm, named, memo, mha.num_heads))
        reason = reason or (mask.reason if mask is not None else None)
        if reason:
            entry.skipped[node.name] = f"{kind} with {reason} stays fused"
            continue
        mask_node = None if mask is None else _mask_node(gm, node, mask)
        if mha is None:
            with gm.graph.inserting_before(node):
                out = _attention_graph(gm.graph, named["query"], named["key"], named["value"], named.get("scale"),
                                       mask_node)
            node.replace_all_uses_with(out)
        else:
            out = _write_out_mha(gm, node, mha, named, mask_node)
            for user in list(node.users):  # call[0] is the output; call[1] (the weights) is unused
                if user.args[1] == 0:
                    user.replace_all_uses_with(out)
                gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        entry.counts[kind] = entry.counts.get(kind, 0) + 1
        entry.nodes.append(out.name)
        entry.modified = True
    if entry.modified:
        gm.delete_all_unused_submodules()
    return finish_pass(gm, entry, report)
