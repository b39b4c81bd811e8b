"""train/degradations.py and train/data.py: the primitives against basicsr 1.4.2, the pipelines' determinism."""

from __future__ import annotations

import io
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from train import data as datamod
from train import degradations as deg

ROOT_PHOTO = "astronaut"


@pytest.fixture(scope="module")
def basicsr():
    """basicsr 1.4.2 with a shim for torchvision >= 0.17, which dropped ``transforms.functional_tensor``."""
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        from torchvision.transforms import functional

        shim = types.ModuleType("torchvision.transforms.functional_tensor")
        shim.rgb_to_grayscale = functional.rgb_to_grayscale
        sys.modules["torchvision.transforms.functional_tensor"] = shim
    pytest.importorskip("basicsr", reason="basicsr is the reference (CI installs basicsr==1.4.2)")
    from basicsr.data import degradations
    from basicsr.utils.diffjpeg import DiffJPEG
    from basicsr.utils.img_process_util import filter2D
    from basicsr.utils.matlab_functions import imresize

    return types.SimpleNamespace(degradations=degradations, DiffJPEG=DiffJPEG, filter2D=filter2D, imresize=imresize)


def photo_batch(size: int = 48, count: int = 2) -> torch.Tensor:
    image = datamod.pil_to_float(datamod.ImageRef(f"skimage:{ROOT_PHOTO}").load())
    crops = [image[:, 100 + 37 * i:100 + 37 * i + size, 150:150 + size] for i in range(count)]
    return torch.stack(crops)


@pytest.mark.parametrize("sigma_x, sigma_y, theta, isotropic", [(1.3, 1.3, 0.0, True), (2.5, 0.6, 0.7, False),
                                                                (0.2, 3.0, -2.9, False)])
def test_blur_kernels_match_basicsr(basicsr, sigma_x, sigma_y, theta, isotropic):
    ref = basicsr.degradations
    for size in (7, 21):
        np.testing.assert_allclose(deg.gaussian_kernel(size, sigma_x, sigma_y, theta, isotropic),
                                   ref.bivariate_Gaussian(size, sigma_x, sigma_y, theta, isotropic=isotropic),
                                   rtol=1e-10, atol=1e-14)
        for beta in (0.5, 1.7, 4.0):
            np.testing.assert_allclose(
                deg.generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta, isotropic),
                ref.bivariate_generalized_Gaussian(size, sigma_x, sigma_y, theta, beta, isotropic=isotropic),
                rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(
                deg.plateau_kernel(size, sigma_x, sigma_y, theta, beta, isotropic),
                ref.bivariate_plateau(size, sigma_x, sigma_y, theta, beta, isotropic=isotropic),
                rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cutoff, size, pad_to", [(math.pi / 3, 7, 21), (2.5, 13, 0), (math.pi / 5, 21, 21)])
def test_sinc_kernel_matches_basicsr(basicsr, cutoff, size, pad_to):
    np.testing.assert_allclose(deg.sinc_kernel(cutoff, size, pad_to),
                               basicsr.degradations.circular_lowpass_kernel(cutoff, size, pad_to=pad_to),
                               rtol=0, atol=1e-7)  # torch's Bessel J1 (ours) vs scipy's: ~1e-8 apart


def test_filtering_with_per_image_kernels_matches_basicsr(basicsr):
    images = photo_batch()
    rng = np.random.default_rng(3)
    kernels = torch.from_numpy(np.stack([deg.random_kernel(rng, deg.KernelSettings()) for _ in images])).float()
    torch.testing.assert_close(deg.filter2d(images, kernels), basicsr.filter2D(images, kernels))
    torch.testing.assert_close(deg.filter2d(images, kernels[0]), basicsr.filter2D(images, kernels[:1]))


@pytest.mark.parametrize("gray", [0.0, 1.0])
def test_noise_from_the_same_draws_matches_basicsr(basicsr, gray):
    image = photo_batch(count=1)
    sigma, scale, gray_flag = torch.tensor([17.0]), torch.tensor([2.2]), torch.tensor([gray])
    torch.manual_seed(11)
    reference = basicsr.degradations.generate_gaussian_noise_pt(image, sigma, gray_flag)
    ours = deg.gaussian_noise(image, sigma, gray_flag, torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, reference)
    torch.manual_seed(12)
    reference = basicsr.degradations.generate_poisson_noise_pt(image, scale, gray_flag)
    ours = deg.poisson_noise(image, scale, gray_flag, torch.Generator().manual_seed(12))
    torch.testing.assert_close(ours, reference)


def test_jpeg_at_given_qualities_matches_basicsr_diffjpeg(basicsr):
    images = photo_batch(size=40, count=3)  # 40: not a multiple of 16, so the padding is exercised
    quality = torch.tensor([30.0, 57.5, 95.0])
    reference = basicsr.DiffJPEG(differentiable=False)(images, quality=quality.clone())
    torch.testing.assert_close(deg.jpeg_roundtrip(images, quality), reference, atol=2e-5, rtol=0)


def test_jpeg_roundtrip_is_close_to_a_real_jpeg_codec():
    """Independent of basicsr: PIL's libjpeg at the same quality (4:2:0) gives nearly the same image."""
    from PIL import Image

    image = photo_batch(size=64, count=1)
    ours = deg.jpeg_roundtrip(image, torch.tensor([75.0]))
    buffer = io.BytesIO()
    Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        buffer, "JPEG", quality=75, subsampling=2)
    real = datamod.pil_to_float(Image.open(buffer).convert("RGB"))[None]
    mse_codec = (ours - real).pow(2).mean().item()
    mse_signal = (image - real).pow(2).mean().item()
    assert mse_codec < 0.5 * mse_signal, (mse_codec, mse_signal)  # much closer to libjpeg than to the original
    assert 10 * math.log10(1 / mse_codec) > 35


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 2.0])
def test_matlab_imresize_matches_basicsr(basicsr, scale):
    image = photo_batch(size=45, count=1)[0]
    torch.testing.assert_close(deg.matlab_imresize(image, scale), basicsr.imresize(image, scale), atol=2e-6,
                               rtol=0)


