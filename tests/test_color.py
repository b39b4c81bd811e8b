"""Colour correction (resshift_core.color): it removes a colour cast while keeping detail, leaves a correct image
alone, and behaves the same whatever the batch split, memory format or size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resshift_core.color import COLOR_FIX_METHODS, check_color_fix, color_fix, wavelet_low_frequency
from resshift_core.errors import InvalidArgumentError

SCALE = 4


def _true_high_resolution() -> torch.Tensor:
    """(1, 3, 256, 256) float32 in [0, 1]: a photograph when scikit-image is installed, else a smooth synthetic
    image with texture (seeded)."""
    try:
        from skimage import data
    except ImportError:
        generator = torch.Generator().manual_seed(0)
        ys, xs = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
        smooth = torch.stack([0.2 + 0.6 * xs, 0.3 + 0.4 * torch.sin(3 * ys) ** 2, 0.7 - 0.5 * xs * ys])
        texture = 0.08 * torch.sin(40 * xs + 25 * ys) * torch.cos(30 * ys)
        noise = 0.05 * F.avg_pool2d(torch.rand(1, 3, 256, 256, generator=generator), 3, 1, 1, count_include_pad=False)
        return (smooth + texture + noise).clamp(0, 1)
    image = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(256, 256), mode="bicubic", antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    """The true HR image, the low-resolution input made from it, and the input upscaled x4 (bicubic)."""
    truth = _true_high_resolution()
    low_resolution = F.interpolate(truth, scale_factor=1 / SCALE, mode="bicubic", antialias=True).clamp(0, 1)
    upscaled = F.interpolate(low_resolution, scale_factor=SCALE, mode="bicubic").clamp(0, 1)
    return {"truth": truth, "input": low_resolution, "upscaled": upscaled}


def _colour_cast(image: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A diffusion-like failure: red lifted, blue dimmed, plus fine detail noise."""
    generator = torch.Generator().manual_seed(seed)
    cast = image.clone()
    cast[:, 0] += 0.15
    cast[:, 2] *= 0.8
    return (cast + 0.03 * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def _psnr(first: torch.Tensor, second: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(first, second).item())


def _high_pass(image: torch.Tensor) -> torch.Tensor:
    return image - F.avg_pool2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), 5, stride=1)


def _correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1].item()


def test_colour_cast_is_removed_and_detail_kept(images):
    low_resolution, output = images["input"], _colour_cast(images["upscaled"])
    before = _psnr(F.avg_pool2d(output, SCALE), low_resolution)
    wavelet = color_fix(output, low_resolution, "wavelet")
    adain = color_fix(output, low_resolution, "adain")
    after_wavelet = _psnr(F.avg_pool2d(wavelet, SCALE), low_resolution)
    after_adain = _psnr(F.avg_pool2d(adain, SCALE), low_resolution)
    print(f"low-frequency PSNR vs input: cast {before:.1f} dB, wavelet {after_wavelet:.1f} dB, "
          f"adain {after_adain:.1f} dB")
    assert after_wavelet >= before + 8 and after_wavelet >= 20
    assert after_adain >= before + 4 and after_adain >= 20
    detail = _correlation(_high_pass(output), _high_pass(wavelet))
    print(f"high-pass correlation output / wavelet fix: {detail:.3f}")
    assert detail > 0.9


def test_correct_output_is_nearly_untouched(images):
    truth, low_resolution = images["truth"], images["input"]
    change = (color_fix(truth, low_resolution, "wavelet") - truth).abs().mean().item()
    print(f"mean abs change of the true HR image: {change:.4f}")
    assert change < 0.02
    # The bicubic upscale of the input is its own reference: only rounding changes.
    upscaled = images["upscaled"]
    assert torch.allclose(color_fix(upscaled, low_resolution, "wavelet"), upscaled, atol=1e-5)


