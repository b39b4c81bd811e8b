"""Tiled inference: the tiling machinery is exact for local operators, one tile is the untiled computation, and
with the fixture networks tiled results show no seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resshift_core.checkpoints import load_autoencoder, load_unet
from resshift_core.errors import CancelledError
from resshift_core.pipeline import ResShiftPipeline, TileSettings
from resshift_core.releases import get_release
from resshift_core.sampler import NoiseSource
from resshift_core.tiling import Blender, plan_axis, plan_tiles, tiled_apply

FIXTURE = "tests/fixtures/golden/public"


@pytest.fixture(scope="module")
def pipe():
    return ResShiftPipeline(load_unet(f"{FIXTURE}/unet.safetensors").model,
                            load_autoencoder(f"{FIXTURE}/vae.safetensors"), get_release("realsr-v3").schedule, 4)


@pytest.fixture(scope="module")
def photo():
    from PIL import Image
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage_data.astronaut()).resize((96, 96), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def test_axis_plan_covers_with_the_least_tiled_length_and_minimum_overlap():
    plan = plan_axis(512, max_size=384, min_overlap=32, multiple=64)
    assert plan.size == 192 and plan.starts == (0, 160, 320)  # 3 x 192 beats 5 x 128 and 3 x 256
    for length, max_size, overlap, multiple in [(1000, 256, 32, 64), (97, 48, 16, 16), (300, 96, 8, 1)]:
        plan = plan_axis(length, max_size, overlap, multiple)
        assert plan.size % multiple == 0 and plan.size <= max_size
        assert plan.starts[0] == 0 and plan.starts[-1] + plan.size == length
        gaps = np.diff(plan.starts)
        assert (plan.size - gaps >= overlap).all()
    assert plan_axis(40, 64, 16, 16).starts == (0,) and plan_axis(40, 64, 16, 16).size == 40


def test_tiled_blending_reproduces_a_local_operator_exactly():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3) * 0.3
    weight2 = torch.randn(3, 4, 3, 3) * 0.3

    def local(x):  # reach of 2 samples
        return F.conv2d(torch.tanh(F.conv2d(x, weight, padding=1)), weight2, padding=1)

    image = torch.randn(2, 3, 70, 90)
    full = local(image)
    tiled = tiled_apply(local, image, 3, 1, max_tile=32, overlap=16)
    assert len(plan_tiles(70, 90, 32, 16)) > 4
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)
    # a stride-2 "encoder" is tiled on the coarse side
    encoder = lambda x: F.avg_pool2d(local(x), 2)
    torch.testing.assert_close(tiled_apply(encoder, image[..., :64, :88], 3, 0.5, max_tile=16, overlap=8),
                               encoder(image[..., :64, :88]), atol=1e-5, rtol=1e-5)


def test_blend_weights_are_positive_everywhere_and_zero_at_inner_tile_edges():
    plan = plan_tiles(100, 60, 40, 16)
    blender = Blender((1, 1, 100, 60), "cpu", plan, 16)
    for rows, cols in plan.windows():
        blender.add(rows, cols, torch.ones(1, 1, rows.stop - rows.start, cols.stop - cols.start))
    assert (blender.weight > 0).all()
    torch.testing.assert_close(blender.result(), torch.ones(1, 1, 100, 60))


def test_one_tile_is_exactly_the_untiled_computation(pipe, photo):
    untiled = pipe.upscale(photo[..., :40, :56], seed=3, tiles="off")
    one_tile = pipe.upscale(photo[..., :40, :56], seed=3, tiles=pipe.tiles("latent", tile_size=512, vae_tile_size=512))
    assert torch.equal(untiled, one_tile)
    auto_small = pipe.upscale(photo[..., :40, :56], seed=3)  # fits one tile: untouched by "auto"
    assert torch.equal(untiled, auto_small)


class RecordingNoise(NoiseSource):
    """A seeded noise source that remembers the shape of every draw."""

    def __init__(self, seed: int):
        super().__init__(torch.Generator().manual_seed(seed))
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(like.shape))
        return super().__call__(like)


def test_noise_is_one_field_for_the_whole_image_whatever_the_tiling(pipe, photo):
    draws = []
    for tile_size in (32, 48, 512):
        noise = RecordingNoise(1)
        pipe.sample_padded(photo * 2 - 1, noise, tiles=TileSettings(mode="latent", tile_size=tile_size, overlap=16,
                                                                     vae_tile_size=tile_size))
        draws.append(noise.shapes)
    assert draws[0] == draws[1] == draws[2]
    assert len(draws[0]) == pipe.schedule.num_steps + 1 and draws[0][0] == (1, 3, 96, 96)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_tiled_output_agrees_with_untiled_and_shows_no_seams(pipe, photo):
    untiled = pipe.upscale(photo, seed=5, tiles="off")
    tile, overlap, vae_tile = 48, 16, 32
    tiled = pipe.upscale(photo, seed=5, tiles=pipe.tiles(tile_size=tile, tile_overlap=overlap, vae_tile_size=vae_tile))
    # The fixture networks have random weights, so their output is dominated by the noise (two seeds differ as much
    # as tiled and untiled do); the bar is therefore a regression guard, while the seam check is the real test.
    assert psnr(tiled, untiled) > 14.0
    error = (tiled - untiled).abs().mean(1)[0]
    near_border = torch.zeros_like(error, dtype=torch.bool)
    for plan in (plan_tiles(96, 96, tile, overlap, pipe.unet.config.latent_multiple), plan_tiles(96, 96, vae_tile, 8)):
        for axis, axis_plan in ((0, plan.rows), (1, plan.cols)):
            for start in axis_plan.starts:
                for edge in (start, start + axis_plan.size):
                    if 0 < edge < 96:
                        band = slice(max(0, edge * 4 - 8), edge * 4 + 8)
                        near_border[(band, slice(None)) if axis == 0 else (slice(None), band)] = True
    assert near_border.any() and (~near_border).any()
    assert error[near_border].mean() <= 1.5 * error[~near_border].mean()


def test_tiled_run_reports_progress_per_tile_and_can_be_cancelled(pipe, photo):
    events = []
    pipe.upscale(photo[..., :64, :64], seed=1, tiles=pipe.tiles(tile_size=32, tile_overlap=16, vae_tile_size=32),
                 callback=events.append)
    plan = pipe.last_plan
    steps, tiles, vae_tiles = pipe.schedule.num_steps, plan.unet_tile_count, plan.vae_tile_count
    assert tiles > 1 and vae_tiles > 1
    # one unit per network call: encoder tiles, UNet tiles x steps, decoder tiles; monotone, ending at the total
    assert len(events) == vae_tiles + steps * tiles + vae_tiles
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert {e.total for e in events} == {len(events)}
    denoise = [e for e in events if e.phase == "denoise"]
    assert [(e.tile, e.total_tiles) for e in denoise[:tiles]] == [(n, tiles) for n in range(1, tiles + 1)]
    assert all(not torch.isnan(e.x0_pred).any() for e in denoise)  # tiles not yet computed show the last x0
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(CancelledError):
        pipe.upscale(photo[..., :64, :64], seed=1, tiles=pipe.tiles(tile_size=32, tile_overlap=16), cancel=cancel)


def test_out_of_memory_is_retried_with_smaller_tiles_and_the_same_noise(pipe, photo, monkeypatch):
    image = photo[..., :64, :64]
    first_try = TileSettings.for_device(pipe.device, mode="latent", tile_size=64, overlap=16, vae_tile_size=32,
                                        vae_overlap=8)
    smaller = first_try.halved(pipe.unet.config.latent_multiple)
    with torch.inference_mode():
        reference = pipe.sample_padded(image * 2 - 1, NoiseSource.from_seed(2), tiles=smaller) * 0.5 + 0.5
    original = type(pipe)._run_unet
    tile_sides = []

    def fail_on_large_tiles(self, x_in, t, lq_features):
        tile_sides.append(x_in.shape[-1])
        if x_in.shape[-1] > 32:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, x_in, t, lq_features)

    monkeypatch.setattr(type(pipe), "_run_unet", fail_on_large_tiles)
    retried = pipe.upscale(image, seed=2, tiles=pipe.tiles(tile_size=64, tile_overlap=16, vae_tile_size=32))
    assert tile_sides[0] == 64 and tile_sides[-1] == 32
    torch.testing.assert_close(retried, reference)  # the retry replays the same noise from the seed
    # not an allocation failure: raised as it is
    monkeypatch.setattr(type(pipe), "_run_unet", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pipe.upscale(image, seed=2)


def test_codebook_search_in_chunks_equals_one_pass(pipe):
    quantizer = pipe.autoencoder.quantize
    latent = torch.randn(2, quantizer.embedding.weight.shape[1], 37, 29)
    with torch.inference_mode():
        whole = quantizer.indices(latent)
        saved = quantizer.rows_per_chunk
        try:
            quantizer.rows_per_chunk = 100  # many chunks, one of them partial
            chunked = quantizer.indices(latent)
        finally:
            quantizer.rows_per_chunk = saved
    assert torch.equal(whole, chunked)
