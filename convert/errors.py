"""Typed errors: the only exceptions the CLI maps to exit codes.

Every message is one line that says what is wrong and what to do about it.
"""
from __future__ import annotations

from dataclasses import dataclass


class SnnConvertError(Exception):
    """Base class of every error raised on purpose by snnconvert."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty): what a one-line error
    quotes of a failure it wraps."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ConfigError(SnnConvertError, ValueError):
    """A configuration value is invalid (field name and fix in the message)."""


def check_float_images(x, what: str) -> None:
    """``what`` (the SNN, calibration, the example input) takes float images: integer pixels are a ConfigError
    saying how to scale them."""
    if hasattr(x, "is_floating_point") and not x.is_floating_point():
        raise ConfigError(f"{what} takes float images, got {x.dtype}: scale integer pixels to the range the model was "
                          "trained on first (e.g. x.float() / 255)")


@dataclass(frozen=True)
class UnsupportedNode:
    """One graph node the converter cannot handle."""

    name: str
    op: str
    target: str
    module_type: str | None = None
    source: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        parts = [f"{self.name}: {self.op} {self.target}"]
        if self.module_type:
            parts.append(f"[{self.module_type}]")
        if self.source:
            parts.append(f"at {self.source}")
        if self.reason:
            parts.append(f"({self.reason})")
        return " ".join(parts)


class UnsupportedOpError(SnnConvertError, ValueError):
    """Raised once with the full list of nodes that cannot be converted."""

    def __init__(self, nodes: list[UnsupportedNode], *, hint: str = "", what: str = "unsupported node(s) in the model"
                 ) -> None:
        self.nodes = list(nodes)
        lines = [f"{len(self.nodes)} {what}:"]
        lines += [f"  - {n.describe()}" for n in self.nodes]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class ExportError(UnsupportedOpError):
    """A converted network holds nodes that an export format cannot express (all of them listed at once)."""


class TraceError(SnnConvertError):
    """torch.fx could not trace the model."""


class OnnxImportError(SnnConvertError):
    """An ONNX file cannot be read, checked or imported."""


class CalibrationError(SnnConvertError):
    """Calibration saw no data or produced non-finite statistics."""


class DataError(SnnConvertError):
    """A data set is missing or malformed."""


class ModelLoadError(SnnConvertError):
    """A model reference (zoo name, file:factory, weights) cannot be resolved."""


class BackendUnavailableError(SnnConvertError):
    """The requested runtime backend cannot run here; never replaced silently by another."""


class ArtifactError(SnnConvertError):
    """A saved SNN artifact is missing, incomplete or from an incompatible version."""
