"""resshift_core: ResShift diffusion super-resolution (NeurIPS 2023) that loads the official checkpoints.

Quick use::

    from resshift_core import ResShiftPipeline
    pipe = ResShiftPipeline.from_release("realsr-v3")          # downloads the official weights on first use
    hr = pipe.upscale(lr, seed=12345)                          # (B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W)

The official weights are under the S-Lab License 1.0 (non-commercial use); see ``resshift_core.releases``.
This package imports no host application (ComfyUI, WebUI, gradio); the plugins are thin layers over it.
"""

from .errors import (
                     CancelledError,
                     CheckpointError,
                     CorruptCheckpointError,
                     InputImageError,
                     ResShiftError,
                     UnknownCheckpointError,
                     UnknownScheduleError,
                     UnsafeCheckpointError,
                     WrongModelKindError,
)
from .nets import ResShiftUNet, UNetConfig, VQAutoencoder, VQConfig
from .pipeline import ResShiftPipeline
from .releases import AUTOENCODERS, DEFAULT_RELEASE, RELEASES, get_release
from .runtime import tune_cpu_allocator
from .sampler import NoiseSource, StepProgress
from .schedule import Schedule, ScheduleParams

__version__ = "0.1.0"

__all__ = [
    "AUTOENCODERS", "DEFAULT_RELEASE", "RELEASES", "CancelledError", "CheckpointError", "CorruptCheckpointError",
    "InputImageError", "NoiseSource", "ResShiftError", "ResShiftPipeline", "ResShiftUNet", "Schedule",
    "ScheduleParams", "StepProgress", "UNetConfig", "UnknownCheckpointError", "UnknownScheduleError",
    "UnsafeCheckpointError", "VQAutoencoder", "VQConfig", "WrongModelKindError", "get_release",
    "tune_cpu_allocator",
]
