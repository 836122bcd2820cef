"""snnconvert.runtime: compile, run, evaluate and load converted spiking networks.

Backends are an explicit choice: ``"torch"`` runs the reference SNN (plain PyTorch); ``"triton"`` runs every spiking
neuron in a fused Triton kernel (``runtime/lower.py``, ``runtime/kernels/``) on a CUDA device, or on CPU under the
Triton interpreter (``TRITON_INTERPRET=1``, for tests); ``"native"`` runs every spiking neuron in a fused C kernel
with OpenMP on the CPU (built with the system C compiler on first use, ``runtime/kernels/native.py``);
``"inductor"`` runs every spiking neuron's time loop as the reference step functions compiled by ``torch.compile``
(one fused loop per call, CPU and CUDA; ``runtime/kernels/inductor.py``). An
unavailable backend raises ``BackendUnavailableError`` saying what is missing; it is never replaced silently by
another one.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path

import torch

from snnconvert.convert import (
    ConversionResult,
    SpikingNetwork,
    convert_with_thresholds,
    load_artifact,
    load_onnx,
    state_snapshot,
)
from snnconvert.convert.artifact import graph_digest
from snnconvert.convert.calibrate import CalibrationReport
from snnconvert.convert.errors import ArtifactError, BackendUnavailableError, ConfigError
from snnconvert.convert.pipeline import ConversionReport
from snnconvert.runtime.evaluate import EvalReport, build_report, evaluate
from snnconvert.runtime.fuse import fuse_bounded_relu_pairs
from snnconvert.runtime.kernels import triton_status
from snnconvert.runtime.kernels.inductor import inductor_status
from snnconvert.runtime.kernels.native import native_status
from snnconvert.runtime.lower import DTYPES, lower_neurons, set_precision
from snnconvert.runtime.malloc import keep_freed_memory
from snnconvert.runtime.report_md import report_markdown
from snnconvert.runtime.sweep import SweepReport, sweep

log = logging.getLogger(__name__)

BACKENDS = ("torch", "triton", "native", "inductor")

__all__ = ["compile", "run", "evaluate", "load", "load_result", "EvalReport", "build_report", "report_markdown",
           "BACKENDS", "DTYPES", "triton_status", "native_status", "inductor_status", "backend_status", "sweep",
           "SweepReport", "keep_freed_memory"]


def backend_status(backend: str, device: str | torch.device) -> tuple[bool, str]:
    """Can ``backend`` run on ``device`` here? ``(ok, reason)``: when not, ``reason`` is one line saying what is
    missing and what to do (the native backend builds its kernels to find out)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not valid; choose one of: {', '.join(BACKENDS)}")
    if backend == "triton":
        return triton_status(device)
    if backend == "native":
        return native_status(device)
    if backend == "inductor":
        return inductor_status(device)
    return True, "torch reference neurons"


