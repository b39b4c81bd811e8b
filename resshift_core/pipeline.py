"""The public entry point: images in, upscaled (or restored) images out.

    pipe = ResShiftPipeline.assemble(release="realsr-v3")        # or unet=/autoencoder= files or descriptors
    hr = pipe.upscale(lr, seed=12345)                            # (B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W) in [0, 1]

A run is planned first (:meth:`~ResShiftPipeline.plan`): its tiles, its number of network calls (the progress count)
and its memory (:meth:`~ResShiftPipeline.estimate_memory`) come from one :class:`~resshift_core.planning.RunPlan`.
The stages themselves (encode, sample, decode) are :class:`~resshift_core.stages.PipelineStages`; they are also
public here (:meth:`~ResShiftPipeline.encode_lr`, :meth:`~ResShiftPipeline.sample_latent`,
:meth:`~ResShiftPipeline.decode_latent`) for hosts that let users mix them. This class adds what a run does around
them: the noise, the retry with smaller tiles after an out-of-memory error, the official patch-wise mode, the colour
fix and output sizes other than the model's own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace

import torch

from . import assembly
from .color import check_color_fix
from .color import color_fix as apply_color_fix
from .errors import InputImageError, InvalidArgumentError
from .images import as_image_batch, finish_output, prepare_input, prepare_mask
from .memory import MemoryMixin
from .models import ModelDescriptor
from .planning import PlanningMixin, RunPlan, TilesArgument
from .previews import LatentPreview
from .releases import Release
from .runtime import parse_dtype
from .sampler import CancelCheck, NoiseSource, ProgressCallback, check_seed, random_seed
from .sizing import OutputSize, SizePlan, resize_exact
from .stages import PipelineStages, ResShiftLatent, RunProgress, pad_bottom_right
from .tiling import TileSettings, chop_starts, default_chop_stride, validate_chop

logger = logging.getLogger(__name__)

__all__ = ["ResShiftLatent", "ResShiftPipeline", "TileSettings", "chop_starts", "pad_bottom_right", "random_seed"]

def _is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA raises OutOfMemoryError; other back-ends a RuntimeError saying so)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or "out of memory" in str(error).lower()


class ResShiftPipeline(PipelineStages, PlanningMixin, MemoryMixin):
    """A UNet, its autoencoder (none for pixel-space models) and its schedule, on a device in a dtype.

    Build it with :meth:`assemble` (files, releases, descriptors; the host's facts). The constructor takes the
    networks themselves:

    Args:
        unet: the diffusion network. autoencoder: its VQ autoencoder; None for a pixel-space model.
        schedule: its noise schedule (see :mod:`resshift_core.releases`).
        scale: output / input size (4 for SR; 1 for inpainting and face restoration).
        one_step: SinSR-style single network call by default.
        release: the release it came from, if known.
        device, dtype: where and in which precision the networks run (latents and schedule math stay float32).
        padding_multiple: LR padding multiple; default the official one (the UNet's ``lq_size``).
        channels_last: conv weights and feature maps stored (B, H, W, C) (faster convolutions; see
            :class:`~resshift_core.stages.PipelineStages`).
        tile_size: the UNet tile the model asks for (latent pixels; files from our trainer record the training crop,
            whose GroupNorm statistics need tiles of that size). None: tile only for memory.
    """

    last_plan: RunPlan | None = None  # how the latest upscale() was computed (its tiles), for output metadata
    last_seed: int | None = None  # the seed of the latest upscale() (drawn when none was given), for infotexts
    last_size_plan: SizePlan | None = None  # the passes of the latest upscale() to another size than the model's

    def __init__(self, unet, autoencoder, schedule, scale: int, *, one_step: bool = False,
                 release: Release | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, padding_multiple: int | None = None,
                 channels_last: bool = True, tile_size: int | None = None):
        spec = assembly.model_spec(unet, autoencoder, schedule, scale, one_step=one_step,
                                   padding_multiple=padding_multiple, tile_size=tile_size)
        super().__init__(unet, autoencoder, spec, device="cpu", channels_last=channels_last)
        self.release = release
        self._probe_cache: dict = {}
        self._plan_cache: dict = {}
        self._preview = LatentPreview(self)
        self.to(device or "cpu", dtype)

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def assemble(cls, unet: str | os.PathLike | ModelDescriptor | None = None,
                 autoencoder: str | os.PathLike | ModelDescriptor | None = None, *,
                 release: str | Release | None = None, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = "auto", host: assembly.HostFacts | None = None,
                 scale: int | None = None, padding_multiple: int | None = None,
                 channels_last: bool = True) -> ResShiftPipeline:
        """The one way every front-end builds a pipeline.

        Args:
            unet: a file (path or official file name), a loaded descriptor, or None for the release's own file.
            autoencoder: a file or descriptor; None: the one the UNet needs (none in pixel space).
            release: the release to run (or the release of a UNet file that does not say it).
            device: ``"auto"`` (CUDA when there is one), ``"cpu"``, ``"cuda:1"``, ...
            dtype: ``"auto"`` (the core's rule with the host's facts; float16 on CUDA) or fp32 / fp16 / bf16.
            host: what the host decides itself (:class:`~resshift_core.assembly.HostFacts`): its dtype, its
                ``--no-half``, its model folders and downloader.
            scale: overrides the scale (a pixel-space file that does not record it).
        Raises:
            OfflineError (every missing file named), CheckpointError subclasses, UnknownScheduleError,
            InvalidArgumentError (device, dtype), ResShiftError (a pair that does not fit).
        """
        unet_model, autoencoder_model = assembly.load_networks(unet, autoencoder, release=release, host=host)
        return cls._from_models(unet_model, autoencoder_model, device=device, dtype=dtype, host=host, scale=scale,
                                padding_multiple=padding_multiple, channels_last=channels_last)

    @classmethod
    def _from_models(cls, unet: ModelDescriptor, autoencoder: ModelDescriptor | None, *, device, dtype,
                     host: assembly.HostFacts | None = None, scale: int | None = None,
                     padding_multiple: int | None = None, channels_last: bool = True) -> ResShiftPipeline:
        device, dtype = assembly.device_and_dtype(unet, device, dtype, host)
        return cls(**assembly.pipeline_arguments(unet, autoencoder, scale=scale, padding_multiple=padding_multiple),
                   device=device, dtype=dtype, channels_last=channels_last)

    @classmethod
    def from_loaded(cls, unet: ModelDescriptor, autoencoder: ModelDescriptor | None = None, *,
                    release: str | Release | None = None, scale: int | None = None, device=None, dtype=None,
                    padding_multiple: int | None = None, channels_last: bool = True) -> ResShiftPipeline:
        """A pipeline from loaded descriptors as they are (nothing is fetched: a latent UNet needs its autoencoder
        given), on the CPU in float32 unless told otherwise. ``release`` names the UNet's release when its file does
        not say it."""
        assembly.check_kinds(unet, autoencoder)
        if release is not None:
            unet = assembly.renamed_release(unet, release)
        return cls._from_models(unet, autoencoder, device=device or "cpu", dtype=dtype or "fp32", scale=scale,
                                padding_multiple=padding_multiple, channels_last=channels_last)

    @classmethod
    def from_files(cls, unet_path: str | os.PathLike, autoencoder_path: str | os.PathLike | None = None, *,
                   release: str | Release | None = None, scale: int | None = None, device=None, dtype=None,
                   padding_multiple: int | None = None) -> ResShiftPipeline:
        """:meth:`assemble` from files (official .pth or our .safetensors); a latent UNet without autoencoder file
        gets the one it needs from the cache."""
        return cls.assemble(unet_path, autoencoder_path, release=release, scale=scale, device=device or "cpu",
                            dtype=dtype or "fp32", padding_multiple=padding_multiple)

    @classmethod
    def from_release(cls, name: str, *, cache_dir: str | os.PathLike | None = None, device=None, dtype=None,
                     download: bool = True, progress: bool = True) -> ResShiftPipeline:
        """:meth:`assemble` for an official release, from the cache folder (downloaded on first use)."""
        host = assembly.HostFacts(cache_dir=cache_dir, download=download, progress=progress)
        return cls.assemble(release=name, device=device or "cpu", dtype=dtype or "fp32", host=host)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
           channels_last: bool | None = None) -> ResShiftPipeline:
        """Move the networks (in place) to a device, a dtype and/or a memory format; returns self. (The codebook
        keeps float32 and normalisation statistics are computed in float32 whatever the dtype: the modules see to
        it, so a host moving the networks itself gets the same.)"""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = parse_dtype(dtype)
        if channels_last is not None:
            self.channels_last = bool(channels_last)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for network in self.networks:  # the format applies to 4-D weights; a conv follows its weight
            network.to(self.device, self.dtype, memory_format=memory_format)
        self._plan_cache.clear()  # plans and traced calls depend on the device, dtype and memory format
        self._probe_cache.clear()
        return self

    def latent_to_rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latent -> (B, 3, h, w) float32 in [0, 1] without the decoder (previews; see
        :class:`~resshift_core.previews.LatentPreview`)."""
        return self._preview(latent)

    # ------------------------------------------------------------------------------------------- one run
    def _noise_source(self, seed: int | None, generator: torch.Generator | None,
                      noise: Sequence[torch.Tensor] | None, generator_state) -> NoiseSource:
        """A fresh noise source (a retry after out-of-memory replays the same draws)."""
        if noise is not None:
            return NoiseSource(replay=noise)
        if generator is not None:
            generator.set_state(generator_state)
            return NoiseSource(generator)
        return NoiseSource.from_seed(seed)

    #: A host's way to make room on the device after an out-of-memory error (ComfyUI: free other models, empty its
    #: cache), called before the tiles are halved; returns True when it freed something, and the same tiles are then
    #: tried once more. None: the tiles are halved at once.
    free_device_memory = None

    def _retrying(self, tiles: TileSettings, callback: ProgressCallback | None, attempt):
        """``attempt(tiles, progress_for)`` again after a device out-of-memory error: first with the same tiles once
        the host has made room (:attr:`free_device_memory`), then with smaller tiles until they cannot shrink;
        progress goes on from the count reached so far, so that a host's bar never moves back. Each attempt makes
        its own noise source, so a retry gives the same image."""
        reached = [0]
        host_asked = False

        def progress(total: int, **options) -> RunProgress | None:
            if callback is None:
                return None
            counter = RunProgress(callback, total, self.latent_to_rgb, start=reached[0], **options)
            counters.append(counter)
            return counter

        while True:
            counters: list[RunProgress] = []
            try:
                return attempt(tiles, progress)
            except (RuntimeError, MemoryError) as error:
                if not _is_out_of_memory(error):
                    raise
                reached[0] = max([reached[0]] + [counter.done for counter in counters])
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if not host_asked and self.free_device_memory is not None:
                    host_asked = True
                    if self.free_device_memory():
                        logger.warning("out of memory with %s; the host freed memory, trying again", tiles)
                        continue
                smaller = tiles.halved(self.unet.config.latent_multiple)
                if smaller is None:
                    raise
                logger.warning("out of memory with %s; retrying with %s", tiles, smaller)
                tiles = smaller

    def _seed_for_run(self, seed: int | None, generator, noise) -> int | None:
        if seed is None and generator is None and noise is None:
            seed = random_seed()
        self.last_seed = None if seed is None else check_seed(seed)
        return self.last_seed

    @torch.inference_mode()
    def encode_lr(self, images, *, mask=None, tiles: TilesArgument = None, one_step: bool | None = None,
                  callback: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> ResShiftLatent:
        """First stage: LR images (as :meth:`upscale` takes them) -> a :class:`ResShiftLatent` holding y, the
        padded LR condition and the run's plan (tiles chosen here apply to the later stages too). Out of memory,
        it retries with smaller tiles."""
        batch = as_image_batch(images).to(self.device)
        mask_m11 = prepare_mask(mask, batch, needs_mask=bool(self.unet.config.cond_mask))
        height, width = batch.shape[-2:]

        def attempt(tiles: TileSettings, progress) -> ResShiftLatent:
            plan = self.plan(height, width, batch=batch.shape[0], tiles=tiles, one_step=one_step)
            return self._encode_stage(batch * 2.0 - 1.0, mask_m11, batch, plan, progress(plan.encode_calls), cancel)

        return self._retrying(self._tiles_of(tiles), callback, attempt)

    def _replanned(self, latent: ResShiftLatent, tiles: TileSettings) -> ResShiftLatent:
        """The same batch with the plan of other tiles (after an out-of-memory error in a later stage)."""
        if tiles == latent.plan.tiles:
            return latent
        plan = self.plan(latent.height, latent.width, batch=latent.latent.shape[0], tiles=tiles,
                         one_step=latent.plan.one_step)
        return replace(latent, plan=plan)

    @torch.inference_mode()
    def sample_latent(self, latent: ResShiftLatent, *, seed: int | None = None,
                      generator: torch.Generator | None = None, noise: Sequence[torch.Tensor] | None = None,
                      callback: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> ResShiftLatent:
        """Second stage: run the chain on an encoded batch; returns it with the sampled latent. Out of memory, it
        retries with smaller tiles and the same noise."""
        if latent.sampled:
            raise InvalidArgumentError("latent", "an already sampled latent", "the output of encode_lr")
        latent = latent.to(self.device)
        seed = self._seed_for_run(seed, generator, noise)
        state = generator.get_state() if generator is not None else None

        def attempt(tiles: TileSettings, progress) -> ResShiftLatent:
            planned = self._replanned(latent, tiles)
            return self._sample_stage(planned, self._noise_source(seed, generator, noise, state),
                                      progress(planned.plan.unet_calls), cancel)

        return self._retrying(latent.plan.tiles, callback, attempt)

    @torch.inference_mode()
    def decode_latent(self, latent: ResShiftLatent, *, mask_back: bool = True,
                      callback: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """Last stage: a sampled (or, for a look at y, an encoded) latent -> (B, 3, sH, sW) float32 in [0, 1]. Out of
        memory, it retries with smaller autoencoder tiles."""
        latent = latent.to(self.device)

        def attempt(tiles: TileSettings, progress) -> torch.Tensor:
            planned = self._replanned(latent, tiles)
            return self._decode_stage(planned, progress(planned.plan.decode_calls), cancel, mask_back=mask_back)

        return self._retrying(latent.plan.tiles, callback, attempt)

    def sample_padded(self, lr_m11: torch.Tensor, noise: NoiseSource, *, mask_m11: torch.Tensor | None = None,
                      callback: ProgressCallback | None = None, cancel: CancelCheck | None = None,
                      trace: dict | None = None, tiles: TileSettings | None = None,
                      one_step: bool | None = None) -> torch.Tensor:
        """The official ``sample_func``: one complete run on one (batch of) LR image(s), untiled unless ``tiles``
        says otherwise.

        Args:
            lr_m11: (B, 3, h, w) LR in [-1, 1] on the pipeline's device.
            mask_m11: (B, 1, h, w) inpainting mask in [-1, 1] (+1 = fill).
        Returns:
            (B, 3, h * scale, w * scale) float32 in [-1, 1].
        """
        tiles = tiles or TileSettings(mode="off")
        plan = self.plan(lr_m11.shape[-2], lr_m11.shape[-1], batch=lr_m11.shape[0], tiles=tiles, one_step=one_step)
        progress = RunProgress(callback, plan.network_calls, self.latent_to_rgb) if callback is not None else None
        return self._run_padded(lr_m11, mask_m11, plan, noise, progress, cancel, trace)

    @torch.inference_mode()
    def upscale(self, images, *, mask=None, seed: int | None = None, generator: torch.Generator | None = None,
                noise: Sequence[torch.Tensor] | None = None, callback: ProgressCallback | None = None,
                cancel: CancelCheck | None = None, tiles: TilesArgument = None, chop_size: int | None = None,
                chop_stride: int | None = None, mask_back: bool = True, max_input_pixels: int | None = None,
                one_step: bool | None = None, color_fix: str | None = "none", size: OutputSize | None = None,
                trace: dict | None = None):
        """Upscale (or restore) a batch of images.

        Args:
            images: (B, 3, H, W) float tensor in [0, 1] (uint8 and (3, H, W) accepted), a PIL image or a list of
                same-size PIL images. Any size from 1x1 px. RGBA PIL images keep their alpha (upscaled bicubically).
            mask: inpainting only: (B, 1, H, W) in [0, 1], 1 = region to fill.
            seed / generator / noise: the randomness (a seed, a torch.Generator, or recorded draws to replay).
                With none of them a random seed is used. Each image of a batch gets the noise it would get alone:
                an image's result depends on the image, the model, the seed and the settings, never on the batch
                (twin frames give twin results; the frames of a video share one noise field).
            callback: receives a :class:`~resshift_core.sampler.StepProgress` after every network call, with
                monotone ``done`` / ``total`` counts for the whole run (all passes of an output size included).
            cancel: polled between network calls; returning True raises :class:`CancelledError`.
            tiles: how to tile (:meth:`tiles`, or a mode name): ``"auto"`` (default) runs the official untiled
                computation wherever it fits in memory and costs at most 1.5x the tiled one, and tiles beyond;
                ``"off"`` never tiles; ``"latent"`` always plans tiles. Tiles are blended with one noise field, so the
                result does not depend on how the image was cut. On out-of-memory the run is retried with smaller
                tiles and the same noise.
            chop_size, chop_stride: instead of latent tiling, the official patch-wise processing (LR pixels;
                default stride: :func:`~resshift_core.tiling.default_chop_stride`); each patch is an independent run
                and overlaps are averaged uniformly.
            mask_back: inpainting: keep the known pixels from the input (official default).
            max_input_pixels: refuse larger inputs with a clear error instead of running out of memory.
            one_step: a single network call at t = T-1 returning its x0 prediction (how SinSR runs; a fast preview
                for any model). Default: the model's own way.
            color_fix: ``"none"`` (the official computation), ``"wavelet"`` or ``"adain"``: the output's colours
                brought back to the input's (:mod:`resshift_core.color`), once on the whole output.
            size: an output size other than the model's scale (:mod:`resshift_core.sizing`): the fewest model passes
                that reach it (later passes run tiled on the earlier output), then one anti-aliased resize.
            trace: if a dict, receives the intermediate tensors of an unchopped run (for tests).
        Returns:
            (B, 3, H', W') float32 tensor in [0, 1] on the pipeline's device (H' = H * scale unless ``size`` says
            otherwise); for PIL input, one PIL image for one image, a list for a list.
        """
        validate_chop(chop_size, chop_stride)
        color_fix = check_color_fix(color_fix)
        tiles = self._tiles_of(tiles)
        batch, pil_context = prepare_input(images)
        batch = batch.to(self.device)
        height, width = batch.shape[-2:]
        if max_input_pixels is not None and height * width > max_input_pixels:
            raise InputImageError(f"the input is {width}x{height} = {width * height} px, more than the limit of "
                                  f"{max_input_pixels} px; down-scale it or raise the limit")
        size_plan = self.plan_size(width, height, size)
        if size_plan.passes > 1 and (noise is not None or mask is not None or chop_size is not None):
            raise InvalidArgumentError("size", size.describe(), "an output size one model pass reaches, for replayed "
                                       "noise, inpainting or the patch-wise mode")
        mask_m11 = prepare_mask(mask, batch, needs_mask=bool(self.unet.config.cond_mask))
        seed = self._seed_for_run(seed, generator, noise)
        generator_state = generator.get_state() if generator is not None else None
        pass_tiles = self._pass_tiles(tiles, size_plan.passes)
        sizes = [(width, height)] + list(size_plan.pass_sizes[:-1])
        calls = [self.plan(h, w, batch=batch.shape[0], tiles=t, one_step=one_step).network_calls
                 for (w, h), t in zip(sizes, pass_tiles)] if size_plan.passes > 1 else [0]
        passes = _PassCounter(callback, calls)
        result = batch
        for number, run_tiles in enumerate(pass_tiles):
            result = self._one_pass(result, mask_m11, seed, generator, noise, generator_state, passes.for_pass(number),
                                    cancel, run_tiles, chop_size, chop_stride, one_step, mask_back, trace)
        if size_plan.needs_resize:
            result = resize_exact(result, size_plan.out_width, size_plan.out_height)
        if color_fix != "none":
            result = apply_color_fix(result, batch, color_fix)
        self.last_size_plan = size_plan if size_plan.passes > 1 or size_plan.needs_resize else None
        return finish_output(result, pil_context)

    def _one_pass(self, batch: torch.Tensor, mask_m11, seed, generator, noise, generator_state, callback, cancel,
                  tiles: TileSettings, chop_size, chop_stride, one_step, mask_back, trace) -> torch.Tensor:
        """One model pass over (B, 3, H, W) in [0, 1] -> (B, 3, sH, sW) in [0, 1], retried with smaller tiles."""
        height, width = batch.shape[-2:]
        lr_m11 = batch * 2.0 - 1.0

        def attempt(tiles: TileSettings, progress) -> tuple[torch.Tensor, RunPlan]:
            source = self._noise_source(seed, generator, noise, generator_state)
            if chop_size is not None and (height > chop_size or width > chop_size):
                return self._chopped(lr_m11, mask_m11, source, chop_size, chop_stride, progress, cancel, one_step)
            plan = self.plan(height, width, batch=batch.shape[0], tiles=tiles, one_step=one_step)
            return self._run_padded(lr_m11, mask_m11, plan, source, progress(plan.network_calls), cancel,
                                    trace), plan

        sr_m11, plan = self._retrying(tiles, callback, attempt)
        padded_mask = None if mask_m11 is None else pad_bottom_right(mask_m11, self.padding_multiple)
        self.last_plan = plan
        return self._finish(sr_m11, padded_mask, batch, plan, mask_back, trace)

    def _chopped(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, source: NoiseSource, chop_size: int,
                 chop_stride: int | None, progress_for, cancel: CancelCheck | None,
                 one_step: bool | None) -> tuple[torch.Tensor, RunPlan]:
        """Official patch-wise processing: independent untiled runs on overlapping patches, uniform averaging."""
        stride = chop_stride or default_chop_stride(chop_size)
        batch, _, height, width = lr_m11.shape
        starts = [(r, c) for r in chop_starts(height, chop_size, stride) for c in chop_starts(width, chop_size, stride)]
        canvas = torch.zeros(batch, 3, height * self.scale, width * self.scale, device=lr_m11.device)
        count = torch.zeros_like(canvas)
        off = TileSettings(mode="off")
        patch_plan = self.plan(min(height, chop_size), min(width, chop_size), batch=batch, tiles=off,
                               one_step=one_step)
        progress = progress_for(patch_plan.network_calls * len(starts), patches=len(starts))
        for number, (row, col) in enumerate(starts):
            patch = lr_m11[:, :, row:row + chop_size, col:col + chop_size]
            mask_patch = None if mask_m11 is None else mask_m11[:, :, row:row + chop_size, col:col + chop_size]
            if progress is not None:
                progress.patch = number + 1
            plan = self.plan(patch.shape[-2], patch.shape[-1], batch=batch, tiles=off, one_step=one_step)
            result = self._run_padded(patch, mask_patch, plan, source, progress, cancel, None)
            s = self.scale
            canvas[:, :, row * s:row * s + result.shape[-2], col * s:col * s + result.shape[-1]] += result
            count[:, :, row * s:row * s + result.shape[-2], col * s:col * s + result.shape[-1]] += 1
        whole = self._make_plan(height, width, batch, off, patch_plan.one_step, False, False)
        return canvas / count, whole

    # ------------------------------------------------------------------------------------------- records
    def run_record(self, seed: int | None = None, plan: RunPlan | None = None,
                   size_plan: SizePlan | None = None, **settings) -> dict:
        """How an output was made, for its file's metadata (PNG text chunk, infotext, the app's record): model,
        seed, steps, precision, tiling, passes and the settings given (e.g. ``color_fix``). Defaults: the latest
        run's seed and plans."""
        plan = plan if plan is not None else self.last_plan
        size_plan = size_plan if size_plan is not None else self.last_size_plan
        record = {"release": self.release.name if self.release else None,
                  "seed": seed if seed is not None else self.last_seed, "scale": self.scale,
                  "steps": 1 if plan is not None and plan.one_step else self.schedule.num_steps,
                  "dtype": str(self.dtype).replace("torch.", "")}
        if plan is not None:
            record.update(plan.metadata())
        if size_plan is not None:
            record["size"] = size_plan.metadata()
        record.update({key: value for key, value in settings.items() if value is not None})
        return record


class _PassCounter:
    """One progress count over all the passes of a run: pass k reports after the calls of the passes before it, and
    the total counts every pass from the start (each pass is planned before the first one runs)."""

    def __init__(self, callback: ProgressCallback | None, calls_per_pass: Sequence[int]):
        self.callback = callback
        self.calls_per_pass = list(calls_per_pass)
        self.finished = 0  # calls of the passes done so far
        self.current = 0  # calls of the current pass, as its plan counts them

    def for_pass(self, number: int) -> ProgressCallback | None:
        if self.callback is None or len(self.calls_per_pass) == 1:
            return self.callback
        self.finished += self.current
        self.current = self.calls_per_pass[number]
        offset, later = self.finished, sum(self.calls_per_pass[number + 1:])

        def forward(progress) -> None:
            self.current = progress.total  # a retry with smaller tiles counts on from where it was
            self.callback(replace(progress, done=offset + progress.done, total=offset + progress.total + later))

        return forward
