"""Degradations that make the low-resolution training input from a high-resolution crop.

* :func:`pil_bicubic_downscale`: ``PIL.Image.resize(..., BICUBIC)`` (antialiased), the tiny recipe's x4 degradation,
  so that held-out photos downscaled the same way are in distribution.
* :func:`matlab_imresize`: Matlab's ``imresize`` (bicubic, antialiased when shrinking), the official bicubic recipe.
* The RealESRGAN second-order pipeline of the real-world recipes (SPEC §8), in torch and batched on the training
  device: blur kernels (isotropic / anisotropic / generalized / plateau Gaussians and the circular sinc low-pass),
  random resizing, Gaussian and Poisson noise with gray-noise probability, JPEG at a random quality, the final
  resize + sinc / JPEG in random order, 8-bit quantisation.

Every random choice is drawn from generators the caller passes in (seeded per sample or per group of samples from
the run seed and the step), never from a process's running RNG, so a global batch is the same whatever the number of
processes. The deterministic primitives (kernels from explicit parameters, noise from explicit draws, JPEG at a given
quality) follow the behaviour of basicsr 1.4.2, which the tests use as a reference when it is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------- bicubic (CPU)


def pil_bicubic_downscale(image, scale: int):
    """PIL image -> PIL image resized by 1/scale with ``Image.BICUBIC`` (PIL antialiases when shrinking).

    The size must be a multiple of ``scale`` (crop first); the result is (W/scale, H/scale).
    """
    from PIL import Image

    width, height = image.size
    if width % scale or height % scale:
        raise ValueError(f"image size {width}x{height} is not a multiple of the scale {scale}; crop it first")
    return image.resize((width // scale, height // scale), Image.BICUBIC)


def _matlab_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (Matlab's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def matlab_resize_matrix(in_length: int, out_length: int, scale: float, antialias: bool = True) -> np.ndarray:
    """(out_length, in_length) float64 weights of Matlab's 1-D bicubic ``imresize`` (symmetric boundary).

    When shrinking with antialiasing the kernel is stretched by 1/scale (wider support, lower cut-off).
    """
    kernel_width = 4.0
    stretch = scale < 1 and antialias
    if stretch:
        kernel_width /= scale
    out_pos = np.arange(1, out_length + 1, dtype=np.float64)
    centre = out_pos / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output pixel
    left = np.floor(centre - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    index = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    distance = centre[:, None] - index
    weights = scale * _matlab_cubic(distance * scale) if stretch else _matlab_cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    # symmetric padding: mirror positions that fall outside [1, in_length] (edge pixel repeated)
    mirrored = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    columns = mirrored[np.mod(index.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    for tap in range(taps):
        np.add.at(matrix, (np.arange(out_length), columns[:, tap]), weights[:, tap])
    return matrix


def matlab_imresize(image: torch.Tensor, scale: float, antialias: bool = True) -> torch.Tensor:
    """Matlab ``imresize(image, scale, 'bicubic')`` of (..., H, W) float images (values are not clamped).

    The output side is ceil(side * scale), as in Matlab. Height is resized first, then width.
    """
    height, width = image.shape[-2:]
    out_h, out_w = math.ceil(height * scale), math.ceil(width * scale)
    rows = torch.from_numpy(matlab_resize_matrix(height, out_h, scale, antialias)).to(image.device, torch.float64)
    cols = torch.from_numpy(matlab_resize_matrix(width, out_w, scale, antialias)).to(image.device, torch.float64)
    result = torch.matmul(rows, image.double())
    result = torch.matmul(result, cols.t())
    return result.to(image.dtype)


# ---------------------------------------------------------------------------------------------- blur kernels


def mesh_grid(size: int) -> np.ndarray:
    """(size, size, 2) float64 grid of (x, y) offsets from the centre of an odd-sized kernel."""
    axis = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(axis, axis)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Covariance R diag(sx², sy²) Rᵀ of a Gaussian rotated by theta (radians)."""
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rotation @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rotation.T


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float, isotropic: bool) -> np.ndarray:
    """xᵀ Σ⁻¹ x over the kernel grid."""
    sigma = np.diag([sigma_x ** 2, sigma_x ** 2]) if isotropic else sigma_matrix(sigma_x, sigma_y, theta)
    inverse = np.linalg.inv(sigma)
    grid = mesh_grid(size)
    return np.sum((grid @ inverse) * grid, axis=2)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, isotropic: bool) -> np.ndarray:
    """Normalised bivariate Gaussian exp(-q/2)."""
    kernel = np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta, isotropic))
    return kernel / kernel.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float,
                                isotropic: bool) -> np.ndarray:
    """Normalised generalized Gaussian exp(-q^beta / 2) (beta < 1 heavier tails, > 1 flatter top)."""
    kernel = np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta, isotropic), beta))
    return kernel / kernel.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float,
                   isotropic: bool) -> np.ndarray:
    """Normalised plateau-shaped kernel 1 / (q^beta + 1)."""
    kernel = np.reciprocal(np.power(_quadratic_form(size, sigma_x, sigma_y, theta, isotropic), beta) + 1)
    return kernel / kernel.sum()