def check_device(device: str | torch.device, *, available: bool = True) -> torch.device:
    """``device`` as a torch device: ``cpu`` or ``cuda[:N]``, and (``available``) one this machine has.

    Raises:
        ConfigError: not a device name, another device type, or a CUDA index this machine does not have.
        BackendUnavailableError: CUDA asked for where there is none.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {str(device)!r} is not a device; use cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r}: snnconvert runs on cpu or cuda[:N]")
    if not available:
        return parsed
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {str(device)!r}: no CUDA device is available here; use device='cpu'")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def compile(  # noqa: A001
    snn: SpikingNetwork,
    backend: str = "torch",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fuse: bool = True,
) -> SpikingNetwork:
    """Lower the reference SNN to ``backend`` on ``device``, computing in ``dtype``; ``snn`` itself is not changed.

    Args:
        snn: the reference network (from ``snnconvert.convert.convert``).
        backend: ``"torch"`` (reference neurons), ``"triton"`` (fused Triton neuron kernels; CUDA), ``"native"``
            (fused C neuron kernels; CPU) or ``"inductor"`` (the reference step loops compiled by ``torch.compile``;
            CPU and CUDA; each new neuron configuration compiles for 2–15 s on its first call).
        device: where the compiled network runs.
        dtype: ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``. For fp16/bf16 the thresholds are rounded
            to the dtype (so every emitted value is exact in it) and the stateless layers run in it; neuron state
            stays fp32 and the outputs are returned in fp32 (``runtime/lower.py``). Same rule on every backend.
        fuse: run each decomposed bounded ReLU (ReLU6, clamp(0, a)) as one unit (``runtime/fuse.py``): the same
            outputs and event counts with fewer passes over memory. Applies to fp32 networks on every backend and
            to fp16/bf16 networks on the Triton backend (the torch fast path and the native and inductor kernels are
            fp32 only);
            False keeps the graph as converted.

    Returns:
        A new :class:`SpikingNetwork` (a deep copy of ``snn``) on ``device``. The kernel backends have no backward
        pass: their copy's parameters do not require grad, and an input that requires grad raises ConfigError.

    Raises:
        ConfigError: unknown backend name or unsupported dtype.
        BackendUnavailableError: the backend cannot run on ``device`` here, with what to do (never a silent
            fallback).
        UnsupportedOpError: the network holds stateful modules the backend cannot lower (all listed).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not valid; choose one of: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in DTYPES)
        raise ConfigError(f"dtype {dtype} is not supported; choose one of: {names}")
    device = check_device(device, available=False)
    ok, reason = backend_status(backend, device)  # first: what the backend needs says more than "no CUDA here"
    if not ok:
        raise BackendUnavailableError(reason)
    check_device(device)
    program = copy.deepcopy(snn)
    program.reset()
    program.invalidate()  # captured offsets are recomputed with the compiled layers (dtype, device, kernels)
    if backend != "torch":
        lower_neurons(program, backend, dtype)
        program.requires_grad_(False)  # kernel backends are inference-only: plain calls need no torch.no_grad()
    else:
        set_precision(program, dtype)
    if fuse and (dtype == torch.float32 or backend == "triton"):
        fuse_bounded_relu_pairs(program)
    return program.to(device)


def run(snn: SpikingNetwork, x: torch.Tensor, timesteps: int | None = None, *, mode: str = "multi") -> torch.Tensor:
    """Decoded outputs after every step, ``[T, B, ...]``."""
    with torch.no_grad():
        return snn(x, timesteps, mode=mode)


def load(path: str | os.PathLike) -> SpikingNetwork:
    """Rebuild a saved SNN (no calibration): the same thresholds, so identical outputs.

    A folder saved from a Python model imports the module named in its ``source.json`` and calls that factory to
    rebuild the ANN (only a class or Python function defined outside the standard library is called): like any
    model code, load folders only from a trusted source.

    Raises:
        ArtifactError: not an artifact folder, a missing or damaged file, an unknown format, or a model source that
            cannot be rebuilt.
    """
    artifact = load_artifact(path)
    snn, _ = _rebuild(path, artifact)
    return snn


def _rebuild(path: str | os.PathLike, artifact) -> tuple[SpikingNetwork, ConversionReport]:
    """The SNN of a read artifact: its ANN converted again with the saved thresholds (no calibration).

    Raises:
        ArtifactError: the thresholds do not fit the model (a ``thresholds.pt`` of another conversion), naming the
            folder and the file.
    """
    shape = artifact.report.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ArtifactError(f"{path}: report.json's input_shape {shape!r} is not a list of sizes; convert the model "
                            "again with --output DIR (or save the conversion again with ConversionResult.save)")
    try:
        snn, report = convert_with_thresholds(artifact.model, artifact.thresholds, artifact.config, shape)
    except ConfigError as exc:
        if artifact.graph:  # the manifest vouched for thresholds.pt: the model is what changed
            where = (f"the model {artifact.source.ref}" if artifact.source.kind == "python"
                     else "the saved model.onnx")
            raise ArtifactError(f"{path}: {where} no longer fits the saved thresholds ({exc}): its code changed "
                                "since saving; restore that code, or convert the model again with --output DIR") \
                from exc
        raise ArtifactError(f"{path}: thresholds.pt does not fit the model ({exc}); convert the model again with "
                            "--output DIR (or save the conversion again with ConversionResult.save)") from exc
    _check_graph(path, artifact, snn)
    return snn, report


