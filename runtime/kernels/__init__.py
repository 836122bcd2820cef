"""Triton availability, interpreter detection and the lazy import of the fused neuron kernels.

This package holds three implementations of the same fused neuron kernels behind one set of wrappers
(``common.py``): the Triton kernels (``neurons.py``; this module decides whether they can run), the native C
kernels for CPU tensors (``native.py`` + ``native_neurons.c``; ``native.native_status`` decides) and the reference
step loops compiled by ``torch.compile`` (``inductor.py``; ``inductor.inductor_status`` decides).

The kernels (``snnconvert.runtime.kernels.neurons``) import triton, so nothing here imports them or triton until
they are needed. :func:`triton_status` says whether they can run on a device, and why not:

- CUDA tensors need triton and a CUDA device (the kernels are compiled for it);
- CPU tensors need the Triton interpreter, ``TRITON_INTERPRET=1``, which must be in the environment before the
  kernels are decorated: ``@triton.jit`` reads it at decoration time (through ``triton.knobs`` in triton >= 3.4; at
  import in older versions), so set it in the shell or at the very top of ``conftest.py``, before triton or this
  package's kernels are imported. Setting it later has no effect, and :func:`triton_status` says so;
- the interpreter itself must run the kernels' loops: :func:`interpreter_defect` runs a probe kernel once per process
  (triton 3.6's interpreter fails on any runtime loop bound with numpy 2.4, and says so only deep in a launch).

``snnconvert.runtime.compile(..., backend="triton")`` raises ``BackendUnavailableError`` with that reason; it never
falls back to the torch reference.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from types import ModuleType

import torch

from snnconvert.convert.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["KERNELS_MODULE", "triton_available", "interpreter_requested", "interpreter_defect", "triton_status",
           "load_kernels"]

KERNELS_MODULE = "snnconvert.runtime.kernels.neurons"
_TRUE = ("1", "true", "on", "yes")


def triton_available() -> bool:
    """True if the ``triton`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def interpreter_requested() -> bool:
    """True if ``TRITON_INTERPRET`` is set to a true value (``1``, ``true``, ``on``, ``yes``) in the environment."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def _kernels_mode() -> bool | None:
    """Whether the loaded kernels were built for the interpreter; None if they are not loaded yet."""
    module = sys.modules.get(KERNELS_MODULE)
    return None if module is None else bool(module.INTERPRETED)


def triton_status(device: str | torch.device) -> tuple[bool, str]:
    """Can the Triton neuron kernels run on tensors of ``device``?

    Args:
        device: the device the network will run on (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    Returns:
        ``(ok, reason)``: when ``ok`` is False, ``reason`` is one line saying what is missing and what to do; when it
        is True, ``reason`` says how the kernels will run.
    """
    device = torch.device(device)
    if not triton_available():
        return False, ("the triton backend needs the 'triton' package, which is not installed here; "
                       "install it (pip install triton, Linux only) or use backend='torch'")
    loaded = _kernels_mode()
    interpret = interpreter_requested() if loaded is None else loaded
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, (f"the triton backend on device '{device}' needs a CUDA device, but torch sees none "
                           "(check CUDA_VISIBLE_DEVICES and the driver); use device='cpu' with TRITON_INTERPRET=1 "
                           "for testing, or backend='torch'")
        if interpret:
            return _interpreter_status("triton kernels on CUDA tensors through the Triton interpreter "
                                       "(TRITON_INTERPRET=1; slow)")
        return True, "compiled triton kernels on CUDA"
    if device.type == "cpu":
        if interpret:
            return _interpreter_status("triton kernels on CPU tensors through the Triton interpreter (slow; for "
                                       "testing)")
        if loaded is not None and interpreter_requested():
            return False, ("TRITON_INTERPRET=1 was set after the triton kernels were loaded, so they are compiled for "
                           "a GPU; set it in the environment before Python starts (or before importing triton), "
                           "or use backend='torch'")
        return False, ("the triton backend on CPU needs the Triton interpreter: set TRITON_INTERPRET=1 in the "
                       "environment before starting Python (slow; for tests), run on device='cuda', "
                       "or use backend='torch'")
    return False, f"the triton backend supports CUDA and CPU devices only, got '{device}'; use backend='torch'"


def _interpreter_status(how: str) -> tuple[bool, str]:
    """``(True, how)`` when the installed Triton interpreter runs the kernels' loops, else one line saying why not."""
    defect = interpreter_defect()
    if defect is None:
        return True, how
    return False, (f"the Triton interpreter of triton {_version('triton')} cannot run the neuron kernels with numpy "
                   f"{_version('numpy')} ({defect}); upgrade triton (3.7.1 and later work), or use backend='native' "
                   "or 'torch' on the CPU")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@functools.cache
def interpreter_defect() -> str | None:
    """None when the Triton interpreter runs a kernel with a runtime loop bound (the neuron kernels' shape) here;
    otherwise the error, on one line. Checked once per process, on an interpreted kernel module."""
    try:
        module = load_kernels()
        module.interpreter_probe()
    except Exception as exc:  # noqa: BLE001 - the interpreter wraps whatever failed; the message is the diagnosis
        while isinstance(exc.__cause__, Exception) and type(exc).__name__ == "InterpreterError":
            exc = exc.__cause__
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def load_kernels() -> ModuleType:
    """Import and return ``snnconvert.runtime.kernels.neurons``.

    Raises:
        BackendUnavailableError: triton is missing or the kernel module fails to import (the cause is chained).
    """
    if not triton_available():
        raise BackendUnavailableError(triton_status("cpu")[1])
    try:
        return importlib.import_module(KERNELS_MODULE)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the triton neuron kernels cannot be imported ({type(exc).__name__}: {exc}); "
            "check the triton installation (triton >= 3.0) or use backend='torch'") from exc