def test_method_names_and_invalid_arguments():
    output, reference = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 4, 4)
    assert color_fix(output, reference, "none") is output
    assert color_fix(output, reference, None) is output
    assert [check_color_fix(name) for name in (None, "", "None", " Wavelet ", "ADAIN")] == \
        ["none", "none", "none", "wavelet", "adain"]
    assert set(COLOR_FIX_METHODS) == {"none", "wavelet", "adain"}
    with pytest.raises(InvalidArgumentError) as raised:
        color_fix(output, reference, "histogram")
    assert raised.value.argument == "color_fix" and "wavelet" in str(raised.value)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        color_fix(torch.rand(1, 4, 16, 16), reference)
    with pytest.raises(InvalidArgumentError):
        color_fix(torch.rand(3, 3, 16, 16), torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_batches_broadcast_and_images_are_independent(images, method):
    upscaled, low_resolution = images["upscaled"], images["input"]
    outputs = torch.cat([_colour_cast(upscaled, seed) for seed in range(3)])
    outputs[1] = outputs[1].flip(-1)  # images that differ in more than their noise
    together = color_fix(outputs, low_resolution, method)
    alone = torch.cat([color_fix(outputs[index:index + 1], low_resolution, method) for index in range(3)])
    assert together.shape == outputs.shape
    assert torch.allclose(together, alone, atol=1e-6)
    # One reference per image: each is fixed against its own.
    references = torch.cat([low_resolution, low_resolution.flip(-1), low_resolution * 0.5])
    together = color_fix(outputs, references, method)
    alone = torch.cat([color_fix(outputs[i:i + 1], references[i:i + 1], method) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)
    assert not torch.allclose(together[0], together[2], atol=0.05)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
@pytest.mark.parametrize("reference_size", [(13, 7), (52, 28), (70, 31), (1, 1)])
def test_odd_sizes_and_dtypes(method, reference_size):
    generator = torch.Generator().manual_seed(2)
    output = torch.rand(2, 3, 52, 28, generator=generator)
    reference = torch.rand(1, 3, *reference_size, generator=generator)
    for dtype in (torch.float32, torch.float16, torch.float64):
        fixed = color_fix(output.to(dtype), reference.to(dtype), method)
        assert fixed.shape == output.shape and fixed.dtype == torch.float32
        assert fixed.min() >= 0 and fixed.max() <= 1 and torch.isfinite(fixed).all()
    tiny = color_fix(torch.rand(1, 3, 1, 2, generator=generator), reference, method)
    assert tiny.shape == (1, 3, 1, 2)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_memory_format_does_not_change_the_result(images, method):
    outputs = torch.cat([_colour_cast(images["upscaled"], seed) for seed in range(2)])
    reference = images["input"]
    plain = color_fix(outputs, reference, method)
    channels_last = color_fix(outputs.to(memory_format=torch.channels_last),
                              reference.to(memory_format=torch.channels_last), method)
    assert torch.equal(plain, channels_last)
    assert torch.equal(plain, color_fix(outputs, reference, method))  # and a second run gives the same bits


def test_low_frequency_is_the_dilated_binomial_blur():
    """The separable passes equal the a trous transform's 3x3 kernel, dilated 1, 2, 4, 8, 16, replicate-padded."""
    image = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    kernel = (torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16).expand(3, 1, 3, 3)
    expected = image
    for level in range(5):
        dilation = 2 ** level
        padded = F.pad(expected, (dilation,) * 4, mode="replicate")
        expected = F.conv2d(padded, kernel, groups=3, dilation=dilation)
    assert torch.allclose(wavelet_low_frequency(image), expected, atol=1e-6)
    flat = torch.full((1, 3, 9, 9), 0.25)
    assert torch.allclose(wavelet_low_frequency(flat), flat)


def test_runs_on_the_meta_device():
    fixed = color_fix(torch.empty(2, 3, 64, 48, device="meta"), torch.empty(1, 3, 16, 12, device="meta"))
    assert fixed.device.type == "meta" and fixed.shape == (2, 3, 64, 48) and fixed.dtype == torch.float32