def _check_graph(path, artifact, snn: SpikingNetwork) -> None:
    """The rebuilt network must be the saved one: a model file edited after saving (its forward) rebuilds another
    graph with the saved weights and thresholds, silently another network.

    Raises:
        ArtifactError: another graph, rebuilt by the torch and snnconvert versions that saved it (with other versions
            a different trace of the same code is possible: logged as a warning instead).
    """
    saved = artifact.graph
    if not saved:
        return
    now = graph_digest(snn.gm, scheme=saved.get("scheme", 1))  # as it was hashed when saved
    if now["sha256"] == saved.get("sha256"):
        return
    where = (f"the model {artifact.source.ref}" if artifact.source.kind == "python" else "the saved model.onnx")
    what = (f"{where} now converts to another network than the one saved ({saved.get('nodes')} graph nodes then, "
            f"{now['nodes']} now)")
    if (saved.get("torch"), saved.get("snnconvert")) != (now["torch"], now["snnconvert"]):
        log.warning("%s: %s; it was saved with torch %s / snnconvert %s (now %s / %s), whose trace may differ: check "
                    "its accuracy, or convert it again", path, what, saved.get("torch"), saved.get("snnconvert"),
                    now["torch"], now["snnconvert"])
        return
    raise ArtifactError(f"{path}: {what}: its code changed since saving (or this snnconvert, at the same version "
                        "number, converts it differently); restore that code, or convert the model again with "
                        "--output DIR")


def load_result(path: str | os.PathLike) -> tuple[ConversionResult, torch.nn.Module]:
    """Rebuild a saved conversion whole, without calibration, and the ANN it was converted from: the
    :class:`ConversionResult` (SNN, thresholds, configuration, the saved calibration summary, source) and the ANN (the
    rebuilt module with its saved weights, or the imported ONNX graph), e.g. to evaluate both again on other data, on
    another backend or device (``snnconvert SNN_DIR``).

    A folder saved from a Python model imports the module named in its ``source.json`` and calls that factory to
    rebuild the ANN (only a class or Python function defined outside the standard library is called): like any
    model code, load folders only from a trusted source.

    Raises:
        ArtifactError: not an artifact folder, a missing or damaged file (named, with what to do), an unknown format,
            or a model source that cannot be rebuilt.
    """
    artifact = load_artifact(path)
    snn, report = _rebuild(path, artifact)
    saved = artifact.report.get("calibration") or {}
    if not isinstance(saved, dict) or not isinstance(saved.get("sites", []), list):
        raise ArtifactError(f"{path}: report.json's calibration {saved!r:.80} is not a calibration summary; convert "
                            "the model again with --output DIR (or save the conversion again with "
                            "ConversionResult.save)")
    report.calibration = saved
    calibration = CalibrationReport(method=saved.get("method", str(artifact.config.threshold)),
                                    granularity=saved.get("granularity", artifact.config.granularity),
                                    quantisation_levels=saved.get("quantisation_levels"),
                                    sites=list(saved.get("sites", [])), images=saved.get("images"))
    source = artifact.source
    if isinstance(artifact.model, torch.nn.Module):
        ann = artifact.model
        state = state_snapshot(ann)
    else:  # the saved file, by its absolute path: the result can be saved again from anywhere
        ann, state = load_onnx(artifact.model, input_layout=artifact.config.input_layout), None
        source = dataclasses.replace(source, ref=str(Path(artifact.model).resolve()))
    result = ConversionResult(snn, artifact.thresholds, artifact.config, report, calibration, source=source,
                              ann_state=state)
    return result, ann
