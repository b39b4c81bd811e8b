"""Planning a run before it starts: sizes, tiles, the number of network calls, and the relative cost of plans.

A :class:`RunPlan` is what the pipeline runs, what the memory estimate traces and what progress counts are made of,
so the three always agree. The cost model compares plans of one image: the work of the networks is counted once per
architecture on the meta device (FLOPs of two small sizes), then extrapolated as ``a * area + b * area^2``: the
convolutions and windowed attention grow with the area, the autoencoder's global attention with its square. A FLOP
of that global attention costs more time than a FLOP of a convolution, by a factor that depends on the device and
the precision (:data:`ATTENTION_COST_WEIGHT`, calibrated against measured runs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from .errors import InvalidArgumentError
from .sizing import OutputSize, SizePlan, plan_size
from .tiling import TilePlan, TileSettings, plan_tiles

logger = logging.getLogger(__name__)

TilesArgument = TileSettings | str | None
"""How a run is tiled: settings from :meth:`PlanningMixin.tiles` (the one value front-ends pass), a mode name
("auto", "off", "latent") with the defaults, or None ("auto", or the model's own tile)."""

#: "auto" keeps the untiled (official) computation while it costs at most this much more than the tiled one.
AUTO_COST_LIMIT = 1.5
#: Share of the memory available before a run that "auto" lets an untiled run use.
AUTO_MEMORY_SHARE = 0.75


@dataclass(frozen=True)
class RunPlan:
    """One run of a batch, decided before it starts.

    Attributes:
        batch: images run together.
        height, width: the LR input; padded_height, padded_width: after padding to the padding multiple.
        latent_height, latent_width: the latent the UNet runs on.
        scale: output / input size.
        steps: network calls of the chain (1 for one-step runs).
        one_step: a single network call at t = T-1 whose x0 prediction is the result (SinSR).
        latent_space: whether an autoencoder runs (False for pixel-space models).
        unet_tiles, vae_tiles: tile plans (latent pixels), None when that network runs on the whole latent.
        tiles: the settings the plan was made from (overlaps, tile batch).
    """

    batch: int
    height: int
    width: int
    padded_height: int
    padded_width: int
    latent_height: int
    latent_width: int
    scale: int
    steps: int
    one_step: bool
    latent_space: bool
    unet_tiles: TilePlan | None
    vae_tiles: TilePlan | None
    tiles: TileSettings

    @property
    def unet_tile_count(self) -> int:
        return len(self.unet_tiles) if self.unet_tiles is not None else 1

    @property
    def vae_tile_count(self) -> int:
        return len(self.vae_tiles) if self.vae_tiles is not None else 1

    @property
    def encode_calls(self) -> int:
        return self.vae_tile_count if self.latent_space else 0

    @property
    def unet_calls(self) -> int:
        return self.steps * self.unet_tile_count

    @property
    def decode_calls(self) -> int:
        return self.vae_tile_count if self.latent_space else 0

    @property
    def network_calls(self) -> int:
        """Progress units of the run: encoder tiles, UNet tiles x steps, decoder tiles."""
        return self.encode_calls + self.unet_calls + self.decode_calls

    @property
    def is_official(self) -> bool:
        """True when no network is cut into more than one tile: the official computation."""
        return self.unet_tile_count == 1 and (self.vae_tile_count == 1 or not self.latent_space)

    def describe(self) -> str:
        if self.is_official:
            return "untiled (the official computation)"
        parts = []
        if self.unet_tile_count > 1:
            parts.append(f"UNet in {self.unet_tile_count} tiles of {self.unet_tiles.rows.size}x"
                         f"{self.unet_tiles.cols.size}")
        if self.latent_space and self.vae_tile_count > 1:
            parts.append(f"autoencoder in {self.vae_tile_count} tiles of {self.vae_tiles.rows.size}x"
                         f"{self.vae_tiles.cols.size}")
        return "tiled: " + ", ".join(parts) + " (latent pixels)"

    def metadata(self) -> dict:
        """How the run was computed, for the output file's metadata."""
        return {"tiling": "off" if self.is_official else "latent", "unet_tiles": self.unet_tile_count,
                "unet_tile": [self.unet_tiles.rows.size, self.unet_tiles.cols.size] if self.unet_tiles else None,
                "autoencoder_tiles": self.vae_tile_count if self.latent_space else 0,
                "autoencoder_tile": ([self.vae_tiles.rows.size, self.vae_tiles.cols.size]
                                     if self.vae_tiles and self.latent_space else None)}


def padded_side(side: int, multiple: int) -> int:
    return math.ceil(side / multiple) * multiple


def make_plan(*, height: int, width: int, batch: int, scale: int, padding_multiple: int, latent_factor: int,
              latent_multiple: int, steps: int, one_step: bool, latent_space: bool, tiles: TileSettings,
              tile_unet: bool, tile_vae: bool) -> RunPlan:
    """The plan of one run; ``tile_unet`` / ``tile_vae`` say whether that network is cut (one tile if it fits).

    Args:
        latent_factor: output pixels per latent pixel (the autoencoder's factor; 1 in pixel space).
    """
    padded_h, padded_w = padded_side(height, padding_multiple), padded_side(width, padding_multiple)
    latent_h, latent_w = padded_h * scale // latent_factor, padded_w * scale // latent_factor
    unet_tiles = plan_tiles(latent_h, latent_w, tiles.tile_size, tiles.overlap, latent_multiple) if tile_unet \
        else None
    vae_tiles = plan_tiles(latent_h, latent_w, tiles.vae_tile_size, tiles.vae_overlap) if tile_vae else None
    return RunPlan(batch, height, width, padded_h, padded_w, latent_h, latent_w, scale, 1 if one_step else steps,
                   one_step, latent_space, unet_tiles, vae_tiles, tiles)


def choose_auto_plan(make: Callable[[bool, bool], RunPlan], *, model_tile_size: int | None, latent_space: bool,
                     cost: Callable[[RunPlan], float], fits: Callable[[RunPlan], bool]) -> RunPlan:
    """What "auto" runs: the first of these plans that ``fits`` in memory and, when its autoencoder runs untiled,
    costs at most :data:`AUTO_COST_LIMIT` times the fully tiled plan: untiled (the official computation); the UNet
    untiled and the autoencoder tiled; both tiled. A model that asks for its own tile always runs its UNet in tiles
    of that size.

    Args:
        make: ``make(tile_unet, tile_vae)`` -> the plan with those networks cut (one tile where the image fits).
    """
    fully_tiled = make(True, True)
    if fully_tiled.is_official:  # one tile each: nothing to decide
        return make(False, False)
    choices = [(False, False), (False, True)] if model_tile_size is None else [(True, False)]
    for tile_unet, tile_vae in choices:
        candidate = make(tile_unet, tile_vae)
        if latent_space and not tile_vae and cost(candidate) > AUTO_COST_LIMIT * cost(fully_tiled):
            continue
        if fits(candidate):
            return candidate
    logger.info("%dx%d px: %s (the untiled run would not fit in memory or cost more than %.1fx)",
                fully_tiled.width, fully_tiled.height, fully_tiled.describe(), AUTO_COST_LIMIT)
    return fully_tiled


# ----------------------------------------------------------------------------------------------------- costs
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_val=None, **kwargs) -> int:
    """Q K^T and P V of scaled_dot_product_attention (FlopCounterMode has no formula for the fused kernels)."""
    *batch, queries, depth = query_shape
    keys, value_depth = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * queries * keys * (depth + value_depth)


