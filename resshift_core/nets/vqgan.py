"""The VQ autoencoder of ResShift (official class ``ldm.models.autoencoder.VQModelTorch``), official key names.

``encode`` returns the *unquantised* latent (encoder -> quant_conv); ``decode`` quantises to the nearest codebook
entry, then post_quant_conv -> decoder. GroupNorm eps is 1e-6 here (the UNet's is 1e-5), and the encoder's
down-sampling pads right/bottom only.

The mid-block self-attention is global over the latent, so its memory grows with the square of the latent area; it
runs through ``scaled_dot_product_attention`` in query chunks so that the full attention matrix is never stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32, NearestUpsampleConv, PointwiseConv2d, is_channels_last


@dataclass(frozen=True)
class VQConfig:
    """Hyper-parameters of a VQModelTorch. Defaults: the released ``autoencoder_vq_f4.pth``."""

    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2)
    in_channels: int = 3
    out_ch: int = 3
    attn_levels: tuple[int, ...] = ()  # levels with self-attention after every ResnetBlock (none when released)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["ch_mult"] = list(self.ch_mult)
        values["num_res_blocks"] = list(self.num_res_blocks)
        values["attn_levels"] = list(self.attn_levels)
        return values

    @classmethod
    def from_official(cls, params: dict) -> VQConfig:
        """From the ``autoencoder.params`` block of an official YAML config (``VQModelTorch`` arguments)."""
        dd = params["ddconfig"]
        blocks = dd["num_res_blocks"]
        blocks = tuple(blocks) if isinstance(blocks, (list, tuple)) else (blocks,) * len(dd["ch_mult"])
        resolution = dd.get("resolution", 256)
        attn_levels = tuple(level for level in range(len(dd["ch_mult"]))
                            if resolution // 2 ** level in dd.get("attn_resolutions", []))
        return cls(embed_dim=params["embed_dim"], n_embed=params["n_embed"], z_channels=dd["z_channels"], ch=dd["ch"],
                   ch_mult=tuple(dd["ch_mult"]), num_res_blocks=blocks, in_channels=dd.get("in_channels", 3),
                   out_ch=dd.get("out_ch", 3), attn_levels=attn_levels)

    @classmethod
    def from_dict(cls, values: dict) -> VQConfig:
        values = dict(values)
        if isinstance(values.get("num_res_blocks"), int):
            values["num_res_blocks"] = [values["num_res_blocks"]] * len(values["ch_mult"])
        for key in ("ch_mult", "num_res_blocks", "attn_levels"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-swish-conv-GN-swish-conv with a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = PointwiseConv2d(in_channels, out_channels)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of the map (1x1 convs q, k, v, proj_out), plus the input.

    ``query_chunk`` bounds memory: queries are processed this many at a time (keys/values stay whole), which gives
    the same result as one pass.
    """

    query_chunk: int = 4096

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = PointwiseConv2d(channels, channels)
        self.k = PointwiseConv2d(channels, channels)
        self.v = PointwiseConv2d(channels, channels)
        self.proj_out = PointwiseConv2d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # (B, 1, HW, C) so that SDPA sees one head (views of channels-last maps, copies of NCHW ones)
        q, k, v = (proj(h).permute(0, 2, 3, 1).reshape(batch, 1, height * width, channels)
                   for proj in (self.q, self.k, self.v))
        tokens = q.shape[2]
        if tokens <= self.query_chunk:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + self.query_chunk], k, v)
                             for i in range(0, tokens, self.query_chunk)], dim=2)
        out = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
        if not is_channels_last(x):
            out = out.contiguous()
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 conv of stride 2 without padding (the asymmetric official rule)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks) and, except at the end, a resampling layer."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, resample_name: str,
                 attention: bool = False):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        # attention after every block at levels listed in attn_resolutions (no released model has any)
        self.attn = nn.ModuleList([AttnBlock(b.conv2.out_channels) for b in blocks] if attention else [])
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[index](x)
        return x

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        layer = getattr(self, self.resample_name, None)
        return x if layer is None else layer(x)


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, z_channels, H/f, W/f)."""

    def __init__(self, c: VQConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        in_mult = (1,) + tuple(c.ch_mult)
        self.down = nn.ModuleList()
        channels = c.ch
        for level, mult in enumerate(c.ch_mult):
            blocks = []
            channels = c.ch * in_mult[level]
            for _ in range(c.num_res_blocks[level]):
                blocks.append(ResnetBlock(channels, c.ch * mult))
                channels = c.ch * mult
            last = level == len(c.ch_mult) - 1
            self.down.append(_Level(blocks, None if last else Downsample(channels), "downsample",
                                    level in c.attn_levels))
        self.mid = _Mid(channels)
        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.resample(level.blocks(h))
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, 3, h f, w f), roughly in [-1, 1] (no tanh, not clamped)."""

    def __init__(self, c: VQConfig):
        super().__init__()
        channels = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, channels, 3, padding=1)
        self.mid = _Mid(channels)
        levels: list[_Level] = []
        for level in reversed(range(len(c.ch_mult))):
            blocks = []
            for _ in range(c.num_res_blocks[level] + 1):
                blocks.append(ResnetBlock(channels, c.ch * c.ch_mult[level]))
                channels = c.ch * c.ch_mult[level]
            levels.insert(0, _Level(blocks, NearestUpsampleConv(channels) if level != 0 else None, "upsample",
                                    level in c.attn_levels))
        self.up = nn.ModuleList(levels)  # indexed by level: up[0] is the full-resolution one
        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.resample(level.blocks(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser (key ``embedding.weight``: (n_embed, embed_dim)).

    The codebook stays float32 whatever dtype the module is moved to (``.to(torch.float16)``, ``.half()``, a host's
    memory manager): nearest-code search on half-precision codes flips indices. Device moves apply as usual.
    """

    keeps_float32 = True

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        weight = self.embedding.weight
        if weight.is_floating_point() and weight.dtype != torch.float32:
            with torch.no_grad():
                weight.data = weight.data.float()
        return self

    # Rows per distance block: 256 x 8192 float32 = 8 MiB stays in cache while it is built, corrected and scanned
    # (2-3x faster than one large block, which is memory-bound), and a large latent never builds its whole matrix.
    rows_per_chunk: int = 256

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, h, w) int64 codebook indices.

        Distances as officially, ||z||² + ||e||² - 2 z·e, in float32; argmin takes the first index on ties. Rows are
        searched in chunks so that a large latent never builds its whole distance matrix (34 GB for a 4096 px image).
        """
        batch, channels, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, channels).float()
        codebook = self.embedding.weight.float()
        code_norms = codebook.pow(2).sum(1)
        found = []
        for rows in flat.split(self.rows_per_chunk):
            # (||z||² + ||e||²) - 2 z·e: the same roundings as the official expression, in two passes instead of five
            distances = rows.pow(2).sum(1, keepdim=True) + code_norms
            distances.addmm_(rows, codebook.t(), alpha=-2)
            found.append(distances.argmin(dim=1))
        return torch.cat(found).view(batch, height, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> the nearest codebook vectors, same shape and dtype (straight-through form)."""
        codes = self.embedding(self.indices(z)).permute(0, 3, 1, 2).to(z.dtype)
        return z + (codes - z).detach()


class VQAutoencoder(nn.Module):
    """VQModelTorch. Images (B, 3, H, W) in [-1, 1]; latents (B, embed_dim, H/f, W/f)."""

    def __init__(self, config: VQConfig = VQConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = PointwiseConv2d(config.z_channels, config.embed_dim)
        self.post_quant_conv = PointwiseConv2d(config.embed_dim, config.z_channels)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of f -> unquantised latent (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(image))

    def decode(self, latent: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """(B, embed_dim, h, w) -> (B, 3, h f, w f) image, about [-1, 1], not clamped. Quantises first by default."""
        if quantize:
            latent = self.quantize(latent)
        return self.decoder(self.post_quant_conv(latent))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))