def sinc_kernel(cutoff: float, size: int, pad_to: int = 0) -> np.ndarray:
    """Circular low-pass (2-D sinc) filter with cut-off ``cutoff`` (radians per pixel), normalised, zero-padded."""
    centre = (size - 1) / 2
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    radius = np.sqrt((xx - centre) ** 2 + (yy - centre) ** 2)
    bessel = torch.special.bessel_j1(torch.from_numpy(cutoff * radius)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * bessel / (2 * np.pi * radius)
    kernel[radius == 0] = cutoff ** 2 / (4 * np.pi)  # the limit at the centre
    kernel = kernel / kernel.sum()
    if pad_to > size:
        pad = (pad_to - size) // 2
        kernel = np.pad(kernel, ((pad, pad), (pad, pad)))
    return kernel


KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass
class KernelSettings:
    """One blur stage of the RealESRGAN pipeline (values of SPEC §8)."""

    sizes: tuple[int, ...] = tuple(range(3, 21, 2))
    pad_to: int = 21
    kinds: tuple[str, ...] = KERNEL_KINDS
    probabilities: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_probability: float = 0.1


def random_kernel(rng: np.random.Generator, settings: KernelSettings) -> np.ndarray:
    """A random blur kernel of a random odd size, zero-padded to ``settings.pad_to`` (float64, sums to 1)."""
    size = int(rng.choice(settings.sizes))
    if rng.uniform() < settings.sinc_probability:
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return sinc_kernel(cutoff, size, settings.pad_to)
    kind = settings.kinds[int(rng.choice(len(settings.kinds), p=np.asarray(settings.probabilities)
                                         / np.sum(settings.probabilities)))]
    isotropic = kind.endswith("iso") and not kind.endswith("aniso")
    sigma_x = rng.uniform(*settings.sigma)
    sigma_y = sigma_x if isotropic else rng.uniform(*settings.sigma)
    theta = 0.0 if isotropic else rng.uniform(-math.pi, math.pi)
    if kind.startswith("generalized"):
        low, high = settings.beta_generalized
        beta = rng.uniform(low, 1) if rng.uniform() < 0.5 else rng.uniform(1, high)
        kernel = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta, isotropic)
    elif kind.startswith("plateau"):
        low, high = settings.beta_plateau
        beta = rng.uniform(low, 1) if rng.uniform() < 0.5 else rng.uniform(1, high)
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, beta, isotropic)
    else:
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta, isotropic)
    pad = (settings.pad_to - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def pulse_kernel(size: int) -> np.ndarray:
    """The identity filter (a single 1 in the centre)."""
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter (B, C, H, W) images with one (k, k) kernel per image ((B, k, k)) or one for all ((k, k)).

    Reflect padding of k // 2, cross-correlation (no kernel flip) as ``conv2d``.
    """
    batch, channels, height, width = images.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(batch, -1, -1)
    size = kernels.shape[-1]
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    weight = kernels.to(images.dtype)[:, None].repeat_interleave(channels, dim=0)  # (B*C, 1, k, k)
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.view(batch, channels, height, width)


# ---------------------------------------------------------------------------------------------- noise


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) ITU-R 601 luma (torchvision's weights)."""
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1).to(images.dtype)


