"""Process-level allocator setting of the ``snnconvert`` command (an application choice, not library behaviour).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves requests above its mmap threshold (at most
32 MiB on 64-bit) with a fresh ``mmap`` and returns them with ``munmap`` on free, so every large activation tensor
is paged in again, one page fault per 4 KiB, on every layer call. Converted SNNs and the ANN baseline allocate
[T·B, ...] activations of tens to hundreds of MiB per layer; on the development machine a fmnist-mobilenet batch
then spends about half its time in the kernel (BENCHMARKS.md, "Page faults"). :func:`keep_freed_memory` tells glibc
to serve every request from its heap and to keep freed memory for reuse (``mallopt(M_MMAP_MAX, 0)`` and a trim
threshold of 2 GiB, the largest ``mallopt`` takes). The price is memory: freed blocks stay with the process until it
exits and the heap fragments, so the peak resident size grows (fmnist-mobilenet differential, native backend, 2 000
images: 1.80 → 2.47 GB, while the run gets 1.3× faster; BENCHMARKS.md).

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
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: the largest value it accepts (2 GiB)
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
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    logger.debug("glibc malloc: no mmap for large blocks, freed memory kept (%s)", "applied" if ok else "refused")
    return ok
