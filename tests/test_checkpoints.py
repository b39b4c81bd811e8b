"""Loading checkpoints safely and recognising what they are."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from resshift_core.checkpoints import (
    detect_kind,
    expected_payload_bytes,
    load_autoencoder,
    load_unet,
    read_checkpoint,
    resolve_schedule,
    save_autoencoder,
    save_unet,
    size_matches,
)
from resshift_core.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnknownCheckpointError,
    UnknownScheduleError,
    UnsafeCheckpointError,
    WrongModelKindError,
)
from resshift_core.nets import ResShiftUNet, UNetConfig
from resshift_core.releases import RELEASES, get_release, release_for_file_name

FIXTURE = "tests/fixtures/golden/public"


@pytest.fixture(scope="module")
def unet_state():
    return load_file(f"{FIXTURE}/unet.safetensors")


@pytest.fixture(scope="module")
def vae_state():
    return load_file(f"{FIXTURE}/vae.safetensors")


def same_weights(model: torch.nn.Module, state: dict) -> bool:
    ours = model.state_dict()
    return all(torch.equal(ours[k], v) for k, v in state.items())


def test_official_training_layouts_load_with_wrappers_and_prefixes(tmp_path, unet_state):
    layouts = {
        "ema.pth": {"module." + k: v for k, v in unet_state.items()},  # EMA dict under DDP
        "model.pth": {"iters_start": 10, "state_dict": {"module._orig_mod." + k: v for k, v in unet_state.items()}},
        "params_ema.pth": {"params_ema": dict(unet_state)},
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / name)
        loaded = load_unet(tmp_path / name, release="realsr-v3")
        assert same_weights(loaded.model, unet_state), name
        assert loaded.schedule == get_release("realsr-v3").schedule


def test_missing_swin_buffers_are_recomputed(tmp_path, unet_state):
    stripped = {k: v for k, v in unet_state.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    assert len(stripped) < len(unet_state)
    save_file(stripped, str(tmp_path / "stripped.safetensors"))
    loaded = load_unet(tmp_path / "stripped.safetensors", release="realsr-v3")
    assert same_weights(loaded.model, unet_state)  # the recomputed buffers equal the official ones


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for protocol in (2, 4):
        path = tmp_path / f"evil{protocol}.pth"
        with open(path, "wb") as handle:
            pickle.dump({"state_dict": Exploit()}, handle, protocol=protocol)
        with pytest.raises(UnsafeCheckpointError, match=f"evil{protocol}.pth.*(posix|os).system"):
            load_unet(path)
    torch.save({"state_dict": Exploit()}, tmp_path / "evil_zip.pth")  # torch's own zip container
    with pytest.raises(UnsafeCheckpointError, match="evil_zip.pth"):
        load_autoencoder(tmp_path / "evil_zip.pth")
    assert not marker.exists()


def test_truncated_files_name_the_file(tmp_path, unet_state):
    torch.save(unet_state, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.pth"):
        load_unet(tmp_path / "cut.pth")
    safetensors_bytes = Path(f"{FIXTURE}/unet.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(safetensors_bytes[:5000])
    with pytest.raises(CorruptCheckpointError, match="cut.safetensors"):
        load_unet(tmp_path / "cut.safetensors")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="empty"):
        load_unet(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_unet(tmp_path / "nowhere.pth")
    (tmp_path / "notes.pth").write_text("# not a checkpoint\n")
    with pytest.raises(CorruptCheckpointError, match="not a readable PyTorch checkpoint"):
        load_unet(tmp_path / "notes.pth")


def test_swapped_unet_and_autoencoder_say_where_to_connect_them():
    with pytest.raises(WrongModelKindError, match="autoencoder.*UNet|UNet.*autoencoder"):
        load_unet(f"{FIXTURE}/vae.safetensors")
    with pytest.raises(WrongModelKindError, match="give it as unet_path") as caught:
        load_autoencoder(f"{FIXTURE}/unet.safetensors")
    assert caught.value.found == "unet" and caught.value.expected == "autoencoder"


def test_unknown_checkpoints_are_named_as_such(tmp_path, unet_state):
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UnknownCheckpointError, match="neither a ResShift UNet"):
        load_unet(tmp_path / "other.pth")
    broken = dict(unet_state)
    broken["out.2.weight"] = torch.zeros(3, 7, 3, 3)  # does not fit the rest
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(UnknownCheckpointError, match="broken.safetensors"):
        load_unet(tmp_path / "broken.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UnknownCheckpointError):
        load_unet(tmp_path / "list.pth")


def test_schedule_of_an_unidentified_unet_is_asked_for(tmp_path, unet_state):
    save_file(dict(unet_state), str(tmp_path / "my_finetune.safetensors"))
    loaded = load_unet(tmp_path / "my_finetune.safetensors")
    assert loaded.release is None and loaded.schedule is None
    with pytest.raises(UnknownScheduleError, match="realsr-v3"):
        resolve_schedule(loaded)


def test_files_we_write_carry_release_and_schedule(tmp_path):
    unet = load_unet(f"{FIXTURE}/unet.safetensors", release="realsr-v1").model
    path = save_unet(unet, tmp_path / "renamed.safetensors", release="realsr-v1")
    raw = read_checkpoint(path)
    assert raw.metadata["resshift.release"] == "realsr-v1"
    assert json.loads(raw.metadata["resshift.schedule"])["steps"] == 15
    loaded = load_unet(path)  # no release argument: the metadata says it
    assert loaded.release.name == "realsr-v1" and resolve_schedule(loaded).steps == 15
    assert loaded.model.config == unet.config
    autoencoder = load_autoencoder(f"{FIXTURE}/vae.safetensors")
    vae_path = save_autoencoder(autoencoder, tmp_path / "vae.safetensors", name="vq-f4")
    assert detect_kind(read_checkpoint(vae_path).tensors) == "autoencoder"


def test_official_file_names_identify_the_release():
    assert release_for_file_name("/x/resshift_realsrx4_s4_v3.pth").name == "realsr-v3"
    assert release_for_file_name("resshift_realsrx4_s15_v1.safetensors").name == "realsr-v1"
    assert release_for_file_name("weights/resshift_inpaint_imagenet_s4.pth").name == "inpaint-imagenet"
    assert release_for_file_name("SinSR_v1.pth").name == "sinsr-v1" and RELEASES["sinsr-v1"].one_step
    assert release_for_file_name("unrelated.pth") is None
    with pytest.raises(Exception, match="realsr-v3"):
        get_release("realsr-v9")


def test_release_sizes_identify_official_files(tmp_path):
    payload = expected_payload_bytes(RELEASES["realsr-v3"].unet)
    assert 470e6 < payload < 480e6  # 118.6 M float32 parameters plus buffers
    fake = tmp_path / "resshift_realsrx4_s4_v3.pth"
    with open(fake, "wb") as handle:
        handle.truncate(payload + 4096)
    assert size_matches(fake, RELEASES["realsr-v3"].unet)
    with open(fake, "wb") as handle:
        handle.truncate(payload // 2)
    assert not size_matches(fake, RELEASES["realsr-v3"].unet)


def test_released_architectures_round_trip_through_shape_inference():
    from resshift_core.checkpoints import infer_unet_config

    for name in ("realsr-v3", "inpaint-face", "faceir"):
        config = RELEASES[name].unet
        with torch.device("meta"):
            state = ResShiftUNet(config).state_dict()
        assert infer_unet_config(state) == config, name
    reduced = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(8,),
                         image_size=8, lq_size=8, swin_embed_dim=32, num_heads=1, window_size=4, mlp_ratio=2.0)
    state = ResShiftUNet(reduced).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("attn_mask")}  # size read from shrunken windows
    assert infer_unet_config(state, image_size_hint=8) == reduced


def test_a_space_to_depth_unet_round_trips_through_its_file(tmp_path):
    """space_to_depth cannot be read from shapes; our files carry it in their metadata, and sizes stay the input's."""
    from resshift_core.checkpoints import identify_checkpoint, infer_unet_config, save_unet

    config = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_resolutions=(16,),
                        image_size=64, lq_size=64, swin_embed_dim=32, num_heads=2, window_size=8, mlp_ratio=2.0,
                        space_to_depth=4)
    assert config.grid_size == 16 and config.latent_multiple == 4 * 16
    model = ResShiftUNet(config)
    assert model.out[2].weight.shape[0] == 3 * 16 and model.input_blocks[0][0].weight.shape[1] == 6 * 16
    path = save_unet(model, tmp_path / "s2d.safetensors", latent_space=False, scale=4)
    assert identify_checkpoint(path).config == config
    state = model.state_dict()
    assert infer_unet_config(state, space_to_depth=4) == config  # size from the shift masks
    no_masks = {k: v for k, v in state.items() if not k.endswith("attn_mask")}
    assert infer_unet_config(no_masks, image_size_hint=64, space_to_depth=4) == config  # size from the hint
    # without the metadata the same tensors read as a 48-channel latent UNet, never as a 3-channel one
    assert infer_unet_config(state).out_channels == 48


