"""Colour correction of an upscaled image against its input.

Diffusion super-resolution can drift in colour: the result has the right detail but a slightly shifted tint or
brightness. A colour fix keeps the result's fine detail and takes its overall colour from the input image, which the
model was meant to reproduce. Two methods, both from StableSR (Wang et al., "Exploiting Diffusion Prior for
Real-World Image Super-Resolution", 2023, https://arxiv.org/abs/2305.07015):

``"wavelet"``
    Both images are decomposed with a stationary (a trous, undecimated) wavelet transform: five levels of a 3x3
    Gaussian-like blur ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` whose taps are spread by a dilation of ``2**i``
    (i = 0..4), with replicate padding. Each level's detail band is the difference between two successive blurs;
    the result is the output's detail bands plus the input's low-frequency residual (the last blur). The detail
    bands telescope, so this is ``output - blur5(output) + blur5(reference)``. The five blurs together span 63 output
    pixels, so colour is taken from the input at scales above that while texture is kept as the model made it.
``"adain"``
    Adaptive instance normalisation (Huang & Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
    Normalization", ICCV 2017, https://arxiv.org/abs/1703.06868): each channel of each image is shifted and scaled so
    that its mean and standard deviation match the reference's. Cheaper, global, and blind to local colour shifts.
``"none"``
    The output unchanged.

The fix needs the whole image: callers apply it once to the whole upscaled output, never per tile (a per-tile fix
would match each tile's statistics to a different part of the input and leave seams).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidArgumentError

COLOR_FIX_METHODS = ("none", "wavelet", "adain")

WAVELET_LEVELS = 5
ADAIN_EPSILON = 1e-5


def check_color_fix(method: str | None) -> str:
    """The canonical name of a colour-fix method: lower case, and ``None`` / ``""`` / ``"None"`` mean ``"none"``.

    Raises:
        InvalidArgumentError: for a name outside :data:`COLOR_FIX_METHODS`.
    """
    if method is None:
        return "none"
    if not isinstance(method, str):
        raise InvalidArgumentError("color_fix", method, "one of " + ", ".join(COLOR_FIX_METHODS))
    name = method.strip().lower() or "none"
    if name not in COLOR_FIX_METHODS:
        raise InvalidArgumentError("color_fix", method, "one of " + ", ".join(COLOR_FIX_METHODS))
    return name


def color_fix(output: torch.Tensor, reference: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """Give ``output`` the colours of ``reference`` while keeping its detail.

    Apply it once to the whole upscaled image, never per tile. The images are processed one at a time in float32, so
    the memory beyond the result is a few copies of one image (not of the batch).

    Args:
        output: (B, 3, H, W) float in [0, 1], the upscaled result (any float dtype, any memory format).
        reference: (B, 3, h, w) or (1, 3, h, w) float in [0, 1], the input image at any size (usually H/4 x W/4);
            it is resized to (H, W) with bicubic interpolation (antialiased when shrinking) and moved to
            ``output``'s device. A batch of one serves every output image.
        method: one of :data:`COLOR_FIX_METHODS` (see the module doc); case-insensitive, ``None`` means ``"none"``.

    Returns:
        (B, 3, H, W) float32 in [0, 1] on ``output``'s device; for ``"none"``, ``output`` itself.

    Raises:
        InvalidArgumentError: for an unknown method, or tensors that are not 3-channel batches of matching size
            (an alpha channel must be split off by the caller and put back after the fix).
    """
    method = check_color_fix(method)
    if method == "none":
        return output
    _check_shapes(output, reference)
    batch, _, height, width = output.shape
    fixed = torch.empty((batch, 3, height, width), dtype=torch.float32, device=output.device)
    fix = _wavelet_fix if method == "wavelet" else _adain_fix
    for index in range(batch):
        start = index if reference.shape[0] > 1 else 0
        fix(output[index:index + 1], reference[start:start + 1], out=fixed[index:index + 1])
    return fixed


def _check_shapes(output: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise :class:`InvalidArgumentError` unless both are non-empty (N, 3, H, W) float batches that pair up."""
    for name, tensor in (("output", output), ("reference", reference)):
        if tensor.dim() != 4:
            raise InvalidArgumentError(name, tuple(tensor.shape), "a (B, 3, H, W) tensor")
        if tensor.shape[1] != 3:
            raise InvalidArgumentError(name, tuple(tensor.shape), "a (B, 3, H, W) RGB tensor",
                                       "the colour fix works on 3 channels; split an alpha channel off before it "
                                       "and put it back after")
        if not tensor.is_floating_point():
            raise InvalidArgumentError(name, tensor.dtype, "a float tensor with values in [0, 1]")
        if tensor.shape[0] < 1 or min(tensor.shape[2:]) < 1:
            raise InvalidArgumentError(name, tuple(tensor.shape), "a non-empty (B, 3, H, W) tensor")
    if reference.shape[0] not in (1, output.shape[0]):
        raise InvalidArgumentError("reference", tuple(reference.shape),
                                   f"a batch of 1 or of {output.shape[0]} images (as many as the output)")


