"""The stages of one run, on a device in a dtype: encode the LR image, sample the chain, decode the latent.

:class:`PipelineStages` holds the networks and the facts of the model (:class:`ModelSpec`) and computes; it decides
nothing about tiles, memory or retries (the pipeline plans, :mod:`resshift_core.planning` chooses, and
:mod:`resshift_core.memory` traces these same stages on the meta device to estimate a run).

One run (the official ``sample_func``): pad the LR image bottom/right to the padding multiple, up-sample it bicubically
(x scale), encode it to the latent y, run the chain (:func:`~resshift_core.sampler.sample`), decode the final latent
(quantised), crop and clamp. Pixel-space models (no autoencoder) run the same chain on the image itself: the
"latent" is the up-sampled image in [-1, 1] and the LR condition is that same image.

Every network call goes through :meth:`PipelineStages._network`, which (a) lets the memory estimate replace it by a
trace, and (b) guards half precision: a float16 call whose output is not finite (an overflow) is run again in
bfloat16 where the device has it, else float32, with a warning, so a run never ends in NaN or a black image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .planning import RunPlan
from .runtime import device_supports_bf16, parse_dtype
from .sampler import CancelCheck, NoiseSource, ProgressCallback, StepProgress, check_cancel, sample
from .schedule import Schedule
from .tiling import Blender, TileSettings, plan_tiles, tiled_apply

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ModelSpec:
    """What a run needs to know of the model besides its weights (fixed when the pipeline is built).

    Attributes:
        schedule: the noise schedule.
        scale: output / input size (4 for SR; 1 for inpainting and face restoration).
        one_step: SinSR-style single network call by default.
        padding_multiple: LR padding multiple.
        latent_factor: output pixels per latent pixel (the autoencoder's factor; 1 in pixel space).
        latent_multiple: the multiple the UNet's latent sides must have.
        model_tile_size: the UNet tile the model asks for (files from our trainer), or None.
    """

    schedule: Schedule
    scale: int
    one_step: bool
    padding_multiple: int
    latent_factor: int
    latent_multiple: int
    model_tile_size: int | None = None


@dataclass
class ResShiftLatent:
    """A batch between the stages of a run: ``encode_lr`` makes it, ``sample_latent`` turns its ``latent`` from y
    into the sampled z0, ``decode_latent`` makes images of it.

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


class RunProgress:
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


def _finite(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "meta" or bool(torch.isfinite(tensor).all())


class PipelineStages:
    """The networks of a model on a device in a dtype, and the stages of a run.

    Args:
        unet: the diffusion network. autoencoder: its VQ autoencoder, None for a pixel-space model.
        spec: the model's facts (:class:`ModelSpec`).
        device, dtype: where and in which precision the networks run (latents and schedule math stay float32).
        channels_last: conv weights and feature maps stored (B, H, W, C) (10-35% faster 3x3 convolutions on
            oneDNN and cuDNN; values agree with NCHW within float rounding).
    """

    def __init__(self, unet, autoencoder, spec: ModelSpec, *, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype | None = None, channels_last: bool = True):
        self.unet = unet.eval().requires_grad_(False)
        self.autoencoder = None if autoencoder is None else autoencoder.eval().requires_grad_(False)
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.channels_last = bool(channels_last)
        self._probe = None  # set while the memory estimate traces a run on meta tensors
        self._compiled: dict = {}  # network name -> compiled callable (see ResShiftPipeline.compile)

    # ---- facts of the model, under their usual names
    @property
    def schedule(self) -> Schedule:
        return self.spec.schedule

    @property
    def scale(self) -> int:
        return self.spec.scale

    @property
    def one_step(self) -> bool:
        return self.spec.one_step

    @property
    def padding_multiple(self) -> int:
        return self.spec.padding_multiple

    @property
    def latent_factor(self) -> int:
        return self.spec.latent_factor

    @property
    def model_tile_size(self) -> int | None:
        return self.spec.model_tile_size

    @property
    def latent_space(self) -> bool:
        return self.autoencoder is not None

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet,) if self.autoencoder is None else (self.unet, self.autoencoder)

    def on_meta(self, dtype: torch.dtype, unet, autoencoder) -> PipelineStages:
        """The same stages over meta copies of the networks (for the memory estimate's trace)."""
        return PipelineStages(unet, autoencoder, self.spec, device="meta", dtype=dtype,
                              channels_last=self.channels_last)

    def compile(self, **options) -> PipelineStages:
        """Run the UNet, the encoder and the decoder through ``torch.compile`` (options are passed on, e.g.
        mode="max-autotune"). Each network is one graph (no graph breaks).

        The first run of each new input size compiles (slow); later runs are faster. Results stay within float
        tolerance of the eager ones. On the CPU the eager path is usually as fast (its convolutions and GEMMs are
        already oneDNN/BLAS calls), so this is mainly for CUDA.
        """
        unet = torch.compile(self.unet, **options)
        self._compiled["unet"] = lambda x, s, f: unet(x, s, lq_features=f)
        if self.autoencoder is not None:
            self._compiled["encoder"] = torch.compile(self.autoencoder.encode, **options)
            self._compiled["decoder"] = torch.compile(self.autoencoder.decoder, **options)
        return self

    # ------------------------------------------------------------------------------------------- network calls
    def _network(self, name: str, network: torch.nn.Module, function, *inputs: torch.Tensor) -> torch.Tensor:
        """Every network call goes through here: traced by the memory estimate, and run again in a wider
        precision when float16 overflowed (see the module docstring). Floating ``inputs`` are cast to the
        pipeline's dtype here, so that a rerun starts from the values as they were (a float32 state beyond
        float16's range overflows in the cast itself)."""
        first = [t.to(self.dtype) if t.is_floating_point() else t for t in inputs]
        if self._probe is not None:
            return self._probe.call(name, function, *first)
        output = self._compiled.get(name, function)(*first)
        if self.dtype != torch.float16 or _finite(output):
            return output
        wider = torch.bfloat16 if device_supports_bf16(self.device) else torch.float32
        overflowed = self.dtype
        for dtype in dict.fromkeys([wider, torch.float32]):  # bf16 first where the device has it, then float32
            logger.warning("the %s overflowed in %s (non-finite values); running that call again in %s", name,
                           str(overflowed).replace("torch.", ""), str(dtype).replace("torch.", ""))
            overflowed = dtype
            network.to(dtype)
            try:
                output = function(*(t.to(dtype) if t.is_floating_point() else t for t in inputs))
            finally:
                network.to(self.dtype)
            if _finite(output):
                break
        return output

    def _run_unet(self, x_in: torch.Tensor, t: torch.Tensor, lq_features: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        return self._network("unet", unet, lambda x, s, f: unet(x, s, lq_features=f), x_in, t, lq_features).float()

    def _run_encoder(self, image: torch.Tensor) -> torch.Tensor:
        return self._network("encoder", self.autoencoder, self.autoencoder.encode, image).float()

    def _run_decoder(self, features: torch.Tensor) -> torch.Tensor:
        return self._network("decoder", self.autoencoder, self.autoencoder.decoder, features).float()

    def _condition_features(self, condition: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The UNet's LR path. Not a replayed call in the memory trace: its tensors are traced as they come."""
        unet = self.unet
        condition = condition.to(self.dtype)
        mask = None if mask is None else mask.to(self.dtype)
        if self._probe is not None:
            return unet.condition_features(condition, mask)
        return self._network("condition", unet, lambda c: unet.condition_features(c, mask), condition)

    # ------------------------------------------------------------------------------------------ autoencoder
    def _autoencoder_pass(self, run, phase: str, source: torch.Tensor, out_channels: int, scale: float,
                          latent_size: tuple[int, int], tiles: TileSettings | None, plan: RunPlan | None,
                          progress: RunProgress | None, cancel: CancelCheck | None) -> torch.Tensor:
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
               progress: RunProgress | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of the autoencoder factor -> float32 latent (pixel space: the
        image itself). Tiled when ``plan`` (or ``tiles`` other than "off") says so."""
        if not self.latent_space:
            return image_m11.float()
        image = image_m11.to(self.device)
        factor = self.latent_factor
        return self._autoencoder_pass(self._run_encoder, "encode", image, self.autoencoder.config.embed_dim,
                                      1 / factor, (image.shape[-2] // factor, image.shape[-1] // factor), tiles,
                                      plan, progress, cancel)

    def decode(self, latent: torch.Tensor, tiles: TileSettings | None = None, plan: RunPlan | None = None,
               progress: RunProgress | None = None, cancel: CancelCheck | None = None) -> torch.Tensor:
        """Latent -> (B, 3, H, W) float32 image, about [-1, 1] (quantises first, as officially; pixel space: the
        latent itself).

        Quantisation and post_quant_conv are per position, so they run on the whole latent; only the decoder is
        tiled.
        """
        if not self.latent_space:
            return latent.float()
        autoencoder = self.autoencoder
        latent = latent.to(self.device)
        features = self._network("post_quant_conv", autoencoder, autoencoder.post_quant_conv,
                                 autoencoder.quantize(latent.float())) if self._probe is None else \
            autoencoder.post_quant_conv(autoencoder.quantize(latent.float()).to(self.dtype))
        return self._autoencoder_pass(self._run_decoder, "decode", features, autoencoder.config.out_ch,
                                      self.latent_factor, tuple(latent.shape[-2:]), tiles, plan, progress, cancel)

    # ----------------------------------------------------------------------------------------------- stages
    def _encode_stage(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, images: torch.Tensor | None,
                      plan: RunPlan, progress: RunProgress | None, cancel: CancelCheck | None,
                      trace: dict | None = None) -> ResShiftLatent:
        padded = pad_bottom_right(lr_m11, self.padding_multiple)
        mask_padded = None if mask_m11 is None else pad_bottom_right(mask_m11, self.padding_multiple)
        upsampled = padded if self.scale == 1 else F.interpolate(padded, scale_factor=self.scale, mode="bicubic")
        y = self.encode(upsampled, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace.update({"y0_padded_in": padded, "y_up_bicubic": upsampled})
        return ResShiftLatent(y, padded, mask_padded, images, plan)

    def _sample_stage(self, latent: ResShiftLatent, noise: NoiseSource, progress: RunProgress | None,
                      cancel: CancelCheck | None, trace: dict | None = None) -> ResShiftLatent:
        plan = latent.plan
        y = latent.latent
        condition = latent.lr_m11 if self.latent_space else y
        lq_features = self._condition_features(condition, latent.mask_m11)
        if trace is not None:
            trace["lq_features"] = lq_features.float()
        if plan.unet_tiles is not None:
            denoise = self._tiled_denoiser(lq_features, y, plan, progress, cancel)
        else:
            def denoise(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self._run_unet(x_in, t, lq_features)

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

    def _decode_stage(self, latent: ResShiftLatent, progress: RunProgress | None, cancel: CancelCheck | None, *,
                      mask_back: bool, trace: dict | None = None) -> torch.Tensor:
        plan = latent.plan
        decoded = self.decode(latent.latent, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace["x_dec"] = decoded
        sr_m11 = decoded[:, :, :plan.height * self.scale, :plan.width * self.scale].clamp(-1.0, 1.0)
        return self._finish(sr_m11, latent.mask_m11, latent.images, plan, mask_back, trace)

    def _finish(self, sr_m11: torch.Tensor, mask_padded: torch.Tensor | None, images: torch.Tensor | None,
                plan: RunPlan, mask_back: bool, trace: dict | None) -> torch.Tensor:
        result = sr_m11 * 0.5 + 0.5
        if trace is not None:
            trace["sr_unblended"] = result
        if mask_padded is not None and mask_back and images is not None:
            keep = mask_padded[:, :, :plan.height, :plan.width] * 0.5 + 0.5
            result = result * keep + images * (1 - keep)
        if trace is not None:
            trace["sr_01"] = result
        return result

    def _tiled_denoiser(self, lq_features: torch.Tensor, y: torch.Tensor, plan: RunPlan,
                        progress: RunProgress | None, cancel: CancelCheck | None):
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
                x_tiles = torch.cat([x_in[:, :, r, c] for r, c in group])
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

    def _run_padded(self, lr_m11: torch.Tensor, mask_m11: torch.Tensor | None, plan: RunPlan, noise: NoiseSource,
                    progress: RunProgress | None, cancel: CancelCheck | None, trace: dict | None) -> torch.Tensor:
        """encode -> sample -> decode of one batch; (B, 3, sh, sw) in [-1, 1] (cropped, clamped)."""
        latent = self._encode_stage(lr_m11, mask_m11, None, plan, progress, cancel, trace)
        latent = self._sample_stage(latent, noise, progress, cancel, trace)
        decoded = self.decode(latent.latent, plan=plan, progress=progress, cancel=cancel)
        if trace is not None:
            trace["x_dec"] = decoded
        return decoded[:, :, :plan.height * self.scale, :plan.width * self.scale].clamp(-1.0, 1.0)
