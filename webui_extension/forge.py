"""What differs on the WebUI forks: Forge's memory management and reForge's fixed upscaler list."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def forge_memory_management():
    """Forge's ``backend.memory_management`` module, or None on A1111 / reForge."""
    try:
        from backend import memory_management
    except ImportError:
        return None
    needed = ("free_memory", "get_torch_device", "unload_all_models")
    return memory_management if all(hasattr(memory_management, name) for name in needed) else None


def free_memory_for(pipe, height: int, width: int, tiles, size=None) -> None:
    """On Forge, make room for a run on ``height`` x ``width`` input pixels (the core's estimate for the loaded
    pipeline, or everything before the first load): Forge keeps the Stable Diffusion model on the device until
    someone asks for the memory."""
    memory_management = forge_memory_management()
    if memory_management is None:
        return
    estimate = getattr(pipe, "estimate_memory", None)  # None before the first run: free everything then
    if estimate is None:
        memory_management.unload_all_models()
        return
    needed = pipe.weight_bytes() + pipe.working_memory(height, width, tiles=tiles, size=size)
    memory_management.free_memory(int(needed), memory_management.get_torch_device())


def ensure_listed(modelloader, shared, upscaler_class, name_prefixes) -> None:
    """Make ``modelloader.load_upscalers`` list our entries also on forks that build the list from a fixed set of
    classes (reForge): wrap it once and append what is missing. Undone by :func:`restore_load_upscalers`."""
    original = modelloader.load_upscalers
    if getattr(original, "_resshift_original", None) is not None:
        return

    def load_upscalers(*args, **kwargs):
        result = original(*args, **kwargs)
        if not any(entry.name.startswith(name_prefixes) for entry in shared.sd_upscalers):
            folder = getattr(shared.cmd_opts, "resshift_models_path", None)
            shared.sd_upscalers.extend(upscaler_class(folder).scalers)
        return result

    load_upscalers._resshift_original = original
    modelloader.load_upscalers = load_upscalers


def restore_load_upscalers(modelloader) -> None:
    original = getattr(modelloader.load_upscalers, "_resshift_original", None)
    if original is not None:
        modelloader.load_upscalers = original
