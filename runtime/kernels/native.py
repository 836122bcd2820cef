"""Native CPU neuron kernels: ``native_neurons.c`` built on first use and called through ctypes.

The C file is the CPU twin of the Triton kernels: one call per neuron layer runs all T steps with the state in
L1-resident blocks, OpenMP threads over the blocks, the reference neurons' arithmetic operation by operation (so the
outputs are bit-identical to the torch twins on the CPU; tests/test_kernels.py). It exists because eager PyTorch
cannot fuse the ~30 element-wise passes a differential multi-threshold neuron takes per step, which dominate models
with few MACs per neuron (depthwise convolutions).

Build. The first call compiles the source with the C compiler named by ``$CC`` (default ``cc``)::

    cc -O3 -march=native -fPIC -shared -fopenmp -ffp-contract=off native_neurons.c -o neurons-<key>.so

into ``$SNNCONVERT_CACHE_DIR/native`` (default ``~/.cache/snnconvert/native``); ``<key>`` hashes the source, the
command and the CPU model, so an edited source, another compiler or another machine sharing the cache builds anew.
The library is written to a temporary file and renamed into place (concurrent first calls cannot load a half-written
file). It is linked against ``libgomp.so.1``, which resolves to the OpenMP runtime torch already loaded (one thread
pool). No compiler, or a failing build, raises :class:`BackendUnavailableError` with what to do; nothing falls back.

Threads: ``torch.get_num_threads()`` at each call. Inputs: CPU tensors; fp16/bf16 inputs are converted to fp32 for
the kernel and the emitted values back (exact, see ``common.py``). The step counter is an fp32 value (exact to 2^24).
The kernels also count the non-zero emitted values per step on request (``events=``), which the evaluation's event
counter uses instead of another pass over the output. :func:`bounded_relu_pair_run` runs a decomposed ReLU6 /
clamp(0, a) (two neurons and two subtractions, ``runtime/fuse.py``) in one call.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from snnconvert.convert.errors import BackendUnavailableError
from snnconvert.runtime.kernels.common import NeuronKernels, Table

logger = logging.getLogger(__name__)

__all__ = ["SOURCE", "KERNELS", "cpu_model", "native_status", "load_library", "build_command",
           "bounded_relu_pair_run"]

SOURCE = Path(__file__).with_name("native_neurons.c")
_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-std=c11")
_BUILD_TIMEOUT_S = 300


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


def build_command(output: Path) -> list[str]:
    """The compiler command that builds the library into ``output``."""
    return [*_compiler(), *_FLAGS, str(SOURCE), "-o", str(output)]


def cpu_model() -> str:
    """The CPU's model name (part of the library's cache key: -march=native code is specific to it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("SNNCONVERT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "snnconvert"
    return base / "native"


def _library_path() -> Path:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(build_command(Path("out"))).encode())
    digest.update(cpu_model().encode())
    return _cache_dir() / f"neurons-{digest.hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    compiler = _compiler()[0]
    if shutil.which(compiler) is None:
        raise BackendUnavailableError(
            f"the native backend builds its CPU kernels with a C compiler, but '{compiler}' was not found; "
            "install gcc (with OpenMP), set CC to a C compiler, or use backend='torch'")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = build_command(Path(tmp))
        logger.info("building the native neuron kernels: %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendUnavailableError(f"building the native neuron kernels failed ({exc}); use backend='torch'"
                                          ) from exc
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise BackendUnavailableError(
                f"building the native neuron kernels with '{compiler}' failed: {first.strip()}; install gcc with "
                "OpenMP support (or set CC), or use backend='torch'")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_F = ctypes.POINTER(ctypes.c_float)
_I64 = ctypes.c_int64
_I64P = ctypes.POINTER(ctypes.c_int64)
_INT = ctypes.c_int


