"""The Swin transformer layer of the ResShift UNet, with the official parameter names and the official quirks.

Differences from textbook Swin that change results and are reproduced here:

* the norms are GroupNorm(32) over whole NCHW maps (not LayerNorm per token), the MLP is made of 1x1 convolutions;
* the shifted-window mask is *not* the standard one (see :func:`official_shift_mask`);
* whether a block shifts, and its window size, are decided from the construction-time resolution of its level,
  whatever the runtime size.

Speed: window attention runs through ``scaled_dot_product_attention``; the relative-position bias and the shift mask
are folded into one additive bias per feature size, computed once and cached (invalidated when weights change).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import GroupNorm32, PointwiseConv2d, cache_key, is_channels_last

MASK_VALUE = -100.0  # the official additive value for token pairs of different regions


def relative_position_index(window: int) -> torch.Tensor:
    """Standard Swin index (Δr + w - 1)(2w - 1) + (Δc + w - 1) for every (query, key) token pair: (w², w²) int64."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return delta[:, :, 0] * (2 * window - 1) + delta[:, :, 1]


def official_shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Additive attention mask of a shifted block, exactly as the official ResShift code computes it.

    The official function meant to label the nine regions of the rolled map, but sliced the wrong dimensions and
    flattened the windows column-major. The net effect: every image row r is labelled 0 if r < H - window,
    1 if H - window <= r < H - shift, else 2; inside a window whose first row is r0, the token at in-window
    position (a, b) gets the label of row r0 + b (the column offset selects the row). Pairs with different labels
    get -100. Only the last window-row is ever masked; the last window-column is never split left/right.

    Returns:
        (num_windows, window², window²) float32 of 0 / -100, windows in row-major order.
    """
    rows = torch.arange(height)
    row_label = (rows >= height - window).long() + (rows >= height - shift).long()
    window_rows = height // window
    window_cols = width // window
    # (window_rows, window): label of token column offset b in window-row i is row_label[i * window + b].
    labels_by_offset = row_label.view(window_rows, window)
    token_labels = labels_by_offset[:, None, :].expand(window_rows, window, window).reshape(window_rows, -1)
    token_labels = token_labels[:, None, :].expand(window_rows, window_cols, window * window).reshape(-1, window ** 2)
    differs = token_labels[:, None, :] != token_labels[:, :, None]
    return differs.float() * MASK_VALUE


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Keys: ``qkv``, ``proj``, ``relative_position_bias_table`` ((2w-1)², heads), buffer ``relative_position_index``.
    """

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, w², w²) relative-position bias."""
        n = self.window * self.window
        index = self.relative_position_index.to(self.relative_position_bias_table.device)
        return self.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """
        Args:
            windows: (B, nW, N, C) tokens, N = w².
            bias: (nW, heads, N, N) or (1, heads, N, N) additive logits bias (position bias plus shift mask).
        Returns:
            (B, nW, N, C).
        """
        batch, num_windows, tokens, channels = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, heads, channels // heads)
        bias = bias.to(qkv.dtype)
        if bias.shape[0] == 1:  # no shift mask: one (heads, N, N) bias broadcast over all windows, never copied
            qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch * num_windows, heads, tokens, channels // heads)
        else:  # a bias per window: windows and heads share one axis so the (nW, heads, N, N) bias is a view
            qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, batch, num_windows * heads, tokens, channels // heads)
            bias = bias.reshape(1, num_windows * heads, tokens, tokens)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        out = out.view(batch, num_windows, heads, tokens, -1).transpose(2, 3).reshape(batch, num_windows, tokens,
                                                                                    channels)
        return self.proj(out)


class Mlp(nn.Module):
    """1x1 conv -> exact GELU -> 1x1 conv (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = PointwiseConv2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = PointwiseConv2d(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """One (shifted-)window attention block over an NCHW map: x + WMSA(GN(x)), then x + MLP(GN(x)).

    Args:
        dim: channels E.
        level_size: construction-time side of the level's (square) feature map; decides shift and window.
        num_heads: attention heads.
        window: requested window; a level not larger than it uses window = level_size and no shift.
        shift: requested shift (0 or window // 2).
        mlp_ratio: hidden width of the MLP relative to E.
    """

    def __init__(self, dim: int, level_size: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        if level_size <= window:
            shift = 0
            window = level_size
        self.window = window
        self.shift = shift
        self.level_size = level_size
        self.norm1 = GroupNorm32(32, dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(32, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if shift > 0:
            self.register_buffer("attn_mask", official_shift_mask(level_size, level_size, window, shift))
        else:
            self.attn_mask = None
        self._bias_cache: dict = {}

    def _shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        if (height, width) == (self.level_size, self.level_size) and self.attn_mask is not None:
            return self.attn_mask.to(device)  # official behaviour: the stored buffer at the construction size
        return official_shift_mask(height, width, self.window, self.shift).to(device)

    def attention_bias(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(nW or 1, heads, w², w²) float32 bias for a map of this size; cached while the weights are unchanged."""
        weights_key = cache_key(self.attn.relative_position_bias_table, self.attn_mask)
        if weights_key is None:  # training, torch.compile (traced into the graph), inference tensors
            return self._compute_bias(height, width, device)
        key = (height, width, str(device), weights_key)
        cached = self._bias_cache.get(key)  # one lookup: safe when threads share the model
        if cached is None:
            cached = self._compute_bias(height, width, device)
            if len(self._bias_cache) > 8:
                self._bias_cache = {}  # replaced, not cleared, so a concurrent reader keeps a valid dict
            self._bias_cache[key] = cached
        return cached

    def _compute_bias(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        bias = self.attn.position_bias().float().unsqueeze(0)
        mask = self._shift_mask(height, width, device)
        if mask is not None:
            bias = bias + mask.float().unsqueeze(1)
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, E, H, W) with H, W multiples of the window -> same shape."""
        batch, channels, height, width = x.shape
        w = self.window
        if height % w or width % w:
            raise ValueError(f"Swin block with window {w} got a {height}x{width} map; sides must be multiples of {w}")
        u = self.norm1(x)
        if self.shift:
            u = torch.roll(u, shifts=(-self.shift, -self.shift), dims=(2, 3))
        # (B, C, H, W) -> (B, nW, w*w, C), windows row-major, tokens row-major inside a window
        windows = rearrange(u, "b c (nh h) (nw w) -> b (nh nw) (h w) c", h=w, w=w)
        attended = self.attn(windows, self.attention_bias(height, width, x.device))
        grid = {"nh": height // w, "h": w, "w": w}
        if is_channels_last(x):  # back to (B, H, W, C) memory, seen as a channels-last (B, C, H, W) map
            u = rearrange(attended, "b (nh nw) (h w) c -> b (nh h) (nw w) c", **grid).permute(0, 3, 1, 2)
        else:
            u = rearrange(attended, "b (nh nw) (h w) c -> b c (nh h) (nw w)", **grid)
        if self.shift:
            u = torch.roll(u, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + u
        return x + self.mlp(self.norm2(x))


class ProjectionConv(nn.Module):
    """1x1 conv with an optional GroupNorm after it (keys ``proj``, ``norm``), the official patch (un)embedding."""

    def __init__(self, in_channels: int, out_channels: int, with_norm: bool):
        super().__init__()
        self.proj = PointwiseConv2d(in_channels, out_channels)
        self.norm = GroupNorm32(32, out_channels) if with_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class BasicLayer(nn.Module):
    """1x1 conv C->E, ``depth`` Swin blocks (odd ones shifted), 1x1 conv E->C. No residual around the whole layer."""

    def __init__(self, channels: int, embed_dim: int, num_heads: int, window: int, depth: int, level_size: int,
                 mlp_ratio: float, patch_norm: bool = False):
        super().__init__()
        self.patch_embed = ProjectionConv(channels, embed_dim, patch_norm)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(embed_dim, level_size, num_heads, window,
                                 shift=0 if i % 2 == 0 else window // 2, mlp_ratio=mlp_ratio)
            for i in range(depth)
        ])
        self.patch_unembed = ProjectionConv(embed_dim, channels, patch_norm)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)
