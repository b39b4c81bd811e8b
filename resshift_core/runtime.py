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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


# ----------------------------------------------------------------------------------------------- precision
#: The names a user may give for a precision, and what each means.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
#: The choices a front-end offers (besides "auto").
DTYPE_CHOICES = ("fp32", "fp16", "bf16")


def parse_dtype(dtype) -> torch.dtype:
    """"fp32" | "fp16" | "bf16" (or their long names, or a torch dtype) -> torch dtype; None is float32.

    Raises:
        InvalidArgumentError: any other value (a precision the networks do not run in).
    """
    import torch

    from .errors import InvalidArgumentError

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InvalidArgumentError("dtype", str(dtype), "float32, float16 or bfloat16")
        return dtype
    name = DTYPE_NAMES.get(str(dtype).strip().lower())
    if name is None:
        raise InvalidArgumentError("dtype", dtype, "one of fp32, fp16, bf16")
    return getattr(torch, name)


def default_dtype(device: str) -> str:
    """fp16 on CUDA (as the official code runs), fp32 elsewhere."""
    return "fp16" if str(device).startswith("cuda") else "fp32"


def device_supports_bf16(device) -> bool:
    """Whether bf16 runs natively on ``device``: a CUDA card of compute capability 8.0 or newer (Ampere on), or a CPU
    with native bf16 (:func:`cpu_has_native_bf16`). Elsewhere it is emulated: slower than fp32, or refused."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def dtype_choices(device) -> tuple[str, ...]:
    """The precisions to offer on ``device``: bf16 only where it runs (on CUDA, Ampere and newer)."""
    import torch

    if torch.device(device).type == "cuda" and not device_supports_bf16(device):
        return ("fp32", "fp16")
    return DTYPE_CHOICES


def choose_dtype(device, requested=None, *, host_dtype=None, allow_half: bool = True,
                 upcast: bool = False) -> torch.dtype:
    """The one rule for the precision a run uses on ``device``.

    Args:
        requested: what the user asked for: None / "auto" leave the choice to the host and the device; anything
            else is parsed (:func:`parse_dtype`) and used as it is.
        host_dtype: the host's own choice for "auto" (ComfyUI's ``unet_dtype``), used when it is a precision the
            networks run in; otherwise the device default applies.
        allow_half: False when the host forbids half precision (the WebUI's ``--no-half``): "auto" gives float32.
        upcast: the host asks to sample in float32 while keeping half weights elsewhere (the WebUI's
            ``--upcast-sampling``): "auto" gives float32, as the networks here have no separate sampling dtype.
    Returns:
        torch.float32, torch.float16 or torch.bfloat16. "auto" is float16 on CUDA (as the official code runs),
        float32 elsewhere.
    """
    import torch

    if requested is not None and str(requested).strip().lower() not in ("auto", "automatic", ""):
        chosen = parse_dtype(requested)
        if chosen == torch.bfloat16 and "bf16" not in dtype_choices(device):
            from .errors import InvalidArgumentError

            raise InvalidArgumentError("dtype", "bf16", "fp16 or fp32 on this GPU (it does not run bfloat16)")
        return chosen
    if not allow_half or upcast:
        return torch.float32
    if host_dtype is not None:
        try:
            return parse_dtype(host_dtype)
        except ValueError:  # e.g. ComfyUI's fp8 weights: not a precision ResShift runs in
            logger.info("the host's precision %s is not one ResShift runs in; using the device default",
                        host_dtype)
    return parse_dtype(default_dtype(str(torch.device(device))))


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