def _resize_reference(reference: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(1, 3, h, w) -> (1, 3, height, width) float32 in [0, 1] on ``device``, contiguous."""
    reference = reference.to(device=device, dtype=torch.float32).contiguous()
    if tuple(reference.shape[2:]) != (height, width):
        shrinking = height < reference.shape[2] or width < reference.shape[3]
        reference = F.interpolate(reference, size=(height, width), mode="bicubic", align_corners=False,
                                  antialias=shrinking)
    # Bicubic overshoots near edges; the reference stands for an image in [0, 1].
    return reference.clamp(0.0, 1.0).contiguous()


def wavelet_low_frequency(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The low-frequency residual of the stationary wavelet transform: ``levels`` dilated blurs in a row.

    Each blur is the 3x3 kernel ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` with its taps ``2**level`` pixels apart
    and replicate padding, computed as its two separable ``[1, 2, 1] / 4`` passes (the same numbers up to rounding).
    A dilated ``F.conv2d`` would compute the same, but on CPU it unfolds the image (about 15 image copies for one
    4096 x 4096 image, and ~30x slower); the passes here need one new buffer each.

    Args:
        image: (N, C, H, W) float32 (any values; [0, 1] in this module).
        levels: blur ``i`` (0-based) spreads its taps ``2**i`` pixels apart.

    Returns:
        (N, C, H, W) float32 (``image`` itself when ``levels`` is 0); ``image`` minus it is the sum of the
        transform's detail bands.
    """
    low = image
    for level in range(levels):
        dilation = 2 ** level
        low = _binomial_blur_along(_binomial_blur_along(low, dilation, dim=3), dilation, dim=2)
    return low


def _binomial_blur_along(image: torch.Tensor, dilation: int, dim: int) -> torch.Tensor:
    """``[1, 2, 1] / 4`` along ``dim`` with taps ``dilation`` apart; outside pixels repeat the edge (replicate)."""
    size = image.shape[dim]
    shift = min(dilation, size)  # beyond the image every neighbour is the edge pixel
    inner = size - shift
    blurred = image * 0.5
    # Neighbour at j - dilation: pixel j - dilation inside, the first pixel for the first `shift` positions.
    blurred.narrow(dim, shift, inner).add_(image.narrow(dim, 0, inner), alpha=0.25)
    blurred.narrow(dim, 0, shift).add_(image.narrow(dim, 0, 1), alpha=0.25)
    # Neighbour at j + dilation: pixel j + dilation inside, the last pixel for the last `shift` positions.
    blurred.narrow(dim, 0, inner).add_(image.narrow(dim, shift, inner), alpha=0.25)
    blurred.narrow(dim, inner, shift).add_(image.narrow(dim, size - 1, 1), alpha=0.25)
    return blurred


def _wavelet_fix(output: torch.Tensor, reference: torch.Tensor, out: torch.Tensor) -> None:
    """``out = output - low(output) + low(reference)``, clamped.

    Args:
        output: (1, 3, H, W) float; reference: (1, 3, h, w) float; out: (1, 3, H, W) float32, written.

    The detail bands telescope: their sum is ``output - low(output)``, so no band is kept on its own. The resized
    reference is a temporary, freed once its low frequencies are in ``out``, before the output's are computed.
    """
    height, width = out.shape[2:]
    out.copy_(wavelet_low_frequency(_resize_reference(reference, height, width, out.device)))
    output = _as_float32(output)
    out.add_(output).sub_(wavelet_low_frequency(output)).clamp_(0.0, 1.0)


def _adain_fix(output: torch.Tensor, reference: torch.Tensor, out: torch.Tensor) -> None:
    """Per-channel mean / std of ``output`` set to the resized reference's, clamped.

    Args:
        output: (1, 3, H, W) float; reference: (1, 3, h, w) float; out: (1, 3, H, W) float32, written.
    """
    height, width = out.shape[2:]
    reference_var, reference_mean = torch.var_mean(_resize_reference(reference, height, width, out.device),
                                                   dim=(2, 3), keepdim=True)
    output = _as_float32(output)
    output_var, output_mean = torch.var_mean(output, dim=(2, 3), keepdim=True)
    # eps keeps a flat channel (zero variance) from dividing by zero; it then takes the reference's mean.
    scale = torch.sqrt(reference_var + ADAIN_EPSILON) / torch.sqrt(output_var + ADAIN_EPSILON)
    torch.sub(output, output_mean, out=out)
    out.mul_(scale).add_(reference_mean).clamp_(0.0, 1.0)


def _as_float32(image: torch.Tensor) -> torch.Tensor:
    """float32, contiguous: the same arithmetic (and so the same bits) whatever the caller's memory format. A
    float32 contiguous image is used as it is (no copy)."""
    return image.to(dtype=torch.float32).contiguous()
