"""Stand-in of ``comfy.model_management`` on a CPU-only machine.

Records every ``load_models_gpu`` call in ``LOAD_CALLS`` and every ``unet_dtype`` question in ``DTYPE_CALLS``;
``UNET_DTYPE`` and ``TORCH_DEVICE`` are the answers tests can change. ``interrupt_current_processing`` sets the flag that
``processing_interrupted`` reads, as ComfyUI's /interrupt does.
"""

import torch

LOAD_CALLS = []
DTYPE_CALLS = []
FREE_CALLS = []
FREE_BYTES = 0  # what the next free_memory call frees (tests set it)
current_loaded_models = []
UNET_DTYPE = torch.float32
TORCH_DEVICE = torch.device("cpu")
_interrupted = False


class InterruptProcessingException(Exception):
    pass


OOM_EXCEPTION = torch.cuda.OutOfMemoryError


def reset():
    global UNET_DTYPE, TORCH_DEVICE, _interrupted
    LOAD_CALLS.clear()
    DTYPE_CALLS.clear()
    FREE_CALLS.clear()
    UNET_DTYPE = torch.float32
    TORCH_DEVICE = torch.device("cpu")
    _interrupted = False


def get_torch_device():
    return TORCH_DEVICE


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None):
    DTYPE_CALLS.append({"device": device, "model_params": model_params, "supported_dtypes": list(supported_dtypes)})
    return UNET_DTYPE


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    LOAD_CALLS.append({"models": list(models), "memory_required": memory_required,
                       "force_full_load": force_full_load})
    for patcher in models:
        patcher.patch_model(patcher.load_device)


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def processing_interrupted():
    return _interrupted


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


_freed = 0


def get_free_memory(dev=None, torch_free_too=False):
    return (1 << 30) + _freed


def get_total_memory(dev=None, torch_total_too=False):
    return 8 << 30


def free_memory(memory_required, device, keep_loaded=[]):  # noqa: B006 (ComfyUI's signature)
    global _freed
    FREE_CALLS.append({"memory_required": memory_required, "device": device, "keep_loaded": list(keep_loaded)})
    _freed += FREE_BYTES


def soft_empty_cache(force=False):
    FREE_CALLS.append({"soft_empty_cache": True})
