"""The command line (``python -m resshift_core``): upscale, convert, info, releases, and torchrun sharding.

Most runs call ``cli.main(argv)`` in-process with the reduced official-layout models of the golden fixtures on tiny
images cut from real photographs (scikit-image's astronaut and camera). Tests about file handling rather than the
network (formats, batching, interruption, sharding) replace ``ResShiftPipeline.upscale`` by plain bicubic
interpolation to stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_weights import (
    AUTOENCODER,
    INPAINT_AUTOENCODER,
    INPAINT_RELEASE,
    INPAINT_UNET,
    SR_RELEASE,
    UNET,
    hostile_pickle,
    training_style_pth,
    truncated_copy,
)

from resshift_core import cli, imageio, pipeline
from resshift_core.cli import upscale as upscale_command
from resshift_core.releases import AUTOENCODERS, RELEASES

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--unet", str(UNET), "--autoencoder", str(AUTOENCODER), "--release", SR_RELEASE, "--no-progress"]


# --------------------------------------------------------------------------------------------------- helpers
@cache
def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@cache
def _camera() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.camera())


def photo(width: int, height: int) -> Image.Image:
    """A real RGB photograph, down-scaled to a few pixels."""
    return _astronaut().resize((width, height), Image.Resampling.LANCZOS)


def gray_photo(width: int, height: int) -> Image.Image:
    return _camera().resize((width, height), Image.Resampling.LANCZOS)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the networks here are tiny, and on a busy 2-core machine several threads spin-wait on
    each other (runs became 20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bicubic_model(monkeypatch):
    """Replace the network by bicubic x-scale interpolation; records the calls' batch sizes and keyword arguments."""
    calls = []

    def upscale(self, images, *, mask=None, seed=None, callback=None, **options):
        calls.append({"batch": images.shape[0], "seed": seed, **options})
        return F.interpolate(images, scale_factor=self.scale, mode="bicubic").clamp(0, 1)

    monkeypatch.setattr(pipeline.ResShiftPipeline, "upscale", upscale)
    return calls


