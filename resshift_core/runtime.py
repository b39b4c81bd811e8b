"""Process-wide CPU settings that make inference faster; opt-in, because they change the whole process.

The full-resolution feature maps of a 256x256 output are 32-64 MB each. glibc's malloc hands every block of that size
out as a fresh ``mmap`` and returns it to the kernel on ``free``, so each such tensor is page-faulted in and zeroed
again: 10-15% of a CPU run (measured: realsr-v3 64->256 on 2 AVX2 cores, 11.8 s -> 10.5 s). Serving them from
the heap, which keeps freed memory for the next tensor, removes that cost; the price is that the process keeps its
peak memory until it exits (about 10% more than the default allocator's peak in the same run).

The command line, the demo app and the benchmark call :func:`tune_cpu_allocator` (they own their process); a host such
as ComfyUI or the WebUI decides for itself, so the library never calls it on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in glibc's heap (no mmap per tensor, no trimming). Idempotent.

    Returns True when the setting is in force (glibc only: Linux with musl, macOS and Windows are left alone and get
    False). Set ``RESSHIFT_CPU_ALLOCATOR=default`` to skip it.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("RESSHIFT_CPU_ALLOCATOR", "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # Both, never one: a fixed trim threshold alone also fixes the mmap threshold at 128 KiB (slower than default).
        _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError) as error:  # no libc to talk to: keep the default allocator
        logger.debug("mallopt unavailable: %s", error)
    return _applied


def cpu_allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` has put its setting in force in this process."""
    return bool(_applied)
