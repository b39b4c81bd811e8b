"""ComfyUI's side of the ResShift nodes: the models folder, model management, progress, interruption and errors.

This module is the only one that imports ComfyUI. It answers "how does ComfyUI do X" (where model files live, which
device and dtype, how memory is made free, how progress and previews reach the browser, how a cancel arrives);
every ResShift rule (what a file is, how much memory a run needs, how far along a run is, how errors are worded) is
asked of ``resshift_core``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy import model_management

from .core_access import ResShiftNodeError, require_core

logger = logging.getLogger(__name__)

MODELS_FOLDER = "resshift"
"""``models/resshift`` and whatever ``extra_model_paths.yaml`` lists under ``resshift:``."""

DEFAULT_PREVIEW_SIZE = 512


# ------------------------------------------------------------------------------------------------ models folder
def register_models_folder() -> None:
    """Register ``models/resshift`` with ComfyUI's ``folder_paths``.

    ``extra_model_paths.yaml`` is read before custom nodes load, so ``resshift:`` entries may already be there (with
    no file extensions); the default folder is put first (downloads go there) and the weight extensions are added.
    """
    default = default_models_dir()
    paths, extensions = folder_paths.folder_names_and_paths.get(MODELS_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[MODELS_FOLDER] = (
        paths, set(extensions) | set(folder_paths.supported_pt_extensions))


def default_models_dir() -> str:
    return os.path.join(folder_paths.models_dir, MODELS_FOLDER)


def model_file_options(official_names: Sequence[str], kind: str) -> tuple[list[str], list[str]]:
    """(files in the resshift model folders that may be of ``kind``, official names of that kind not there yet,
    downloaded on first use). A file whose official name says it is the other kind is left out; files of other names
    are listed in both lists (their kind is told, with a clear error, when the loader reads them)."""
    rc = require_core()
    present = [name for name in folder_paths.get_filename_list(MODELS_FOLDER)
               if rc.official_kind(os.path.basename(name)) in (None, kind)]
    missing = sorted(name for name in set(official_names) if name not in present)
    return present, missing


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(MODELS_FOLDER)


def find_model_file(name: str) -> str | None:
    """Full path of a file in the resshift model folders, or None."""
    return folder_paths.get_full_path(MODELS_FOLDER, name)


def download_progress():
    """A download progress callback ``(done_bytes, total_bytes or None)`` that moves the node's progress bar (made,
    and the download logged, when a download starts)."""
    bars = []

    def update(done: int, total: int | None) -> None:
        if not bars:
            logger.info("[ResShift] downloading into %s", default_models_dir())
            bars.append(comfy.utils.ProgressBar(1))
        if total:
            bars[0].update_absolute(done, total)

    return update


# ------------------------------------------------------------------------------------------- model management
@dataclass
class LoadedResShift:
    """What the loader node outputs (socket type ``RESSHIFT_PIPELINE``).

    Attributes:
        pipeline: the core's pipeline over both networks; it runs where ComfyUI put them.
        patchers: the networks wrapped in ComfyUI's ``ModelPatcher`` so that ComfyUI's model management moves
            them between the load and offload devices and frees them when memory is needed.
        dtype: the precision chosen at load.
    """

    pipeline: object
    patchers: list
    dtype: torch.dtype

    @property
    def load_device(self) -> torch.device:
        return self.patchers[0].load_device

    def __repr__(self) -> str:  # shown by ComfyUI's debugging views
        release = getattr(self.pipeline.release, "name", None) or "own model"
        return f"ResShift pipeline ({release}, {str(self.dtype).replace('torch.', '')})"


def dtype_options() -> list[str]:
    """The precisions the loader offers on ComfyUI's device (bf16 only where the card runs it)."""
    return list(require_core().dtype_choices(model_management.get_torch_device()))


def comfyui_dtype(unet) -> torch.dtype:
    """What ComfyUI would run a UNet of this size in on its device, among the precisions the network supports (the
    host's fact for the core's "auto" rule)."""
    return model_management.unet_dtype(device=model_management.get_torch_device(),
                                       model_params=unet.parameter_count, supported_dtypes=list(unet.supported_dtypes))


def load_networks(unet_name: str, vae_name: str, release: str | None, dtype: str) -> LoadedResShift:
    """Build the core pipeline through its one assembly (files from the resshift folders, official ones downloaded
    into models/resshift, ComfyUI's dtype for "auto") on ComfyUI's offload device, and hand both networks to
    ComfyUI's model management. A pixel-space UNet loads no autoencoder: ``vae_name`` is then not used."""
    rc = require_core()
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    facts = rc.HostFacts(dtype=comfyui_dtype, find_file=find_model_file, cache_dir=default_models_dir(),
                         progress=download_progress(), folders=tuple(model_folders()))
    pipeline = rc.ResShiftPipeline.assemble(unet_name, vae_name, release=release, device=offload_device,
                                            dtype=dtype, host=facts)
    patchers = [comfy.model_patcher.ModelPatcher(network, load_device=load_device, offload_device=offload_device)
                for network in pipeline.networks]
    pipeline.free_device_memory = lambda: free_other_models(patchers)
    return LoadedResShift(pipeline, patchers, pipeline.dtype)


