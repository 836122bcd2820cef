"""torch.fx front end: trace a user's ``nn.Module`` on a deep copy in eval mode.

The user's model is never modified: it is deep-copied once here, the copy is put in eval mode and traced. Leaf
modules follow torch.fx's default policy (modules from ``torch.nn`` are leaves), so layers stay ``call_module``
nodes that passes can match with ``isinstance``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from pathlib import Path

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from snnconvert.convert.errors import TraceError

log = logging.getLogger(__name__)

_TRACE_HINT = (
    "torch.fx needs a model without data-dependent control flow (if/for on tensor values) or shapes; "
    "move such logic out of forward(), or export the model to ONNX and convert the .onnx file"
)


def trace_module(model: torch.nn.Module) -> fx.GraphModule:
    """Trace a deep copy of ``model`` in eval mode.

    Args:
        model: the user's ANN. It is not modified (its parameters, buffers and training flag stay as they are).

    Returns:
        A ``GraphModule`` in eval mode that owns its own copies of every parameter.

    Raises:
        TraceError: tracing failed; the message names the cause and how to work around it.
    """
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):
        gm = copy.deepcopy(model)
        gm.eval()
        return gm
    work = copy.deepcopy(model)
    work.eval()
    try:
        tracer = fx.Tracer()
        tracer.record_stack_traces = True
        graph = tracer.trace(work)
    except Exception as exc:  # noqa: BLE001 - any tracer failure becomes one clear error
        raise TraceError(f"cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}; {_TRACE_HINT}") from exc
    gm = fx.GraphModule(work, graph, class_name=type(model).__name__)
    gm.eval()
    return gm


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
            prop.propagate(example_input)
    except Exception as exc:  # noqa: BLE001 - any failure of the model itself
        cause = exc.__cause__ or exc
        lines = str(cause).strip().splitlines()
        where = f"node {prop.node.name}: " if prop.node is not None else ""
        raise RuntimeError(where + (lines[0] if lines else type(cause).__name__)) from exc


def node_source(node: fx.Node) -> str | None:
    """``file:line`` of the user code that created ``node`` (innermost frame outside torch), if recorded."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    torch_dir = str(Path(torch.__file__).parent)
    frames = []
    for line in trace.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            path, _, rest = line[len('File "'):].partition('"')
            if not path.startswith(torch_dir):
                lineno = rest.split("line", 1)[-1].split(",", 1)[0].strip()
                frames.append(f"{path}:{lineno}")
    return frames[-1] if frames else None
