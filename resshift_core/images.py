"""Conversions between what the Python API is handed (tensors, PIL images) and the pipeline's (B, 3, H, W) float
tensors in [0, 1]. Files are :mod:`resshift_core.imageio`'s business; PIL images are decoded by its rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputImageError


def tensor_to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> list of 8-bit RGB PIL images (rounded, as the official writer)."""
    from PIL import Image

    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in array]


def _is_pil(value) -> bool:
    return hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "getbands")


@dataclass
class PilContext:
    """What is needed to give PIL results back in the kind of their PIL inputs."""

    sources: list
    single: bool


def prepare_input(images) -> tuple[torch.Tensor, PilContext | None]:
    """User input -> ((B, 3, H, W) float in [0, 1], how to hand results back).

    Tensors are validated by :func:`as_image_batch`; PIL images (one, or a list of one size) are decoded by the
    rules of :mod:`resshift_core.imageio`, keeping their alpha, grayscale kind and colour profile for the output.
    """
    from .imageio import DecodedImage

    single = _is_pil(images)
    if single or (isinstance(images, Sequence) and images and all(_is_pil(i) for i in images)):
        sources = [DecodedImage.from_pil(image) for image in ([images] if single else images)]
        if len({(s.height, s.width) for s in sources}) != 1:
            raise InputImageError("the images of one batch must have the same size; pass them one at a time")
        batch = torch.from_numpy(np.stack([s.rgb for s in sources])).permute(0, 3, 1, 2).contiguous()
        return as_image_batch(batch), PilContext(sources, single)
    return as_image_batch(images), None


def finish_output(result: torch.Tensor, context: PilContext | None):
    """(B, 3, sH, sW) in [0, 1] -> the same tensor for tensor input; for PIL input one PIL image (a list for a
    list) of the source's kind, its alpha upscaled bicubically."""
    if context is None:
        return result
    from .imageio import to_pil, upscale_alpha

    arrays = result.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    images = []
    for rgb, source in zip(arrays, context.sources):
        alpha = None if source.alpha is None else upscale_alpha(source.alpha, rgb.shape[1], rgb.shape[0])
        images.append(to_pil(rgb, alpha, source))
    return images[0] if context.single else images


def as_image_batch(images, min_value_slack: float = 1e-3) -> torch.Tensor:
    """Validate and normalise user input to (B, 3, H, W) float in [0, 1].

    Accepts a (B, C, H, W) or (C, H, W) tensor with C = 3 (or 1: grayscale, repeated), float in [0, 1] or uint8;
    a PIL image; or a sequence of PIL images of the same size.
    """
    if isinstance(images, torch.Tensor):
        batch = images
    elif _is_pil(images) or (isinstance(images, Sequence) and images and all(_is_pil(i) for i in images)):
        return prepare_input(images)[0]
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


def prepare_mask(mask, batch: torch.Tensor, *, needs_mask: bool) -> torch.Tensor | None:
    """An inpainting mask for ``batch`` (B, 3, H, W): (B, 1, H, W) or (1, 1, H, W) (one for the batch) or (B, H, W)
    float in [0, 1], 1 = fill, or images -> (B, 1, H, W) in [-1, 1] on the batch's device; None for a model that
    takes no mask.

    Raises:
        InputImageError: a mask for a model without one, none for an inpainting model, or a shape that does not
            match the images.
    """
    if not needs_mask:
        if mask is not None:
            raise InputImageError("this model takes no mask; masks are for the inpainting releases")
        return None
    if mask is None:
        raise InputImageError("this is an inpainting model: pass a mask (B, 1, H, W) in [0, 1], 1 = fill, as "
                              "{arg:mask}")
    if not isinstance(mask, torch.Tensor):
        mask = as_image_batch(mask)[:, :1]
    mask = mask.float().to(batch.device)
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[0] == 1 and batch.shape[0] > 1:
        mask = mask.expand(batch.shape[0], -1, -1, -1)
    if mask.shape[1] != 1 or mask.shape[-2:] != batch.shape[-2:] or mask.shape[0] != batch.shape[0]:
        raise InputImageError(f"the mask must be (B, 1, H, W) matching the image {tuple(batch.shape)}, "
                              f"got {tuple(mask.shape)}")
    return mask * 2.0 - 1.0
