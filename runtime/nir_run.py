"""A discrete-time runner for NIR graphs (the node types :func:`snnconvert.runtime.nir.to_nir` writes, and NIR's
hard-reset IF), and the check of an export against the converted network it came from (:func:`check_nir`)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from snnconvert.convert.errors import ConfigError
from snnconvert.convert.outputs import output_leaves
from snnconvert.convert.snn import SpikingNetwork

__all__ = ["NirCheck", "check_nir", "run_nir"]


def _order(graph) -> tuple[list[str], set[tuple[str, str]]]:
    """Evaluation order and the recurrent edges (those closing a cycle, found by a depth-first walk from the
    inputs): every other edge goes from an earlier node to a later one."""
    succ: dict[str, list[str]] = defaultdict(list)
    for s, d in graph.edges:
        succ[s].append(d)
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    post: list[str] = []
    roots = [n for n, v in graph.nodes.items() if type(v).__name__ == "Input"] + list(graph.nodes)
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                post.append(node)
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    return post[::-1], back


def run_nir(graph, inputs: torch.Tensor, *, dt: float | None = None) -> torch.Tensor:
    """Run a NIR graph (as :func:`to_nir` writes them) in discrete time: ``inputs [T, B, ...]`` -> the Output
    node's value at every step ``[T, B, ...]`` (raw, not decoded); for a graph with several Output nodes, a dict
    from their names to those tensors.

    Semantics: a node's inputs are summed; ``I``: u += dt·r·in; ``Threshold``: 1 where in > threshold; a recurrent
    edge carries its source's value of the previous step (nothing at step 1). Covers the node types :func:`to_nir`
    emits (Input, Output, I, Threshold, Scale, Affine, Linear, Conv1d, Conv2d, AvgPool2d, Flatten), and NIR's
    hard-reset ``IF`` (v += dt·r·in; spike where v > v_threshold; then v = v_reset), for comparisons.
    """
    dt = float(graph.metadata.get("dt", 0.0) if dt is None else dt)
    if not dt > 0:
        raise ConfigError("run_nir: the graph records no dt; pass dt=")
    order, back = _order(graph)
    out_names = sorted(n for n, v in graph.nodes.items() if type(v).__name__ == "Output")
    ins: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for s, d in graph.edges:
        ins[d].append((s, (s, d) in back))
    dev = inputs.device

    def p(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)

    params = {name: {k: p(getattr(node, k)) for k in ("weight", "bias", "threshold", "scale", "v_threshold", "v_reset")
                     if isinstance(getattr(node, k, None), np.ndarray)} for name, node in graph.nodes.items()}
    for name, node in graph.nodes.items():
        if type(node).__name__ in ("I", "IF"):  # the Euler gain dt·r, formed in float64 (dt = 1/r gives exactly 1)
            params[name]["gain"] = p(dt * np.asarray(node.r, np.float64))
    state: dict[str, torch.Tensor] = {}
    prev: dict[str, torch.Tensor] = {}
    outs = []
    for x_t in inputs:
        vals: dict[str, torch.Tensor] = {}
        for name in order:
            node, kind, q = graph.nodes[name], type(graph.nodes[name]).__name__, params[name]
            terms = [prev[s] if rec else vals[s] for s, rec in ins[name] if not rec or s in prev]
            x = x_t.float() if kind == "Input" else sum(terms[1:], terms[0]) if terms else None
            if x is None:
                raise ConfigError(f"run_nir: node {name!r} has no input")
            if kind in ("Input", "Output"):
                y = x
            elif kind == "I":
                state[name] = state.get(name, torch.zeros_like(x)) + q["gain"] * x
                y = state[name]
            elif kind == "IF":  # not emitted by to_nir (hard reset); run for comparisons with other exporters
                v = state.get(name, torch.zeros_like(x)) + q["gain"] * x
                y = (v > q["v_threshold"]).float()
                state[name] = torch.where(y > 0, q["v_reset"], v)
            elif kind == "Threshold":
                y = (x > q["threshold"]).float()
            elif kind == "Scale":
                y = x * q["scale"]
            elif kind in ("Affine", "Linear"):
                y = F.linear(x, q["weight"], q.get("bias"))
            elif kind in ("Conv1d", "Conv2d"):
                conv = F.conv2d if kind == "Conv2d" else F.conv1d
                pad = node.padding if isinstance(node.padding, str) else tuple(np.atleast_1d(node.padding).tolist())
                y = conv(x, q["weight"], q["bias"], tuple(np.atleast_1d(node.stride).tolist()), pad,
                         tuple(np.atleast_1d(node.dilation).tolist()), int(node.groups))
            elif kind == "AvgPool2d":
                y = F.avg_pool2d(x, tuple(np.asarray(node.kernel_size).tolist()),
                                 tuple(np.asarray(node.stride).tolist()), tuple(np.asarray(node.padding).tolist()))
            elif kind == "Flatten":
                end = node.end_dim + 1 if node.end_dim >= 0 else -1
                y = x.flatten(node.start_dim + 1, end)
            else:
                raise ConfigError(f"run_nir: node type {kind} ({name!r}) is not covered")
            vals[name] = y
        prev = {s: vals[s] for s, _ in back}
        outs.append([vals[n] for n in out_names])
    steps = [torch.stack([o[i] for o in outs]) for i in range(len(out_names))]
    return steps[0] if len(steps) == 1 else dict(zip(out_names, steps))


@dataclass(frozen=True)
class NirCheck:
    """A NIR graph run by :func:`run_nir` against the converted network, decoded outputs after every step.

    Attributes:
        images: number of images run.
        timesteps: steps run.
        max_abs: the largest |difference| of the decoded outputs over all steps, images and outputs.
        scale: the largest |decoded output| of the converted network (what ``max_abs`` compares with).
        same_top1: images whose argmax at the last step agree (on every output of a model with several).
    """

    images: int
    timesteps: int
    max_abs: float
    scale: float
    same_top1: int

    @property
    def text(self) -> str:
        return (f"{self.images} images, T = {self.timesteps}: max |decoded difference| {self.max_abs:.3g} "
                f"(outputs up to {self.scale:.3g}), same top-1 on {self.same_top1}/{self.images}")


def check_nir(graph, snn: SpikingNetwork, x: torch.Tensor, *, timesteps: int | None = None,
              host_prefix: bool | None = None) -> NirCheck:
    """Run ``graph`` on ``x [B, ...]`` for T steps with :func:`run_nir` and compare its decoded outputs (running
    mean) with the converted network's at every step. ``host_prefix``: whether the graph was exported with it
    (default: as its metadata says), so that ``x`` goes through the prefix layers first."""
    from snnconvert.runtime.nir import _HOST_INPUT, host_input  # the exporter's module imports this one

    T = int(timesteps or snn.timesteps)
    if host_prefix is None:
        host_prefix = str(graph.metadata.get("input", "")).startswith(_HOST_INPUT)
    with torch.no_grad():
        want = snn(x.float(), T)
        feed = host_input(snn, x) if host_prefix else x.float()
        raw = run_nir(graph, feed.unsqueeze(0).expand(T, *feed.shape))
    heads = output_leaves(want)
    raw = {"output": raw} if isinstance(raw, torch.Tensor) else raw
    names = [f"output.{path}" if path else "output" for path, _ in heads]
    if sorted(names) != sorted(raw):
        raise ConfigError(f"the NIR graph's outputs {sorted(raw)} are not the network's {names}")
    same = torch.ones(x.shape[0], dtype=torch.bool)
    max_abs = scale = 0.0
    for name, (_, w) in zip(names, heads):
        g = snn.coding.decode_unit(raw[name])
        if g.shape != w.shape:
            raise ConfigError(f"NIR output {name} has shape {tuple(g.shape)}, the network's {tuple(w.shape)}")
        same &= g[-1].flatten(1).argmax(1) == w[-1].flatten(1).argmax(1)
        max_abs, scale = max(max_abs, float((g - w).abs().max())), max(scale, float(w.abs().max()))
    return NirCheck(images=x.shape[0], timesteps=T, max_abs=max_abs, scale=scale, same_top1=int(same.sum()))