@cache
def load_library() -> ctypes.CDLL:
    """Build (once per source, compiler and CPU; cached on disk) and load the kernel library.

    Raises:
        BackendUnavailableError: no C compiler, a failed build, or a library that cannot be loaded.
    """
    path = _library_path()
    if not path.exists():
        _build(path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BackendUnavailableError(f"the native neuron kernels ({path}) cannot be loaded: {exc}; delete the file "
                                      "to rebuild it, or use backend='torch'") from exc
    lib.snn_rate_run.argtypes = [_F, _F, _F, _I64, _I64, _F, _F, _F, _F, _I64, _I64, _INT, _INT, _INT, _INT, _INT,
                                 _INT, _I64P, _INT]
    lib.snn_diff_run.argtypes = [_F, _F, _F, _I64, _I64, _F, _I64, _I64, _F, _F, _F, _F, _I64, _I64, _I64, _INT, _INT,
                                 _INT, _INT, _INT, _I64P, _INT]
    lib.snn_pair_run.argtypes = [_F, _F, ctypes.c_float, _INT, _INT, _INT, _INT, _INT, _F, _I64, _I64, _F, _I64, _I64,
                                 _F, _I64, _I64, _F, _I64, _I64, _F, _F, _F, _F, _F, _F, _F, _F, _I64, _I64, _I64,
                                 _INT, _INT, _I64P, _INT]
    lib.snn_rate_run.restype = lib.snn_diff_run.restype = lib.snn_pair_run.restype = _INT
    logger.info("native neuron kernels loaded from %s", path)
    return lib


def native_status(device: str | torch.device) -> tuple[bool, str]:
    """Can the native kernels run on tensors of ``device``? ``(ok, reason)``; builds the library if needed."""
    device = torch.device(device)
    if device.type != "cpu":
        return False, (f"the native backend runs on CPU tensors only, got device '{device}'; use backend='triton' "
                       "on a GPU, or device='cpu'")
    try:
        load_library()
    except BackendUnavailableError as exc:
        return False, str(exc)
    return True, "native C kernels on CPU tensors (OpenMP)"


def _check_device(device: torch.device) -> None:
    if device.type != "cpu":
        raise BackendUnavailableError(native_status(device)[1])


def _ptr(t: Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _F)


def _events_ptr(events: Tensor | None):
    return None if events is None else ctypes.cast(events.data_ptr(), _I64P)


def _check(code: int) -> None:
    if code != 0:  # the wrappers validate the arguments the C code checks; what is left is a failed allocation
        raise MemoryError(f"native neuron kernel failed (code {code}): invalid arguments or out of memory")


def _launch_rate(x: Tensor, out: Tensor, th: Table, m_in, c_in, m_out, c_out, *, kind: str, n_levels: int,
                 signed: bool, need_c: bool, events: Tensor | None = None) -> None:
    T, n = x.shape
    _check(load_library().snn_rate_run(
        _ptr(x), _ptr(out), _ptr(th.values), th.inner, th.k, _ptr(m_in), _ptr(c_in), _ptr(m_out), _ptr(c_out), T, n,
        int(kind == "if"), n_levels, int(signed), int(need_c), int(m_in is not None), int(m_out is not None),
        _events_ptr(events), torch.get_num_threads()))


def _launch_diff(x: Tensor, out: Tensor, th: Table, b: Table, r_in_in, r_out_in, r_in_out, r_out_out, *, t0: int,
                 kind: str, n_levels: int, relu_constrained: bool, events: Tensor | None = None) -> None:
    T, n = x.shape
    _check(load_library().snn_diff_run(
        _ptr(x), _ptr(out), _ptr(th.values), th.inner, th.k, _ptr(b.values), b.inner, b.k, _ptr(r_in_in),
        _ptr(r_out_in), _ptr(r_in_out), _ptr(r_out_out), T, t0, n, int(kind == "if"), n_levels,
        int(relu_constrained), int(r_in_in is not None), int(r_in_out is not None), _events_ptr(events),
        torch.get_num_threads()))


def _launch_pair(x: Tensor, out: Tensor, tables: tuple[Table, Table, Table, Table], state_in, state_out, *,
                 ceiling: float, diff: bool, kind: str, n_levels: int, signed: bool, need_c: bool, t0: int,
                 events: Tensor | None = None) -> None:
    T, n = x.shape
    args = [v for tab in tables for v in (_ptr(tab.values), tab.inner, tab.k)]
    rows = [[_ptr(row) for row in s] if s is not None else [None] * 4 for s in (state_in, state_out)]
    _check(load_library().snn_pair_run(
        _ptr(x), _ptr(out), float(ceiling), int(diff), int(kind == "if"), n_levels, int(signed), int(need_c), *args,
        *rows[0], *rows[1], T, t0, n, int(state_in is not None), int(state_out is not None), _events_ptr(events),
        torch.get_num_threads()))


#: The public wrappers (``rate_neuron_run``, ``diff_neuron_run``, ``bounded_relu_pair_run``, the four
#: ``*_multistep`` twins) of these kernels.
KERNELS = NeuronKernels("native", _launch_rate, _launch_diff, kernel_dtypes=(torch.float32,),
                        check_device=_check_device, in_place_state=True, counts_events=True, launch_pair=_launch_pair)
bounded_relu_pair_run = KERNELS.bounded_relu_pair_run