# ------------------------------------------------------------------------------------------------ upscale
def test_folder_with_broken_file_and_text_file_writes_the_good_ones_and_exits_1(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    photo(24, 20).save(source / "astronaut.png")
    gray_photo(16, 16).save(source / "camera.jpg", quality=95)
    good = (source / "astronaut.png").read_bytes()
    (source / "broken.png").write_bytes(good[:len(good) // 2])
    (source / "notes.txt").write_text("not an image")

    code, stdout, stderr = run(capsys, "upscale", source, "-o", out, *MODEL)

    assert code == 1
    assert files_under(out) == ["astronaut.png", "camera.png"]  # nothing for the broken one, no temporary files
    assert Image.open(out / "astronaut.png").size == (96, 80)
    assert Image.open(out / "camera.png").size == (64, 64)
    assert "broken.png" in stderr and "truncated" in stderr
    assert "notes.txt" in stderr and "not an image" in stderr
    assert "2 written" in stdout and "1 failed" in stdout


def test_recursive_keeps_the_folder_structure(tmp_path, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "sub" / "deeper").mkdir(parents=True)
    photo(16, 16).save(source / "top.png")
    gray_photo(16, 16).save(source / "sub" / "deeper" / "inner.bmp")

    code, _, _ = run(capsys, "upscale", source, "-o", out, *MODEL)
    assert code == 0 and files_under(out) == ["top.png"]

    code, stdout, _ = run(capsys, "upscale", source, "-o", out, "-r", *MODEL)
    assert code == 0
    assert files_under(out) == ["sub/deeper/inner.png", "top.png"]
    assert Image.open(out / "sub" / "deeper" / "inner.png").size == (64, 64)
    assert "skipped" in stdout and str(out / "top.png") in stdout


def test_existing_outputs_are_skipped_unless_overwrite_and_the_seed_decides_the_result(tmp_path, capsys):
    image, out = tmp_path / "lr.png", tmp_path / "out"
    photo(20, 16).save(image)
    assert run(capsys, "upscale", image, "-o", out, *MODEL)[0] == 0
    first = (out / "lr.png").read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "lr.png").stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a private temporary
    first_mtime = (out / "lr.png").stat().st_mtime_ns

    code, stdout, _ = run(capsys, "upscale", image, "-o", out, *MODEL, "--seed", "7")
    assert code == 0 and "skipped" in stdout and "0 written" in stdout
    assert (out / "lr.png").read_bytes() == first and (out / "lr.png").stat().st_mtime_ns == first_mtime

    assert run(capsys, "upscale", image, "-o", tmp_path / "again", *MODEL)[0] == 0
    assert (tmp_path / "again" / "lr.png").read_bytes() == first  # same (default) seed: the same bytes

    code, stdout, _ = run(capsys, "upscale", image, "-o", out, *MODEL, "--seed", "7", "--overwrite")
    assert code == 0 and "1 written" in stdout
    assert (out / "lr.png").read_bytes() != first  # another seed: another image


def test_rgba_keeps_an_alpha_channel_upscaled_like_bicubic(tmp_path, capsys):
    rgb = np.asarray(photo(16, 16))
    yy, xx = np.mgrid[0:16, 0:16]
    alpha = np.clip(400 - 45 * np.hypot(yy - 7.5, xx - 7.5), 0, 255).astype(np.uint8)  # a soft disc
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "sprite.png")

    code, _, _ = run(capsys, "upscale", tmp_path / "sprite.png", "-o", tmp_path / "out", *MODEL)

    result = Image.open(tmp_path / "out" / "sprite.png")
    assert code == 0 and result.mode == "RGBA" and result.size == (64, 64)
    expected = np.asarray(Image.fromarray(alpha).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.int16)
    got = np.asarray(result)[..., 3].astype(np.int16)
    assert np.abs(got - expected).max() <= 2
    assert got.min() < 20 and got.max() > 235  # the disc is really there, not a constant


def test_grayscale_in_grayscale_out(tmp_path, capsys):
    gray_photo(20, 16).save(tmp_path / "camera.png")
    gray_photo(20, 16).convert("RGB").save(tmp_path / "camera_rgb.png")
    code, _, _ = run(capsys, "upscale", tmp_path / "camera.png", tmp_path / "camera_rgb.png", "-o",
                     tmp_path / "out", *MODEL)
    result = Image.open(tmp_path / "out" / "camera.png")
    assert code == 0 and result.mode == "L" and result.size == (80, 64)
    # the same pixels given as RGB give an RGB result whose luma is the grayscale result
    as_rgb = Image.open(tmp_path / "out" / "camera_rgb.png")
    assert as_rgb.mode == "RGB"
    difference = np.asarray(as_rgb.convert("L"), dtype=np.int16) - np.asarray(result, dtype=np.int16)
    assert np.abs(difference).max() <= 1


def test_16_bit_grayscale_png_gives_16_bit_output(tmp_path, capsys):
    base = np.asarray(gray_photo(16, 16), dtype=np.uint32) * 257
    wide = np.clip(base + np.arange(256).reshape(16, 16) % 97, 0, 65535).astype(np.uint16)  # not multiples of 257
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"

    code, _, _ = run(capsys, "upscale", tmp_path / "deep.png", "-o", tmp_path / "out", *MODEL)

    result = Image.open(tmp_path / "out" / "deep.png")
    values = np.asarray(result)
    assert code == 0 and result.mode == "I;16" and result.size == (64, 64)
    assert values.max() > 255 and (values % 257 != 0).any()  # real 16-bit values, not 8-bit ones stretched


def test_16_bit_rgb_png_is_read_and_written_with_16_bits(tmp_path, capsys):
    rng = np.random.default_rng(0)
    samples = (np.asarray(photo(16, 16), dtype=np.uint16) * 257 + rng.integers(0, 200, (16, 16, 3))).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(imageio.encode_png16(samples))
    # Pillow reads our file and agrees on the high bytes; our reader recovers every bit
    assert np.array_equal(np.asarray(Image.open(tmp_path / "deep.png")), (samples >> 8).astype(np.uint8))
    decoded = imageio.read_image(tmp_path / "deep.png")
    assert decoded.sixteen_bit and not decoded.grayscale
    assert np.array_equal(np.round(decoded.rgb * 65535).astype(np.uint16), samples)

    code, _, _ = run(capsys, "upscale", tmp_path / "deep.png", "-o", tmp_path / "out", *MODEL)

    data = (tmp_path / "out" / "deep.png").read_bytes()
    assert code == 0 and data[24] == 16 and data[25] == 2  # IHDR: bit depth 16, colour type RGB
    result = imageio.read_image(tmp_path / "out" / "deep.png")
    assert result.rgb.shape == (64, 64, 3) and result.sixteen_bit
    assert (np.round(result.rgb * 65535).astype(np.uint16) % 257 != 0).any()


def test_16_bit_gray_alpha_png_is_decoded_exactly(tmp_path):
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 65536, (5, 7, 2)).astype(np.uint16)
    (tmp_path / "la16.png").write_bytes(imageio.encode_png16(samples))
    decoded = imageio.read_image(tmp_path / "la16.png")
    assert decoded.grayscale and decoded.sixteen_bit
    assert np.array_equal(np.round(decoded.rgb[..., 0] * 65535).astype(np.uint16), samples[..., 0])
    assert np.array_equal(np.round(decoded.alpha * 65535).astype(np.uint16), samples[..., 1])


