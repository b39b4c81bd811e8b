"""resshift_core: ResShift diffusion super-resolution (NeurIPS 2023) that loads the official checkpoints.

Quick use::

    from resshift_core import ResShiftPipeline
    pipe = ResShiftPipeline.assemble(release="realsr-v3")      # downloads the official weights on first use
    hr = pipe.upscale(lr, seed=12345)                          # (B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W)

For hosts (ComfyUI, the WebUI, a training run), the same call with the host's own facts::

    pipe = ResShiftPipeline.assemble("resshift_realsrx4_s4_v3.pth", device="cuda", dtype="auto",
                                     host=HostFacts(dtype=host_choice, find_file=in_my_folders))
    needed = pipe.working_memory(512, 512)                     # bytes beyond the weights for a 512 px input

The official weights are under the S-Lab License 1.0 (non-commercial use); see ``resshift_core.releases``.
This package imports no host application (ComfyUI, WebUI, gradio); the plugins are thin layers over it.
"""

from .checkpoints import (
    OwnUNetFile,
    identify_checkpoint,
    load_model,
    read_own_unet_header,
    save_autoencoder,
    save_unet,
)
from .assembly import HostFacts
from .color import COLOR_FIX_METHODS, color_fix
from .download import ChecksumError, DownloadError, OfflineError
from .errors import (
    PYTHON_API,
    CancelledError,
    CheckpointError,
    CorruptCheckpointError,
    InputImageError,
    InvalidArgumentError,
    ResShiftError,
    UnknownCheckpointError,
    UnknownScheduleError,
    UnsafeCheckpointError,
    Vocabulary,
    WrongModelKindError,
    reason_of,
)
from .hub import fetch_release_files, missing_files_error
from .imageio import DecodedImage, encode_image, read_image, upscale_alpha, write_image
from .models import CheckpointIdentity, ModelDescriptor
from .nets import ResShiftUNet, UNetConfig, VQAutoencoder, VQConfig
from .pipeline import ResShiftLatent, ResShiftPipeline, random_seed
from .planning import RunPlan
from .releases import (
    AUTOENCODERS,
    DEFAULT_RELEASE,
    DEFAULT_SEED,
    LICENSE_URL,
    RELEASES,
    WEIGHTS_LICENSE,
    Release,
    get_release,
    official_file,
    official_kind,
    official_tile_range,
)
from .runtime import DTYPE_CHOICES, choose_dtype, dtype_choices, tune_cpu_allocator
from .sampler import MAX_SEED, NoiseSource, StepProgress, check_seed
from .schedule import Schedule, ScheduleParams
from .sizing import OutputSize, output_size, parse_size
from .tiling import TileSettings, tile_size_range

__version__ = "0.2.0"

__all__ = [
    "AUTOENCODERS", "COLOR_FIX_METHODS", "DEFAULT_RELEASE", "DEFAULT_SEED", "DTYPE_CHOICES", "LICENSE_URL",
    "MAX_SEED", "PYTHON_API", "RELEASES", "WEIGHTS_LICENSE", "HostFacts", "OutputSize", "check_seed",
    "choose_dtype", "color_fix", "dtype_choices", "reason_of", "official_kind", "official_tile_range", "output_size",
    "parse_size", "tile_size_range",
    "CancelledError", "CheckpointError", "CheckpointIdentity", "ChecksumError", "CorruptCheckpointError",
    "DecodedImage", "DownloadError", "InputImageError", "InvalidArgumentError", "ModelDescriptor", "NoiseSource",
    "OfflineError", "OwnUNetFile", "Release", "ResShiftError", "ResShiftLatent", "ResShiftPipeline", "ResShiftUNet",
    "RunPlan", "Schedule", "ScheduleParams", "StepProgress", "TileSettings", "UNetConfig", "UnknownCheckpointError",
    "UnknownScheduleError", "UnsafeCheckpointError", "VQAutoencoder", "VQConfig", "Vocabulary", "WrongModelKindError",
    "encode_image", "fetch_release_files", "get_release", "identify_checkpoint", "load_model", "missing_files_error",
    "official_file", "random_seed", "read_image", "read_own_unet_header", "save_autoencoder", "save_unet",
    "tune_cpu_allocator", "upscale_alpha", "write_image",
]
