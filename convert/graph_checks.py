"""Checks of the normalised graph on the first calibration images, before calibration.

The SNN runs its T time steps in the batch dim (``[T·B, ...]``, layer by layer): so one image's output must not
depend on the other images of its batch (:func:`check_per_sample`), every stateful unit must read its input with the
images outermost in dim 0 (:func:`check_batch_layout`), and the graph must compute what the model computes
(:func:`check_same_as_model`).
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx

from snnconvert.convert.errors import CalibrationError, ConfigError, first_line
from snnconvert.convert.frontend import autocast_off, copy_model, node_source
from snnconvert.convert.outputs import output_leaves

log = logging.getLogger("snnconvert")


def static_batch_advice(gm: fx.GraphModule) -> str | None:
    """What to do when an ONNX file with a static batch fails on another batch size, else ``None``."""
    batch = gm.meta.get("onnx", {}).get("static_batch")
    if batch is None:
        return None
    return (f"the ONNX file was exported with a fixed batch size of {batch}, which the import could not free "
            "everywhere (e.g. a reshape that merges the batch with attention heads): export it again with a dynamic "
            "batch axis, torch.onnx.export(..., dynamic_axes={'<input name>': {0: 'batch'}}) or, with dynamo=True, "
            "dynamic_shapes")


def _probe_images(example_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two images the checks run: the example's first, and a shifted copy of it.

    Raises:
        CalibrationError: the first image holds NaN or infinite values.
    """
    a = example_inputs[:1].float()
    if not bool(torch.isfinite(a).all()):
        raise CalibrationError("the first calibration image holds NaN or infinite values; clean the calibration data")
    return a, a * 0.5 + 0.25


def check_per_sample(gm: fx.GraphModule, example_inputs: torch.Tensor) -> None:
    """The SNN runs its time steps in the batch dim (``[T·B, ...]``), so one image's output must not depend on the
    other images of its batch: checked on two images (the example's first, and a shifted copy of it), together and
    each alone.

    Raises:
        ConfigError: the outputs differ (an operation along the batch dim: ``x.mean(0)``, ``x.flip(0)``, batch
            statistics) or the graph cannot run on one image (a batch size fixed in the code).
    """
    a, b = _probe_images(example_inputs)
    fix = "make every operation per sample (the batch dim may only be reshaped, e.g. into windows, and back)"
    with torch.no_grad():
        try:
            # forward(), not __call__: fx's __call__ prints the generated code of a failing line to stderr
            pair, alone = gm.forward(torch.cat([a, b])), [gm.forward(a), gm.forward(b)]
        except Exception as exc:  # noqa: BLE001 - the model itself fails on one or two images
            raise ConfigError(f"the model fails on a batch of one or two images ({first_line(exc)}); the SNN runs "
                              "time steps in the batch dim, so a batch size fixed in the code (or an ONNX export "
                              f"without a dynamic batch axis) breaks it: {static_batch_advice(gm) or fix}") from exc
    for (path, leaf), (_, one) in zip(output_leaves(pair), output_leaves(alone[0])):
        name = f"output{f' {path}' if path else ''}"
        if leaf.dim() == 0:
            raise ConfigError(f"the model's {name} is a 0-dim scalar: the SNN decodes outputs per image, so return "
                              "one value per image ([B, ...]), e.g. a loss reduced outside the model")
        if leaf.is_floating_point() and not bool(torch.isfinite(leaf).all()):
            raise CalibrationError(f"the model's {name} is NaN or infinite on the first calibration image: check its "
                                   "weights (a NaN or infinite value) and what it computes (a log or division of 0)")
        if leaf.shape == one.shape:  # the same shape for two images as for one: no batch dim
            constant = all(torch.equal(leaf, o) for o in (one, dict(output_leaves(alone[1]))[path]))
            raise ConfigError(f"the model's {name} has no batch dim ({list(leaf.shape)} for one image and for two)"
                              + (" and does not depend on the input (anchors, priors?)" if constant else "")
                              + ": the SNN decodes outputs per image ([B, ...]); return it from outside the model "
                              "(e.g. a buffer the caller reads), or give it a batch dim (x.new_ones(B, 1, 1) * it)")
    for i, single in enumerate(alone):
        for (path, got), (_, want) in zip(output_leaves(pair), output_leaves(single)):
            if got.shape[1:] != want.shape[1:] or not _same_values(got[i:i + 1], want):
                where = f" (output {path})" if path else ""
                node = _first_mixing_node(gm, a, b)
                at = f", first at node {node}" if node else ""
                raise ConfigError(f"the model's output for one image depends on the other images of its batch{where}"
                                  f"{at}: an operation along the batch dim (x.mean(0), x.flip(0), batch statistics); "
                                  "the SNN runs time steps in the batch dim, so it would mix them: "
                                  f"{static_batch_advice(gm) or fix}")


