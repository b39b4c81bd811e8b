"""Tiles: planning overlapping windows, smooth blending weights, and tiled autoencoder passes.

Used by the pipeline to run images of any size in memory bounded by the tile size:

* the UNet runs on overlapping latent tiles at every step and the x0 predictions are blended with smooth weights into
  one latent, while the noise is one field for the whole image (so the result does not depend on how it was cut);
* the VQ encoder / decoder run on overlapping tiles blended the same way (their mid-block attention is global, so
  untiled they need memory quadratic in the image area).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .errors import InvalidArgumentError

TILING_MODES = ("auto", "off", "latent")


@dataclass(frozen=True)
class TileSettings:
    """How large inputs are cut. Sizes are in latent pixels (= LR pixels for the x4 latent SR models).

    Attributes:
        mode: ``"auto"`` runs the official, untiled computation whenever the memory estimate says it fits and its
            cost stays within 1.5x of the tiled path, and tiles beyond that; ``"off"`` never tiles (the official
            computation whatever the size); ``"latent"`` always plans tiles (one tile when the image fits).
        tile_size: largest UNet tile; the planner picks the size (a multiple of the UNet's latent multiple) that
            covers the image with the least overlap work.
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
        """The device's defaults (larger autoencoder tiles and tile batches on CUDA) with ``overrides`` (None values
        are ignored), validated."""
        defaults = cls(batch_size=4, vae_tile_size=128) if torch.device(device).type == "cuda" else cls()
        settings = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
        settings.validate()
        return settings

    @classmethod
    def resolve(cls, device: torch.device | str = "cpu", *, tiling: str | None = None, tile_size: int | None = None,
                tile_overlap: int | None = None, vae_tile_size: int | None = None,
                tile_batch_size: int | None = None, model_tile_size: int | None = None,
                latent_multiple: int | None = None) -> TileSettings:
        """The one place a user's tiling choices become settings, validated.

        Every front-end passes its values here; a tile size of 0 or None and an overlap of None mean "not given":
        the model's own tile (``model_tile_size``, a model trained on crops) or the device's default (an overlap of 0
        is no overlap). A tile smaller
        than the default keeps a proportionate default overlap (a quarter of the tile at most). ``tiling`` None
        means "auto", or "latent" when a tile size is given or the model asks for its own tile.

        Raises:
            InvalidArgumentError: a value outside its range (see :func:`tile_size_range`).
        """
        tile_size = tile_size or None
        vae_tile_size = vae_tile_size or None
        tiling = (tiling or "").strip().lower() or None
        if tiling is None:
            tiling = "latent" if tile_size or vae_tile_size or model_tile_size else "auto"
        tile_size = tile_size or model_tile_size
        defaults = cls.for_device(torch.device(device))
        if tile_overlap is None and tile_size:
            tile_overlap = min(defaults.overlap, tile_size // 4)
        vae_overlap = min(defaults.vae_overlap, vae_tile_size // 4) if vae_tile_size else None
        settings = cls.for_device(torch.device(device), mode=tiling, tile_size=tile_size, overlap=tile_overlap,
                                  vae_tile_size=vae_tile_size, vae_overlap=vae_overlap, batch_size=tile_batch_size)
        if latent_multiple is not None:
            settings.check_for(latent_multiple)
        return settings

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` for a setting outside its range (before anything is loaded)."""
        if self.mode not in TILING_MODES:
            raise InvalidArgumentError("tiling", self.mode, "one of " + ", ".join(TILING_MODES))
        for name, value, low in (("tile_size", self.tile_size, 8), ("vae_tile_size", self.vae_tile_size, 8),
                                 ("tile_batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise InvalidArgumentError(name, value, f"a whole number of at least {low} (latent pixels)"
                                           if name != "tile_batch_size" else "a whole number of at least 1")
        for name, value, tile in (("tile_overlap", self.overlap, self.tile_size),
                                  ("vae_overlap", self.vae_overlap, self.vae_tile_size)):
            if not isinstance(value, int) or not 0 <= value <= tile // 2:
                raise InvalidArgumentError(name, value, f"a whole number from 0 to half the tile size ({tile // 2})")

    def check_for(self, latent_multiple: int) -> None:
        """The UNet tile must hold at least one latent multiple of the network."""
        if self.mode != "off" and self.tile_size < latent_multiple:
            raise InvalidArgumentError("tile_size", self.tile_size,
                                       f"at least {latent_multiple} for this model (its latent multiple)")

    def halved(self, multiple: int) -> TileSettings | None:
        """Smaller tiles after an out-of-memory error, or None when they cannot shrink further. An untiled or
        "auto" run becomes a tiled one."""
        if self.mode != "latent":
            return replace(self, mode="latent")
        if self.batch_size > 1:
            return replace(self, batch_size=self.batch_size // 2)
        tile = max(multiple, (self.tile_size // 2) // multiple * multiple)
        vae_tile = max(16, self.vae_tile_size // 2)
        if tile == self.tile_size and vae_tile == self.vae_tile_size:
            return None
        return replace(self, tile_size=tile, overlap=min(self.overlap, tile // 4), vae_tile_size=vae_tile,
                       vae_overlap=min(self.vae_overlap, vae_tile // 4))


def tile_size_range(latent_multiple: int) -> tuple[int, int]:
    """(minimum, step) of the UNet tile sizes a model of this latent multiple takes, in latent pixels: what a
    front-end's slider offers (plus 0 = the default)."""
    return latent_multiple, latent_multiple


def chop_starts(length: int, chop_size: int, stride: int) -> list[int]:
    """Patch starts along one axis, as the official ``ImageSpliterTh``: 0, stride, ... with overrunning starts moved
    to length - chop_size and duplicates dropped; an axis not longer than chop_size has the single start 0."""
    if length <= chop_size:
        return [0]
    starts = [min(s, length - chop_size) for s in range(0, length, stride)]
    return list(dict.fromkeys(starts))


def default_chop_stride(chop_size: int) -> int:
    """The official patch-wise mode's stride when none is given: patches overlap by an eighth."""
    return chop_size - chop_size // 8


def validate_chop(chop_size: int | None, chop_stride: int | None) -> None:
    """The official patch-wise mode's settings (LR pixels)."""
    if chop_size is None:
        if chop_stride is not None:
            raise InvalidArgumentError("chop_stride", chop_stride, "given only together with a chop size")
        return
    if not isinstance(chop_size, int) or chop_size < 8:
        raise InvalidArgumentError("chop_size", chop_size, "a whole number of at least 8 (LR pixels)")
    if chop_stride is not None and (not isinstance(chop_stride, int) or not 1 <= chop_stride <= chop_size):
        raise InvalidArgumentError("chop_stride", chop_stride, f"a whole number from 1 to the chop size ({chop_size})")


@dataclass(frozen=True)
class AxisPlan:
    """Tile starts along one axis, all tiles of one ``size``."""

    length: int
    size: int
    starts: tuple[int, ...]


def plan_axis(length: int, max_size: int, min_overlap: int, multiple: int = 1) -> AxisPlan:
    """Choose the tile size (a multiple of ``multiple``, at most ``max_size``) that covers ``length`` with overlaps of
    at least ``min_overlap`` at the least total tiled length, then spread the tiles evenly.

    A length that fits one tile gets a single tile of exactly that length.
    """
    if length <= max_size:
        return AxisPlan(length, length, (0,))
    best = None
    for size in range(multiple, max_size + 1, multiple):
        if size <= min_overlap:
            continue
        count = math.ceil((length - min_overlap) / (size - min_overlap))
        cost = count * size
        if best is None or cost < best[0] or (cost == best[0] and size > best[1]):
            best = (cost, size, count)
    if best is None:
        raise InvalidArgumentError("tile_size", max_size, f"larger than the overlap ({min_overlap}) and at least "
                                   f"{multiple} (this model's latent multiple)")
    _, size, count = best
    starts = tuple(round(i * (length - size) / (count - 1)) for i in range(count)) if count > 1 else (0,)
    return AxisPlan(length, size, starts)


@dataclass(frozen=True)
class TilePlan:
    rows: AxisPlan
    cols: AxisPlan

    def __len__(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def windows(self) -> Iterator[tuple[slice, slice]]:
        """(row slice, column slice) of every tile, row-major."""
        for row in self.rows.starts:
            for col in self.cols.starts:
                yield slice(row, row + self.rows.size), slice(col, col + self.cols.size)


def plan_tiles(height: int, width: int, max_size: int, min_overlap: int, multiple: int = 1) -> TilePlan:
    return TilePlan(plan_axis(height, max_size, min_overlap, multiple), plan_axis(width, max_size, min_overlap,
                                                                                 multiple))


def _ramp(size: int, start: int, length: int, ramp: int, device) -> torch.Tensor:
    """1-D weights of a tile. At an edge inside the image the first quarter of the ramp is 0 (those samples saw zero
    padding / wrapped Swin windows instead of the real neighbourhood, so they are discarded), the rest rises as a
    raised cosine; edges on the image border and the tile's middle weigh 1.

    With neighbours overlapping by at least ``ramp``, every sample keeps a positive total weight, and a local operator
    whose reach is at most ramp // 4 is reproduced exactly.
    """
    weights = torch.ones(size, device=device, dtype=torch.float32)
    ramp = min(ramp, size // 2)
    if ramp <= 0:
        return weights
    margin = ramp // 4
    rise_length = ramp - margin
    positions = torch.arange(rise_length, device=device, dtype=torch.float32) + 0.5
    rise = torch.cat([torch.zeros(margin, device=device), 0.5 - 0.5 * torch.cos(math.pi * positions / rise_length)])
    if start > 0:
        weights[:ramp] = rise
    if start + size < length:
        weights[size - ramp:] = torch.minimum(weights[size - ramp:], rise.flip(0))
    return weights


def blend_weights(plan: TilePlan, row_slice: slice, col_slice: slice, ramp: int, device, scale: int = 1
                  ) -> torch.Tensor:
    """(1, 1, h * scale, w * scale) float32 weights of one tile (see :func:`_ramp`)."""
    rows = _ramp(plan.rows.size * scale, row_slice.start * scale, plan.rows.length * scale, ramp * scale, device)
    cols = _ramp(plan.cols.size * scale, col_slice.start * scale, plan.cols.length * scale, ramp * scale, device)
    return (rows[:, None] * cols[None, :])[None, None]


class Blender:
    """Accumulates weighted tile results into one canvas: out = sum(w * tile) / sum(w)."""

    def __init__(self, shape: tuple[int, ...], device, plan: TilePlan, ramp: int, scale: int = 1):
        self.total = torch.zeros(shape, device=device, dtype=torch.float32)
        self.weight = torch.zeros((1, 1) + tuple(shape[-2:]), device=device, dtype=torch.float32)
        self.plan, self.ramp, self.scale = plan, ramp, scale

    def add(self, rows: slice, cols: slice, tile: torch.Tensor) -> None:
        weights = blend_weights(self.plan, rows, cols, self.ramp, self.total.device, self.scale)
        s = self.scale
        target = (slice(None), slice(None), slice(rows.start * s, rows.stop * s), slice(cols.start * s, cols.stop * s))
        self.total[target] += tile.float() * weights
        self.weight[target] += weights

    def result(self) -> torch.Tensor:
        """The blend; every sample must have been covered by a tile."""
        return self.total / self.weight

    def partial(self, fallback: torch.Tensor) -> torch.Tensor:
        """The blend so far, with ``fallback`` where no tile has landed yet (for previews: never NaN)."""
        covered = self.weight > 0
        return torch.where(covered, self.total / torch.where(covered, self.weight, 1.0), fallback.float())


def tiled_apply(function: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, out_channels: int,
                scale: float, max_tile: int, overlap: int, multiple: int = 1,
                before_tile: Callable[[], None] | None = None, plan: TilePlan | None = None) -> torch.Tensor:
    """Apply a translation-equivariant-ish ``function`` (B, C, h, w) -> (B, out_channels, h * scale, w * scale) tile by
    tile with blending. ``scale`` may be a fraction (an encoder: 1/4); tiles are planned on the coarser side.

    Args:
        max_tile, overlap, multiple: in pixels of the coarser of input and output.
        before_tile: called before each tile (cancellation checks).
        plan: tiles planned beforehand (on the coarser side); ``max_tile`` and ``multiple`` are then unused.
    """
    batch, _, height, width = source.shape
    up = scale >= 1
    factor = int(round(scale if up else 1 / scale))
    coarse_h, coarse_w = (height, width) if up else (height // factor, width // factor)
    plan = plan or plan_tiles(coarse_h, coarse_w, max_tile, overlap, multiple)
    if len(plan) == 1:
        return function(source).float()
    out_h, out_w = (coarse_h * factor, coarse_w * factor) if up else (coarse_h, coarse_w)
    blender = Blender((batch, out_channels, out_h, out_w), source.device, plan, overlap, factor if up else 1)
    for rows, cols in plan.windows():
        if before_tile is not None:
            before_tile()
        if up:
            tile_in = source[:, :, rows, cols]
        else:
            tile_in = source[:, :, rows.start * factor:rows.stop * factor, cols.start * factor:cols.stop * factor]
        blender.add(rows, cols, function(tile_in))
    return blender.result()
