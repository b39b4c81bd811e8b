"""Image quality on the Y channel (ITU-R BT.601, as super-resolution papers report it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y in [16/255, 235/255] (Matlab rgb2ycbcr)."""
    weights = torch.tensor([65.481, 128.553, 24.966], device=images.device, dtype=torch.float64).view(1, 3, 1, 1)
    return ((images.double() * weights).sum(1, keepdim=True) + 16.0) / 255.0


def psnr_y(prediction: torch.Tensor, target: torch.Tensor, border: int = 0) -> torch.Tensor:
    """(B,) PSNR in dB between (B, 3, H, W) images in [0, 1], on Y, after cropping ``border`` pixels per side.

    Both images are first rounded to 8 bit, as written to disk.
    """
    pred = rgb_to_y((prediction.clamp(0, 1) * 255).round() / 255)
    true = rgb_to_y((target.clamp(0, 1) * 255).round() / 255)
    if border:
        pred, true = pred[..., border:-border, border:-border], true[..., border:-border, border:-border]
    mse = (pred - true).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def ssim_y(prediction: torch.Tensor, target: torch.Tensor, border: int = 0) -> torch.Tensor:
    """(B,) SSIM on Y (Gaussian window 11, sigma 1.5, values in 0-255 as in the usual SR evaluation code)."""
    pred = rgb_to_y((prediction.clamp(0, 1) * 255).round() / 255) * 255
    true = rgb_to_y((target.clamp(0, 1) * 255).round() / 255) * 255
    if border:
        pred, true = pred[..., border:-border, border:-border], true[..., border:-border, border:-border]
    coords = torch.arange(11, dtype=torch.float64, device=pred.device) - 5
    gauss = torch.exp(-coords ** 2 / (2 * 1.5 ** 2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).view(1, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(pred, window), F.conv2d(true, window)
    sigma_x = F.conv2d(pred * pred, window) - mu_x ** 2
    sigma_y = F.conv2d(true * true, window) - mu_y ** 2
    sigma_xy = F.conv2d(pred * true, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))