def test_16_bit_rgba_tiff_is_decoded_exactly(tmp_path):
    tifffile = pytest.importorskip("tifffile")  # installed with scikit-image
    samples = np.random.default_rng(2).integers(0, 65536, (6, 5, 4)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", samples, photometric="rgb", extrasamples=["unassalpha"])
    decoded = imageio.read_image(tmp_path / "deep.tif")
    assert decoded.sixteen_bit and not decoded.grayscale
    assert np.array_equal(np.round(decoded.rgb * 65535).astype(np.uint16), samples[..., :3])
    assert np.array_equal(np.round(decoded.alpha * 65535).astype(np.uint16), samples[..., 3])


def test_palette_images_become_rgb_and_rgba(tmp_path, capsys):
    paletted = photo(16, 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    paletted.save(tmp_path / "plain.png")
    transparent = paletted.copy()
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "keyed.png", transparency=0)

    code, _, _ = run(capsys, "upscale", tmp_path / "plain.png", tmp_path / "keyed.png", "-o", tmp_path / "out",
                     *MODEL)

    plain, keyed = Image.open(tmp_path / "out" / "plain.png"), Image.open(tmp_path / "out" / "keyed.png")
    assert code == 0
    assert plain.mode == "RGB" and plain.size == (64, 64)
    assert keyed.mode == "RGBA" and np.asarray(keyed)[..., 3].min() < 128  # palette index 0 is transparent


def test_exif_orientation_is_applied(tmp_path, capsys, bicubic_model):
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, :12] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)

    code, _, _ = run(capsys, "upscale", tmp_path / "phone.jpg", "-o", tmp_path / "out", *MODEL)

    result = np.asarray(Image.open(tmp_path / "out" / "phone.png").convert("L"), dtype=np.float64)
    assert code == 0 and result.shape == (96, 64)  # portrait now
    assert result[:40].mean() > 200 and result[-40:].mean() < 50  # the white left half is now on top


