"""Keeping freed host memory in the process, so a CPU forward pass does not page-fault its buffers back in.

glibc's ``malloc`` serves a large request (above its mmap threshold, 128 KiB at first) with a fresh ``mmap`` and
gives it back to the kernel on ``free``; below it, memory freed at the top of the heap is given back once more
than the trim threshold lies free. A transformer's activations are freed and requested again at every forward, so
the kernel zeroes and maps the same pages over and over: on a 2-core CPU a quarter of the encoder's time went to
page faults (about 17,000 a batch for the tiny preset; ``benchmarks/host_memory.py``). glibc raises both thresholds
on its own as large blocks are freed, but not past 32 MiB, and not in time for a short run.

:func:`keep_freed_host_memory` fixes them with ``mallopt(3)``: blocks below :data:`MMAP_THRESHOLD` come from the heap,
and up to :data:`TRIM_THRESHOLD` of free heap is kept for the next request. Both are set together: setting either
one turns off glibc's adjustment of both, and the other then stays at its small default (slower than no setting).
It changes nothing but where freed memory waits (the process may hold up to the trim threshold more than it uses),
and it is a process-wide choice, so the `equirecon` commands make it and the library does not. A process whose
operator chose already (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``, or jemalloc /
tcmalloc in ``LD_PRELOAD``) keeps that choice; ``EQUIRECON_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_host_memory"]

logger = logging.getLogger(__name__)

#: Requests below this size are served from the heap, and come back from it when freed (glibc's own ceiling).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap is given back to the kernel only beyond this much.
TRIM_THRESHOLD = 256 * 2**20

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_host_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring); returns whether they were
    set: ``False`` off glibc, where the operator chose already, or with ``EQUIRECON_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("EQUIRECON_KEEP_FREED_MEMORY", "1") == "0":
        return False
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(name in os.environ for name in _OPERATOR_SETTINGS) or "jemalloc" in preloaded or "tcmalloc" in preloaded:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mmap first: were the trim threshold set alone, every request above 128 KiB would be mmapped meanwhile.
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        logger.warning("mallopt refused the mmap/trim thresholds; freed host memory goes back to the kernel.")
    return done
