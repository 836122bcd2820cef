"""Process-level allocator setting for CPU runs: the ``snnconvert`` command applies it; Python users opt in by
calling :func:`keep_freed_memory` once (``snnconvert.runtime.keep_freed_memory``). It changes the whole process's
``malloc``, which is why the library never applies it by itself.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves requests above its mmap threshold (at most
32 MiB on 64-bit) with a fresh ``mmap`` and returns them with ``munmap`` on free, so every large activation tensor
is paged in again, one page fault per 4 KiB, on every layer call. Converted SNNs and the ANN baseline allocate
[T·B, ...] activations of tens to thousands of MiB per layer; on the development machine a fmnist-mobilenet batch
then spends about half its time in the kernel (BENCHMARKS.md, "Page faults"). :func:`keep_freed_memory` tells glibc
to serve every request from its heap and never to give freed memory at the top of the heap back to the system
(``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``, which mallopt(3) documents as "disables trimming
completely"). A finite trim threshold (2 GiB, the largest positive ``int`` mallopt takes, until 2026-12-01) still
handed the memory back, and paged it in again, whenever more than 2 GiB at the top of the heap were free: a
multi-step layer call on 8 192 Fashion-MNIST images (T = 32, batch 256) or more, which then ran 1.5–3.2× slower per
image than one on 4 096 images (BENCHMARKS.md, "Page faults"). The price is memory: freed blocks stay with the
process until it exits and the heap can fragment, which can raise the peak resident size (fmnist-mobilenet
differential, native backend, 2 000 images: 1.80 → 2.47 GB when first measured, 1.84 → 1.54–1.69 GB on 2026-12-01,
while the run gets 1.3–1.5× faster; BENCHMARKS.md).

It does nothing on another C library, or when the user set glibc's own knobs (``MALLOC_MMAP_MAX_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), or ``SNNCONVERT_KEEP_FREED_MEMORY=0``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NO_TRIMMING = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"
_USER_KNOBS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (module docstring). Returns whether the
    setting was applied."""
    if os.environ.get("SNNCONVERT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    user = [k for k in _USER_KNOBS if k in os.environ]
    if user:
        logger.debug("allocator left as configured by %s", ", ".join(user))
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIMMING) == 1
    except (OSError, AttributeError):
        return False
    logger.debug("glibc malloc: no mmap for large blocks, no trimming of the heap (%s)", "applied" if ok else "refused")
    return ok
