"""The core as hosts (ComfyUI, the WebUI, training) wrap it: descriptors, one identification, from_loaded, progress
counts, previews, precision kept by the modules, errors in the caller's words, pixel-space models, the default
tiling rule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_weights import AUTOENCODER, SR_RELEASE, UNET

import resshift_core as rc
from resshift_core.checkpoints import resolve_schedule
from resshift_core.cli.common import CLI_WORDS
from resshift_core.nets import ResShiftUNet, UNetConfig
from resshift_core.schedule import ScheduleParams


@pytest.fixture(scope="module")
def unet():
    return rc.load_model(UNET, expect="unet", release=SR_RELEASE)


@pytest.fixture(scope="module")
def vae():
    return rc.load_model(AUTOENCODER, expect="autoencoder")


@pytest.fixture(scope="module")
def pipe(unet, vae):
    return rc.ResShiftPipeline.from_loaded(unet, vae)


# ------------------------------------------------------------------------------------------------ descriptors
def test_descriptors_say_what_a_host_plans_with(unet, vae):
    assert unet.kind == "unet" and vae.kind == "autoencoder"
    assert unet.release.name == SR_RELEASE and unet.identity.release_source == "argument"
    assert unet.task == "sr" and unet.scale == 4 and unet.schedule.steps == 4 and not unet.one_step
    assert unet.latent_space and unet.identity.autoencoder == "vq-f4"
    assert unet.latent_multiple == unet.network.config.latent_multiple == 16  # the fixture's windows and levels
    assert vae.latent_multiple == 4  # its down-sampling factor
    assert unet.parameter_count == sum(p.numel() for p in unet.network.parameters())
    assert set(unet.supported_dtypes) == {torch.float32, torch.float16, torch.bfloat16}
    assert unet.preferred_tile_size("cpu") == 256 and vae.preferred_tile_size("cpu") == 80
    assert vae.preferred_tile_size("cuda") == 128
    floats = sum(t.numel() * 4 for t in unet.network.state_dict().values() if t.is_floating_point())
    assert unet.weight_bytes(torch.float16) < unet.weight_bytes(torch.float32) <= floats + 1e6
    # the codebook stays float32 in every dtype
    codebook = vae.network.quantize.embedding.weight.numel() * 4
    assert vae.weight_bytes("fp16") - codebook == (vae.weight_bytes("fp32") - codebook) // 2
    assert unet.estimate_memory(64, 64) > unet.weight_bytes() and vae.estimate_memory(256, 256) > vae.weight_bytes()


def test_one_identification_for_files_state_dicts_and_the_cli(tmp_path):
    state = load_file(str(UNET))
    from_dict = rc.identify_checkpoint(state, name="resshift_realsrx4_s15_v1.pth")
    assert from_dict.kind == "unet" and from_dict.release.name == "realsr-v1"
    assert from_dict.release_source == "file name" and from_dict.schedule.steps == 15
    assert rc.identify_checkpoint(AUTOENCODER).kind == "autoencoder"
    path = rc.save_unet(rc.load_model(state, release="realsr-v1").network, tmp_path / "renamed.safetensors",
                        release="realsr-v1")
    identity = rc.identify_checkpoint(path)
    loaded = rc.load_model(path)
    from resshift_core.cli.info import describe_checkpoint

    info = describe_checkpoint(path)
    assert identity.release.name == loaded.release.name == info["release"] == "realsr-v1"
    assert identity.release_source == loaded.identity.release_source == info["release_source"] == "file metadata"
    assert identity.schedule == loaded.schedule and info["schedule"] == identity.schedule.to_dict()


def test_from_loaded_refuses_swapped_or_missing_networks(unet, vae):
    with pytest.raises(rc.WrongModelKindError, match="give it as autoencoder_path"):
        rc.ResShiftPipeline.from_loaded(vae, unet)
    with pytest.raises(rc.ResShiftError, match="autoencoder_vq_f4.pth"):
        rc.ResShiftPipeline.from_loaded(unet, None)


# ------------------------------------------------------------------------------------------------ progress
@pytest.mark.parametrize("options", [
    {"tiles": "off"}, {}, {"tiles": rc.TileSettings(mode="latent", tile_size=16, overlap=4, vae_tile_size=16,
                                                    vae_overlap=4)},
    {"chop_size": 24, "chop_stride": 16},
], ids=["off", "auto", "latent", "chop"])
def test_progress_counts_are_monotone_to_the_total_in_every_tiling_mode(pipe, options):
    events = []
    pipe.upscale(torch.rand(1, 3, 40, 56), seed=1, callback=events.append, **options)
    totals = {e.total for e in events}
    assert len(totals) == 1 and events[-1].done == events[-1].total
    assert [e.done for e in events] == sorted(set(e.done for e in events))  # strictly growing
    assert {e.phase for e in events} == {"encode", "denoise", "decode"}
    for event in events:
        if event.phase == "denoise":
            assert not torch.isnan(event.x0_pred).any()
            preview = event.preview()
            assert preview.shape[1] == 3 and 0 <= preview.min() and preview.max() <= 1


def test_the_latent_preview_inverts_an_encoder_that_is_linear_in_colour(unet, vae):
    pipe = rc.ResShiftPipeline.from_loaded(unet, vae)
    mixing = torch.tensor([[0.5, -1.0, 0.2], [1.5, 0.3, -0.4], [-0.2, 0.8, 1.1]])

    def linear_encoder(image: torch.Tensor) -> torch.Tensor:  # a stand-in: latent = mixing @ rgb + 0.1, pooled x4
        pooled = torch.nn.functional.avg_pool2d(image.float(), 4)
        return torch.einsum("dc,bchw->bdhw", mixing, pooled * 0.5 + 0.5) + 0.1

    pipe._run_encoder = linear_encoder
    colours = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.4, 0.4, 0.95]])
    latent = torch.einsum("dc,nc->nd", mixing, colours)[:, :, None, None].expand(-1, -1, 5, 7) + 0.1
    torch.testing.assert_close(pipe.latent_to_rgb(latent).mean(dim=(2, 3)), colours, atol=1e-4, rtol=0)


def test_the_split_stages_equal_one_upscale(pipe):
    image = torch.rand(2, 3, 24, 40)
    whole = pipe.upscale(image, seed=5)
    latent = pipe.encode_lr(image)
    sampled = pipe.sample_latent(latent, seed=5)
    assert torch.equal(pipe.decode_latent(sampled), whole)
    with pytest.raises(rc.InvalidArgumentError):
        pipe.sample_latent(sampled, seed=5)


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("move", ["to", "half", "bfloat16"])
def test_a_host_moving_bare_modules_keeps_the_float32_rules(move):
    vae = rc.load_model(AUTOENCODER, expect="autoencoder").network
    dtype = torch.bfloat16 if move == "bfloat16" else torch.float16
    if move == "to":
        vae.to("cpu", dtype)
    else:
        getattr(vae, move)()
    assert vae.quantize.embedding.weight.dtype == torch.float32
    assert vae.decoder.conv_in.weight.dtype == dtype


def test_bare_bf16_modules_give_the_pipelines_bf16_result():
    pipe = rc.ResShiftPipeline.from_files(UNET, AUTOENCODER, release=SR_RELEASE, dtype="bf16")
    unet = rc.load_model(UNET, expect="unet", release=SR_RELEASE)
    vae = rc.load_model(AUTOENCODER, expect="autoencoder")
    for network in (unet.network, vae.network):  # what ComfyUI's model management does
        network.to("cpu", torch.bfloat16, memory_format=torch.channels_last)
    latent = torch.randn(1, 3, 16, 16) * 2
    with torch.inference_mode():
        reference = pipe.decode(latent)
        bare = vae.network
        features = bare.post_quant_conv(bare.quantize(latent.float()).to(torch.bfloat16))
        assert torch.equal(bare.decoder(features).float(), reference)
        full = pipe.autoencoder.quantize.indices(latent)
        assert torch.equal(bare.quantize.indices(latent), full)
        t = torch.full((1,), 2, dtype=torch.long)
        features = pipe.unet.condition_features(torch.zeros(1, 3, 16, 16, dtype=torch.bfloat16))
        assert torch.equal(unet.network(latent.bfloat16(), t, lq_features=features),
                           pipe.unet(latent.bfloat16(), t, lq_features=features))


# ------------------------------------------------------------------------------------------------ errors
def test_errors_word_their_advice_for_each_front_end(tmp_path):
    state = load_file(str(UNET))
    unknown = rc.load_model(state)
    with pytest.raises(rc.UnknownScheduleError) as caught:
        resolve_schedule(unknown)
    assert 'release="realsr-v3"' in str(caught.value)
    assert "--release realsr-v3" in caught.value.render(CLI_WORDS)
    comfy = rc.Vocabulary(names={"release": "the release input"}, setting="{name} set to {value}")
    assert "the release input set to realsr-v3" in caught.value.render(comfy)
    with pytest.raises(rc.InvalidArgumentError) as bad:
        rc.TileSettings(tile_size=4).validate()
    assert bad.value.argument == "tile_size" and bad.value.value == 4 and "at least 8" in bad.value.expected


def test_offline_errors_name_every_missing_file_at_once(tmp_path):
    with pytest.raises(rc.OfflineError) as caught:
        rc.fetch_release_files("realsr-v3", cache_dir=tmp_path, download=False)
    names = [file.name for file in caught.value.files]
    assert names == ["resshift_realsrx4_s4_v3.pth", "autoencoder_vq_f4.pth"]
    for file in caught.value.files:
        assert file.url in str(caught.value) and str(tmp_path / file.name) in str(caught.value)


# ------------------------------------------------------------------------------------------------ pixel space
def test_a_pixel_space_model_runs_without_autoencoder_in_tiles_of_its_training_crop(tmp_path):
    config = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                        attention_resolutions=(32,), image_size=32, lq_size=32, swin_embed_dim=32, num_heads=2,
                        window_size=8, mlp_ratio=2.0)
    torch.manual_seed(0)
    network = ResShiftUNet(config)
    path = rc.save_unet(network, tmp_path / "tiny.safetensors", schedule=ScheduleParams(steps=4), scale=4,
                        latent_space=False, tile_size=32)
    pipe = rc.ResShiftPipeline.from_files(path)
    assert pipe.autoencoder is None and pipe.scale == 4
    calls = []
    original = pipe._run_unet
    pipe._run_unet = lambda x, t, f: calls.append(tuple(x.shape[-2:])) or original(x, t, f)
    out = pipe.upscale(torch.rand(1, 3, 20, 13), seed=0)
    assert out.shape == (1, 3, 80, 52) and 0 <= out.min() and out.max() <= 1
    assert pipe.last_plan.unet_tile_count > 1 and set(calls) == {(32, 32)}  # the training crop, as recorded
    calls.clear()
    pipe.upscale(torch.rand(1, 3, 8, 8), seed=0, one_step=True)
    assert len(calls) == 1  # one network call, its x0 prediction is the result


# ------------------------------------------------------------------------------------------------ the default
# Sizes where the untiled run of these reduced networks costs under 1.5x the tiled one by the calibrated cost model
# (their autoencoder's attention weighs more against their thin convolutions than the released model's: from about
# 100x120 on, "auto" tiles them; the released architecture's sizes are checked in test_output_features).
@pytest.mark.parametrize("size", [(96, 96), (72, 100)])
def test_the_default_is_the_official_untiled_computation_for_typical_sizes(pipe, size):
    image = torch.rand(1, 3, *size)
    default = pipe.upscale(image, seed=3)
    assert pipe.last_plan.is_official
    assert torch.equal(default, pipe.upscale(image, seed=3, tiles="off"))
    record = pipe.last_plan.metadata()
    assert json.loads(json.dumps(record))["tiling"] == "off"


# ------------------------------------------------------------------------------------------------ host quirks
def test_a_host_that_replaces_torch_load_does_not_break_pth_loading(tmp_path, monkeypatch):
    from tiny_weights import training_style_pth

    path = training_style_pth(tmp_path / "model.pth")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)  # what the WebUI's check returns for new files
    assert rc.load_model(path, release=SR_RELEASE).kind == "unet"


def test_16_bit_colour_decoding_works_with_the_tuple_tiles_of_older_pillow(tmp_path):
    import numpy as np

    from resshift_core import imageio

    samples = np.random.default_rng(3).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(imageio.encode_png16(samples))
    from PIL import Image

    with Image.open(tmp_path / "deep.png") as image:
        image.tile = [tuple(tile) for tile in image.tile]  # Pillow 9.5 (the WebUI's) has plain tuples
        found = imageio._wide_rawmodes(image)
    assert found is not None and isinstance(found[0][0], tuple)
    decoded = imageio.read_image(tmp_path / "deep.png")
    assert np.array_equal(np.round(decoded.rgb * 65535).astype(np.uint16), samples)


def test_a_drawn_seed_is_reported_for_infotexts(pipe):
    image = torch.rand(1, 3, 8, 8)
    first = pipe.upscale(image)
    drawn = pipe.last_seed
    assert isinstance(drawn, int) and 0 <= drawn < 2 ** 31
    assert torch.equal(pipe.upscale(image, seed=drawn), first)  # the reported seed reproduces the image


def test_out_of_memory_retries_keep_progress_monotone_and_cover_the_split_stages(unet, vae, monkeypatch):
    pipe = rc.ResShiftPipeline.from_loaded(unet, vae)
    original = type(pipe)._run_unet

    def fail_on_large_tiles(self, x_in, t, lq_features):
        if x_in.shape[-1] > 32:
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return original(self, x_in, t, lq_features)

    image = torch.rand(1, 3, 64, 64)
    reference = pipe.upscale(image, seed=4, tiles=pipe.tiles("latent", tile_size=32, tile_overlap=8, vae_tile_size=32))
    monkeypatch.setattr(type(pipe), "_run_unet", fail_on_large_tiles)
    events = []
    retried = pipe.upscale(image, seed=4, callback=events.append)  # untiled first: fails, then tiles of 32
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == events[-1].total and pipe.last_plan.unet_tile_count > 1
    latent = pipe.encode_lr(image)
    stage_events = []
    sampled = pipe.sample_latent(latent, seed=4, callback=stage_events.append)  # retried inside the stage
    assert sampled.plan.unet_tile_count > 1 and [e.done for e in stage_events] == sorted(e.done for e in stage_events)
    assert pipe.decode_latent(sampled).shape == retried.shape == reference.shape
