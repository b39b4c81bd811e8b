"""Conversions between the formats hosts hand us and the pipeline's (B, 3, H, W) float tensors in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputImageError


def pil_to_tensor(image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 in [0, 1] (grayscale and palette images become RGB, alpha is dropped;
    16-bit images keep their precision)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32) / (65535.0 if mode.startswith("I;16") or np.asarray(image).max()
                                                       > 255 else 255.0)
        array = np.repeat(array[..., None], 3, axis=2)
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> list of 8-bit RGB PIL images (rounded, as the official writer)."""
    from PIL import Image

    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in array]


def as_image_batch(images, min_value_slack: float = 1e-3) -> torch.Tensor:
    """Validate and normalise user input to (B, 3, H, W) float in [0, 1].

    Accepts a (B, C, H, W) or (C, H, W) tensor with C = 3 (or 1: grayscale, repeated), float in [0, 1] or uint8;
    a PIL image; or a sequence of PIL images of the same size.
    """
    if isinstance(images, torch.Tensor):
        batch = images
    elif hasattr(images, "mode") and hasattr(images, "size"):
        batch = pil_to_tensor(images)
    elif isinstance(images, Sequence) and images and all(hasattr(i, "mode") for i in images):
        tensors = [pil_to_tensor(i) for i in images]
        if len({t.shape for t in tensors}) != 1:
            raise InputImageError("the images of one batch must have the same size; pass them one at a time")
        batch = torch.cat(tensors)
    else:
        raise InputImageError(f"expected a (B, 3, H, W) tensor in [0, 1] or PIL image(s), got {type(images).__name__}")
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    if batch.dim() != 4:
        raise InputImageError(f"expected images shaped (B, 3, H, W), got shape {tuple(batch.shape)}")
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    if batch.shape[1] != 3:
        raise InputImageError(f"expected 3 colour channels (RGB) in dimension 1, got {batch.shape[1]} "
                              f"(shape {tuple(batch.shape)}); drop an alpha channel first, or pass NCHW not NHWC")
    if batch.shape[0] == 0 or batch.shape[2] == 0 or batch.shape[3] == 0:
        raise InputImageError(f"empty image batch of shape {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        batch = batch.float() / 255.0
    elif not batch.is_floating_point():
        raise InputImageError(f"expected float images in [0, 1] or uint8, got dtype {batch.dtype}")
    batch = batch.float()
    if not torch.isfinite(batch).all():
        raise InputImageError("the images contain NaN or infinite values")
    low, high = batch.min().item(), batch.max().item()
    if low < -min_value_slack or high > 1 + min_value_slack:
        raise InputImageError(f"expected values in [0, 1], got [{low:.3g}, {high:.3g}]"
                              + ("; divide 0-255 images by 255" if high > 2 else ""))
    return batch.clamp(0, 1)