@pytest.mark.parametrize("record", ['{"space_to_depth": 2}', "[1, 2]", '"text"', "{not json"])
def test_a_damaged_unet_config_record_is_ignored_or_a_clear_error(tmp_path, record):
    """The metadata's unet_config is a hint: not an object -> ignored (shapes decide); a wrong factor -> the file's
    shapes do not fit and loading says so, never an AttributeError nor a network with no channels."""
    from safetensors import safe_open

    import resshift_core as rc
    from resshift_core.checkpoints import save_unet

    config = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(32,),
                        image_size=32, lq_size=32, swin_embed_dim=32, num_heads=2, window_size=8, mlp_ratio=2.0)
    good = save_unet(ResShiftUNet(config), tmp_path / "good.safetensors", latent_space=False, scale=4)
    with safe_open(str(good), "pt") as handle:
        metadata = dict(handle.metadata())
    metadata["resshift.unet_config"] = record
    damaged = tmp_path / "damaged.safetensors"
    save_file(load_file(str(good)), str(damaged), metadata=metadata)
    if record.startswith('{"'):
        with pytest.raises(UnknownCheckpointError, match="space_to_depth 2 does not fit its channels"):
            rc.load_model(damaged, expect="unet")
    else:
        assert rc.load_model(damaged, expect="unet").network.config == config


