"""Network outputs that are not one tensor: a tuple, list or dict of tensors (nested), as multi-head, detection or
multi-task models return them (users.md §2.7, §4.11).

The SNN keeps the model's output structure: every tensor leaf is run, decoded and offset on its own (differential
coding captures one output offset per leaf). Evaluation needs the class scores: :func:`select_output` picks them by
a key path (``"cls"``, ``1``, ``"heads.0"``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from snnconvert.convert.errors import ConfigError

__all__ = ["map_outputs", "select_output", "describe_outputs", "output_leaves"]


def map_outputs(fn: Callable[..., torch.Tensor], tree: Any, *rests: Any) -> Any:
    """``fn`` applied to every tensor leaf of ``tree`` (with the matching leaves of ``rests``, same structure); other
    leaves (None, numbers) are kept from ``tree``. A plain tensor is a tree of one leaf."""
    if isinstance(tree, torch.Tensor):
        return fn(tree, *rests)
    return pytree.tree_map(lambda leaf, *others: fn(leaf, *others) if isinstance(leaf, torch.Tensor) else leaf,
                           tree, *rests)


def output_leaves(tree: Any, leaf_type: type = torch.Tensor) -> list[tuple[str, Any]]:
    """``(path, tensor)`` for every tensor leaf, in flattening order; the path of a plain tensor is ``""``, of a
    leaf of a tuple/list/dict its indices and keys joined by dots (``"1"``, ``"cls"``, ``"heads.0"``).
    ``leaf_type``: what counts as a leaf (``torch.fx.Node`` for a graph's output argument)."""
    if isinstance(tree, leaf_type):
        return [("", tree)]
    leaves, _ = pytree.tree_flatten_with_path(tree)
    return [(".".join(_key(k) for k in path), leaf) for path, leaf in leaves if isinstance(leaf, leaf_type)]


def _key(entry: Any) -> str:
    for attr in ("idx", "key", "name"):  # SequenceKey, MappingKey, GetAttrKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def describe_outputs(tree: Any, *, leading: int = 1) -> str:
    """``"2 outputs: 0 [B, 3, 12, 12], 1 [B, 4]"``: the per-sample shapes (``leading`` dims dropped: 1 for an ANN's
    outputs [B, ...], 2 for an SNN's decoded outputs [T, B, ...]) after a batch dim B."""
    leaves = output_leaves(tree)
    parts = [f"{path} [{', '.join(['B', *(str(d) for d in t.shape[leading:])])}]" for path, t in leaves]
    return f"{len(leaves)} outputs: {', '.join(parts)}"


def select_output(tree: Any, key: int | str | None, *, leading: int = 1) -> torch.Tensor:
    """The tensor at ``key`` (a leaf path of :func:`output_leaves`, or an int index of a tuple/list output); with
    ``key`` None, the output itself when it is one tensor, or its only tensor (torchvision's segmentation models
    return ``{"out": scores}``). ``leading``: as :func:`describe_outputs` (errors only).

    Raises:
        ConfigError: the output holds several tensors and no key was given, the key names no tensor output, or a
            key was given for an output that is one tensor.
    """
    if key is None:
        if isinstance(tree, torch.Tensor):
            return tree
        leaves = list(output_leaves(tree))
        if len(leaves) == 1:
            return leaves[0][1]
        raise ConfigError(f"the model returns {describe_outputs(tree, leading=leading)}; name the class scores to "
                          "evaluate (API: output=KEY, CLI: --logits KEY)")
    if isinstance(tree, torch.Tensor):
        raise ConfigError(f"output {key!r}: the model returns one tensor, the class scores; name an output only for "
                          "a model with several (drop output=KEY / --logits)")
    leaves = dict(output_leaves(tree))
    if str(key) in leaves:
        return leaves[str(key)]
    known = ", ".join(repr(p) for p in leaves) or "none"
    raise ConfigError(f"output {key!r} is not one of the model's outputs ({known}); "
                      f"the model returns {describe_outputs(tree, leading=leading)}")