def check_same_as_model(model: torch.nn.Module, gm: fx.GraphModule, example_inputs: torch.Tensor) -> None:
    """The normalised graph computes what the model computes (on the example's first two images, run in a copy of
    the model: its forward may change its own state). torch.fx records ``x += y`` as ``x + y``, so an in-place update
    of a tensor that another name still holds (``skip = x; x += f(x)``) is lost in the graph; a model whose own
    outputs vary from call to call (noise drawn in forward) is not compared.

    Raises:
        ConfigError: an output differs (beyond the rounding of folded batch norms): one line naming the output and
            the largest difference, and how to write the update so that the graph follows it.
    """
    x = example_inputs[:2].float()
    reference = copy_model(model).eval()
    try:
        with torch.no_grad(), autocast_off():  # the graph computes autocast blocks in float32 (with a warning)
            want, again = reference(x.clone()), reference(x.clone())  # a forward may write into its input
    except Exception as exc:  # noqa: BLE001 - the graph runs where the eager model does not (its autocast dtypes)
        log.debug("the model's own forward fails on the example (%s): not compared with its graph", first_line(exc))
        return
    finally:
        del reference
    with torch.no_grad():
        got = gm.forward(x)
    wanted, repeated, gotten = output_leaves(want), output_leaves(again), output_leaves(got)
    if len(wanted) != len(gotten) or any(not torch.equal(w, a) for (_, w), (_, a) in zip(wanted, repeated)):
        return  # another output structure, or not deterministic: nothing to compare against
    for (path, w), (_, g) in zip(wanted, gotten):
        if not w.is_floating_point():
            continue
        if g.shape != w.shape or not _same_values(g.to(w.dtype), w):
            where = f"output {path}" if path else "output"
            diff = f"largest difference {float((g - w).abs().max()):.3g}" if g.shape == w.shape else \
                f"shape {list(g.shape)} instead of {list(w.shape)}"
            raise ConfigError(
                f"the traced graph's {where} differs from the model's ({diff} on the first calibration images): "
                "torch.fx records an in-place update such as x += y as x = x + y, so a tensor another name still "
                "holds (skip = x; x += f(x)) keeps its old values in the graph; write the update out of place and "
                "use the new name where the model reads the updated values (skip = x = x + f(x)); a model without "
                "such an update has found a defect of the converter: please report it")


