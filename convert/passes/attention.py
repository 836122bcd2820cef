"""Attention written out: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` become their matrix
products, softmax and projections as graph nodes, so the products and the softmax convert like any other node
(a normalisation pass, same signature and report entry as those of ``normalize.py``)."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from snnconvert.convert.passes.normalize import finish_pass, unique_name
from snnconvert.convert.pipeline import ConversionReport, PassEntry, PassResult

__all__ = ["write_out_attention"]


def _attention_graph(graph: fx.Graph, q: fx.Node, k: fx.Node, v: fx.Node, scale) -> fx.Node:
    """``softmax((q @ kᵀ) · scale, -1) @ v`` as graph nodes (before the current insertion point); ``scale`` None:
    ``q.size(-1) ** -0.5``, the fused call's default."""
    if scale is None:
        scale = graph.call_function(operator.pow, (graph.call_method("size", (q, -1)), -0.5))
    scores = graph.call_function(operator.matmul, (q, graph.call_method("transpose", (k, -2, -1))))
    weights = graph.call_function(F.softmax, (graph.call_function(operator.mul, (scores, scale)),), {"dim": -1})
    return graph.call_function(operator.matmul, (weights, v))


def _sdpa_reason(named: dict) -> str | None:
    """Why a ``scaled_dot_product_attention`` call cannot be written out (None: it can)."""
    if named.get("attn_mask") is not None:
        return "an attention mask"
    if named.get("dropout_p", 0.0) != 0.0:
        return "attention dropout"
    if named.get("is_causal", False) is not False:
        return "is_causal"
    if named.get("enable_gqa", False) is not False:
        return "grouped-query heads"
    if isinstance(named.get("scale"), fx.Node):
        return "a scale computed at run time"
    return None


def _mha_reason(mha: nn.MultiheadAttention, named: dict, node: fx.Node) -> str | None:
    """Why an ``nn.MultiheadAttention`` call cannot be written out (None: it can)."""
    for key in ("key_padding_mask", "attn_mask"):
        if named.get(key) is not None:
            return f"{key}"
    if named.get("is_causal", False) is not False:
        return "is_causal"
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


def _write_out_mha(gm: fx.GraphModule, node: fx.Node, mha: nn.MultiheadAttention, named: dict) -> fx.Node:
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
        out = _attention_graph(graph, *heads, None)
        b, n = graph.call_method("size", (seqs[0], 0)), graph.call_method("size", (seqs[0], 1))
        merged = graph.call_method("reshape", (graph.call_method("transpose", (out, 1, 2)), b, n, mha.embed_dim))
        result = graph.call_module(names[3], (merged,))
        if not mha.batch_first:
            result = graph.call_method("transpose", (result, 0, 1))
    return result


def write_out_attention(gm: fx.GraphModule, cfg, report: ConversionReport) -> PassResult:
    """Write fused attention out, so that its products become units (method.md §5.2, §6):

    - ``F.scaled_dot_product_attention(q, k, v)`` (no mask, no dropout, not causal; timm's ViT attention in eval
      mode) becomes ``softmax((q @ kᵀ) · s, -1) @ v`` with s the call's ``scale`` or ``q.size(-1) ** -0.5``;
    - an ``nn.MultiheadAttention`` call (no masks, its attention weights unused; torchvision's ViT) becomes its
      query/key/value projections as ``nn.Linear`` modules, a split into heads, the same written-out attention, the
      merge of the heads and the output projection.

    A call with a mask, dropout, ``is_causal`` or grouped-query heads stays (check_supported lists it).
    """
    entry = PassEntry(name="write_out_attention", modified=False)
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
        if reason:
            entry.skipped[node.name] = f"{kind} with {reason} stays fused"
            continue
        if mha is None:
            with gm.graph.inserting_before(node):
                out = _attention_graph(gm.graph, named["query"], named["key"], named["value"], named.get("scale"))
            node.replace_all_uses_with(out)
        else:
            out = _write_out_mha(gm, node, mha, named)
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
