"""The ResShift Swin-UNet (official class ``models.unet.UNetModelSwin``) with the official parameter names.

The network predicts the clean latent x0 from the scaled noisy latent and the LR condition (paper Eq. 7, f_theta).
Layout (released SR model, image_size 64): a conv stem, ``len(channel_mult)`` encoder levels of ResBlocks, a Swin
layer after the first ResBlock of every level whose construction-time size is in ``attention_resolutions``, a middle
block ResBlock-Swin-ResBlock, and a mirrored decoder that concatenates [h, skip] before each ResBlock.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .layers import GroupNorm32, NearestUpsampleConv, PointwiseConv2d, timestep_embedding
from .swin import BasicLayer


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of a UNetModelSwin. Defaults are those of the released real-world x4 models.

    ``image_size`` is the construction-time latent size: it fixes which Swin blocks shift and the official padding
    multiple (``lq_size`` LR pixels). ``lq_size / image_size`` is 2^(number of LR feature-extractor stages).

    ``space_to_depth`` (f, not an official argument; 1 for every release) lets the network work on an f times
    coarser grid: the input and the LR condition are pixel-unshuffled into f^2 times the channels, and the output is
    pixel-shuffled back, so x and x0 keep their shapes. The diffusion is unchanged (the unshuffle only reorders
    pixels); a full-resolution pixel-space model then costs about 1/f^2 of the compute. ``attention_resolutions``
    count in the coarse grid's sizes (``image_size // f`` at the first level).
    """

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    attention_resolutions: tuple[int, ...] = (64, 32, 16, 8)
    image_size: int = 64
    lq_size: int = 64
    cond_mask: bool = False
    swin_depth: int = 2
    swin_embed_dim: int = 192
    num_heads: int = 6
    window_size: int = 8
    mlp_ratio: float = 4.0
    patch_norm: bool = False
    use_scale_shift_norm: bool = True
    space_to_depth: int = 1

    def __post_init__(self):
        if self.space_to_depth < 1 or self.image_size % self.space_to_depth:
            raise ValueError(f"space_to_depth must be a whole number >= 1 that divides image_size "
                             f"({self.image_size}); got {self.space_to_depth}")
        if self.space_to_depth > 1 and self.lq_size != self.image_size:
            raise ValueError("space_to_depth > 1 needs the LR condition at the input's size (lq_size == image_size)")

    @property
    def grid_size(self) -> int:
        """Construction-time side of the first level's feature map (image_size on the space-to-depth grid)."""
        return self.image_size // self.space_to_depth

    @property
    def feature_stages(self) -> int:
        """Number of stride-2 stages of the LR feature extractor (0: the LR is concatenated as it is)."""
        return int(round(math.log2(self.lq_size / self.image_size)))

    @property
    def condition_channels(self) -> int:
        """Channels the LR path appends to the latent (3 or 4 raw channels, or the extractor's output width)."""
        raw = 4 if self.cond_mask else 3
        return raw if self.feature_stages == 0 else 16 * 2 ** self.feature_stages

    def level_window(self, level: int) -> int:
        """Window used by Swin blocks of an encoder level (the middle block uses the deepest level's)."""
        return min(self.window_size, self.grid_size // 2 ** level)

    @property
    def latent_multiple(self) -> int:
        """Smallest multiple the latent H and W must have (down-sampling and windows at every level)."""
        multiple = 2 ** (len(self.channel_mult) - 1)
        for level in range(len(self.channel_mult)):
            has_swin = (self.grid_size // 2 ** level in self.attention_resolutions
                        or level == len(self.channel_mult) - 1)
            if has_swin:
                multiple = math.lcm(multiple, 2 ** level * self.level_window(level))
        return multiple * self.space_to_depth

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("channel_mult", "num_res_blocks", "attention_resolutions"):
            values[key] = list(values[key])
        return values

    @classmethod
    def from_official(cls, params: dict) -> UNetConfig:
        """From the ``model.params`` block of an official YAML config (``UNetModelSwin`` arguments)."""
        num_levels = len(params["channel_mult"])
        blocks = params["num_res_blocks"]
        heads = (params.get("num_heads", 1) if params.get("num_head_channels", -1) == -1
                 else params["swin_embed_dim"] // params["num_head_channels"])
        return cls(in_channels=params["in_channels"], out_channels=params["out_channels"],
                   model_channels=params["model_channels"], channel_mult=tuple(params["channel_mult"]),
                   num_res_blocks=tuple(blocks) if isinstance(blocks, (list, tuple)) else (blocks,) * num_levels,
                   attention_resolutions=tuple(params["attention_resolutions"]), image_size=params["image_size"],
                   lq_size=params.get("lq_size", params["image_size"]), cond_mask=params.get("cond_mask", False),
                   swin_depth=params.get("swin_depth", 2), swin_embed_dim=params.get("swin_embed_dim", 96),
                   num_heads=heads, window_size=params.get("window_size", 8),
                   mlp_ratio=float(params.get("mlp_ratio", 2.0)), patch_norm=params.get("patch_norm", False),
                   use_scale_shift_norm=params.get("use_scale_shift_norm", False))

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        values = dict(values)
        for key in ("channel_mult", "num_res_blocks", "attention_resolutions"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


class ResBlock(nn.Module):
    """GN-SiLU-conv, FiLM by the time embedding (GN(h)(1 + scale) + shift), SiLU-conv, plus a skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, use_scale_shift_norm: bool = True):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3,
                                                                                      padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1)
                                                             * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else PointwiseConv2d(channels, out_channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1 on every side (key ``op``)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x) if isinstance(layer, nn.Conv2d) else layer(x, emb)
        return x


class ResShiftUNet(nn.Module):
    """UNetModelSwin: predicts x0 (B, out_channels, h, w) from the scaled latent and the LR condition.

    State-dict keys are those of the official checkpoints, so released files load with strict matching.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        c = config
        self.model_channels = c.model_channels
        time_dim = c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, time_dim), nn.SiLU(),
                                        nn.Linear(time_dim, time_dim))
        if c.feature_stages == 0:
            self.feature_extractor: nn.Module = nn.Identity()
        else:
            layers: list[nn.Module] = []
            in_ch, width = (4 if c.cond_mask else 3), 16
            for _ in range(c.feature_stages):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.SiLU(), Downsample(width, width * 2)]
                in_ch = width = width * 2
            self.feature_extractor = nn.Sequential(*layers)

        def swin(channels: int, level_size: int) -> BasicLayer:
            return BasicLayer(channels, c.swin_embed_dim, c.num_heads, c.window_size, c.swin_depth, level_size,
                              c.mlp_ratio, c.patch_norm)

        ch = c.channel_mult[0] * c.model_channels
        cells = c.space_to_depth ** 2
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(
            nn.Conv2d((c.in_channels + c.condition_channels) * cells, ch, 3, padding=1))])
        skip_channels = [ch]
        size = c.grid_size
        for level, mult in enumerate(c.channel_mult):
            for block in range(c.num_res_blocks[level]):
                out_ch = mult * c.model_channels
                layers = [ResBlock(ch, time_dim, out_ch, c.use_scale_shift_norm)]
                ch = out_ch
                if size in c.attention_resolutions and block == 0:
                    layers.append(swin(ch, size))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                size //= 2
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_dim, ch, c.use_scale_shift_norm), swin(ch, size),
            ResBlock(ch, time_dim, ch, c.use_scale_shift_norm))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for block in range(c.num_res_blocks[level] + 1):
                out_ch = c.model_channels * mult
                layers = [ResBlock(ch + skip_channels.pop(), time_dim, out_ch, c.use_scale_shift_norm)]
                ch = out_ch
                if size in c.attention_resolutions and block == 0:
                    layers.append(swin(ch, size))
                if level and block == c.num_res_blocks[level]:
                    layers.append(NearestUpsampleConv(ch))
                    size *= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels * cells, 3, padding=1))

    def condition_features(self, lq: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """LR condition as the channels appended to the latent; constant over the steps of one run, so cache it.

        Args:
            lq: (B, 3, H, W) LR image in [-1, 1] at ``lq_size / image_size`` times the latent size.
            mask: (B, 1, H, W) inpainting mask in [-1, 1] (+1 = missing), for mask-conditioned models.
        Returns:
            (B, condition_channels, h, w).
        """
        if self.config.cond_mask:
            if mask is None:
                raise ValueError("this UNet is mask-conditioned (inpainting): pass mask=(B, 1, H, W) in [-1, 1]")
            lq = torch.cat([lq, mask.to(lq.dtype)], dim=1)
        elif mask is not None:
            raise ValueError("this UNet takes no mask; the mask input is only for inpainting models")
        return self.feature_extractor(lq)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, lq_features: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, h, w) scaled noisy latent x_t / sqrt(kappa^2 eta_t + 1); h, w multiples of
               ``config.latent_multiple``.
            timesteps: (B,) int64 raw step indices 0..T-1.
            lq, mask: LR condition (see :meth:`condition_features`), or
            lq_features: its precomputed output.
        Returns:
            (B, out_channels, h, w) predicted x0 latent, in x's dtype.
        """
        if lq_features is None:
            if lq is None:
                raise ValueError("the UNet needs the LR condition: pass lq (or lq_features)")
            lq_features = self.condition_features(lq, mask)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        h = torch.cat([x, lq_features.to(x.dtype)], dim=1)
        factor = self.config.space_to_depth
        if factor > 1:
            h = nn.functional.pixel_unshuffle(h, factor)
        skips = []
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(h)
        return nn.functional.pixel_shuffle(h, factor) if factor > 1 else h
