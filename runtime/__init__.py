"""snnconvert.runtime: compile, run, evaluate and load converted spiking networks.

Backends are an explicit choice: ``"torch"`` runs the reference SNN (plain PyTorch). An unavailable backend raises
``BackendUnavailableError``; it is never replaced silently by another one.
"""
from __future__ import annotations

import os

import torch

from snnconvert.convert import SpikingNetwork, convert_with_thresholds, load_artifact
from snnconvert.convert.errors import BackendUnavailableError, ConfigError
from snnconvert.runtime.evaluate import EvalReport, build_report, evaluate

BACKENDS = ("torch", "triton")

__all__ = ["compile", "run", "evaluate", "load", "EvalReport", "build_report", "BACKENDS"]


def compile(snn: SpikingNetwork, backend: str = "torch", *, device: str | torch.device = "cpu") -> SpikingNetwork:  # noqa: A001
    """Lower the reference SNN to ``backend`` on ``device``.

    Raises:
        ConfigError: unknown backend name.
        BackendUnavailableError: the backend cannot run here (never a silent fallback).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not valid; choose one of: {', '.join(BACKENDS)}")
    if backend == "triton":
        raise BackendUnavailableError(
            "the triton backend is not available in this version (fused neuron kernels are not built yet); "
            "use backend='torch'")
    return snn.to(device)


def run(snn: SpikingNetwork, x: torch.Tensor, timesteps: int | None = None, *, mode: str = "multi") -> torch.Tensor:
    """Decoded outputs after every step, ``[T, B, ...]``."""
    with torch.no_grad():
        return snn(x, timesteps, mode=mode)


def load(path: str | os.PathLike) -> SpikingNetwork:
    """Rebuild a saved SNN (no calibration): the same thresholds, so identical outputs."""
    artifact = load_artifact(path)
    snn, _ = convert_with_thresholds(artifact.model, artifact.thresholds, artifact.config)
    return snn