def flop_counter():
    """A FlopCounterMode that also counts scaled_dot_product_attention (as called, and its CPU flash kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    for name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


@lru_cache(maxsize=32)
def _area_cost_terms(kind: str, config, latent_multiple: int, factor: int) -> tuple[float, float]:
    """(a, b) of FLOPs(latent area A) = a A + b A^2 for one call of a network, counted on the meta device: the UNet
    is linear in the area (windowed attention), so one size tells; the autoencoder's global attention needs two."""
    from .nets.unet import ResShiftUNet
    from .nets.vqgan import VQAutoencoder

    with torch.device("meta"):
        network = (ResShiftUNet(config) if kind == "unet" else VQAutoencoder(config)).eval()
    sides = (latent_multiple * 2,) if kind == "unet" else (16, 32)
    counts = []
    for side in sides:
        with torch.device("meta"), torch.inference_mode(), flop_counter() as counter:
            if kind == "unet":
                latent = torch.empty(1, config.in_channels, side, side)
                features = torch.empty(1, config.condition_channels, side, side)
                network(latent, torch.zeros(1, dtype=torch.long), lq_features=features)
            else:
                image = torch.empty(1, config.in_channels, side * factor, side * factor)
                network.decoder(network.post_quant_conv(network.encode(image)))
        counts.append(counter.get_total_flops())
    if len(sides) == 1:
        return counts[0] / sides[0] ** 2, 0.0
    (area1, area2), (flops1, flops2) = (sides[0] ** 2, sides[1] ** 2), counts
    quadratic = max(0.0, (flops2 / area2 - flops1 / area1) / (area2 - area1))
    return flops1 / area1 - quadratic * area1, quadratic