def _same_values(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to the rounding of another batch size (rtol 1e-3, atol 1e-4 of ``want``'s largest magnitude)."""
    scale = float(want.abs().max()) if want.numel() else 0.0
    return torch.allclose(got, want, rtol=1e-3, atol=1e-4 * max(scale, 1e-6))


def _node_values(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's tensor value when ``gm`` runs on ``x`` (by node name)."""
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def _first_mixing_node(gm: fx.GraphModule, a: torch.Tensor, b: torch.Tensor) -> str | None:
    """The first node (graph order) whose value for image ``a`` differs between running ``a`` alone and with ``b``:
    ``name (file:line)``; None when no node shows it. Rows of the first image are the first half of the batch dim
    (also when the batch dim was reshaped, e.g. into windows)."""
    alone, pair = _node_values(gm, a), _node_values(gm, torch.cat([a, b]))
    for node in gm.graph.nodes:
        one, two = alone.get(node.name), pair.get(node.name)
        if one is None or two is None or one.dim() == 0 or two.shape[1:] != one.shape[1:] or \
                two.shape[0] != 2 * one.shape[0]:
            continue
        if not _same_values(two[:one.shape[0]], one):
            source = node_source(node)
            return f"{node.name}" + (f" ({source})" if source else "")
    return None


def _rows_match(rows: torch.Tensor, alone: torch.Tensor, other: torch.Tensor) -> bool:
    """An image's rows of a batch equal its rows alone up to the rounding of another batch size: the same non-finite
    values (a causal mask's -inf) at the same places, and the finite ones within 1 % of the largest, or 5 % of how
    far the other image's values are. Rows of the other image, or of other frames or
    steps, differ by about as much as the values; rounding is far smaller, but not always within 1e-3 of a tensor's
    own size: a difference of nearly equal values (YOLO-OBB's box decoding, (rb - lt) / 2 around 7.5 giving 2e-3)
    keeps the operands' rounding (1.9e-6)."""
    rows, alone, other = rows.double(), alone.double(), other.double()
    finite = alone.isfinite()  # -inf of a causal mask, NaN of a NaN weight: the same non-finite values in both
    if not torch.equal(rows.isfinite(), finite) or not torch.equal(rows[~finite].nan_to_num(),
                                                                   alone[~finite].nan_to_num()):
        return False
    if not bool(finite.any()):
        return True
    error = float((rows - alone)[finite].abs().max())
    both = finite & other.isfinite()
    spread = float((other - alone)[both].abs().max()) if bool(both.any()) else 0.0
    return error <= 1e-2 * float(alone[finite].abs().max()) or error <= 0.05 * spread


def _stateful_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes that become units with state across time steps: ReLU and identity sites, max-pools, graded units
    (functions and products of activations)."""
    from snnconvert.convert.passes.identity import IdentitySite
    from snnconvert.convert.passes.normalize import is_canonical_relu, is_maxpool
    from snnconvert.convert.passes.support import graded_kind

    cache: dict = {}
    sites = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), IdentitySite):
            sites.append(node)
        elif node.op in ("call_module", "call_function", "call_method") and (
                is_canonical_relu(gm, node) or is_maxpool(gm, node) or graded_kind(gm, node, cache)):
            sites.append(node)
    return sites


def check_batch_layout(gm: fx.GraphModule, example_inputs: torch.Tensor) -> None:
    """Every stateful unit reads its input with the images outermost in dim 0 (``[B, ...]``, or ``[B·k, ...]`` with
    each image's rows together and in batch order, as windows are): the SNN folds its time steps into that dim and a
    unit unfolds them from it. An input whose first dim is something else (``x.transpose(0, 1)``: a sequence-first or
    frames-first layout, ``W @ x.T``) would mix steps and images with no error: checked on two images, each alone and
    together.

    Raises:
        ConfigError: one line naming the first such unit, the shapes, and what to write instead.
    """
    a, b = _probe_images(example_inputs)
    alone_a, alone_b, pair = _node_values(gm, a), _node_values(gm, b), _node_values(gm, torch.cat([a, b]))
    for node in _stateful_sites(gm):
        for arg in node.all_input_nodes:
            one, other, two = alone_a.get(arg.name), alone_b.get(arg.name), pair.get(arg.name)
            if one is None or other is None or two is None or torch.equal(one, other):
                continue  # not a tensor, or the same for both images: a constant
            n = one.shape[0] if one.dim() else 0
            if one.dim() and two.shape[1:] == one.shape[1:] and two.shape[0] == 2 * n and \
                    _rows_match(two[:n], one, other) and _rows_match(two[n:], other, one):
                continue
            source = node_source(node)
            at = f"{node.name}" + (f" ({source})" if source else "")
            raise ConfigError(
                f"{at} reads a tensor whose first dim is not the batch of images ({list(one.shape)} for one image, "
                f"{list(two.shape)} for two; e.g. x.transpose(0, 1): a sequence-first or frames-first layout): the "
                "SNN runs its time steps in the batch dim, so every neuron and unit must read [B, ...] (or [B*k, ...] "
                "with each image's rows together); keep the batch first (batch_first=True, x.flatten(0, 1) of "
                "[B, F, ...] instead of frames first) and move it back before the next activation")
