"""The public entry point: images in, upscaled (or restored) images out.

    unet, vae = load_model("resshift_realsrx4_s4_v3.pth"), load_model("autoencoder_vq_f4.pth")
    pipe = ResShiftPipeline.from_loaded(unet, vae)     # or .from_files(...), .from_release("realsr-v3")
    hr = pipe.upscale(lr, seed=12345)                  # lr: (B, 3, H, W) float in [0, 1] -> (B, 3, 4H, 4W) in [0, 1]

One run (the official ``sample_func``): pad the LR image bottom/right to the padding multiple, up-sample it bicubically
(x scale), encode it to the latent y, run the chain (``sampler.sample``), decode the final latent (quantised), crop
and clamp. The three stages are also public (:meth:`~ResShiftPipeline.encode_lr`,
:meth:`~ResShiftPipeline.sample_latent`, :meth:`~ResShiftPipeline.decode_latent`) for hosts that let users mix them.
Every run is planned first (:meth:`~ResShiftPipeline.plan`): its tiles, its number of network calls (the progress
count) and its memory (:meth:`~ResShiftPipeline.estimate_memory`) come from one :class:`~resshift_core.planning.RunPlan`.

Pixel-space models (no autoencoder; files from our trainer) run the same chain on the image itself: the "latent" is
the up-sampled image in [-1, 1] and the LR condition is that same image.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .checkpoints import resolve_schedule
from .errors import InputImageError, InvalidArgumentError, ResShiftError, WrongModelKindError
from .images import as_image_batch, finish_output, prepare_input
from .memory import available_memory, meta_copy, trace_run, weight_bytes
from .models import ModelDescriptor, load_model
from .nets.unet import ResShiftUNet
from .nets.vqgan import VQAutoencoder
from .planning import AUTO_COST_LIMIT, RunPlan, make_plan, plan_cost
from .releases import AUTOENCODERS, Release
from .sampler import CancelCheck, NoiseSource, ProgressCallback, StepProgress, check_cancel, sample
from .schedule import Schedule, ScheduleParams
from .tiling import Blender, TileSettings, plan_tiles, tiled_apply, validate_chop

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
#: Share of the memory available before a run that "auto" lets an untiled run use.
AUTO_MEMORY_SHARE = 0.75

__all__ = ["DTYPES", "ResShiftLatent", "ResShiftPipeline", "TileSettings", "chop_starts", "pad_bottom_right",
           "parse_dtype"]


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """"fp32" | "fp16" | "bf16" (or a torch dtype) -> torch dtype; None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidArgumentError("dtype", str(dtype), "float32, float16 or bfloat16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidArgumentError("dtype", dtype, "one of fp32, fp16, bf16") from None


def pad_bottom_right(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom and right to multiples of ``multiple``.

    Official rule: reflect padding. Reflection needs pad < side, which fails for images smaller than about half the
    multiple (the official code raises there); we then reflect repeatedly (a mirror extension: each pass adds at
    most side - 1 pixels), and for a side of 1 pixel, where nothing can be mirrored, repeat the edge.
    """
    height, width = image.shape[-2:]
    target_h = math.ceil(height / multiple) * multiple
    target_w = math.ceil(width / multiple) * multiple
    while image.shape[-2] < target_h or image.shape[-1] < target_w:
        h, w = image.shape[-2:]
        pad_h, pad_w = target_h - h, target_w - w
        if (pad_h and h == 1) or (pad_w and w == 1):
            image = F.pad(image, (0, pad_w if w == 1 else 0, 0, pad_h if h == 1 else 0), mode="replicate")
            continue
        image = F.pad(image, (0, min(pad_w, w - 1), 0, min(pad_h, h - 1)), mode="reflect")
    return image


def chop_starts(length: int, chop_size: int, stride: int) -> list[int]:
    """Patch starts along one axis, as the official ``ImageSpliterTh``: 0, stride, ... with overrunning starts moved
    to length - chop_size and duplicates dropped; an axis not longer than chop_size has the single start 0."""
    if length <= chop_size:
        return [0]
    starts = [min(s, length - chop_size) for s in range(0, length, stride)]
    return list(dict.fromkeys(starts))


def _is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA raises OutOfMemoryError; other back-ends a RuntimeError saying so)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or "out of memory" in str(error).lower()


@dataclass
class ResShiftLatent:
    """A batch between the stages of a run: :meth:`ResShiftPipeline.encode_lr` makes it, ``sample_latent`` turns
    its ``latent`` from y into the sampled z0, ``decode_latent`` makes images of it.

    Attributes:
        latent: (B, C, h, w) float32: the LR latent y (``sampled`` False) or the sampled latent (True).
        lr_m11: (B, 3, H', W') the padded LR image in [-1, 1] (the UNet's condition).
        mask_m11: (B, 1, H', W') padded inpainting mask in [-1, 1] (+1 = fill), or None.
        images: (B, 3, H, W) the input in [0, 1] (inpainting keeps its known pixels from it), or None.
        plan: the run's plan (tiles, sizes, network calls).
        sampled: whether the chain has run.
    """

    latent: torch.Tensor
    lr_m11: torch.Tensor
    mask_m11: torch.Tensor | None
    images: torch.Tensor | None
    plan: RunPlan
    sampled: bool = False

    @property
    def height(self) -> int:
        return self.plan.height

    @property
    def width(self) -> int:
        return self.plan.width

    def to(self, device: str | torch.device) -> ResShiftLatent:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return replace(self, latent=move(self.latent), lr_m11=move(self.lr_m11), mask_m11=move(self.mask_m11),
                       images=move(self.images))


class _Progress:
    """Counts the network calls of a run (monotone ``done`` of ``total``) and hands them to the callback."""

    def __init__(self, callback: ProgressCallback | None, total: int, to_rgb, patch: int = 1, patches: int = 1,
                 start: int = 0):
        self.callback = callback
        self.done = start  # a retry after out-of-memory goes on from where the failed attempt stopped
        self.total = start + total
        self.to_rgb = to_rgb
        self.patch, self.patches = patch, patches
        self.step_end_units = 1  # units the end of the current denoising step reports (tiles not yet reported)

    def advance(self, units: int, phase: str, **fields) -> None:
        self.done = min(self.total, self.done + units)
        if self.callback is not None:
            fields.setdefault("tile", self.patch)
            fields.setdefault("total_tiles", self.patches)
            self.callback(StepProgress(self.done, self.total, phase, to_rgb=self.to_rgb, **fields))


class ResShiftPipeline:
    """A UNet, its autoencoder (none for pixel-space models) and its schedule, on a device in a dtype.

    Args:
        unet: the diffusion network.
        autoencoder: the VQ autoencoder it was trained with; None for a pixel-space model.
        schedule: its noise schedule (see :mod:`resshift_core.releases`).
        scale: output / input size (4 for SR; 1 for inpainting and face restoration).
        one_step: SinSR-style single network call by default.
        release: the release it came from, if known.
        device, dtype: where and in which precision the networks run (latents and schedule math stay float32).
        padding_multiple: LR padding multiple; default the official one (the UNet's ``lq_size``).
        channels_last: store conv weights and feature maps (B, H, W, C) in memory. On by default: oneDNN and cuDNN
            run 3x3 convolutions 10-35% faster that way (no layout reorder around every conv); values agree with
            the NCHW run within float rounding.
        tile_size: the UNet tile the model asks for (latent pixels; files from our trainer record the training crop,
            whose GroupNorm statistics need tiles of that size). None: tile only for memory.
    """

    def __init__(self, unet: ResShiftUNet, autoencoder: VQAutoencoder | None, schedule: ScheduleParams | Schedule,
                 scale: int, *, one_step: bool = False, release: Release | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 padding_multiple: int | None = None, channels_last: bool = True, tile_size: int | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.autoencoder = None if autoencoder is None else autoencoder.eval().requires_grad_(False)
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        self.scale = int(scale)
        self.one_step = one_step
        self.release = release
        self.model_tile_size = tile_size
        config = unet.config
        if autoencoder is None:
            if config.feature_stages != 0 or config.in_channels != 3:
                raise ResShiftError("this UNet works on a latent (its LR path or channels are those of a latent "
                                    "model): give its autoencoder as {arg:autoencoder}")
            self.latent_factor = 1
            self.padding_multiple = padding_multiple or config.latent_multiple // math.gcd(config.latent_multiple,
                                                                                          self.scale)
        else:
            if self.scale * 2 ** config.feature_stages != autoencoder.downsample_factor:
                raise ResShiftError(
                    f"scale x{self.scale} does not fit this UNet / autoencoder pair (LR path /{2 ** config.feature_stages},"
                    f" autoencoder /{autoencoder.downsample_factor}): the expected scale is "
                    f"x{autoencoder.downsample_factor // 2 ** config.feature_stages}")
            if autoencoder.config.embed_dim != config.in_channels:
                raise ResShiftError(f"the autoencoder's latent has {autoencoder.config.embed_dim} channels but the "
                                    f"UNet expects {config.in_channels}: they are not a pair (face models need their "
                                    f"own autoencoder, see the release table)")
            self.latent_factor = autoencoder.downsample_factor
            self.padding_multiple = padding_multiple or config.lq_size
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.channels_last = bool(channels_last)
        self._probe = None  # set while the memory estimate traces a run on meta tensors
        self._probe_cache: dict = {}
        self._plan_cache: dict = {}
        self._rgb_map: torch.Tensor | None = None
        self.to(device or "cpu", dtype)

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_loaded(cls, unet: ModelDescriptor, autoencoder: ModelDescriptor | None = None, *,
                    release: str | Release | None = None, scale: int | None = None, device=None, dtype=None,
                    padding_multiple: int | None = None, channels_last: bool = True) -> ResShiftPipeline:
        """A pipeline from loaded descriptors (:func:`~resshift_core.models.load_model`).

        Args:
            unet, autoencoder: descriptors of kind "unet" and "autoencoder" (no autoencoder for pixel-space UNets).
            release: overrides the release the UNet was identified as (its schedule, scale, one-step flag).
            scale: overrides the scale.
        Raises:
            WrongModelKindError: swapped descriptors. UnknownScheduleError: a UNet of unknown schedule (name its
            release). ResShiftError: a latent-space UNet without autoencoder, or a pair that does not fit.
        """
        for descriptor, wanted in ((unet, "unet"), (autoencoder, "autoencoder")):
            if descriptor is not None and descriptor.kind != wanted:
                raise WrongModelKindError(
                    f"{descriptor.identity.name} is {'a UNet' if descriptor.kind == 'unet' else 'an autoencoder'}, "
                    f"given where the {wanted} belongs: give it as {{arg:{descriptor.kind}}} instead",
                    found=descriptor.kind, expected=wanted)
        if release is not None:
            from .releases import get_release

            release = release if isinstance(release, Release) else get_release(release)
            unet = load_model({k: v for k, v in unet.network.state_dict().items()}, expect="unet",
                              release=release) if unet.release is not release else unet
        schedule = resolve_schedule(unet)
        if unet.latent_space and autoencoder is None:
            needed = AUTOENCODERS.get(unet.identity.autoencoder or "")
            which = f" ({needed.file_name})" if needed else ""
            raise ResShiftError(f"{unet.identity.name} is a latent-space UNet: it needs its autoencoder{which}; "
                                f"give it as {{arg:autoencoder}}")
        if not unet.latent_space and autoencoder is not None:
            logger.warning("%s is a pixel-space model; the autoencoder given with it is not used", unet.identity.name)
            autoencoder = None
        network_ae = autoencoder.network if autoencoder is not None else None
        if scale is None:
            scale = unet.scale or (cls.infer_scale(unet.network, network_ae) if network_ae is not None else None)
        if scale is None:
            raise ResShiftError(f"the scale of the pixel-space model {unet.identity.name} is not recorded in its "
                                f"file; give it as {{arg:scale}}")
        return cls(unet.network, network_ae, schedule, scale, one_step=unet.one_step, release=unet.release,
                   device=device, dtype=dtype, padding_multiple=padding_multiple, channels_last=channels_last,
                   tile_size=unet.identity.tile_size)

    @classmethod
    def from_files(cls, unet_path: str | os.PathLike, autoencoder_path: str | os.PathLike | None = None, *,
                   release: str | Release | None = None, scale: int | None = None, device=None, dtype=None,
                   padding_multiple: int | None = None) -> ResShiftPipeline:
        """Load both networks from files (official .pth or our .safetensors); a pixel-space UNet needs no
        autoencoder file.

        ``release`` names the release when the file does not say it (an official file renamed, a converted file
        without metadata); its schedule cannot be read from weights.
        """
        unet = load_model(unet_path, expect="unet", release=release)
        resolve_schedule(unet)  # an unknown schedule is reported before the autoencoder is read
        autoencoder = load_model(autoencoder_path, expect="autoencoder") if autoencoder_path is not None else None
        return cls.from_loaded(unet, autoencoder, scale=scale, device=device, dtype=dtype,
                               padding_multiple=padding_multiple)

    @classmethod
    def from_release(cls, name: str, *, cache_dir: str | os.PathLike | None = None, device=None, dtype=None,
                     download: bool = True, progress: bool = True) -> ResShiftPipeline:
        """Load an official release from the cache folder, downloading its files on first use."""
        from .hub import fetch_release_files

        unet_path, autoencoder_path, release = fetch_release_files(name, cache_dir=cache_dir, download=download,
                                                                   progress=progress)
        return cls.from_files(unet_path, autoencoder_path, release=release, device=device, dtype=dtype)

    @staticmethod
    def infer_scale(unet: ResShiftUNet, autoencoder: VQAutoencoder) -> int:
        """Scale of an SR model: LR pixels per latent pixel is lq_size / image_size; output pixels per latent pixel
        is the autoencoder factor."""
        lr_per_latent = unet.config.lq_size // unet.config.image_size
        return max(1, autoencoder.downsample_factor // lr_per_latent)

    @property
    def latent_space(self) -> bool:
        return self.autoencoder is not None

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet,) if self.autoencoder is None else (self.unet, self.autoencoder)

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

    def compile(self, **options) -> ResShiftPipeline:
        """Run the UNet, the encoder and the decoder through ``torch.compile`` (options are passed on, e.g.
        mode="max-autotune"). Each network is one graph (no graph breaks).

        The first run of each new input size compiles (slow); later runs are faster. Results stay within float
        tolerance of the eager ones. On the CPU the eager path is usually as fast (its convolutions and GEMMs are
        already oneDNN/BLAS calls), so this is mainly for CUDA.
        """
        self._unet_call = torch.compile(self.unet, **options)
        if self.autoencoder is not None:
            self._encoder_call = torch.compile(self.autoencoder.encode, **options)
            self._decoder_call = torch.compile(self.autoencoder.decoder, **options)
        return self

    _unet_call = None
    _encoder_call = None
    _decoder_call = None

    # ------------------------------------------------------------------------------------------- network calls
    def _network(self, name: str, function, *inputs: torch.Tensor) -> torch.Tensor:
        """Every network call goes through here, so that the memory estimate can trace a run."""
        if self._probe is not None:
            return self._probe.call(name, function, *inputs)
        return function(*inputs)

    def _run_unet(self, x_in: torch.Tensor, t: torch.Tensor, lq_features: torch.Tensor) -> torch.Tensor:
        unet = self.unet if self._unet_call is None else self._unet_call
        return self._network("unet", lambda x, s, f: unet(x, s, lq_features=f), x_in.to(self.dtype), t,
                             lq_features).float()

    def _run_encoder(self, image: torch.Tensor) -> torch.Tensor:
        encoder = self.autoencoder.encode if self._encoder_call is None else self._encoder_call
        return self._network("encoder", encoder, image).float()

    def _run_decoder(self, features: torch.Tensor) -> torch.Tensor:
        decoder = self.autoencoder.decoder if self._decoder_call is None else self._decoder_call
        return self._network("decoder", decoder, features).float()

    # ------------------------------------------------------------------------------------------------ planning
    def tile_settings(self, tiling: str | None = None, tile_size: int | None = None, tile_overlap: int | None = None,
                      vae_tile_size: int | None = None, tile_batch_size: int | None = None) -> TileSettings:
        """The tile settings of a run, validated: the arguments over the model's and the device's defaults.

        ``tiling=None`` means "auto", or "latent" when tile sizes are given or the model asks for its own tile
        (a model trained on crops).
        """
        if tiling is None:
            given = tile_size is not None or vae_tile_size is not None
            tiling = "latent" if given or self.model_tile_size else "auto"
        if tile_size is None:
            tile_size = self.model_tile_size
        defaults = TileSettings.for_device(self.device)
        # A smaller tile than the default keeps a proportionate default overlap (a quarter of the tile at most).
        if tile_overlap is None and tile_size is not None and tile_size > 0:
            tile_overlap = min(defaults.overlap, tile_size // 4)
        vae_overlap = min(defaults.vae_overlap, vae_tile_size // 4) if vae_tile_size and vae_tile_size > 0 else None
        settings = TileSettings.for_device(self.device, mode=tiling, tile_size=tile_size, overlap=tile_overlap,
                                           vae_tile_size=vae_tile_size, vae_overlap=vae_overlap,
                                           batch_size=tile_batch_size)
        settings.check_for(self.unet.config.latent_multiple)
        return settings

    def _make_plan(self, height: int, width: int, batch: int, tiles: TileSettings, one_step: bool, tile_unet: bool,
                   tile_vae: bool) -> RunPlan:
        return make_plan(height=height, width=width, batch=batch, scale=self.scale,
                         padding_multiple=self.padding_multiple, latent_factor=self.latent_factor,
                         latent_multiple=self.unet.config.latent_multiple, steps=self.schedule.num_steps,
                         one_step=one_step,
                         latent_space=self.latent_space, tiles=tiles, tile_unet=tile_unet,
                         tile_vae=tile_vae and self.latent_space)

    def plan(self, height: int, width: int, *, batch: int = 1, tiles: TileSettings | None = None,
             one_step: bool | None = None) -> RunPlan:
        """How a run on a batch of ``height`` x ``width`` LR images will be computed.

        ``"auto"`` picks, in this order, the first plan that fits :data:`AUTO_MEMORY_SHARE` of the memory available
        now and costs at most :data:`~resshift_core.planning.AUTO_COST_LIMIT` times the fully tiled plan: untiled
        (the official computation); the UNet untiled and the autoencoder tiled; both tiled. A model that asks for
        its own tile always runs its UNet in tiles of that size.
        """
        tiles = tiles or self.tile_settings()
        one_step = self.one_step if one_step is None else bool(one_step)
        if tiles.mode != "auto":
            tiled = tiles.mode == "latent"
            return self._make_plan(height, width, batch, tiles, one_step, tiled, tiled)
        key = (height, width, batch, tiles, one_step)
        if key in self._plan_cache:
            return self._plan_cache[key]
        fully_tiled = self._make_plan(height, width, batch, tiles, one_step, True, True)
        if fully_tiled.is_official:  # one tile each: nothing to decide
            untiled = self._make_plan(height, width, batch, tiles, one_step, False, False)
            self._plan_cache[key] = untiled
            return untiled
        choices = [(False, False), (False, True)] if self.model_tile_size is None else [(True, False)]
        budget = available_memory(self.device)
        chosen = fully_tiled
        for tile_unet, tile_vae in choices:
            candidate = self._make_plan(height, width, batch, tiles, one_step, tile_unet, tile_vae)
            if self.latent_space and not tile_vae and plan_cost(
                    candidate, self.unet.config, self.autoencoder.config, self.latent_factor) > AUTO_COST_LIMIT * \
                    plan_cost(fully_tiled, self.unet.config, self.autoencoder.config, self.latent_factor):
                continue
            if budget is None or self._fits(candidate, AUTO_MEMORY_SHARE * budget):
                chosen = candidate
                break
        if not chosen.is_official:
            logger.info("%dx%d px: %s (the untiled run would not fit in memory or cost more than %.1fx)", width,
                        height, chosen.describe(), AUTO_COST_LIMIT)
        self._plan_cache[key] = chosen
        return chosen

    # ------------------------------------------------------------------------------------------------ memory
    def _fits(self, plan: RunPlan, budget: float) -> bool:
        """Whether a plan's working memory fits ``budget`` bytes; a trace that cannot run (an unusual PyTorch
        build) says yes, so that "auto" keeps the official computation rather than failing."""
        try:
            return self.working_memory_of(plan) <= budget
        except Exception as error:  # noqa: BLE001 - the estimate is advice; a run must not fail because of it
            logger.warning("memory estimate unavailable (%s: %s); assuming the untiled run fits",
                           type(error).__name__, error)
            return True

    def weight_bytes(self, dtype: str | torch.dtype | None = None) -> int:
        """Bytes of both networks' weights on the device in ``dtype`` (default: the pipeline's)."""
        dtype = parse_dtype(dtype) if dtype is not None else self.dtype
        return sum(weight_bytes(network, dtype) for network in self.networks)

    def working_memory_of(self, plan: RunPlan, dtype: torch.dtype | None = None) -> int:
        """Peak bytes of a planned run beyond the weights, traced on the meta device (see :mod:`.memory`)."""
        dtype = dtype or self.dtype
        meta = self._meta_pipeline(dtype)
        lr_m11 = torch.empty(plan.batch, 3, plan.height, plan.width, device="meta")
        mask = torch.empty(plan.batch, 1, plan.height, plan.width, device="meta") \
            if self.unet.config.cond_mask else None

        def run():
            latent = meta._encode_stage(lr_m11, mask, lr_m11, plan, None, None)
            latent = meta._sample_stage(latent, _MetaNoise(), None, None, None)
            meta._decode_stage(latent, None, None, mask_back=True)

        def install(probe):
            meta._probe = probe

        return trace_run(run, self._probe_cache, self.device, install)

    def _meta_pipeline(self, dtype: torch.dtype) -> ResShiftPipeline:
        unet = meta_copy(self.unet, dtype, self.channels_last)
        autoencoder = meta_copy(self.autoencoder, dtype, self.channels_last) if self.latent_space else None
        meta = ResShiftPipeline.__new__(ResShiftPipeline)
        meta.__dict__.update(self.__dict__)
        meta.unet, meta.autoencoder, meta.dtype = unet, autoencoder, dtype
        meta.device = torch.device("meta")
        meta._unet_call = meta._encoder_call = meta._decoder_call = None
        return meta

    def estimate_memory(self, height: int, width: int, *, batch: int = 1, dtype: str | torch.dtype | None = None,
                        tiling: str | None = None, tile_size: int | None = None, tile_overlap: int | None = None,
                        vae_tile_size: int | None = None, tile_batch_size: int | None = None,
                        one_step: bool | None = None) -> int:
        """Bytes a run on a batch of ``height`` x ``width`` LR images needs on the pipeline's device: the weights
        plus the peak working memory of the run as planned with these settings."""
        dtype = parse_dtype(dtype) if dtype is not None else self.dtype
        return self.weight_bytes(dtype) + self.working_memory(
            height, width, batch=batch, dtype=dtype, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap,
            vae_tile_size=vae_tile_size, tile_batch_size=tile_batch_size, one_step=one_step)

    def working_memory(self, height: int, width: int, *, batch: int = 1, dtype: str | torch.dtype | None = None,
                       tiling: str | None = None, tile_size: int | None = None, tile_overlap: int | None = None,
                       vae_tile_size: int | None = None, tile_batch_size: int | None = None,
                       one_step: bool | None = None) -> int:
        """:meth:`estimate_memory` without the weights: what a host with the weights already on the device (for
        ComfyUI, ``memory_required``) must keep free."""
        tiles = self.tile_settings(tiling, tile_size, tile_overlap, vae_tile_size, tile_batch_size)
        plan = self.plan(height, width, batch=batch, tiles=tiles, one_step=one_step)
        return self.working_memory_of(plan, parse_dtype(dtype) if dtype is not None else None)

    # ------------------------------------------------------------------------------------------------ previews
    def latent_to_rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latent -> (B, 3, h, w) float32 in [0, 1] without the decoder: a linear map fitted once per
        pipeline from the encoder's latents of flat colours (pixel-space models: the image itself)."""
        latent = latent.detach().float()
        if not self.latent_space:
            return (latent[:, :3] * 0.5 + 0.5).clamp(0, 1)
        if self._rgb_map is None:
            self._rgb_map = self._fit_rgb_map()
        rgb_map = self._rgb_map.to(latent.device)
        rgb = torch.einsum("bchw,cd->bdhw", latent, rgb_map[:-1]) + rgb_map[-1].view(1, 3, 1, 1)
        return rgb.clamp(0, 1)

    @torch.inference_mode()
    def _fit_rgb_map(self) -> torch.Tensor:
        levels = torch.linspace(0.0, 1.0, 4)
        colours = torch.cartesian_prod(levels, levels, levels)  # (64, 3) in [0, 1]
        side = 4 * self.latent_factor
        images = (colours * 2 - 1).view(-1, 3, 1, 1).expand(-1, 3, side, side)
        latents = self._run_encoder(images.to(self.device, self.dtype)).float().mean(dim=(2, 3)).cpu()
        design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)  # (64, C + 1)
        return torch.linalg.lstsq(design.double(), colours.double()).solution.float()  # (C + 1, 3)

    # ------------------------------------------------------------------------------------------------ stages
    def _autoencoder_pass(self, run, phase: str, source: torch.Tensor, out_channels: int, scale: float,
                          latent_size: tuple[int, int], tiles: TileSettings | None, plan: RunPlan | None,
                          progress: _Progress | None, cancel: CancelCheck | None) -> torch.Tensor:
        """One encoder or decoder pass, tiled as ``plan`` (or ``tiles`` other than "off") says, each tile a
        counted, cancellable network call."""
        if plan is not None:
            vae_tiles, overlap = plan.vae_tiles, plan.tiles.vae_overlap
        elif tiles is not None and tiles.mode != "off":
            vae_tiles = plan_tiles(*latent_size, tiles.vae_tile_size, tiles.vae_overlap)
            overlap = tiles.vae_overlap
        else:
            vae_tiles, overlap = None, 0

        def one_tile(tile: torch.Tensor) -> torch.Tensor:
            check_cancel(cancel)
            out = run(tile)
            if progress is not None:
                progress.advance(1, phase)
            return out

        if vae_tiles is None or len(vae_tiles) == 1:
            return one_tile(source)
        return tiled_apply(one_tile, source, out_channels, scale, 0, overlap, plan=vae_tiles)

    def encode(self, image_m11: torch.Tensor, tiles: TileSettings | None = None, plan: RunPlan | None = None,
               progress: _Progress | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of the autoencoder factor -> float32 latent (pixel space: the
        image itself). Tiled when ``plan`` (or ``tiles`` other than "off") says so."""
        if not self.latent_space:
            return image_m11.float()
        image = image_m11.to(self.device, self.dtype)
        factor = self.latent_factor
        return self._autoencoder_pass(self._run_encoder, "encode", image, self.autoencoder.config.embed_dim,
                                      1 / factor, (image.shape[-2] // factor, image.shape[-1] // factor), tiles,
                                      plan, progress, cancel)

    def decode(self, latent: torch.Tensor, tiles: TileSettings | None = None, plan: RunPlan | None = None,
               progress: _Progress | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """Latent -> (B, 3, H, W) float32 image, about [-1, 1] (quantises first, as officially; pixel space: the
        latent itself).

        Quantisation and post_quant_conv are per position, so they run on the whole latent; only the decoder is
        tiled.
        """
        if not self.latent_space:
            return latent.float()
        autoencoder = self.autoencoder
        latent = latent.to(self.device)
        features = autoencoder.post_quant_conv(autoencoder.quantize(latent.float()).to(self.dtype))
        return self._autoencoder_pass(self._run_decoder, "decode", features, autoencoder.config.out_ch,
                                      self.latent_factor, tuple(latent.shape[-2:]), tiles, plan, progress, cancel)

    def _encode_stage(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, images: torch.Tensor | None,
                      plan: RunPlan, progress: _Progress | None, cancel: CancelCheck | None,
                      trace: dict | None = None) -> ResShiftLatent:
        padded = pad_bottom_right(lr_m11, self.padding_multiple)
        mask_padded = None if mask_m11 is None else pad_bottom_right(mask_m11, self.padding_multiple)
        upsampled = padded if self.scale == 1 else F.interpolate(padded, scale_factor=self.scale, mode="bicubic")
        y = self.encode(upsampled, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace.update({"y0_padded_in": padded, "y_up_bicubic": upsampled})
        return ResShiftLatent(y, padded, mask_padded, images, plan)

    def _sample_stage(self, latent: ResShiftLatent, noise: NoiseSource, progress: _Progress | None,
                      cancel: CancelCheck | None, trace: dict | None = None) -> ResShiftLatent:
        plan = latent.plan
        y = latent.latent
        condition = latent.lr_m11 if self.latent_space else y
        lq_features = self.unet.condition_features(
            condition.to(self.dtype), None if latent.mask_m11 is None else latent.mask_m11.to(self.dtype))
        if trace is not None:
            trace["lq_features"] = lq_features.float()
        if plan.unet_tiles is not None:
            denoise = self._tiled_denoiser(lq_features, y, plan, progress, cancel)
        else:
            denoise = self._denoiser(lq_features)

        tile_fields = {} if plan.unet_tiles is None else {"tile": plan.unet_tile_count,
                                                          "total_tiles": plan.unet_tile_count}

        def on_step(step: StepProgress) -> None:
            progress.advance(progress.step_end_units, "denoise", step=step.step, total_steps=step.total_steps,
                             t=step.t, x_t=step.x_t, x0_pred=step.x0_pred, **tile_fields)
            progress.step_end_units = plan.unet_tile_count

        if progress is not None:
            progress.step_end_units = plan.unet_tile_count
        z0 = sample(denoise, y, self.schedule, noise, one_step=plan.one_step,
                    callback=on_step if progress is not None else None, cancel=cancel, trace=trace)
        return replace(latent, latent=z0, sampled=True)

    def _decode_stage(self, latent: ResShiftLatent, progress: _Progress | None, cancel: CancelCheck | None, *,
                      mask_back: bool, trace: dict | None = None) -> torch.Tensor:
        plan = latent.plan
        decoded = self.decode(latent.latent, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace["x_dec"] = decoded
        sr_m11 = decoded[:, :, :plan.height * self.scale, :plan.width * self.scale].clamp(-1.0, 1.0)
        return self._finish(sr_m11, latent.mask_m11, latent.images, plan, mask_back, trace)

    def _finish(self, sr_m11: torch.Tensor, mask_padded: torch.Tensor | None, images: torch.Tensor | None,
                plan: RunPlan,
                mask_back: bool, trace: dict | None) -> torch.Tensor:
        result = sr_m11 * 0.5 + 0.5
        if trace is not None:
            trace["sr_unblended"] = result
        if mask_padded is not None and mask_back and images is not None:
            keep = mask_padded[:, :, :plan.height, :plan.width] * 0.5 + 0.5
            result = result * keep + images * (1 - keep)
        if trace is not None:
            trace["sr_01"] = result
        return result

    def _denoiser(self, lq_features: torch.Tensor):
        def denoise(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._run_unet(x_in, t, lq_features)
        return denoise

    def _tiled_denoiser(self, lq_features: torch.Tensor, y: torch.Tensor, plan: RunPlan,
                        progress: _Progress | None, cancel: CancelCheck | None):
        """A denoiser that runs the UNet on overlapping latent tiles and blends the x0 predictions smoothly.

        Tiles are batched (``tiles.batch_size``); each tile's GroupNorm statistics are its own, which the smooth
        blending hides. Progress advances after every tile batch but the last of a step (the step's end reports
        that one, with the state after the step); previews show the previous x0 prediction where no tile has
        landed yet.
        """
        tiles = plan.tiles
        height, width = lq_features.shape[-2:]
        windows = list(plan.unet_tiles.windows())
        previous_x0 = [y]

        def denoise(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            blender = Blender((x_in.shape[0], self.unet.config.out_channels, height, width), x_in.device,
                              plan.unet_tiles, tiles.overlap)
            for first in range(0, len(windows), tiles.batch_size):
                check_cancel(cancel)
                group = windows[first:first + tiles.batch_size]
                x_tiles = torch.cat([x_in[:, :, r, c] for r, c in group]).to(self.dtype)
                f_tiles = torch.cat([lq_features[:, :, r, c] for r, c in group])
                out = self._run_unet(x_tiles, t.repeat(len(group)), f_tiles)
                for index, (rows, cols) in enumerate(group):
                    blender.add(rows, cols, out[index * x_in.shape[0]:(index + 1) * x_in.shape[0]])
                done = first + len(group)
                if progress is not None and done < len(windows):
                    progress.step_end_units -= len(group)
                    progress.advance(len(group), "denoise", t=int(t[0]), x_t=x_in,
                                     x0_pred=blender.partial(previous_x0[0]), tile=done, total_tiles=len(windows))
            result = blender.result()
            previous_x0[0] = result
            return result

        return denoise

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
        progress = _Progress(callback, plan.network_calls, self.latent_to_rgb) if callback is not None else None
        return self._run_padded(lr_m11, mask_m11, plan, noise, progress, cancel, trace)

    def _run_padded(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, plan: RunPlan, noise: NoiseSource,
                    progress: _Progress | None, cancel: CancelCheck | None, trace: dict | None) -> torch.Tensor:
        """encode -> sample -> decode of one batch; (B, 3, sh, sw) in [-1, 1] (cropped, clamped)."""
        latent = self._encode_stage(lr_m11, mask_m11, None, plan, progress, cancel, trace)
        latent = self._sample_stage(latent, noise, progress, cancel, trace)
        decoded = self.decode(latent.latent, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace["x_dec"] = decoded
        return decoded[:, :, :plan.height * self.scale, :plan.width * self.scale].clamp(-1.0, 1.0)

    # ------------------------------------------------------------------------------------------- public API
    def _noise_source(self, seed: int | None, generator: torch.Generator | None,
                      noise: Sequence[torch.Tensor] | None, generator_state) -> NoiseSource:
        """A fresh noise source (a retry after out-of-memory replays the same draws)."""
        if noise is not None:
            return NoiseSource(replay=noise)
        if generator is not None:
            generator.set_state(generator_state)
            return NoiseSource(generator)
        return NoiseSource.from_seed(seed)

    def _retrying(self, tiles: TileSettings, callback: ProgressCallback | None, attempt):
        """``attempt(tiles, start)`` again with smaller tiles after a device out-of-memory error, until the tiles
        cannot shrink; ``start`` is the progress count reached so far, so that a host's bar never moves back.
        Each attempt makes its own noise source, so a retry gives the same image."""
        reached = [0]

        def progress(total: int, **options) -> _Progress | None:
            if callback is None:
                return None
            counter = _Progress(callback, total, self.latent_to_rgb, start=reached[0], **options)
            counters.append(counter)
            return counter

        while True:
            counters: list[_Progress] = []
            try:
                return attempt(tiles, progress)
            except (RuntimeError, MemoryError) as error:
                smaller = tiles.halved(self.unet.config.latent_multiple) if _is_out_of_memory(error) else None
                if smaller is None:
                    raise
                logger.warning("out of memory with %s; retrying with %s", tiles, smaller)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                reached[0] = max([reached[0]] + [counter.done for counter in counters])
                tiles = smaller

    @torch.inference_mode()
    def encode_lr(self, images, *, mask=None, tiling: str | None = None, tile_size: int | None = None,
                  tile_overlap: int | None = None, vae_tile_size: int | None = None,
                  tile_batch_size: int | None = None, one_step: bool | None = None,
                  callback: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> ResShiftLatent:
        """First stage: LR images (as :meth:`upscale` takes them) -> a :class:`ResShiftLatent` holding y, the
        padded LR condition and the run's plan (tiles chosen here apply to the later stages too). Out of memory,
        it retries with smaller tiles."""
        batch = as_image_batch(images).to(self.device)
        mask_m11 = self._prepare_mask(mask, batch)
        height, width = batch.shape[-2:]

        def attempt(tiles: TileSettings, progress) -> ResShiftLatent:
            plan = self.plan(height, width, batch=batch.shape[0], tiles=tiles, one_step=one_step)
            return self._encode_stage(batch * 2.0 - 1.0, mask_m11, batch, plan, progress(plan.encode_calls), cancel)

        return self._retrying(self.tile_settings(tiling, tile_size, tile_overlap, vae_tile_size, tile_batch_size),
                              callback, attempt)

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
        if seed is None and generator is None and noise is None:
            seed = random_seed()
        self.last_seed = seed
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

    @torch.inference_mode()
    def upscale(self, images, *, mask=None, seed: int | None = None, generator: torch.Generator | None = None,
                noise: Sequence[torch.Tensor] | None = None, callback: ProgressCallback | None = None,
                cancel: CancelCheck | None = None, tiling: str | None = None, tile_size: int | None = None,
                tile_overlap: int | None = None, vae_tile_size: int | None = None,
                tile_batch_size: int | None = None, chop_size: int | None = None, chop_stride: int | None = None,
                mask_back: bool = True, max_input_pixels: int | None = None, one_step: bool | None = None,
                trace: dict | None = None):
        """Upscale (or restore) a batch of images.

        Args:
            images: (B, 3, H, W) float tensor in [0, 1] (uint8 and (3, H, W) accepted), a PIL image or a list of
                same-size PIL images. Any size from 1x1 px. RGBA PIL images keep their alpha (upscaled bicubically).
            mask: inpainting only: (B, 1, H, W) in [0, 1], 1 = region to fill.
            seed / generator / noise: the randomness (a seed, a torch.Generator, or recorded draws to replay).
                With none of them a random seed is used.
            callback: receives a :class:`StepProgress` after every network call, with monotone ``done`` / ``total``
                counts for the whole run.
            cancel: polled between network calls; returning True raises :class:`CancelledError` (nothing is
                returned).
            tiling: ``"auto"`` (default) runs the official untiled computation wherever it fits in memory and costs
                at most 1.5x the tiled one, and tiles beyond; ``"off"`` never tiles; ``"latent"`` always plans tiles
                (the default when tile sizes are given). See :meth:`plan`.
            tile_size, tile_overlap, vae_tile_size, tile_batch_size: tiles (latent pixels; see
                :class:`TileSettings`); defaults depend on the device. Tiles are blended with one noise field, so
                the result does not depend on how the image was cut. On out-of-memory the run is retried with
                smaller tiles and the same noise.
            chop_size, chop_stride: instead of latent tiling, the official patch-wise processing (LR pixels)
                (default stride: chop_size - chop_size // 8); each patch is an independent run and overlaps are
                averaged uniformly.
            mask_back: inpainting: keep the known pixels from the input (official default).
            max_input_pixels: refuse larger inputs with a clear error instead of running out of memory.
            one_step: a single network call at t = T-1 returning its x0 prediction (how SinSR runs; a fast preview
                for any model). Default: the model's own way.
            trace: if a dict, receives the intermediate tensors of an unchopped run (for tests).
        Returns:
            (B, 3, H * scale, W * scale) float32 tensor in [0, 1] on the pipeline's device; for PIL input, one PIL
            image for one image, a list for a list.
        """
        validate_chop(chop_size, chop_stride)
        tiles = self.tile_settings(tiling, tile_size, tile_overlap, vae_tile_size, tile_batch_size)
        batch, pil_context = prepare_input(images)
        batch = batch.to(self.device)
        height, width = batch.shape[-2:]
        if max_input_pixels is not None and height * width > max_input_pixels:
            raise InputImageError(f"the input is {width}x{height} = {width * height} px, more than the limit of "
                                  f"{max_input_pixels} px; down-scale it or raise the limit")
        mask_m11 = self._prepare_mask(mask, batch)
        if seed is None and generator is None and noise is None:
            seed = random_seed()
        self.last_seed = seed
        generator_state = generator.get_state() if generator is not None else None
        lr_m11 = batch * 2.0 - 1.0

        def attempt(tiles: TileSettings, progress) -> tuple[torch.Tensor, RunPlan]:
            source = self._noise_source(seed, generator, noise, generator_state)
            if chop_size is not None and (height > chop_size or width > chop_size):
                stride = chop_stride or chop_size - chop_size // 8
                return self._chopped(lr_m11, mask_m11, source, chop_size, stride, progress, cancel, one_step)
            plan = self.plan(height, width, batch=batch.shape[0], tiles=tiles, one_step=one_step)
            return self._run_padded(lr_m11, mask_m11, plan, source, progress(plan.network_calls), cancel,
                                    trace), plan

        sr_m11, plan = self._retrying(tiles, callback, attempt)
        padded_mask = None if mask_m11 is None else pad_bottom_right(mask_m11, self.padding_multiple)
        result = self._finish(sr_m11, padded_mask, batch, plan, mask_back, trace)
        self.last_plan = plan
        return finish_output(result, pil_context)

    last_plan: RunPlan | None = None  # how the latest upscale() was computed (its tiles), for output metadata
    last_seed: int | None = None  # the seed of the latest upscale() (drawn when none was given), for infotexts

    def _prepare_mask(self, mask, batch: torch.Tensor) -> torch.Tensor | None:
        if not self.unet.config.cond_mask:
            if mask is not None:
                raise InputImageError("this model takes no mask; masks are for the inpainting releases")
            return None
        if mask is None:
            raise InputImageError("this is an inpainting model: pass a mask (B, 1, H, W) in [0, 1], 1 = fill, as "
                                  "{arg:mask}")
        if not isinstance(mask, torch.Tensor):
            mask = as_image_batch(mask)[:, :1]
        mask = mask.float().to(self.device)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.shape[0] == 1 and batch.shape[0] > 1:
            mask = mask.expand(batch.shape[0], -1, -1, -1)
        if mask.shape[1] != 1 or mask.shape[-2:] != batch.shape[-2:] or mask.shape[0] != batch.shape[0]:
            raise InputImageError(f"the mask must be (B, 1, H, W) matching the image {tuple(batch.shape)}, "
                                  f"got {tuple(mask.shape)}")
        return mask * 2.0 - 1.0

    def _chopped(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, source: NoiseSource, chop_size: int,
                 stride: int, progress_for, cancel: CancelCheck | None,
                 one_step: bool | None) -> tuple[torch.Tensor, RunPlan]:
        """Official patch-wise processing: independent untiled runs on overlapping patches, uniform averaging."""
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


def random_seed() -> int:
    """A fresh seed in [0, 2^31 - 1) (what a run without seed uses; hosts that show seeds draw theirs here)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())


class _MetaNoise:
    """Noise for a traced run on meta tensors: shapes only."""

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(like.shape, dtype=torch.float32, device=like.device)
