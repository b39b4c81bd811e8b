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


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(requested: str | None = "auto", local_rank: int | None = None) -> str:
    """A device name from what a user asked for: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
    ``cuda:N``, ``mps`` or ``xpu``. Under a launcher that runs one process per GPU, ``local_rank`` picks the GPU.

    Raises:
        InvalidArgumentError: an unknown device type, or one this machine does not have.
    """
    import torch

    from .errors import InvalidArgumentError

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda" if local_rank is None else f"cuda:{local_rank % torch.cuda.device_count()}"
        return "cpu"
    kind, _, index = requested.partition(":")
    if kind not in _DEVICE_TYPES or (index and not index.isdigit()):
        raise InvalidArgumentError("device", requested, "auto, cpu, cuda, cuda:N, mps or xpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                 "xpu": bool(getattr(torch, "xpu", None) and torch.xpu.is_available())}[kind]
    if not available:
        raise InvalidArgumentError("device", requested, "a device this machine has",
                                   advice=f"{kind} is not available here; use {{set:device=cpu}} or "
                                          f"{{set:device=auto}}")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InvalidArgumentError("device", requested, f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind == "cuda" and not index and local_rank is not None:
        return f"cuda:{local_rank}"  # one GPU per process, as torchrun means it
    return requested


def default_dtype(device: str) -> str:
    """fp16 on CUDA (as the official code runs), fp32 elsewhere."""
    return "fp16" if str(device).startswith("cuda") else "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): there bf16 autocast makes convolutions
    faster; elsewhere PyTorch emulates it and it is slower than fp32."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    for probe in probes:
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # a build without the cpuinfo probes
            continue
    return False


def autocast_precision(device: str) -> str:
    """The mixed precision that speeds this device up: "fp16" on CUDA (with a gradient scaler when training),
    "bf16" on a CPU with native bf16 (:func:`cpu_has_native_bf16`), else "fp32" (no autocast)."""
    if str(device).startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
