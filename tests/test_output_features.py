"""What the rival upscalers offer, built once in the core: one seed = one picture whatever the batch, any output
size (the fewest x4 passes, then one resize), a colour fix applied once to the whole output, and a half-precision
run that never ends in NaN. Runs use the reduced official-layout models of the golden fixtures on real photographs
(scikit-image's astronaut), through the Python API and the command line."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_weights import AUTOENCODER, SR_RELEASE, UNET

import resshift_core as rc
from resshift_core import cli
from resshift_core.color import color_fix


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one intra-op thread is faster than several spinning on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return rc.ResShiftPipeline.assemble(UNET, AUTOENCODER, release=SR_RELEASE, device="cpu", dtype="fp32")


@cache
def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def photo(width: int, height: int, crop: int = 0) -> torch.Tensor:
    """(1, 3, height, width) float in [0, 1]: the astronaut photograph, down-scaled (``crop`` picks another view)."""
    picture = _astronaut().crop((crop, crop, 512 - crop, 512 - crop)).resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(picture, np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.double() - b.double()) ** 2).mean()))


# ------------------------------------------------------------------------------------------- one seed, one picture
@pytest.mark.parametrize("position", [0, 1, 2])
def test_an_image_alone_equals_the_same_image_anywhere_in_a_batch_of_three(pipe, position):
    image = photo(24, 20)
    others = [photo(24, 20, crop=40), photo(24, 20, crop=90)]
    batch = torch.cat(others[:position] + [image] + others[position:])
    alone = pipe.upscale(image, seed=11)
    together = pipe.upscale(batch, seed=11)
    torch.testing.assert_close(together[position:position + 1], alone, atol=1e-5, rtol=0)
    assert (together[(position + 1) % 3] - alone[0]).abs().max() > 0.05  # another image: another result


def test_twin_frames_in_one_batch_come_out_identical(pipe):
    frame = photo(24, 20)
    out = pipe.upscale(torch.cat([frame, photo(24, 20, crop=60), frame]), seed=3)
    assert torch.equal(out[0], out[2])


def test_the_noise_field_is_shared_by_the_batch_and_replayed_noise_is_used_as_recorded():
    like = torch.empty(3, 4, 5, 6)
    drawn = rc.NoiseSource.from_seed(5)(like)
    assert drawn.shape == like.shape and torch.equal(drawn[0], drawn[2])
    alone = rc.NoiseSource.from_seed(5)(like[:1])
    assert torch.equal(alone[0], drawn[1])  # what a batch of one draws from the same seed
    recorded = torch.randn(3, 4, 5, 6)
    assert torch.equal(rc.NoiseSource(replay=[recorded])(like), recorded)


def test_seeds_are_checked_by_one_rule():
    assert rc.check_seed(0) == 0 and rc.check_seed(rc.MAX_SEED) == rc.MAX_SEED and rc.check_seed(7.0) == 7
    for bad in (-1, rc.MAX_SEED + 1, 1.5, "x", None, True):
        with pytest.raises(rc.InvalidArgumentError, match="seed"):
            rc.check_seed(bad)


# ------------------------------------------------------------------------------------------------ output sizes
@pytest.mark.parametrize("request_, size, passes", [
    (rc.output_size(scale=2), (48, 40), 1), (rc.output_size(scale=3), (72, 60), 1),
    (rc.output_size(scale=1.5), (36, 30), 1), (rc.output_size(width=50), (50, 42), 1),
    (rc.output_size(scale=8), (192, 160), 2),
])
def test_output_sizes_are_exact_with_the_fewest_passes(pipe, request_, size, passes):
    events = []
    out = pipe.upscale(photo(24, 20), seed=1, size=request_, callback=events.append)
    assert tuple(out.shape[-2:]) == (size[1], size[0])
    assert pipe.last_size_plan.passes == passes
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == events[-1].total  # one count over every pass
    assert len({e.total for e in events}) == 1
    assert 0 <= out.min() and out.max() <= 1


def test_sixteen_times_is_two_passes_and_no_resize(pipe):
    out = pipe.upscale(photo(6, 5), seed=1, size=rc.output_size(scale=16))
    assert tuple(out.shape[-2:]) == (80, 96) and not pipe.last_size_plan.needs_resize
    record = pipe.run_record(color_fix="none")
    assert record["size"]["passes"] == 2 and json.loads(json.dumps(record)) == record


def test_a_second_pass_runs_on_the_first_pass_output(pipe, monkeypatch):
    """x8 = two x4 passes: the second one's input is the first one's output (its size shows it)."""
    seen = []
    original = type(pipe)._one_pass

    def spy(self, batch, *args, **kwargs):
        seen.append(tuple(batch.shape[-2:]))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "_one_pass", spy)
    pipe.upscale(photo(10, 8), seed=1, size=rc.output_size(scale=8))
    assert seen == [(8, 10), (32, 40)]


def test_more_passes_than_allowed_are_refused(pipe):
    with pytest.raises(rc.InvalidArgumentError):
        pipe.upscale(photo(8, 8), seed=1, size=rc.output_size(scale=64 * 8 + 1))


# --------------------------------------------------------------------------------------------------- colour fix
def test_the_colour_fix_is_applied_once_to_the_whole_output_tiled_or_not(pipe):
    image = photo(40, 32)
    tiled_tiles = rc.TileSettings(mode="latent", tile_size=16, overlap=4, vae_tile_size=16, vae_overlap=4)
    plain, fixed = {}, {}
    for name, tiles in (("untiled", "off"), ("tiled", tiled_tiles)):
        plain[name] = pipe.upscale(image, seed=2, tiles=tiles)
        fixed[name] = pipe.upscale(image, seed=2, tiles=tiles, color_fix="wavelet")
        torch.testing.assert_close(fixed[name], color_fix(plain[name], image, "wavelet"), atol=1e-5, rtol=0)
    # Tiled and untiled runs differ (the random fixture weights see each tile's statistics); the fix, applied to
    # the whole output against one reference, brings them closer rather than adding tile seams of its own.
    assert psnr(fixed["tiled"], fixed["untiled"]) >= psnr(plain["tiled"], plain["untiled"])


def test_the_colour_fix_brings_the_input_colours_back(pipe):
    image = F.avg_pool2d(F.interpolate(photo(40, 32), scale_factor=4, mode="bilinear"), 9, 1, 4,
                         count_include_pad=False)[..., ::4, ::4]  # a smooth picture: its colours are low frequency
    plain = pipe.upscale(image, seed=2)
    fixed = pipe.upscale(image, seed=2, color_fix="wavelet")
    assert psnr(F.avg_pool2d(fixed, 4), image) > psnr(F.avg_pool2d(plain, 4), image) + 3
    matched = pipe.upscale(image, seed=2, color_fix="adain")  # each channel's mean and spread, not their layout
    torch.testing.assert_close(matched.mean(dim=(2, 3)), image.mean(dim=(2, 3)), atol=0.02, rtol=0)


def test_unknown_colour_fix_is_refused_before_running(pipe):
    with pytest.raises(rc.InvalidArgumentError, match="color_fix"):
        pipe.upscale(photo(8, 8), seed=1, color_fix="purple")


# ------------------------------------------------------------------------------------------------ command line
def _run(capsys, *argv) -> int:
    code = cli.main([str(a) for a in argv])
    capsys.readouterr()
    return code


MODEL = ["--unet", UNET, "--autoencoder", AUTOENCODER, "--release", SR_RELEASE, "--no-progress"]


def _smooth(width: int, height: int) -> Image.Image:
    """A smooth colour picture (the astronaut, blurred hard): its colours are all low frequency."""
    from PIL import ImageFilter

    return _astronaut().resize((width, height), Image.LANCZOS).filter(ImageFilter.GaussianBlur(3))


def test_cli_colour_fix_restores_the_colours_of_a_smooth_image(tmp_path, capsys):
    _smooth(40, 32).save(tmp_path / "smooth.png")
    source = np.asarray(Image.open(tmp_path / "smooth.png"), np.float32) / 255
    scores = {}
    for method in ("none", "wavelet"):
        assert _run(capsys, "upscale", tmp_path / "smooth.png", "-o", tmp_path / method, "--color-fix", method,
                    *MODEL) == 0
        out = np.asarray(Image.open(tmp_path / method / "smooth.png"), np.float32) / 255
        down = out.reshape(32, 4, 40, 4, 3).mean(axis=(1, 3))  # box down-scale to the input's size
        scores[method] = 10 * np.log10(1 / np.mean((down - source) ** 2))
        meta = json.loads(Image.open(tmp_path / method / "smooth.png").text["resshift"])
        assert meta["color_fix"] == method
    assert scores["wavelet"] >= 20 and scores["wavelet"] > scores["none"] + 5, scores


@pytest.mark.parametrize("scale, size", [("2", (80, 64)), ("3", (120, 96)), ("8", (320, 256))])
def test_cli_scale_gives_exact_sizes(tmp_path, capsys, scale, size):
    _smooth(40, 32).save(tmp_path / "in.png")
    assert _run(capsys, "upscale", tmp_path / "in.png", "-o", tmp_path / "out", "--scale", scale, *MODEL) == 0
    result = Image.open(tmp_path / "out" / "in.png")
    assert result.size == size
    assert json.loads(result.text["resshift"])["size"]["output_size"] == list(size)


def test_cli_size_keeps_the_aspect_with_one_side_and_alpha_and_16_bit_survive(tmp_path, capsys):
    rgba = np.zeros((32, 40, 4), np.uint16)
    rgba[..., :3] = (np.asarray(_smooth(40, 32), np.uint16) * 257)
    rgba[..., 3] = 65535
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba[..., 0], mode="I;16").save(tmp_path / "gray16.png")
    Image.fromarray((rgba // 257).astype(np.uint8), mode="RGBA").save(tmp_path / "alpha.png")
    assert _run(capsys, "upscale", tmp_path / "gray16.png", tmp_path / "alpha.png", "-o", tmp_path / "out",
                "--size", "100x", "--color-fix", "adain", *MODEL) == 0
    gray = Image.open(tmp_path / "out" / "gray16.png")
    assert gray.size == (100, 80) and gray.mode.startswith("I")  # 16-bit stays 16-bit
    alpha = Image.open(tmp_path / "out" / "alpha.png")
    assert alpha.size == (100, 80) and alpha.mode == "RGBA"
    channel = np.asarray(alpha.getchannel("A"))
    assert channel[:, :40].max() <= 10 and channel[:, 60:].min() >= 245  # alpha untouched by the colour fix


def test_cli_batch_size_three_equals_batch_size_one(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for index, crop in enumerate((0, 50, 100)):
        Image.fromarray((photo(24, 20, crop)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"frame{index}.png")
    Image.open(folder / "frame0.png").save(folder / "frame3.png")  # a twin frame
    for batch in ("1", "3"):
        assert _run(capsys, "upscale", folder, "-o", tmp_path / batch, "--batch-size", batch, *MODEL) == 0
    def pixels(path):
        return np.asarray(Image.open(path), np.int16)

    # Equal up to float rounding: a batch of three runs other convolution kernels than a batch of one, which moves
    # a few pixels by one 8-bit level (it moved them by up to 255 when the noise depended on the batch).
    for index in range(4):
        difference = np.abs(pixels(tmp_path / "1" / f"frame{index}.png") - pixels(tmp_path / "3" / f"frame{index}.png"))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, index
    twins = np.abs(pixels(tmp_path / "3" / "frame0.png") - pixels(tmp_path / "3" / "frame3.png"))
    assert twins.max() <= 1


@pytest.mark.parametrize("options, named", [
    (["--scale", "-2"], "--scale"), (["--size", "abc"], "--size"), (["--scale", "2", "--size", "64x"], "--size"),
    (["--color-fix", "purple"], "--color-fix"),
])
def test_cli_bad_size_or_colour_options_are_refused_with_exit_2(tmp_path, capsys, options, named):
    _smooth(16, 16).save(tmp_path / "in.png")
    code = cli.main([str(a) for a in ["upscale", tmp_path / "in.png", "-o", tmp_path / "out", *options, *MODEL]])
    assert code == 2 and named in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- never a NaN
def _fp16_works() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float16), torch.ones(1, 1, 1, 1,
                                                                                          dtype=torch.float16))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _fp16_works(), reason="no float16 convolution in this CPU build")
@pytest.mark.parametrize("network", ["unet", "decoder"])
def test_a_float16_overflow_is_run_again_wider_and_the_result_is_finite(caplog, network):
    """Weights scaled so that float16 overflows (65504 is its largest value) where float32 does not: the call is
    run again in a wider precision, with a warning, and the image is finite."""
    pipe = rc.ResShiftPipeline.assemble(UNET, AUTOENCODER, release=SR_RELEASE, device="cpu", dtype="fp16")
    module = pipe.unet.out[-1] if network == "unet" else pipe.autoencoder.decoder.conv_out
    with torch.no_grad():
        module.weight.mul_(3e4)
    wide = rc.ResShiftPipeline.assemble(UNET, AUTOENCODER, release=SR_RELEASE, device="cpu", dtype="fp32")
    wide_module = wide.unet.out[-1] if network == "unet" else wide.autoencoder.decoder.conv_out
    with torch.no_grad():
        wide_module.weight.mul_(3e4)
    image = photo(16, 16)
    with caplog.at_level("WARNING"):
        out = pipe.upscale(image, seed=0)
    assert torch.isfinite(out).all()
    assert any("overflowed in float16" in record.message for record in caplog.records)
    assert next(pipe.unet.parameters()).dtype == torch.float16  # back in its own precision afterwards
    reference = wide.upscale(image, seed=0)
    # The rerun computes what the float32 run computes, within half rounding (the scaled decoder saturates its
    # output: pixels are 0 or 1 by their sign, and those near zero may flip).
    if network == "unet":
        assert psnr(out, reference) > 15
    else:
        assert ((out - reference).abs() < 0.01).float().mean() > 0.8


def test_without_overflow_nothing_is_rerun(caplog, pipe):
    with caplog.at_level("WARNING"):
        pipe.upscale(photo(16, 16), seed=0)
    assert not any("overflowed" in record.message for record in caplog.records)


# ------------------------------------------------------------------------------------ "auto" keeps its promise
def _meta_release_pipeline():
    from resshift_core.models import descriptor_for
    from resshift_core.nets import ResShiftUNet, VQAutoencoder

    release = rc.get_release("realsr-v3")
    with torch.device("meta"):
        unet, vae = ResShiftUNet(release.unet), VQAutoencoder(rc.AUTOENCODERS["vq-f4"].config)
    return rc.ResShiftPipeline.from_loaded(descriptor_for(unet, release=release), descriptor_for(vae), device="meta")


@pytest.mark.parametrize("dtype, untiled_at_128", [(torch.float32, True), (torch.bfloat16, True)])
def test_auto_tiles_the_autoencoder_where_the_calibrated_cost_says_untiled_is_slower(monkeypatch, dtype,
                                                                                      untiled_at_128):
    """On the CPU the measured 256 px untiled run took 1.62x (fp32) and 2.15x (bf16) the tiled one: "auto" must tile
    there (its rule: untiled only while it costs at most 1.5x), and keep the official computation at 128 px."""
    from resshift_core import planning

    monkeypatch.setattr(planning, "attention_cost_weight", lambda device=None, dtype=None: {
        torch.float32: planning.ATTENTION_COST_WEIGHT[("cpu", "float32")],
        torch.bfloat16: planning.ATTENTION_COST_WEIGHT[("cpu", "bfloat16")]}[dtype])
    pipe = _meta_release_pipeline()
    pipe.dtype = dtype  # the plan's cost follows the run's precision
    monkeypatch.setattr(type(pipe), "_fits", lambda self, plan, budget: True)  # memory is not the question here
    assert pipe.plan(128, 128).is_official == untiled_at_128
    at_256 = pipe.plan(256, 256)
    assert not at_256.is_official and at_256.unet_tiles is None  # the UNet whole, the autoencoder in tiles
    assert pipe.plan(256, 256, tiles="off").is_official  # "off" still gives the official computation


def test_unmeasured_devices_count_flops_and_cpu_weights_follow_the_precision():
    from resshift_core.planning import ATTENTION_COST_WEIGHT, attention_cost_weight

    assert attention_cost_weight("cuda", torch.float16) == 1.0
    assert attention_cost_weight("cpu", torch.float32) == ATTENTION_COST_WEIGHT[("cpu", "float32")] > 1.0
    assert attention_cost_weight("cpu", torch.bfloat16) >= attention_cost_weight("cpu", torch.float32)


def test_the_precision_rule_takes_the_hosts_facts_and_offers_bf16_only_where_it_runs(monkeypatch):
    from resshift_core import runtime

    assert runtime.choose_dtype("cpu") == torch.float32 and runtime.choose_dtype("cuda", "auto") == torch.float16
    assert runtime.choose_dtype("cuda", "auto", allow_half=False) == torch.float32  # the WebUI's --no-half
    assert runtime.choose_dtype("cuda", "auto", upcast=True) == torch.float32  # its --upcast-sampling
    assert runtime.choose_dtype("cuda", "auto", host_dtype=torch.float32) == torch.float32  # ComfyUI's choice
    assert runtime.choose_dtype("cuda", "auto", host_dtype="fp8_e4m3fn") == torch.float16  # not ours: the default
    assert runtime.choose_dtype("cpu", "bf16") == torch.bfloat16  # an explicit choice wins
    monkeypatch.setattr(runtime, "device_supports_bf16", lambda device: False)
    assert runtime.dtype_choices("cuda") == ("fp32", "fp16")
    with pytest.raises(rc.InvalidArgumentError, match="bfloat16"):
        runtime.choose_dtype("cuda", "bf16")


def test_the_memory_budget_respects_a_per_process_cap(monkeypatch):
    """Under ``set_per_process_memory_fraction`` the planner may use what the cap leaves, not the card's free
    memory (an 8 GB cap on an 80 GB card must make "auto" plan for 8 GB)."""
    from resshift_core.memory import available_memory

    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.1, raising=False)
    assert available_memory(torch.device("cuda")) == 6 * gib
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    assert available_memory(torch.device("cuda")) == 70 * gib
