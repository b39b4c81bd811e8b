import torch

from modules import shared

cpu = torch.device("cpu")
gc_calls = 0


def get_device_for(task):
    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu
    return torch.device("cuda") if torch.cuda.is_available() else cpu


def torch_gc():
    global gc_calls
    gc_calls += 1