def test_the_header_of_a_model_of_ones_own_is_read_without_its_tensors(tmp_path):
    """What a host lists: our own UNet files, from the header alone; releases, other files and damage give None."""
    from tiny_weights import pixel_space_unet

    import resshift_core as rc

    own = rc.read_own_unet_header(pixel_space_unet(tmp_path / "mine.safetensors"))
    assert own == rc.OwnUNetFile(tmp_path / "mine.safetensors", 4, False, None)
    config = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(8,),
                        image_size=8, lq_size=8, swin_embed_dim=32, num_heads=1, window_size=4, mlp_ratio=2.0)
    latent = save_unet(ResShiftUNet(config), tmp_path / "latent.safetensors", scale=4, autoencoder="vq-f4")
    assert rc.read_own_unet_header(latent) == rc.OwnUNetFile(latent, 4, True, "vq-f4")
    release = save_unet(ResShiftUNet(config), tmp_path / "release.safetensors", release="realsr-v3")
    no_scale = save_unet(ResShiftUNet(config), tmp_path / "no_scale.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "mine.safetensors").read_bytes()[:50])
    text = tmp_path / "notes.safetensors"
    text.write_text("not a model")
    for path in (release, no_scale, truncated, text, tmp_path / "absent.safetensors"):
        assert rc.read_own_unet_header(path) is None, path.name


def test_space_to_depth_keeps_shapes_and_checks_its_factor():
    config = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1), attention_resolutions=(8,),
                        image_size=32, lq_size=32, swin_embed_dim=32, num_heads=2, window_size=8, mlp_ratio=2.0,
                        space_to_depth=2)
    model = ResShiftUNet(config).eval()
    x, lq = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 3]), lq=lq)
        assert out.shape == x.shape and torch.isfinite(out).all()
    for bad in (0, 3):
        with pytest.raises(ValueError, match="space_to_depth"):
            UNetConfig(image_size=32, lq_size=32, space_to_depth=bad)
    with pytest.raises(ValueError, match="lq_size == image_size"):
        UNetConfig(image_size=32, lq_size=64, space_to_depth=2)