def gaussian_noise(images: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise field for (B, C, H, W) images in [0, 1].

    Args:
        sigma: (B,) standard deviations in 0-255 units; gray: (B,) 1 for the same noise in all channels.
    Returns:
        (B, C, H, W) noise; a gray field (one per image) is drawn first when any image wants one, then the colour
        field.
    """
    batch, _, height, width = images.shape
    sigma = sigma.view(-1, 1, 1, 1).to(images) / 255.0
    gray = gray.view(-1, 1, 1, 1).to(images)
    gray_field = None
    if bool((gray > 0).any()):
        gray_field = torch.randn((batch, 1, height, width), generator=generator, device=images.device,
                                 dtype=images.dtype) * sigma
    color_field = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype) * sigma
    return color_field if gray_field is None else gray_field * gray + color_field * (1 - gray)


def _poisson_field(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Poisson noise of 8-bit-quantised images whose level count sets the photon count (per image)."""
    quantised = torch.clamp((values * 255.0).round(), 0, 255) / 255.0
    levels = torch.tensor([len(torch.unique(quantised[i])) for i in range(values.shape[0])],
                          device=values.device, dtype=values.dtype)
    levels = (2 ** torch.ceil(torch.log2(levels))).view(-1, 1, 1, 1)
    return torch.poisson(quantised * levels, generator=generator) / levels - quantised


def poisson_noise(images: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson (shot) noise field for (B, 3, H, W) images in [0, 1], times ``scale`` ((B,)).

    gray: (B,) 1 for noise computed on the luma and shared by the channels. The gray field is drawn (when any sample
    wants it) before the colour field.
    """
    gray = gray.view(-1, 1, 1, 1).to(images)
    gray_field = torch.zeros_like(images)
    if bool((gray > 0).any()):
        gray_field = _poisson_field(rgb_to_gray(images), generator).expand_as(images)
    color_field = _poisson_field(images, generator)
    return (gray_field * gray + color_field * (1 - gray)) * scale.view(-1, 1, 1, 1).to(images)


# ---------------------------------------------------------------------------------------------- JPEG


_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float32)
_CHROMA_TABLE = np.full((8, 8), 99, dtype=np.float32)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _dct_matrix() -> torch.Tensor:
    """(8, 8) orthonormal DCT-II matrix D (rows: frequencies): coefficients = D block Dᵀ."""
    k = np.arange(8)[:, None]
    n = np.arange(8)[None, :]
    matrix = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    return torch.from_numpy(matrix.astype(np.float32))


def jpeg_quality_factor(quality: torch.Tensor) -> torch.Tensor:
    """IJG table scaling for a quality in [1, 100]: 50/q below 50, (200 - 2q)/100 from 50 up."""
    return torch.where(quality < 50, 50.0 / quality, (200.0 - quality * 2) / 100.0)


def jpeg_roundtrip(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Compress and decompress (B, 3, H, W) images in [0, 1] as baseline JPEG at per-image qualities ((B,)).

    YCbCr (JFIF), 4:2:0 chroma by 2x2 averaging, 8x8 DCT, quantisation with the IJG tables scaled by quality and
    rounded, then the inverse with nearest-neighbour chroma up-sampling. Sides are zero-padded to multiples of 16 and
    cropped back (as basicsr's DiffJPEG). Output clamped to [0, 1], in the input's dtype.
    Not differentiable (plain rounding), as the RealESRGAN pipeline uses it.
    """
    batch, _, height, width = images.shape
    pad_h, pad_w = (16 - height % 16) % 16, (16 - width % 16) % 16
    x = F.pad(images.float().clamp(0, 1) * 255.0, (0, pad_w, 0, pad_h), value=0.0)
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    cb = F.avg_pool2d(cb.unsqueeze(1), 2).squeeze(1)
    cr = F.avg_pool2d(cr.unsqueeze(1), 2).squeeze(1)
    factor = jpeg_quality_factor(quality.float().to(images.device)).view(-1, 1, 1, 1, 1)
    dct = _dct_matrix().to(images.device)

    def code(plane: torch.Tensor, table: np.ndarray) -> torch.Tensor:
        h, w = plane.shape[-2:]
        blocks = (plane - 128).view(batch, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (B, bh, bw, 8, 8)
        coefficients = dct @ blocks @ dct.t()
        # the table is applied transposed (frequency along columns first), as basicsr's DiffJPEG does
        step = torch.from_numpy(np.ascontiguousarray(table.T)).to(images.device) * factor
        restored = dct.t() @ (torch.round(coefficients / step) * step) @ dct
        return (restored + 128).permute(0, 1, 3, 2, 4).reshape(batch, h, w)

    y = code(y, _LUMA_TABLE)
    cb = code(cb, _CHROMA_TABLE).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    cr = code(cr, _CHROMA_TABLE).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    out = torch.stack([r, g, b], dim=1).clamp(0, 255) / 255.0
    return out[:, :, :height, :width].to(images.dtype)


# ---------------------------------------------------------------------------------------------- RealESRGAN


RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class RealESRGANSettings:
    """Every number of the second-order degradation (defaults: the realsr recipes of SPEC §8)."""

    kernel1: KernelSettings = field(default_factory=KernelSettings)
    kernel2: KernelSettings = field(default_factory=lambda: KernelSettings(sizes=tuple(range(3, 15, 2)), pad_to=15,
                                                                           sigma=(0.2, 1.5)))
    final_sinc_probability: float = 0.8
    final_sinc_sizes: tuple[int, ...] = tuple(range(3, 15, 2))
    final_sinc_pad_to: int = 15
    resize_probabilities: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_probability: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_probability: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    second_order_probability: float = 0.5
    second_blur_probability: float = 0.8
    resize_probabilities2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_probability2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_probability2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)

    @classmethod
    def from_dict(cls, values: dict) -> RealESRGANSettings:
        """Overrides from a recipe's ``data.realesrgan`` block; kernel blocks are nested dicts."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown data.realesrgan keys {sorted(unknown)}; known: {sorted(known)}")
        settings = cls()
        for key, value in values.items():
            if key in ("kernel1", "kernel2"):
                base = getattr(settings, key)
                value = KernelSettings(**{**base.__dict__, **{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in value.items()}})
            elif isinstance(value, list):
                value = tuple(value)
            setattr(settings, key, value)
        return settings


def sample_kernels(rng: np.random.Generator, settings: RealESRGANSettings) -> dict[str, torch.Tensor]:
    """The three per-sample kernels (drawn on the data worker, like the official dataset does)."""
    kernel1 = random_kernel(rng, settings.kernel1)
    kernel2 = random_kernel(rng, settings.kernel2)
    if rng.uniform() < settings.final_sinc_probability:
        size = int(rng.choice(settings.final_sinc_sizes))
        final = sinc_kernel(rng.uniform(math.pi / 3, math.pi), size, settings.final_sinc_pad_to)
    else:
        final = pulse_kernel(settings.final_sinc_pad_to)
    return {name: torch.from_numpy(k.astype(np.float32)) for name, k in
            (("kernel1", kernel1), ("kernel2", kernel2), ("sinc_kernel", final))}


def _random_scale(rng: np.random.Generator, probabilities, scale_range) -> float:
    kind = rng.choice(3, p=np.asarray(probabilities) / np.sum(probabilities))
    if kind == 0:
        return float(rng.uniform(1, scale_range[1]))
    if kind == 1:
        return float(rng.uniform(scale_range[0], 1))
    return 1.0


def _add_noise(images: torch.Tensor, rngs: list[np.random.Generator], generator: torch.Generator | None,
               gaussian_probability: float, sigma_range, poisson_range, gray_probability: float,
               group_rng: np.random.Generator) -> torch.Tensor:
    """One noise stage: Gaussian or Poisson for the whole group (as officially), per-sample strength and gray."""
    device = images.device
    gray = torch.tensor([float(r.uniform() < gray_probability) for r in rngs], device=device)
    if group_rng.uniform() < gaussian_probability:
        sigma = torch.tensor([r.uniform(*sigma_range) for r in rngs], device=device)
        noise = gaussian_noise(images, sigma, gray, generator)
    else:
        scale = torch.tensor([r.uniform(*poisson_range) for r in rngs], device=device)
        noise = poisson_noise(images, scale, gray, generator)
    return torch.clamp(images + noise, 0, 1)


def _resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False)


def realesrgan_degrade(gt: torch.Tensor, kernels: dict[str, torch.Tensor], scale: int,
                       settings: RealESRGANSettings, sample_rngs: list[np.random.Generator],
                       group_rng: np.random.Generator, generator: torch.Generator | None = None) -> torch.Tensor:
    """The second-order degradation of one group of samples (SPEC §8), batched on gt's device.

    Args:
        gt: (B, 3, H, W) float32 HR images in [0, 1].
        kernels: per-sample ``kernel1`` (B, 21, 21), ``kernel2`` (B, 15, 15), ``sinc_kernel`` (B, 15, 15).
        sample_rngs: one numpy generator per sample (noise strengths, gray flags, JPEG qualities).
        group_rng: the group's generator (resize factors and modes, noise kind, second order, final order).
        generator: torch generator for the noise fields (on gt's device).
    Returns:
        (B, 3, H/scale, W/scale) float32 LR images in [0, 1], quantised to 8 bit.
    """
    device = gt.device
    height, width = gt.shape[-2:]
    s = settings
    # first order: blur, resize, noise, JPEG
    out = filter2d(gt, kernels["kernel1"].to(device))
    factor = _random_scale(group_rng, s.resize_probabilities, s.resize_range)
    mode = RESIZE_MODES[int(group_rng.choice(3))]
    out = _resize(out, (max(1, int(height * factor)), max(1, int(width * factor))), mode)
    out = _add_noise(out, sample_rngs, generator, s.gaussian_noise_probability, s.noise_range,
                     s.poisson_scale_range, s.gray_noise_probability, group_rng)
    quality = torch.tensor([r.uniform(*s.jpeg_range) for r in sample_rngs], device=device)
    out = jpeg_roundtrip(out.clamp(0, 1), quality)
    # second order, with probability
    if group_rng.uniform() < s.second_order_probability:
        if group_rng.uniform() < s.second_blur_probability:
            out = filter2d(out, kernels["kernel2"].to(device))
        factor = _random_scale(group_rng, s.resize_probabilities2, s.resize_range2)
        mode = RESIZE_MODES[int(group_rng.choice(3))]
        out = _resize(out, (max(1, int(height / scale * factor)), max(1, int(width / scale * factor))), mode)
        out = _add_noise(out, sample_rngs, generator, s.gaussian_noise_probability2, s.noise_range2,
                         s.poisson_scale_range2, s.gray_noise_probability2, group_rng)
    # final stage: [resize + sinc, JPEG] or [JPEG, resize + sinc]
    mode = RESIZE_MODES[int(group_rng.choice(3))]
    quality = torch.tensor([r.uniform(*s.jpeg_range2) for r in sample_rngs], device=device)
    target = (height // scale, width // scale)
    if group_rng.uniform() < 0.5:
        out = filter2d(_resize(out, target, mode), kernels["sinc_kernel"].to(device))
        out = jpeg_roundtrip(out.clamp(0, 1), quality)
    else:
        out = jpeg_roundtrip(out.clamp(0, 1), quality)
        out = filter2d(_resize(out, target, mode), kernels["sinc_kernel"].to(device))
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0