def test_pil_bicubic_downscale_is_pils_antialiased_bicubic():
    from PIL import Image

    image = datamod.ImageRef("skimage:chelsea").load().crop((0, 0, 448, 300))
    ours = deg.pil_bicubic_downscale(image, 4)
    assert ours.size == (112, 75)
    assert np.array_equal(np.asarray(ours), np.asarray(image.resize((112, 75), Image.BICUBIC)))
    with pytest.raises(ValueError, match="multiple of the scale"):
        deg.pil_bicubic_downscale(image.crop((0, 0, 450, 300)), 4)


def test_channel_shuffle_permutes_both_images_of_a_pair_alike():
    """The same crop and flip as without it, with one seeded RGB order applied to HR and LR alike."""
    from train import config as cfg

    refs = datamod.collect_images([{"skimage": ["astronaut", "coffee"]}])
    plain_config = cfg.load_config(Path(__file__).parents[1] / "train/configs/tiny_cpu.yaml",
                                   ["data.channel_shuffle=false"])
    plain = datamod.TrainPairs(refs, plain_config)
    shuffled = datamod.TrainPairs(refs, cfg.apply_overrides(plain_config, ["data.channel_shuffle=true"]))
    orders = set()
    for index in range(12):
        before, after = plain[index], shuffled[index]
        order = [next(c for c in range(3) if torch.equal(after["gt"][k], before["gt"][c])) for k in range(3)]
        assert torch.equal(after["lq"], before["lq"][order])
        orders.add(tuple(order))
    assert len(orders) > 2  # real permutations, not one fixed order
    fresh = datamod.TrainPairs(refs, cfg.apply_overrides(plain_config, ["data.channel_shuffle=true"]))
    assert torch.equal(fresh[3]["gt"], shuffled[3]["gt"])  # seeded: a new dataset draws the same order


def realesrgan_batch(seed: int, indices):
    settings = deg.RealESRGANSettings()
    config = {"seed": seed, "scale": 4, "data": {"degradation": "realesrgan", "gt_size": 64, "flip": True,
                                                 "dihedral": False, "rescale_gt": True, "smallest_side": None,
                                                 "realesrgan": {}}}
    dataset = datamod.TrainPairs(datamod.collect_images([{"skimage": ["astronaut", "coffee"]}]), config)
    items = [dataset[i] for i in indices]
    batch = {k: torch.stack([item[k] for item in items]) for k in ("gt", "kernel1", "kernel2", "sinc_kernel")}
    batch["index"] = torch.tensor(list(indices))
    return datamod.degrade_batch(batch, config, 2, torch.device("cpu")), settings


def test_realesrgan_pipeline_is_seeded_per_sample_and_group():
    out, _ = realesrgan_batch(5, range(8, 12))
    again, _ = realesrgan_batch(5, range(8, 12))
    half, _ = realesrgan_batch(5, range(10, 12))  # the second group alone (as another process would run it)
    assert out["lq"].shape == (4, 3, 16, 16) and out["gt"].shape == (4, 3, 64, 64)
    assert torch.equal(out["lq"], again["lq"]) and torch.equal(out["lq"][2:], half["lq"])
    levels = out["lq"] * 255
    assert torch.equal(levels, levels.round()) and 0 <= out["lq"].min() and out["lq"].max() <= 1
    other, _ = realesrgan_batch(6, range(8, 12))
    assert not torch.equal(out["lq"], other["lq"])


def test_random_kernels_follow_the_recipe_sizes():
    rng = np.random.default_rng(0)
    settings = deg.RealESRGANSettings()
    for _ in range(50):
        kernels = deg.sample_kernels(rng, settings)
        assert kernels["kernel1"].shape == (21, 21) and kernels["kernel2"].shape == (15, 15)
        assert kernels["sinc_kernel"].shape == (15, 15)
        for kernel in kernels.values():
            assert abs(kernel.sum().item() - 1) < 1e-5


def test_sampler_gives_each_process_its_slice_of_the_same_global_batch():
    whole = list(datamod.StepBatchSampler(3, 5, 8, 0, 1))
    parts = [list(datamod.StepBatchSampler(3, 5, 8, rank, 2)) for rank in range(2)]
    assert whole == [list(range(24, 32)), list(range(32, 40))]
    assert [a + b for a, b in zip(*parts)] == whole


def test_pair_pool_rebuilt_on_resume_continues_identically():
    def fresh(step, position):
        value = float(step * 100 + position)
        return torch.full((3, 4, 4), value), torch.full((3, 1, 1), value)

    positions = [2, 3]
    pool = datamod.PairPool(4, seed=9, positions=positions)
    outputs = []
    for step in range(12):
        pairs = [fresh(step, p) for p in positions]
        gt, _ = pool.exchange(step, torch.stack([g for g, _ in pairs]), torch.stack([q for _, q in pairs]))
        outputs.append(gt[:, 0, 0, 0].tolist())
    assert outputs[0] == [2.0, 3.0] and outputs[11] != [1102.0, 1103.0]
    resumed = datamod.PairPool(4, seed=9, positions=positions)
    resumed.rebuild(7, fresh)
    for step in range(7, 12):
        pairs = [fresh(step, p) for p in positions]
        gt, _ = resumed.exchange(step, torch.stack([g for g, _ in pairs]), torch.stack([q for _, q in pairs]))
        assert gt[:, 0, 0, 0].tolist() == outputs[step]
