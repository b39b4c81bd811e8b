"""The public entry point: images in, upscaled (or restored) images out.

    pipe = ResShiftPipeline.from_files("resshift_realsrx4_s4_v3.pth", "autoencoder_vq_f4.pth")
    hr = pipe.upscale(lr, seed=12345)          # lr: (B, 3, H, W) float in [0, 1] -> (B, 3, 4H, 4W) in [0, 1]

One run (the official ``sample_func``): pad the LR image bottom/right to the padding multiple, up-sample it bicubically
(x scale), encode it to the latent y, run the chain (``sampler.sample``), decode the final latent (quantised), crop
and clamp. Images larger than a chop size can be processed in overlapping patches like the official code
(``chop_size`` / ``chop_stride``: each patch is an independent run, results averaged uniformly).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .checkpoints import LoadedUNet, load_autoencoder, load_unet, resolve_schedule
from .errors import InputImageError, ResShiftError
from .images import as_image_batch, tensor_to_pil
from .nets.unet import ResShiftUNet
from .nets.vqgan import VQAutoencoder
from .releases import Release
from .sampler import CancelCheck, NoiseSource, ProgressCallback, StepProgress, check_cancel, sample
from .schedule import Schedule, ScheduleParams
from .tiling import Blender, plan_tiles, tiled_apply

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ResShiftError(f"unknown dtype {dtype!r}; expected one of fp32, fp16, bf16") from None


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


@dataclass(frozen=True)
class TileSettings:
    """How large inputs are cut. Sizes are in latent pixels (= LR pixels for the x4 SR models).

    Attributes:
        mode: ``"auto"`` tiles whatever is larger than one tile, ``"off"`` never tiles (the official computation
            whatever the size; the autoencoder's global attention then needs memory quadratic in the area),
            ``"latent"`` always plans tiles (one tile when the image fits).
        tile_size: largest UNet tile; the planner picks the size (a multiple of the UNet's latent multiple) that covers
            the image with the least overlap work.
        overlap: least overlap between neighbouring UNet tiles.
        vae_tile_size, vae_overlap: the same for the autoencoder (latent pixels).
        batch_size: UNet tiles run together (GPU).
    """

    mode: str = "auto"
    tile_size: int = 256
    overlap: int = 32
    vae_tile_size: int = 80
    vae_overlap: int = 8
    batch_size: int = 1

    @classmethod
    def for_device(cls, device: torch.device, **overrides) -> TileSettings:
        defaults = cls(batch_size=4, vae_tile_size=128) if device.type == "cuda" else cls()
        values = {k: v for k, v in overrides.items() if v is not None}
        if values.get("mode", defaults.mode) not in ("auto", "off", "latent"):
            raise ResShiftError(f"tiling must be 'auto', 'off' or 'latent', got {values['mode']!r}")
        return replace(defaults, **values)

    def halved(self, multiple: int) -> TileSettings | None:
        """Smaller tiles after an out-of-memory error, or None when they cannot shrink further."""
        if self.batch_size > 1:
            return replace(self, batch_size=self.batch_size // 2)
        tile = max(multiple, (self.tile_size // 2) // multiple * multiple)
        vae_tile = max(16, self.vae_tile_size // 2)
        if tile == self.tile_size and vae_tile == self.vae_tile_size:
            return None
        return replace(self, mode="latent" if self.mode == "off" else self.mode, tile_size=tile,
                       overlap=min(self.overlap, tile // 4), vae_tile_size=vae_tile,
                       vae_overlap=min(self.vae_overlap, vae_tile // 4))


def _is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA raises OutOfMemoryError; other back-ends a RuntimeError saying so)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or "out of memory" in str(error).lower()


class ResShiftPipeline:
    """A UNet, its autoencoder and its schedule, ready to run on a device in a dtype.

    Args:
        unet: the diffusion network.
        autoencoder: the VQ autoencoder it was trained with.
        schedule: its noise schedule (see :mod:`resshift_core.releases`).
        scale: output / input size (4 for SR; 1 for inpainting and face restoration).
        one_step: SinSR-style single network call.
        release: the release it came from, if known.
        device, dtype: where and in which precision the networks run (latents and schedule math stay float32).
        padding_multiple: LR padding multiple; default the official one (the UNet's ``lq_size``).
        channels_last: store conv weights and feature maps (B, H, W, C) in memory. On by default: oneDNN and cuDNN
            run 3x3 convolutions 10-35% faster that way (no layout reorder around every conv); values agree with
            the NCHW run within float rounding.
    """

    def __init__(self, unet: ResShiftUNet, autoencoder: VQAutoencoder, schedule: ScheduleParams | Schedule,
                 scale: int, *, one_step: bool = False, release: Release | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 padding_multiple: int | None = None, channels_last: bool = True):
        self.unet = unet.eval().requires_grad_(False)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        self.scale = int(scale)
        self.one_step = one_step
        self.release = release
        self.padding_multiple = padding_multiple or unet.config.lq_size
        if self.scale * 2 ** unet.config.feature_stages != autoencoder.downsample_factor:
            raise ResShiftError(
                f"scale x{self.scale} does not fit this UNet / autoencoder pair (LR path /{2 ** unet.config.feature_stages},"
                f" autoencoder /{autoencoder.downsample_factor}): the expected scale is "
                f"x{autoencoder.downsample_factor // 2 ** unet.config.feature_stages}")
        if autoencoder.config.embed_dim != unet.config.in_channels:
            raise ResShiftError(f"the autoencoder's latent has {autoencoder.config.embed_dim} channels but the UNet "
                                f"expects {unet.config.in_channels}: they are not a pair (face models need their own "
                                f"autoencoder, see the release table)")
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.channels_last = bool(channels_last)
        self.to(device or "cpu", dtype)

    # ---------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_files(cls, unet_path: str | os.PathLike, autoencoder_path: str | os.PathLike, *,
                   release: str | Release | None = None, scale: int | None = None, device=None, dtype=None,
                   padding_multiple: int | None = None) -> ResShiftPipeline:
        """Load both networks from files (official .pth or our .safetensors).

        ``release`` names the release when the file does not say it (an official file renamed, a converted file
        without metadata); its schedule cannot be read from weights.
        """
        loaded: LoadedUNet = load_unet(unet_path, release)
        schedule = resolve_schedule(loaded)
        autoencoder = load_autoencoder(autoencoder_path)
        if scale is None:
            scale = loaded.release.scale if loaded.release else cls.infer_scale(loaded.model, autoencoder)
        return cls(loaded.model, autoencoder, schedule, scale, one_step=loaded.one_step, release=loaded.release,
                   device=device, dtype=dtype, padding_multiple=padding_multiple)

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

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
           channels_last: bool | None = None) -> ResShiftPipeline:
        """Move the networks (in place) to a device, a dtype and/or a memory format; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = parse_dtype(dtype)
        if channels_last is not None:
            self.channels_last = bool(channels_last)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for network in (self.unet, self.autoencoder):  # the format applies to 4-D weights; a conv follows its weight
            network.to(self.device, self.dtype, memory_format=memory_format)
        # The codebook stays float32: nearest-code search on half-precision distances flips indices.
        self.autoencoder.quantize.float()
        return self

    def compile(self, **options) -> ResShiftPipeline:
        """Run the UNet, the encoder and the decoder through ``torch.compile`` (options are passed on, e.g.
        mode="max-autotune"). Each network is one graph (no graph breaks).

        The first run of each new input size compiles (slow); later runs are faster. Results stay within float
        tolerance of the eager ones. On the CPU the eager path is usually as fast (its convolutions and GEMMs are
        already oneDNN/BLAS calls), so this is mainly for CUDA.
        """
        self._unet_call = torch.compile(self.unet, **options)
        self._encoder_call = torch.compile(self.autoencoder.encode, **options)
        self._decoder_call = torch.compile(self.autoencoder.decoder, **options)
        return self

    _unet_call = None
    _encoder_call = None
    _decoder_call = None

    def _run_unet(self, x_in: torch.Tensor, t: torch.Tensor, lq_features: torch.Tensor) -> torch.Tensor:
        unet = self.unet if self._unet_call is None else self._unet_call
        return unet(x_in.to(self.dtype), t, lq_features=lq_features).float()

    def _run_decoder(self, features: torch.Tensor) -> torch.Tensor:
        decoder = self.autoencoder.decoder if self._decoder_call is None else self._decoder_call
        return decoder(features).float()

    # ------------------------------------------------------------------------------------------------ one run
    def _denoiser(self, lq_features: torch.Tensor):
        def denoise(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._run_unet(x_in, t, lq_features)
        return denoise

    def _tiled_denoiser(self, lq_features: torch.Tensor, tiles: TileSettings, callback: ProgressCallback | None,
                        cancel: CancelCheck | None, total_steps: int):
        """A denoiser that runs the UNet on overlapping latent tiles and blends the x0 predictions smoothly.

        Tiles are batched (``tiles.batch_size``); each tile's GroupNorm statistics are its own, which the smooth
        blending hides. Reports progress after every tile but the last of a step (the sampler reports that one).
        """
        height, width = lq_features.shape[-2:]
        plan = plan_tiles(height, width, tiles.tile_size, tiles.overlap, self.unet.config.latent_multiple)
        windows = list(plan.windows())
        calls = [0]

        def denoise(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            blender = Blender((x_in.shape[0], self.unet.config.out_channels, height, width), x_in.device, plan,
                              tiles.overlap)
            for first in range(0, len(windows), tiles.batch_size):
                check_cancel(cancel)
                group = windows[first:first + tiles.batch_size]
                x_tiles = torch.cat([x_in[:, :, r, c] for r, c in group]).to(self.dtype)
                f_tiles = torch.cat([lq_features[:, :, r, c] for r, c in group])
                out = self._run_unet(x_tiles, t.repeat(len(group)), f_tiles)
                for index, (rows, cols) in enumerate(group):
                    blender.add(rows, cols, out[index * x_in.shape[0]:(index + 1) * x_in.shape[0]])
                done = first + len(group)
                if callback is not None and done < len(windows):
                    callback(StepProgress(calls[0], total_steps, int(t[0]), x_in, blender.result(), done,
                                          len(windows)))
            return blender.result()

        return denoise, len(windows)

    def encode(self, image_m11: torch.Tensor, tiles: TileSettings | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of the autoencoder factor -> float32 latent.

        With ``tiles`` (mode other than "off"), images larger than one autoencoder tile are encoded tile by tile.
        """
        image = image_m11.to(self.device, self.dtype)
        encoder = self.autoencoder.encode if self._encoder_call is None else self._encoder_call
        if tiles is None or tiles.mode == "off":
            return encoder(image).float()
        factor = self.autoencoder.downsample_factor
        return tiled_apply(lambda tile: encoder(tile).float(), image, self.autoencoder.config.embed_dim,
                           1 / factor, tiles.vae_tile_size, tiles.vae_overlap)

    def decode(self, latent: torch.Tensor, tiles: TileSettings | None = None) -> torch.Tensor:
        """Latent -> (B, 3, H, W) float32 image, about [-1, 1] (quantises first, as officially).

        Quantisation and post_quant_conv are per position, so they run on the whole latent; only the decoder is
        tiled.
        """
        autoencoder = self.autoencoder
        latent = latent.to(self.device)
        quantized = autoencoder.quantize(latent.float()).to(self.dtype)
        features = autoencoder.post_quant_conv(quantized)
        if tiles is None or tiles.mode == "off":
            return self._run_decoder(features)
        return tiled_apply(self._run_decoder, features, autoencoder.config.out_ch,
                           autoencoder.downsample_factor, tiles.vae_tile_size, tiles.vae_overlap)

    def sample_padded(self, lr_m11: torch.Tensor, noise: NoiseSource, *, mask_m11: torch.Tensor | None = None,
                      callback: ProgressCallback | None = None, cancel: CancelCheck | None = None,
                      trace: dict | None = None, tile: int = 1, total_tiles: int = 1,
                      tiles: TileSettings | None = None) -> torch.Tensor:
        """The official ``sample_func``: one complete run on one (batch of) LR image(s).

        Args:
            lr_m11: (B, 3, h, w) LR in [-1, 1] on the pipeline's device.
            mask_m11: (B, 1, h, w) inpainting mask in [-1, 1] (+1 = fill).
        Returns:
            (B, 3, h * scale, w * scale) float32 in [-1, 1].
        """
        height, width = lr_m11.shape[-2:]
        padded = pad_bottom_right(lr_m11, self.padding_multiple)
        mask_padded = None if mask_m11 is None else pad_bottom_right(mask_m11, self.padding_multiple)
        upsampled = padded if self.scale == 1 else F.interpolate(padded, scale_factor=self.scale, mode="bicubic")
        y = self.encode(upsampled, tiles)
        lq_features = self.unet.condition_features(padded.to(self.dtype), None if mask_padded is None
                                                   else mask_padded.to(self.dtype))
        calls = 1 if self.one_step else self.schedule.num_steps
        use_tiles = tiles is not None and (tiles.mode == "latent" or (
            tiles.mode == "auto" and max(y.shape[-2:]) > tiles.tile_size))
        if use_tiles:
            denoise, total_tiles = self._tiled_denoiser(lq_features, tiles, callback, cancel, calls)
            tile = total_tiles
        else:
            denoise = self._denoiser(lq_features)
        z0 = sample(denoise, y, self.schedule, noise, one_step=self.one_step,
                    callback=callback, cancel=cancel, trace=trace, tile=tile, total_tiles=total_tiles)
        decoded = self.decode(z0, tiles)
        if trace is not None:
            trace.update({"y0_padded_in": padded, "y_up_bicubic": upsampled, "x_dec": decoded,
                          "lq_features": lq_features.float()})
        return decoded[:, :, :height * self.scale, :width * self.scale].clamp(-1.0, 1.0)

    # ------------------------------------------------------------------------------------------- public API
    @torch.inference_mode()
    def upscale(self, images, *, mask=None, seed: int | None = None, generator: torch.Generator | None = None,
                noise: Sequence[torch.Tensor] | None = None, callback: ProgressCallback | None = None,
                cancel: CancelCheck | None = None, tiling: str | None = None, tile_size: int | None = None,
                tile_overlap: int | None = None, vae_tile_size: int | None = None,
                tile_batch_size: int | None = None, chop_size: int | None = None, chop_stride: int | None = None,
                mask_back: bool = True, max_input_pixels: int | None = None, trace: dict | None = None):
        """Upscale (or restore) a batch of images.

        Args:
            images: (B, 3, H, W) float tensor in [0, 1] (uint8 and (3, H, W) accepted), a PIL image or a list of
                same-size PIL images. Any size from 1x1 px.
            mask: inpainting only: (B, 1, H, W) in [0, 1], 1 = region to fill.
            seed / generator / noise: the randomness (a seed, a torch.Generator, or recorded draws to replay).
                With none of them a random seed is used.
            callback: receives a :class:`StepProgress` after every network call (and every tile when tiled).
            cancel: polled between steps and tiles; returning True raises :class:`CancelledError` (nothing is
                returned).
            tiling, tile_size, tile_overlap, vae_tile_size, tile_batch_size: latent tiling (see
                :class:`TileSettings`; defaults depend on the device). The default ``"auto"`` leaves images that fit
                one tile untouched (the official computation) and cuts larger ones into blended tiles with one noise
                field, in memory bounded by the tile size. On a CUDA out-of-memory error the run is retried with
                smaller tiles.
            chop_size, chop_stride: instead of latent tiling, the official patch-wise processing (LR pixels)
                (default stride: chop_size - chop_size // 8); each patch is an independent run and overlaps are
                averaged uniformly.
            mask_back: inpainting: keep the known pixels from the input (official default).
            max_input_pixels: refuse larger inputs with a clear error instead of running out of memory.
            trace: if a dict, receives the intermediate tensors of an unchopped run (for tests).
        Returns:
            (B, 3, H * scale, W * scale) float32 tensor in [0, 1] on the pipeline's device, or PIL image(s) when PIL
            image(s) were given.
        """
        return_pil = not isinstance(images, torch.Tensor)
        batch = as_image_batch(images).to(self.device)
        height, width = batch.shape[-2:]
        if max_input_pixels is not None and height * width > max_input_pixels:
            raise InputImageError(f"the input is {width}x{height} = {width * height} px, more than the limit of "
                                  f"{max_input_pixels} px; down-scale it or raise the limit")
        mask_m11 = self._prepare_mask(mask, batch)
        tiles = TileSettings.for_device(self.device, mode=tiling, tile_size=tile_size, overlap=tile_overlap,
                                        vae_tile_size=vae_tile_size, batch_size=tile_batch_size)
        if seed is None and generator is None and noise is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
        generator_state = generator.get_state() if generator is not None else None
        lr_m11 = batch * 2.0 - 1.0
        while True:
            # A fresh noise source per attempt, so that a retry after out-of-memory gives the same image.
            if noise is not None:
                source = NoiseSource(replay=noise)
            elif generator is not None:
                generator.set_state(generator_state)
                source = NoiseSource(generator)
            else:
                source = NoiseSource.from_seed(seed)
            try:
                if chop_size is not None and (height > chop_size or width > chop_size):
                    stride = chop_stride or chop_size - chop_size // 8
                    sr_m11 = self._chopped(lr_m11, mask_m11, source, chop_size, stride, callback, cancel)
                else:
                    sr_m11 = self.sample_padded(lr_m11, source, mask_m11=mask_m11, callback=callback,
                                                cancel=cancel, trace=trace, tiles=tiles)
                break
            except (RuntimeError, MemoryError) as error:
                smaller = tiles.halved(self.unet.config.latent_multiple) if _is_out_of_memory(error) else None
                if smaller is None:
                    raise
                logger.warning("out of memory with %s; retrying with %s", tiles, smaller)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                tiles = smaller
        result = sr_m11 * 0.5 + 0.5
        if trace is not None:
            trace["sr_unblended"] = result
        if mask_m11 is not None and mask_back:
            keep = mask_m11 * 0.5 + 0.5
            result = result * keep + batch * (1 - keep)
        if trace is not None:
            trace["sr_01"] = result
        return tensor_to_pil(result) if return_pil else result

    def _prepare_mask(self, mask, batch: torch.Tensor) -> torch.Tensor | None:
        if not self.unet.config.cond_mask:
            if mask is not None:
                raise InputImageError("this model takes no mask; masks are for the inpainting releases")
            return None
        if mask is None:
            raise InputImageError("this is an inpainting model: pass mask=(B, 1, H, W) in [0, 1], 1 = fill")
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
                 stride: int, callback: ProgressCallback | None, cancel: CancelCheck | None) -> torch.Tensor:
        """Official patch-wise processing: independent runs on overlapping patches, uniform averaging."""
        batch, _, height, width = lr_m11.shape
        starts = [(r, c) for r in chop_starts(height, chop_size, stride) for c in chop_starts(width, chop_size, stride)]
        canvas = torch.zeros(batch, 3, height * self.scale, width * self.scale, device=lr_m11.device)
        count = torch.zeros_like(canvas)
        for number, (row, col) in enumerate(starts):
            patch = lr_m11[:, :, row:row + chop_size, col:col + chop_size]
            mask_patch = None if mask_m11 is None else mask_m11[:, :, row:row + chop_size, col:col + chop_size]
            result = self.sample_padded(patch, source, mask_m11=mask_patch, callback=callback, cancel=cancel,
                                        tile=number + 1, total_tiles=len(starts))
            s = self.scale
            canvas[:, :, row * s:row * s + result.shape[-2], col * s:col * s + result.shape[-1]] += result
            count[:, :, row * s:row * s + result.shape[-2], col * s:col * s + result.shape[-1]] += 1
        return canvas / count
