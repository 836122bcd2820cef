"""Pass infrastructure: ``PassResult``, ``ConversionReport`` and the pass manager ``run_passes``.

A pass is a callable ``pass_fn(gm, cfg, report) -> PassResult``. The manager logs each pass, lints and recompiles
the graph after it and re-raises failures naming the pass (and the passes before it). ``modified`` must be truthful:
a second run of an idempotent pass reports ``modified=False``.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from snnconvert.convert.errors import SnnConvertError

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass returns: the (possibly same) graph module and whether it changed anything."""

    gm: fx.GraphModule
    modified: bool


@dataclass
class PassEntry:
    """One report entry: what a pass (or stage) changed."""

    name: str
    modified: bool
    counts: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modified": self.modified,
            "counts": dict(self.counts),
            "nodes": list(self.nodes),
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 6),
        }


class PassError(SnnConvertError):
    """A pass failed; the message names it and the passes that ran before it."""


@dataclass
class ConversionReport:
    """Structured record of a conversion: passes, op tables before/after, calibration, replacements."""

    passes: list[PassEntry] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    sites: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    analog_nodes: list[str] = field(default_factory=list)
    input_shape: list[int] | None = None  # per-sample shape of the example input the model was traced / run at
    shape_branches: list[str] = field(default_factory=list)  # branches on shapes followed for it (frontend.py)
    #: functions registered with torch.fx.wrap that stayed one call, and why tracing through them failed (frontend.py)
    opaque_functions: dict[Any, str] = field(default_factory=dict)  # keyed by the function

    def entry(self, name: str) -> PassEntry:
        """The latest entry named ``name`` (KeyError if none)."""
        for e in reversed(self.passes):
            if e.name == name:
                return e
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": [p.to_dict() for p in self.passes],
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
            "calibration": self.calibration,
            "sites": self.sites,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "analog_nodes": list(self.analog_nodes),
            "input_shape": self.input_shape,
            "shape_branches": list(self.shape_branches),
        }

    def to_table(self) -> str:
        """A plain-text before/after op table plus one line per pass."""
        keys = sorted(set(self.ops_before) | set(self.ops_after))
        width = max([len(k) for k in keys] + [10])
        lines = [f"{'op':<{width}}  before  after"]
        lines += [f"{k:<{width}}  {self.ops_before.get(k, 0):>6}  {self.ops_after.get(k, 0):>5}" for k in keys]
        for p in self.passes:
            counts = ", ".join(f"{k}={v}" for k, v in p.counts.items()) or "no change"
            lines.append(f"pass {p.name}: {counts}")
        return "\n".join(lines)


PassFn = Callable[[fx.GraphModule, Any, ConversionReport], PassResult]


def op_table(gm: fx.GraphModule) -> dict[str, int]:
    """Count nodes by kind: module class name for call_module, function/method name otherwise."""
    counts: Counter[str] = Counter()
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[type(modules[node.target]).__name__] += 1
        elif node.op == "call_function":
            counts[getattr(node.target, "__name__", str(node.target))] += 1
        elif node.op == "call_method":
            counts[f".{node.target}"] += 1
    return dict(sorted(counts.items()))


def run_passes(
    gm: fx.GraphModule, passes: Sequence[PassFn], cfg: Any, report: ConversionReport
) -> fx.GraphModule:
    """Run ``passes`` in order; lint, recompile and time each; wrap failures with the pass name.

    Raises:
        SnnConvertError subclasses raised by a pass unchanged (they are meant for the user);
        PassError for any other failure, naming the pass and those before it.
    """
    done: list[str] = []
    for pass_fn in passes:
        name = getattr(pass_fn, "__name__", repr(pass_fn))
        start = time.perf_counter()
        try:
            result = pass_fn(gm, cfg, report)
            result.gm.graph.lint()
            result.gm.recompile()
        except SnnConvertError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            after = f" (after {', '.join(done)})" if done else ""
            raise PassError(f"pass {name} failed{after}: {type(exc).__name__}: {exc}") from exc
        gm = result.gm
        elapsed = time.perf_counter() - start
        try:
            report.entry(name).seconds = elapsed
        except KeyError:
            report.passes.append(PassEntry(name=name, modified=result.modified, seconds=elapsed))
        log.debug("pass %s: modified=%s (%.3f s)", name, result.modified, elapsed)
        done.append(name)
    return gm