def test_output_formats(tmp_path, capsys, bicubic_model):
    rgb = np.asarray(photo(16, 16))
    Image.fromarray(np.dstack([rgb, np.full((16, 16), 128, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.asarray(gray_photo(16, 16), dtype=np.uint16) * 257).save(tmp_path / "deep.png")
    expectations = {"jpg": ("JPEG", "RGB", "L"), "webp": ("WEBP", "RGBA", "RGB"), "tiff": ("TIFF", "RGBA", "I;16")}
    for name, (pil_format, rgba_mode, deep_mode) in expectations.items():
        out = tmp_path / name
        code, _, stderr = run(capsys, "upscale", tmp_path / "rgba.png", tmp_path / "deep.png", "-o", out,
                              "--format", name, "--quality", "90", *MODEL)
        assert code == 0, stderr
        extension = {"jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}[name]
        assert files_under(out) == [f"deep{extension}", f"rgba{extension}"]
        rgba, deep = Image.open(out / f"rgba{extension}"), Image.open(out / f"deep{extension}")
        assert (rgba.format, rgba.mode, rgba.size) == (pil_format, rgba_mode, (64, 64))
        assert (deep.format, deep.mode) == (pil_format, deep_mode)
        if name == "jpg":
            assert "alpha" in stderr  # told that JPEG drops the transparency


def test_batches_group_same_size_images_and_options_reach_the_pipeline(tmp_path, capsys, bicubic_model):
    for index in range(3):
        photo(16 + index, 16 + index).rotate(index).resize((16, 16)).save(tmp_path / f"same{index}.png")
    photo(20, 12).save(tmp_path / "other.png")

    code, _, _ = run(capsys, "upscale", tmp_path, "-o", tmp_path / "out", "--batch-size", "2", "--seed", "3",
                     "--chop-size", "64", "--chop-stride", "48", *MODEL)

    assert code == 0
    assert sorted(call["batch"] for call in bicubic_model) == [1, 1, 2]
    assert all(call["seed"] == 3 and call["chop_size"] == 64 and call["chop_stride"] == 48 for call in bicubic_model)
    assert len(files_under(tmp_path / "out")) == 4
    bicubic_model.clear()
    code, _, _ = run(capsys, "upscale", tmp_path / "other.png", "-o", tmp_path / "tiled", "--tile", "16",
                     "--overlap", "2", "--tiling", "latent", "--one-step", *MODEL)
    assert code == 0 and len(bicubic_model) == 1
    call = bicubic_model[0]
    assert (call["batch"], call["seed"], call["one_step"]) == (1, 12345, True)
    tiles = call["tiles"]  # the tiling travels as one value, resolved once
    assert (tiles.mode, tiles.tile_size, tiles.overlap) == ("latent", 16, 2)


@pytest.mark.parametrize("options, named", [
    (["--tile", "-5"], "--tile"), (["--tile", "32"], "--tile must be at least 64"),  # realsr-v3's latent multiple
    (["--overlap", "-1"], "--overlap"), (["--tile", "128", "--overlap", "100"], "--overlap"),
    (["--chop-size", "0"], "--chop-size"), (["--chop-stride", "8"], "--chop-stride"),
    (["--chop-size", "64", "--chop-stride", "65"], "--chop-stride"), (["--chop-size", "64", "--tile", "64"], "--chop"),
    (["--device", "tpu"], "--device"), (["--quality", "0"], "--quality"), (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"), (["--vae-tile", "2"], "--vae-tile"), (["--tiling", "sideways"], "--tiling"),
    (["--dtype", "fp8"], "--dtype"), (["--release", "realsr-v9"], "realsr-v3"),
])
def test_every_bad_upscale_argument_is_refused_before_loading_with_exit_2(tmp_path, capsys, monkeypatch, options,
                                                                          named):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded for a bad command line")

    monkeypatch.setattr(upscale_command, "load_pipeline", must_not_load)
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", *options)
    assert code == 2 and named in stderr, stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_a_tile_too_small_for_a_local_model_is_a_usage_error_after_identification(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", *MODEL, "--tile", "8")
    assert code == 2 and "--tile must be at least 16" in stderr  # the fixture UNet's latent multiple


def test_folder_without_r_says_which_sub_folders_were_left_out(tmp_path, capsys, bicubic_model):
    (tmp_path / "in" / "nested").mkdir(parents=True)
    photo(16, 16).save(tmp_path / "in" / "top.png")
    photo(16, 16).save(tmp_path / "in" / "nested" / "deep.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "in", "-o", tmp_path / "out", *MODEL)
    assert code == 0 and "1 sub-folder(s) skipped" in stderr and "nested" in stderr and "-r" in stderr
    assert files_under(tmp_path / "out") == ["top.png"]
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "sub").mkdir()
    photo(16, 16).save(tmp_path / "only" / "sub" / "x.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "only", "-o", tmp_path / "out2", *MODEL)
    assert code == 2 and "use -r" in stderr


def test_png_outputs_record_how_they_were_made(tmp_path, capsys):
    photo(24, 20).save(tmp_path / "lr.png")
    code, _, _ = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", *MODEL, "--seed", "9")
    record = json.loads(Image.open(tmp_path / "out" / "lr.png").text["resshift"])
    assert code == 0 and record["seed"] == 9 and record["release"] == "realsr-v3" and record["steps"] == 4
    assert record["tiling"] == "off" and record["unet_tiles"] == 1  # small: the official untiled computation
    code, _, _ = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "tiled", *MODEL, "--tile", "16",
                     "--vae-tile", "8", "--one-step")
    record = json.loads(Image.open(tmp_path / "tiled" / "lr.png").text["resshift"])
    assert record["tiling"] == "latent" and record["unet_tiles"] > 1 and record["steps"] == 1


def test_outputs_that_would_collide_or_replace_their_input_are_refused(tmp_path, capsys, bicubic_model):
    photo(16, 16).save(tmp_path / "same.png")
    photo(16, 16).save(tmp_path / "same.jpg")
    original = (tmp_path / "same.png").read_bytes()

    code, _, stderr = run(capsys, "upscale", tmp_path / "same.jpg", tmp_path / "same.png", "-o", tmp_path / "out",
                          *MODEL)
    assert code == 1 and "same.png" in stderr and "already the output" in stderr
    assert files_under(tmp_path / "out") == ["same.png"]

    code, _, stderr = run(capsys, "upscale", tmp_path / "same.png", "-o", tmp_path, "--overwrite", *MODEL)
    assert code == 1 and "replace the input" in stderr
    assert (tmp_path / "same.png").read_bytes() == original


def test_ctrl_c_leaves_no_partial_output(tmp_path, capsys, monkeypatch, bicubic_model):
    for name in ("a", "b", "c"):
        photo(16, 16).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    real_replace = os.replace
    renames = []

    def interrupted_rename(source, destination):
        renames.append(destination)
        if len(renames) == 2:  # the second image is fully encoded, then Ctrl-C arrives before the rename
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(imageio.os, "replace", interrupted_rename)
    code, _, stderr = run(capsys, "upscale", tmp_path, "-o", out, *MODEL)
    assert code == 130 and "interrupted" in stderr
    assert files_under(out) == ["a.png"]  # no b.png, no temporary file
    monkeypatch.setattr(imageio.os, "replace", real_replace)

    code, stdout, _ = run(capsys, "upscale", tmp_path, "-o", out, *MODEL)  # running again resumes
    assert code == 0 and "1 skipped" in stdout and "2 written" in stdout
    assert files_under(out) == ["a.png", "b.png", "c.png"]


def test_inpainting_with_a_mask_folder(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    photo(32, 32).save(images / "scene.png")
    photo(32, 32).save(images / "unmasked.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(masks / "scene.png")
    inpaint = ["--unet", INPAINT_UNET, "--autoencoder", INPAINT_AUTOENCODER, "--release", INPAINT_RELEASE,
               "--no-progress"]

    code, _, stderr = run(capsys, "upscale", images, "-o", tmp_path / "out", *inpaint)
    assert code == 2 and "--mask" in stderr  # an inpainting model needs masks

    code, _, stderr = run(capsys, "upscale", images, "-o", tmp_path / "out", "--mask", masks, *inpaint)
    assert code == 1 and "unmasked.png" in stderr and "no mask" in stderr
    result = np.asarray(Image.open(tmp_path / "out" / "scene.png"), dtype=np.int16)
    source = np.asarray(photo(32, 32), dtype=np.int16)
    assert result.shape == (32, 32, 3)
    keep = mask == 0
    assert np.abs(result[keep] - source[keep]).max() <= 1  # known pixels are kept (official mask_back)
    assert np.abs(result[~keep] - source[~keep]).mean() > 1  # the hole is filled by the network


def test_sr_model_refuses_a_mask(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--mask",
                          tmp_path / "lr.png", *MODEL)
    assert code == 2 and "mask" in stderr


def test_usage_errors_exit_2(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    (tmp_path / "empty").mkdir()
    assert run(capsys, "upscale", "-o", tmp_path / "out")[0] == 2  # no inputs
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--release", "nope")
    assert code == 2 and "unknown release" in stderr and "realsr-v3" in stderr
    code, _, stderr = run(capsys, "upscale", tmp_path / "missing.png", "-o", tmp_path / "out")
    assert code == 2 and "does not exist" in stderr
    code, _, stderr = run(capsys, "upscale", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 2 and "no image files" in stderr
    assert run(capsys)[0] == 2  # no command
    assert not (tmp_path / "out").exists()


def test_unknown_schedule_asks_for_the_release(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--unet", UNET,
                          "--autoencoder", AUTOENCODER)
    assert code == 2 and "--release" in stderr
    assert files_under(tmp_path / "out") == []


def test_unet_given_as_autoencoder_is_explained(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--unet", UNET,
                          "--autoencoder", UNET, "--release", SR_RELEASE)
    assert code == 1 and "looks like the ResShift UNet" in stderr and "autoencoder" in stderr


def test_offline_with_an_empty_cache_names_the_url_and_the_path(tmp_path, capsys):
    photo(16, 16).save(tmp_path / "lr.png")
    cache = tmp_path / "cache"
    release = RELEASES["realsr-v3"]
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--offline",
                          "--cache-dir", cache)
    assert code == 1 and "2 weight files missing" in stderr  # both named at once, not one after the other
    autoencoder = AUTOENCODERS[release.autoencoder]
    for file in (release, autoencoder):
        assert file.url in stderr and str(cache / file.file_name) in stderr
    assert "--offline" in stderr and "S-Lab" in stderr

    # only the autoencoder missing: that is the file named
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--offline",
                          "--cache-dir", cache, "--unet", UNET, "--release", SR_RELEASE)
    assert code == 1
    assert autoencoder.url in stderr and str(cache / autoencoder.file_name) in stderr


def test_hostile_pickle_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    checkpoint = hostile_pickle(tmp_path / "resshift_realsrx4_s4_v3.pth", marker)
    code, _, stderr = run(capsys, "info", checkpoint)
    assert code == 1 and "run code" in stderr and "never" in stderr
    photo(16, 16).save(tmp_path / "lr.png")
    code, _, stderr = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--unet", checkpoint,
                          "--autoencoder", AUTOENCODER)
    assert code == 1 and "run code" in stderr
    assert not marker.exists()


def test_info_on_damaged_and_foreign_files(tmp_path, capsys):
    code, _, stderr = run(capsys, "info", truncated_copy(UNET, tmp_path / "cut.safetensors"))
    assert code == 1 and "truncated" in stderr
    pth = training_style_pth(tmp_path / "model.pth")
    code, _, stderr = run(capsys, "info", truncated_copy(pth, tmp_path / "cut.pth", 0.3))
    assert code == 1 and "truncated" in stderr
    (tmp_path / "notes.pth").write_text("hello")
    code, _, stderr = run(capsys, "info", tmp_path / "notes.pth")
    assert code == 1 and "error" in stderr and "Traceback" not in stderr
    save_file({"classifier.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    code, stdout, _ = run(capsys, "info", tmp_path / "other.safetensors")
    assert code == 1 and "unknown" in stdout and "classifier.weight" in stdout


def test_info_reports_architecture_parameters_and_unknown_release(capsys):
    code, stdout, _ = run(capsys, "info", UNET, "--json")
    info = json.loads(stdout)
    tensors = load_file(str(UNET))
    learnt = sum(t.numel() for k, t in tensors.items() if not k.endswith((".attn_mask", ".relative_position_index")))
    assert code == 0 and info["kind"] == "unet"
    assert info["architecture"]["model_channels"] == 32 and info["architecture"]["levels"] == 3
    assert info["architecture"]["window_size"] == 4 and info["architecture"]["cond_mask"] is False
    assert info["parameters"] == learnt and info["dtype"] == "float32"
    by_dtype = {}
    for tensor in tensors.values():  # every tensor is counted, the int64 Swin index buffers too
        name = str(tensor.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + 1
    assert info["dtypes"] == by_dtype and by_dtype.get("int64")
    assert info["release"] is None and info["schedule"] is None

    code, stdout, _ = run(capsys, "info", UNET)
    assert code == 0 and "unknown: pass --release" in stdout and f"{learnt:,}" in stdout

    code, stdout, _ = run(capsys, "info", AUTOENCODER, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["kind"] == "autoencoder" and info["architecture"]["downsample_factor"] == 4


def test_convert_training_pth_then_info_and_upscale_from_it(tmp_path, capsys):
    pth = training_style_pth(tmp_path / "my_finetune.pth")
    converted = tmp_path / "model.safetensors"

    code, stdout, _ = run(capsys, "convert", pth, converted, "--release", SR_RELEASE)
    assert code == 0 and "realsr-v3" in stdout
    with safe_open(str(converted), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["resshift.release"] == "realsr-v3"
    assert json.loads(metadata["resshift.schedule"])["steps"] == 4
    assert not any(k.startswith("module.") for k in keys)

    code, stdout, _ = run(capsys, "info", converted, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["release"] == "realsr-v3" and info["schedule"]["steps"] == 4
    assert info["release_source"] == "file metadata"

    before = converted.read_bytes()
    code, _, stderr = run(capsys, "convert", pth, converted)
    assert code == 1 and "--overwrite" in stderr and converted.read_bytes() == before

    photo(16, 16).save(tmp_path / "lr.png")  # the converted file needs no --release any more
    code, _, _ = run(capsys, "upscale", tmp_path / "lr.png", "-o", tmp_path / "out", "--unet", converted,
                     "--autoencoder", AUTOENCODER, "--no-progress")
    assert code == 0 and Image.open(tmp_path / "out" / "lr.png").size == (64, 64)


def test_convert_without_a_known_release_warns_and_autoencoders_convert_too(tmp_path, capsys):
    pth = training_style_pth(tmp_path / "mystery.pth", prefix="_orig_mod.", wrapper="params_ema")
    code, _, stderr = run(capsys, "convert", pth, tmp_path / "mystery.safetensors")
    assert code == 0 and "schedule is unknown" in stderr and "--release" in stderr
    code, stdout, _ = run(capsys, "info", tmp_path / "mystery.safetensors")
    assert code == 0 and "unknown: pass --release" in stdout

    vae_pth = training_style_pth(tmp_path / "autoencoder_vq_f4.pth", source=AUTOENCODER, wrapper=None)
    code, _, _ = run(capsys, "convert", vae_pth, tmp_path / "vae.safetensors")
    assert code == 0
    info = json.loads(run(capsys, "info", tmp_path / "vae.safetensors", "--json")[1])
    assert info["kind"] == "autoencoder" and info["metadata"]["resshift.autoencoder"] == "vq-f4"


def test_releases_table_names_every_release_and_the_licence(capsys):
    code, stdout, _ = run(capsys, "releases")
    assert code == 0
    for release in RELEASES.values():
        assert release.name in stdout and release.file_name in stdout
    assert "S-Lab License 1.0" in stdout and "non-commercial" in stdout
    rows = json.loads(run(capsys, "releases", "--json")[1])["releases"]
    by_name = {row["name"]: row for row in rows}
    assert by_name["realsr-v3"]["steps"] == 4 and by_name["realsr-v3"]["default"]
    assert by_name["sinsr-v1"]["steps"] == 1 and by_name["inpaint-imagenet"]["scale"] == 1


def test_sharding_by_rank_environment(tmp_path, capsys, monkeypatch, bicubic_model):
    for index in range(5):
        photo(16, 16).save(tmp_path / f"img{index}.png")
    out = tmp_path / "out"
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # no process group: just the split
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, stdout, _ = run(capsys, "upscale", tmp_path, "-o", out, *MODEL)
    assert code == 0 and files_under(out) == ["img1.png", "img3.png"]
    assert "done" not in stdout  # only rank 0 summarises
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, stdout, _ = run(capsys, "upscale", tmp_path, "-o", out, *MODEL)
    assert code == 0 and "3 written" in stdout
    assert files_under(out) == [f"img{i}.png" for i in range(5)]


# ------------------------------------------------------------------------------------------ subprocesses
def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "RESSHIFT_OFFLINE": "1"})
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def test_python_dash_m_smoke(tmp_path):
    gray_photo(20, 16).save(tmp_path / "camera.png")
    result = subprocess.run([sys.executable, "-m", "resshift_core", "upscale", str(tmp_path / "camera.png"), "-o",
                             str(tmp_path / "out"), *map(str, MODEL[:-1])], cwd=tmp_path, env=_subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 written" in result.stdout and "steps" in result.stderr  # the step progress bar was drawn
    assert Image.open(tmp_path / "out" / "camera.png").size == (80, 64)


@pytest.mark.slow
def test_torchrun_shards_each_file_exactly_once_and_resumes(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    names = [f"img{index}.png" for index in range(5)]
    for index, name in enumerate(names):
        photo(16, 16).rotate(20 * index).save(source / name)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "resshift_core", "upscale", str(source), "-o", str(tmp_path / "out"), *map(str, MODEL)]

    first = subprocess.run(command, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    written = [line for line in first.stdout.splitlines() if "written:" in line]
    assert sorted(Path(line.rsplit(" ", 1)[-1]).name for line in written) == names  # each exactly once
    for index, name in enumerate(names):  # file i on rank i % 2
        assert any(line.startswith(f"[rank {index % 2}] written:") and line.endswith(name) for line in written)
    assert first.stdout.count("done on 2 ranks") == 1 and "5 written" in first.stdout
    assert files_under(tmp_path / "out") == names

    again = subprocess.run(command, cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "written:" not in again.stdout and "0 written, 5 skipped" in again.stdout