#: Time of one FLOP of the autoencoder's global attention relative to one of a convolution, per (device type,
#: precision). Fitted to whole runs of realsr-v3, 256 -> 1024 px, full-size weights, one image per process, on a
#: 2-core AVX-512 + bf16 CPU, untiled against autoencoder-tiled: 1.62x in fp32 and 2.15x in bf16 (the runs reported
#: in the project's issue 19), where the FLOP counts alone predict 1.31x (attention over 65,536 tokens is bound by
#: memory traffic, and bf16 speeds convolutions up far more than that attention). Measured again on this code:
#: 1.60x and 2.11x at 256 px, 1.06x and 1.09x at 128 px (the README's table). Unmeasured devices count FLOPs (1.0).
ATTENTION_COST_WEIGHT = {("cpu", "float32"): 1.8, ("cpu", "bfloat16"): 3.3}


def attention_cost_weight(device=None, dtype=None) -> float:
    """The weight of :data:`ATTENTION_COST_WEIGHT` for a device and precision (1.0 where none was measured; a CPU
    without native bf16 emulates it and keeps the float32 weight)."""
    if device is None:
        return 1.0
    kind = torch.device(device).type
    name = str(dtype or torch.float32).replace("torch.", "")
    if kind == "cpu" and name == "bfloat16":
        from .runtime import cpu_has_native_bf16

        name = "bfloat16" if cpu_has_native_bf16() else "float32"
    return ATTENTION_COST_WEIGHT.get((kind, name), 1.0)


def plan_cost(plan: RunPlan, unet_config, vq_config=None, latent_factor: int = 4, *, device=None,
              dtype=None) -> float:
    """Relative time of a plan (FLOPs of every network call, batch included, the autoencoder's global attention
    weighted for ``device`` and ``dtype``), to compare plans of one image."""
    weight = attention_cost_weight(device, dtype)

    def tiles_cost(tile_plan, height, width, terms) -> float:
        a, b = terms[0], terms[1] * weight
        if tile_plan is None:
            return a * height * width + b * (height * width) ** 2
        area = tile_plan.rows.size * tile_plan.cols.size
        return len(tile_plan) * (a * area + b * area ** 2)

    unet_terms = _area_cost_terms("unet", unet_config, unet_config.latent_multiple, 1)
    cost = plan.steps * tiles_cost(plan.unet_tiles, plan.latent_height, plan.latent_width, unet_terms)
    if plan.latent_space and vq_config is not None:
        vae_terms = _area_cost_terms("autoencoder", vq_config, 1, latent_factor)
        cost += tiles_cost(plan.vae_tiles, plan.latent_height, plan.latent_width, vae_terms)
    return cost * plan.batch