def free_other_models(patchers: list) -> bool:
    """After an out-of-memory error in a run: ask ComfyUI to unload every other model and empty its cache, keeping
    ours (the run goes on with them); True when ComfyUI had something to free."""
    device = patchers[0].load_device
    ours = [loaded for loaded in getattr(model_management, "current_loaded_models", [])
            if getattr(loaded, "model", None) in patchers]  # ComfyUI keeps models by its LoadedModel records
    before = model_management.get_free_memory(device)
    model_management.free_memory(model_management.get_total_memory(device), device, keep_loaded=ours)
    model_management.soft_empty_cache()
    return model_management.get_free_memory(device) > before


def _supports_keyword(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def load_for_run(model: LoadedResShift, memory_required: int) -> None:
    """Make room and load both networks onto ComfyUI's device, then point the pipeline there.

    ``memory_required`` is the core's estimate of the run's working memory without the weights (ComfyUI counts
    the weights of the patchers itself). Networks are loaded whole: their layers are plain torch modules, not
    ComfyUI's cast-on-demand ones, so a partial (low-VRAM) load would leave weights on the wrong device.
    """
    options = {"force_full_load": True} if _supports_keyword(model_management.load_models_gpu,
                                                             "force_full_load") else {}
    model_management.load_models_gpu(model.patchers, memory_required=int(memory_required), **options)
    model.pipeline.to(model.load_device)


# ---------------------------------------------------------------------------------------- progress and cancel
class NodeProgress:
    """Forwards the core's progress to ComfyUI's progress bar, with the x0 preview.

    The core counts network calls for the whole run (encode, every step and tile, decode) as ``done / total``;
    ComfyUI's bar takes exactly that. ComfyUI's progress hook also raises when the user pressed Cancel.
    """

    def __init__(self, previews: bool = True):
        self.bar = None
        self.previews = previews
        self.updates = 0

    def __call__(self, progress) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(progress.total)
        self.updates += 1
        self.bar.update_absolute(progress.done, progress.total, self._preview(progress))

    def _preview(self, progress):
        if not self.previews:
            return None
        picture = progress.preview_pil()  # the first image's x0 at latent resolution, or None between steps
        return None if picture is None else ("JPEG", picture, preview_size())


def preview_size() -> int:
    from comfy.cli_args import args

    return int(getattr(args, "preview_size", DEFAULT_PREVIEW_SIZE) or DEFAULT_PREVIEW_SIZE)


def cancel_requested() -> bool:
    """Polled by the core between network calls."""
    return model_management.processing_interrupted()


@contextmanager
def node_errors(input_names: Mapping[str, str]) -> Iterator[None]:
    """Turn the core's errors into ComfyUI's: a cancel becomes ComfyUI's interruption (reported as
    ``execution_interrupted``), every other ResShift error a node error whose advice names this node's inputs
    (``input_names``: the core's canonical argument name -> the input, e.g. ``{"unet": "unet_name"}``)."""
    rc = require_core()
    try:
        yield
    except rc.CancelledError as error:
        raise model_management.InterruptProcessingException() from error
    except rc.ResShiftError as error:
        vocabulary = rc.Vocabulary(names={argument: f"the {name} input" for argument, name in input_names.items()},
                                   setting="set {name} to {value}")
        raise ResShiftNodeError(error.render(vocabulary)) from error


# ----------------------------------------------------------------------------------------------- tensor layout
def intermediate_device() -> torch.device:
    """Where ComfyUI keeps values between nodes (the CPU unless --gpu-only)."""
    return model_management.intermediate_device()


def images_to_core(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) float in [0, 1] -> the core's (B, C, H, W)."""
    return image.movedim(-1, 1)


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """The core's (B, 3, H, W) float in [0, 1] -> ComfyUI IMAGE (B, H, W, 3) float32 on the intermediate device."""
    return images.movedim(1, -1).to(intermediate_device(), torch.float32)


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK, (H, W) or (B, H, W) float in [0, 1] -> (B, H, W)."""
    return mask.unsqueeze(0) if mask.dim() == 2 else mask


def masks_to_comfy(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float -> ComfyUI MASK on the intermediate device."""
    return masks.to(intermediate_device(), torch.float32)
