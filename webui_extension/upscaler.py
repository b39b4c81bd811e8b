"""``UpscalerResShift``: one WebUI upscaler entry per x4 ResShift / SinSR release, and one per model of one's own
(a ``.safetensors`` written by the project's ``train/export.py``) in the ResShift model folders.

The WebUI's target size (its scale, rounded down to multiples of 8) goes to the core as an output size: the fewest x4
runs that reach it (x8 and x16 in two, the second tiled), then one anti-aliased resize to the exact size. The seed,
the tiles, the precision and the colour fix come from Settings > Upscaling. Errors are raised, never replaced by a
Lanczos image.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from PIL import Image

from modules import devices, modelloader, shared
from modules.upscaler import LANCZOS, Upscaler, UpscalerData

import resshift_core as rc
from resshift_core.errors import NeededFile
from resshift_core.releases import autoencoder_for_file_name, release_for_file_name

from . import forge, progress, settings

logger = logging.getLogger(__name__)

NAME = "ResShift"
DEVICE_TASK = "resshift"  # --use-cpu resshift (or all) keeps it on the CPU in A1111
MODEL_EXTENSIONS = [".pth", ".safetensors"]

# Menu order and names; every release here is x4 super-resolution.
ENTRIES = (
    ("realsr-v3", "ResShift 4x real-world v3"),
    ("realsr-v1", "ResShift 4x real-world v1"),
    ("realsr-v2", "ResShift 4x real-world v2"),
    ("bicsr", "ResShift 4x bicubic"),
    ("sinsr-v1", "SinSR 4x v1"),
    ("sinsr-v2", "SinSR 4x v2"),
)


class UpscalerResShift(Upscaler):
    """The WebUI's ``load_upscalers`` builds it with the ``--resshift-models-path`` value (or None)."""

    def __init__(self, dirname: str | None = None):
        self.name = NAME
        self.user_path = dirname
        super().__init__(False)
        self._lock = threading.Lock()
        self._pipeline = None
        self._pipeline_key = None
        local = self.local_files()
        self.scalers = []
        for release_name, entry_name in ENTRIES:
            release = rc.get_release(release_name)
            path = local.get(release.file_name, release.url)
            self.scalers.append(UpscalerData(entry_name, path, self, release.scale))
        for own in self.own_models():
            self.scalers.append(UpscalerData(f"{NAME}: {own.path.stem}", str(own.path), self, own.scale))

    # ------------------------------------------------------------------------------------------------ files
    def download_folder(self) -> str:
        """Where missing files go: the preload path when given, else models/ResShift."""
        return self.model_download_path or self.user_path or self.model_path

    def local_files(self) -> dict[str, str]:
        """Official file name -> path of every known UNet / autoencoder file in the model folders (a converted
        ``.safetensors`` counts for the official ``.pth`` of the same stem)."""
        found: dict[str, str] = {}
        for path in self.find_models(ext_filter=MODEL_EXTENSIONS):
            if "://" in path:
                continue
            release = release_for_file_name(path)
            autoencoder = autoencoder_for_file_name(path)
            official = release.file_name if release else autoencoder.file_name if autoencoder else None
            if official:
                found.setdefault(official, path)
        return found

    def own_models(self) -> list:
        """Models of one's own in the model folders (the core reads each file's header), by file name."""
        found = []
        for path in self.find_models(ext_filter=[".safetensors"]):
            if "://" in path or release_for_file_name(path) or autoencoder_for_file_name(path):
                continue
            own = rc.read_own_unet_header(path)
            if own is not None:
                found.append(own)
        return sorted(found, key=lambda own: own.path.name.lower())

    def fetch(self, needed: list, purpose: str) -> list[str]:
        """Local paths of official files, downloaded when missing and allowed (see :meth:`weight_paths`)."""
        local = self.local_files()
        folder = self.download_folder()
        download = settings.value(shared.opts, "resshift_download")
        missing, failures = [], []
        for item in needed:
            if item.file_name in local:
                continue
            if download:
                logger.info("downloading %s for %s (weights under the %s: %s)", item.file_name, purpose,
                            item.license, item.license_url)
                try:
                    local[item.file_name] = modelloader.load_file_from_url(item.url, model_dir=folder,
                                                                           file_name=item.file_name)
                    continue
                except (OSError, RuntimeError, ValueError) as error:  # offline, HTTP error, checksum
                    logger.warning("could not download %s: %s", item.url, error)
                    failures.append(rc.reason_of(error))
            missing.append(NeededFile(item.file_name, item.url, Path(folder) / item.file_name))
        if missing:
            reason = ("the WebUI could not download them: " + "; ".join(dict.fromkeys(failures)) if failures
                      else "downloading is switched off ({arg:offline})")
            raise rc.missing_files_error(missing, reason)
        return [local[item.file_name] for item in needed]

    # ---------------------------------------------------------------------------------------------- running
    def load_model(self, path: str):
        """The WebUI's hook; ``path`` is an entry's data path (a local file or the release URL)."""
        return self.pipeline_for(self.model_for(path), self.device_and_dtype())

    @staticmethod
    def model_for(data_path: str | None):
        """An entry's model: its ``Release``, or the ``OwnUNetFile`` of a model of one's own."""
        release = release_for_file_name(data_path or "")
        own = None if release or not data_path or "://" in data_path else rc.read_own_unet_header(data_path)
        if release is None and own is None:
            raise rc.ResShiftError(f"{data_path!r} is not a ResShift release file nor a model exported by the "
                                   f"project's trainer; pick one of the ResShift entries of the upscaler list")
        return release or own

    @staticmethod
    def device_and_dtype() -> tuple[torch.device, torch.dtype]:
        """The WebUI's device for this task and the core's precision rule with the WebUI's facts (the setting, or
        "Automatic": float16 on a GPU unless --no-half or --upcast-sampling)."""
        device = torch.device(devices.get_device_for(DEVICE_TASK))
        choice = settings.value(shared.opts, "resshift_dtype")
        options = shared.cmd_opts
        return device, rc.choose_dtype(device, settings.DTYPE_NAMES.get(choice, choice),
                                       allow_half=not getattr(options, "no_half", False),
                                       upcast=bool(getattr(options, "upcast_sampling", False)))

    def pipeline_for(self, model, device_dtype):
        """The loaded pipeline for a release or a model of one's own (kept between images unless the settings say
        otherwise), built by the core's one assembly with the WebUI's model folders and downloader."""
        device, dtype = device_dtype
        own = isinstance(model, rc.OwnUNetFile)
        key = (str(model.path) if own else model.name, str(device), str(dtype))
        if self._pipeline_key != key:
            self.unload()
            purpose = model.path.name if own else model.name
            host = rc.HostFacts(find_file=self.local_files().get, fetch=lambda files: self.fetch(files, purpose))
            # Under --lowvram / --medvram the networks wait on the CPU and visit the device only while they run.
            home = torch.device("cpu") if self.offload() else device
            self._pipeline = rc.ResShiftPipeline.assemble(str(model.path) if own else None,
                                                          release=None if own else model, device=home, dtype=dtype,
                                                          host=host)
            self._pipeline_key = key
        return self._pipeline

    @staticmethod
    def offload() -> bool:
        return bool(getattr(shared.cmd_opts, "lowvram", False) or getattr(shared.cmd_opts, "medvram", False))

    def unload(self) -> None:
        self._pipeline = None
        self._pipeline_key = None
        devices.torch_gc()

    def upscale(self, img: Image.Image, scale: float, selected_model: str | None = None) -> Image.Image:
        """One model run (exactly x4), then a Lanczos down-scale to the WebUI's target when it is smaller.

        Errors keep their type; their advice is worded with the WebUI's names for the settings."""
        try:
            return self._upscale(img, scale, selected_model)
        except rc.ResShiftError as error:
            error.template = error.render(settings.VOCABULARY)
            raise

    def _upscale(self, img: Image.Image, scale: float, selected_model: str | None) -> Image.Image:
        self.scale = scale
        target_w = int((img.width * scale) // 8 * 8)  # the WebUI's own target rule (multiples of 8)
        target_h = int((img.height * scale) // 8 * 8)
        if img.width >= target_w and img.height >= target_h and scale != 1:
            return img.resize((target_w, target_h), resample=LANCZOS)  # a down-scale needs no model
        if shared.state.interrupted:
            raise rc.CancelledError("the run was interrupted before it started")
        return self.do_upscale(img, selected_model, rc.output_size(width=target_w, height=target_h))

    def do_upscale(self, img: Image.Image, selected_model: str | None, size=None) -> Image.Image:
        """(W, H) PIL image -> PIL image of the same kind at ``size`` (default x4; RGBA keeps its alpha, resized
        by the core)."""
        model = self.model_for(selected_model)
        device_dtype = self.device_and_dtype()
        seed = int(settings.value(shared.opts, "resshift_seed"))
        seed = rc.random_seed() if seed < 0 else seed  # -1: a fresh one, drawn by the core's rule
        with self._lock, progress.Bridge(shared.state, previews=settings.live_previews(shared.opts)) as bridge:
            bridge.loading(f"loading {NAME} {getattr(model, 'name', None) or model.path.name}")
            forge.free_memory_for(self._pipeline, img.height, img.width, self.tiles_for(self._pipeline), size)
            pipe = self.pipeline_for(model, device_dtype)
            try:
                if self.offload():
                    pipe.to(device_dtype[0])
                result = pipe.upscale(img, seed=seed, callback=bridge.on_step, cancel=bridge.should_stop,
                                      tiles=self.tiles_for(pipe), size=size,
                                      color_fix=settings.value(shared.opts, "resshift_color_fix"))
            except rc.CancelledError:
                if shared.state.skipped and not shared.state.interrupted:
                    return img  # the WebUI discards a skipped image
                raise
            finally:
                if self.offload() and self._pipeline is not None:
                    self._pipeline.to("cpu")
                if not settings.value(shared.opts, "resshift_keep_loaded"):
                    self.unload()
                else:
                    devices.torch_gc()
        progress.record_seed(shared.state, seed)
        return result

    @staticmethod
    def tiles_for(pipe):
        """The core's tiling from the settings (input pixels = latent pixels at x4; a tile size of 0 = the model's
        default for the device), or None before a pipeline is loaded."""
        if pipe is None:
            return None
        overlap = int(settings.value(shared.opts, "resshift_tile_overlap"))
        return pipe.tiles("auto", int(settings.value(shared.opts, "resshift_tile_size")),
                          overlap if overlap >= 0 else None)