# ------------------------------------------------------------------------------------------- a pipeline's plans
class PlanningMixin:
    """How a pipeline (:class:`~resshift_core.pipeline.ResShiftPipeline`) plans its runs: the tiling from a user's
    choices, the plan of one run ("auto" decided by :func:`choose_auto_plan`), and the passes of an output size.
    Uses the pipeline's ``spec``, ``device``, ``dtype``, networks, ``_plan_cache`` and ``_fits``.
    """

    def tiles(self, tiling: str | None = None, tile_size: int | None = None, tile_overlap: int | None = None,
              vae_tile_size: int | None = None, tile_batch_size: int | None = None) -> TileSettings:
        """The tiling of a run from a user's choices, validated for this model and device
        (:meth:`TileSettings.resolve <resshift_core.tiling.TileSettings.resolve>`: 0 / None = the default)."""
        return TileSettings.resolve(self.device, tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap,
                                    vae_tile_size=vae_tile_size, tile_batch_size=tile_batch_size,
                                    model_tile_size=self.model_tile_size,
                                    latent_multiple=self.unet.config.latent_multiple)

    tile_settings = tiles  # the name earlier releases used

    def _tiles_of(self, tiles: TilesArgument) -> TileSettings:
        if isinstance(tiles, TileSettings):
            tiles.validate()
            tiles.check_for(self.unet.config.latent_multiple)
            return tiles
        return self.tiles(tiles)

    def _make_plan(self, height: int, width: int, batch: int, tiles: TileSettings, one_step: bool, tile_unet: bool,
                   tile_vae: bool) -> RunPlan:
        return make_plan(height=height, width=width, batch=batch, scale=self.scale,
                         padding_multiple=self.padding_multiple, latent_factor=self.latent_factor,
                         latent_multiple=self.unet.config.latent_multiple, steps=self.schedule.num_steps,
                         one_step=one_step, latent_space=self.latent_space, tiles=tiles, tile_unet=tile_unet,
                         tile_vae=tile_vae and self.latent_space)

    def plan(self, height: int, width: int, *, batch: int = 1, tiles: TilesArgument = None,
             one_step: bool | None = None) -> RunPlan:
        """How a run on a batch of ``height`` x ``width`` LR images will be computed; "auto" decides by memory and
        cost (:func:`~resshift_core.planning.choose_auto_plan`)."""
        tiles = self._tiles_of(tiles)
        one_step = self.one_step if one_step is None else bool(one_step)
        if tiles.mode != "auto":
            tiled = tiles.mode == "latent"
            return self._make_plan(height, width, batch, tiles, one_step, tiled, tiled)
        key = (height, width, batch, tiles, one_step)
        if key not in self._plan_cache:
            budget = self._memory_budget()
            vq_config = self.autoencoder.config if self.latent_space else None
            self._plan_cache[key] = choose_auto_plan(
                lambda tile_unet, tile_vae: self._make_plan(height, width, batch, tiles, one_step, tile_unet,
                                                            tile_vae),
                model_tile_size=self.model_tile_size, latent_space=self.latent_space,
                cost=lambda plan: plan_cost(plan, self.unet.config, vq_config, self.latent_factor,
                                            device=self.device, dtype=self.dtype),
                fits=lambda plan: budget is None or self._fits(plan, AUTO_MEMORY_SHARE * budget))
        return self._plan_cache[key]

    def plan_size(self, width: int, height: int, size: OutputSize | None = None) -> SizePlan:
        """The passes that take a ``width`` x ``height`` input to the output ``size`` (None: the model's scale)."""
        size = size or OutputSize()
        if self.scale == 1 and not size.is_native():
            raise InvalidArgumentError("size", size.describe(), "the input's own size: this model restores at x1")
        return plan_size(width, height, size, self.scale)

    @staticmethod
    def _pass_tiles(tiles: TileSettings, passes: int) -> list[TileSettings]:
        """The tiling of each pass: later passes run on a large image, so "auto" tiles them."""
        later = replace(tiles, mode="latent") if tiles.mode == "auto" else tiles
        return [tiles] + [later] * (passes - 1)

