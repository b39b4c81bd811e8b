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
from dataclasses import dataclass
from typing import Callable

import torch


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
        raise ValueError(f"no tile size up to {max_size} (multiple of {multiple}) leaves an overlap of {min_overlap}")
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
        return self.total / self.weight


def tiled_apply(function: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, out_channels: int,
                scale: float, max_tile: int, overlap: int, multiple: int = 1) -> torch.Tensor:
    """Apply a translation-equivariant-ish ``function`` (B, C, h, w) -> (B, out_channels, h * scale, w * scale) tile by
    tile with blending. ``scale`` may be a fraction (an encoder: 1/4); tiles are planned on the coarser side.

    Args:
        max_tile, overlap, multiple: in pixels of the coarser of input and output.
    """
    batch, _, height, width = source.shape
    up = scale >= 1
    factor = int(round(scale if up else 1 / scale))
    coarse_h, coarse_w = (height, width) if up else (height // factor, width // factor)
    plan = plan_tiles(coarse_h, coarse_w, max_tile, overlap, multiple)
    if len(plan) == 1:
        return function(source).float()
    out_h, out_w = (coarse_h * factor, coarse_w * factor) if up else (coarse_h, coarse_w)
    blender = Blender((batch, out_channels, out_h, out_w), source.device, plan, overlap, factor if up else 1)
    for rows, cols in plan.windows():
        if up:
            tile_in = source[:, :, rows, cols]
        else:
            tile_in = source[:, :, rows.start * factor:rows.stop * factor, cols.start * factor:cols.stop * factor]
        blender.add(rows, cols, function(tile_in))
    return blender.result()
