"""Our implementation against recorded runs of the official code (every set under RESSHIFT_GOLDEN).

Tolerances are those the fixture documentation suggests for float32 on the CPU.
"""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pytest
import torch
from golden_sets import MEASURED, GoldenSet, assert_close, assert_indices_match, discover_sets

from resshift_core.checkpoints import infer_unet_config, infer_vq_config, load_autoencoder, load_unet
from resshift_core.nets import ResShiftUNet, UNetConfig, VQAutoencoder, VQConfig
from resshift_core.pipeline import ResShiftPipeline, chop_starts, pad_bottom_right
from resshift_core.releases import ARCHITECTURES, AUTOENCODERS, RELEASES
from resshift_core.sampler import NoiseSource
from resshift_core.schedule import Schedule, ScheduleParams

SETS = [GoldenSet(p) for p in discover_sets()]
assert SETS, "no golden fixture set found (RESSHIFT_GOLDEN or tests/fixtures/golden)"
by_set = pytest.mark.parametrize("golden", SETS, ids=[s.name for s in SETS])


def schedule_params(entry: dict) -> ScheduleParams:
    params = entry.get("params", entry)
    power = params.get("schedule_kwargs", {}).get("power", params.get("power", 0.3))
    return ScheduleParams(int(params["steps"]), float(params["kappa"]), float(power),
                          float(params["min_noise_level"]), float(params["etas_end"]))


@cache
def pipeline_for(golden: GoldenSet) -> ResShiftPipeline:
    unet = load_unet(golden.path / "unet.safetensors").model
    autoencoder = load_autoencoder(golden.path / "vae.safetensors")
    diffusion = golden.config["diffusion"]["params"]
    torch.manual_seed(0)
    return ResShiftPipeline(unet, autoencoder, schedule_params(diffusion), int(diffusion["sf"]))


GoldenSet.__hash__ = lambda self: hash(self.path)  # cache key


# ------------------------------------------------------------------------------------------------- schedule
SCHEDULE_ARRAYS = ["sqrt_etas", "etas", "etas_prev", "alpha", "posterior_variance", "posterior_variance_clipped",
                   "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                   "weight_loss_mse"]


@by_set
def test_golden_schedule_arrays_match_official_float64(golden):
    entries = json.loads((golden.path / "schedule.json").read_text())
    assert entries
    for name, entry in entries.items():
        schedule = Schedule(schedule_params(entry))
        for key in SCHEDULE_ARRAYS:
            if key in entry:
                expected = np.asarray(entry[key], dtype=np.float64)
                ours = getattr(schedule, key)
                np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-300, err_msg=f"{name}.{key}")
        steps = schedule.num_steps
        if "network_input_divisor" in entry:
            divisors = [schedule.input_divisor(t) for t in range(steps)]
            np.testing.assert_allclose(divisors, entry["network_input_divisor"], rtol=1e-12)
        if "sampling_step_std_exp_half_logvar" in entry:
            stds = np.exp(0.5 * schedule.posterior_log_variance_clipped)
            np.testing.assert_allclose(stds, entry["sampling_step_std_exp_half_logvar"], rtol=1e-12)
        if "prior_noise_std_at_T" in entry:
            assert math.isclose(schedule.kappa * schedule.sqrt_etas[-1], entry["prior_noise_std_at_T"], rel_tol=1e-12)
        if "sampling_timesteps_fed_to_network" in entry:
            assert list(range(steps - 1, -1, -1)) == entry["sampling_timesteps_fed_to_network"]


# ------------------------------------------------------------------------------------------------- networks
@by_set
def test_golden_inferred_architecture_equals_the_official_constructor_arguments(golden):
    unet = load_unet(golden.path / "unet.safetensors").model
    assert unet.config == UNetConfig.from_official(golden.config["unet"]["params"])
    autoencoder = load_autoencoder(golden.path / "vae.safetensors")
    assert autoencoder.config == VQConfig.from_official(golden.config["autoencoder"]["params"])
    assert pipeline_for(golden).padding_multiple == golden.config["sampler"]["padding_offset"]


def run_unet_forward(golden: GoldenSet, io: dict, unet: ResShiftUNet) -> dict:
    """One forward on the fixture input, with the outputs of every module the fixture recorded."""
    recorded = {}
    hooks = []
    for name, module in unet.named_modules():
        if "act." + name in io:
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: recorded.__setitem__(name, out)))
    try:
        with torch.no_grad():
            out = unet(io["x_in"], io["t"], lq=io["lq"], mask=io.get("mask"))
    finally:
        for hook in hooks:
            hook.remove()
    recorded["out"] = out
    return recorded


def check_unet_forward(golden: GoldenSet, io: dict, unet: ResShiftUNet) -> None:
    recorded = run_unet_forward(golden, io, unet)
    assert_close(f"{golden.name}/unet_io/out", recorded["out"], io["out"], atol=1e-4, rtol=1e-4)
    activations = [k for k in io if k.startswith("act.")]
    for key in activations:
        name = key[len("act."):]
        assert name in recorded, f"the fixture records {name}, which our network does not have"
        assert_close(f"{golden.name}/unet_io/{key}", recorded[name][:1], io[key], atol=1e-4, rtol=1e-4)


@by_set
def test_golden_unet_forward_and_intermediate_blocks(golden):
    io = golden.tensors("unet_io.safetensors")
    check_unet_forward(golden, io, pipeline_for(golden).unet)


@by_set
def test_golden_forward_marginal_and_input_scaling(golden):
    io = golden.tensors("unet_io.safetensors")
    schedule = pipeline_for(golden).schedule
    z_t = schedule.q_sample(io["z_0"], io["z_y"], io["t"], io["noise"])
    assert_close(f"{golden.name}/unet_io/z_t", z_t, io["z_t"], atol=1e-5)
    assert_close(f"{golden.name}/unet_io/x_in", schedule.scale_input(io["z_t"], io["t"]), io["x_in"], atol=1e-5)


def check_swin_masks(golden: GoldenSet, io: dict, unet: ResShiftUNet, latent_hw: tuple[int, int], label: str):
    modules = dict(unet.named_modules())
    keys = [k for k in io if k.startswith("swin_mask.")]
    for key in keys:
        block = modules[key[len("swin_mask."):]]
        factor = unet.config.image_size // block.level_size
        mask = block._shift_mask(latent_hw[0] // factor, latent_hw[1] // factor, torch.device("cpu"))
        assert_close(f"{golden.name}/{label}/{key}", mask, io[key], atol=0)


@by_set
def test_golden_shifted_window_masks_reproduce_the_official_quirk(golden):
    io = golden.tensors("unet_io.safetensors")
    check_swin_masks(golden, io, pipeline_for(golden).unet, tuple(io["x_in"].shape[-2:]), "unet_io")
    if golden.has("sample_io.safetensors"):
        sample_io = golden.tensors("sample_io.safetensors")
        check_swin_masks(golden, sample_io, pipeline_for(golden).unet, tuple(sample_io["z_0"].shape[-2:]),
                         "sample_io")


@by_set
def test_golden_autoencoder_encode_quantise_decode(golden):
    io = golden.tensors("vae_io.safetensors")
    autoencoder = pipeline_for(golden).autoencoder
    with torch.no_grad():
        latent = autoencoder.encode(io["image"])
        assert_close(f"{golden.name}/vae_io/latent", latent, io["latent"], atol=1e-4)
        assert_indices_match(f"{golden.name}/vae_io/indices", autoencoder.quantize.indices(latent), io["indices"],
                             io.get("vq_boundary_dist"))
        assert_close(f"{golden.name}/vae_io/z_q", autoencoder.quantize(io["latent"]), io["z_q"], atol=1e-5)
        assert_close(f"{golden.name}/vae_io/decoded", autoencoder.decode(io["latent"]), io["decoded"], atol=1e-4)
        if "decoded_no_quant" in io:
            assert_close(f"{golden.name}/vae_io/decoded_no_quant", autoencoder.decode(io["latent"], quantize=False),
                         io["decoded_no_quant"], atol=1e-4)


# ------------------------------------------------------------------------------------------------- sampling
def recorded_noise(io: dict, steps: int, prefix: str = "") -> list[torch.Tensor]:
    return [io[prefix + "noise_prior"]] + [io[f"{prefix}step{k:02d}.noise"] for k in range(steps)]


def check_run(golden: GoldenSet, label: str, trace: dict, io: dict, prefix: str = "") -> None:
    pipe = pipeline_for(golden)
    for key in ("y0_padded_in", "y_up_bicubic", "z_y", "z_T", "x_dec", "lq_features"):
        if prefix + key in io and key in trace:
            assert_close(f"{golden.name}/{label}/{prefix}{key}", trace[key], io[prefix + key], atol=1e-4)
    for k in range(golden.steps):
        for key in ("z_t", "x_in", "model_out", "mean", "sample"):
            name = f"step{k:02d}.{key}"
            if prefix + name in io:
                assert_close(f"{golden.name}/{label}/{prefix}{name}", trace[name], io[prefix + name], atol=1e-3)
    assert_close(f"{golden.name}/{label}/{prefix}z_0", trace["z_0"], io[prefix + "z_0"], atol=1e-3)
    if prefix + "vq_indices" in io:
        with torch.no_grad():
            indices = pipe.autoencoder.quantize.indices(trace["z_0"])
        assert_indices_match(f"{golden.name}/{label}/{prefix}vq_indices", indices, io[prefix + "vq_indices"],
                             io.get(prefix + "vq_boundary_dist"))


def uint8_of(images_01: torch.Tensor) -> torch.Tensor:
    return (images_01.clamp(0, 1) * 255).round().to(torch.int16).permute(0, 2, 3, 1)


@by_set
def test_golden_full_sampling_run_with_replayed_noise(golden):
    if not golden.has("sample_io.safetensors"):
        pytest.skip("this set has no recorded sampling run")
    io = golden.tensors("sample_io.safetensors")
    pipe = pipeline_for(golden)
    trace: dict = {}
    result = pipe.upscale(io["lr_01"], mask=io.get("mask_01"), noise=recorded_noise(io, golden.steps), trace=trace,
                          mask_back=bool(golden.config.get("sample", {}).get("mask_back", True)))
    check_run(golden, "sample_io", trace, io)
    assert_close(f"{golden.name}/sample_io/sr_01", result, io["sr_01"], atol=1e-3)
    if "sr" in io:
        sr = ((result if "mask_01" not in io else trace["sr_unblended"]) * 2 - 1)
        assert_close(f"{golden.name}/sample_io/sr", sr, io["sr"], atol=2e-3)
    if "sr_01_unblended" in io:
        assert_close(f"{golden.name}/sample_io/sr_01_unblended", trace["sr_unblended"], io["sr_01_unblended"],
                     atol=1e-3)
    if "sr_uint8" in io:
        ours = uint8_of(result)
        expected = io["sr_uint8"].to(torch.int16).reshape(ours.shape)
        assert_close(f"{golden.name}/sample_io/sr_uint8", ours, expected, atol=1)


@by_set
def test_golden_each_step_with_teacher_forcing(golden):
    """Each step fed the official state: errors cannot accumulate, so the per-step tolerance is tight."""
    if not golden.has("sample_io.safetensors"):
        pytest.skip("this set has no recorded sampling run")
    io = golden.tensors("sample_io.safetensors")
    pipe = pipeline_for(golden)
    schedule = pipe.schedule
    mask = io.get("mask_m11")
    if mask is not None:
        mask = pad_bottom_right(mask, pipe.padding_multiple)
    with torch.no_grad():
        features = pipe.unet.condition_features(io["y0_padded_in"], mask)
        for k in range(golden.steps):
            prefix = f"step{k:02d}."
            t = io[prefix + "t"].long()
            x_in = schedule.scale_input(io[prefix + "z_t"], t)
            assert_close(f"{golden.name}/teacher/{prefix}x_in", x_in, io[prefix + "x_in"], atol=1e-4)
            x0 = pipe.unet(io[prefix + "x_in"], io[prefix + "unet_t"].long(), lq_features=features)
            assert_close(f"{golden.name}/teacher/{prefix}model_out", x0, io[prefix + "model_out"], atol=1e-4)
            mean = schedule.posterior_mean(io[prefix + "z_t"], io[prefix + "model_out"], t)
            assert_close(f"{golden.name}/teacher/{prefix}mean", mean, io[prefix + "mean"], atol=1e-4)
            sample = schedule.add_step_noise(io[prefix + "mean"], t, io[prefix + "noise"])
            assert_close(f"{golden.name}/teacher/{prefix}sample", sample, io[prefix + "sample"], atol=1e-4)


@by_set
def test_golden_chopped_run_matches_official_patchwise_averaging(golden):
    if not golden.has("sample_chop_io.safetensors"):
        pytest.skip("this set has no recorded chopped run")
    io = golden.tensors("sample_chop_io.safetensors")
    chop = golden.config.get("sample_chop") or golden.config["sampler"]["chop"]
    size, stride = int(chop["chop_size"]), int(chop["chop_stride"])
    height, width = io["lr_01"].shape[-2:]
    starts = [(r, c) for r in chop_starts(height, size, stride) for c in chop_starts(width, size, stride)]
    assert starts == [tuple(s) for s in io["patch_starts_lr"].tolist()]
    pipe = pipeline_for(golden)
    noise = []
    for number, (row, col) in enumerate(starts):  # every patch is an independent official run
        prefix = f"patch{number}."
        patch_noise = recorded_noise(io, golden.steps, prefix)
        noise += patch_noise
        trace: dict = {}
        with torch.no_grad():
            patch = io["lr_01"][:, :, row:row + size, col:col + size] * 2 - 1
            sr = pipe.sample_padded(patch, NoiseSource(replay=patch_noise), trace=trace)
        check_run(golden, "sample_chop_io", trace, io, prefix)
        assert_close(f"{golden.name}/sample_chop_io/{prefix}sr", sr, io[prefix + "sr"], atol=1e-3)
    result = pipe.upscale(io["lr_01"], noise=noise, chop_size=size, chop_stride=stride)
    assert_close(f"{golden.name}/sample_chop_io/sr_01", result, io["sr_01"], atol=1e-3)
    if "sr_uint8" in io:
        ours = uint8_of(result)
        assert_close(f"{golden.name}/sample_chop_io/sr_uint8", ours,
                     io["sr_uint8"].to(torch.int16).reshape(ours.shape), atol=1)


# ------------------------------------------------------------------------------------------------- manifests
KNOWN_MANIFESTS = {
    "manifest_unet_realsr_v1": RELEASES["realsr-v1"].unet, "manifest_unet_realsr_v3": RELEASES["realsr-v3"].unet,
    "manifest_unet_bicsr": RELEASES["bicsr"].unet, "manifest_unet_realsr_x2": ARCHITECTURES["realsr-x2"],
    "manifest_unet_inpaint_imagenet": RELEASES["inpaint-imagenet"].unet,
    "manifest_unet_inpaint_face": RELEASES["inpaint-face"].unet, "manifest_unet_faceir": RELEASES["faceir"].unet,
    "manifest_vae_vq_f4": AUTOENCODERS["vq-f4"].config,
    "manifest_vae_vq_f8_ffhq512_face": AUTOENCODERS["vq-f8-face"].config,
}


def manifests_of_all_sets():
    found = [(s, p) for s in SETS for p in s.manifests()]
    return pytest.mark.parametrize("golden,manifest", found or [pytest.param(None, None, marks=pytest.mark.skip(
        reason="no manifest in the fixture sets"))], ids=[f"{s.name}-{p.stem}" for s, p in found] or None)


@manifests_of_all_sets()
def test_golden_full_size_networks_match_the_release_manifests(golden, manifest):
    data = json.loads(manifest.read_text())
    expected = {k: tuple(v) for k, v in data["keys"].items()}
    meta = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    is_unet = "time_embed.0.weight" in expected
    with torch.device("meta"):
        if is_unet:
            inferred = infer_unet_config(meta)
            model = ResShiftUNet(inferred)
            official = UNetConfig.from_official(data["source"]["params"])
        else:
            inferred = infer_vq_config(meta)
            model = VQAutoencoder(inferred)
            official = VQConfig.from_official(data["source"]["params"])
    assert inferred == official, f"{manifest.name}: shapes give {inferred}, official constructor {official}"
    if manifest.stem in KNOWN_MANIFESTS:  # our release table builds exactly this network
        assert KNOWN_MANIFESTS[manifest.stem] == official
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(expected), (f"{manifest.name}: missing {sorted(set(expected) - set(ours))[:5]}, "
                                              f"extra {sorted(set(ours) - set(expected))[:5]}")
    assert ours == expected
    assert len(ours) == data["num_state_dict_entries"]
    buffers = dict(model.named_buffers())
    for key, dtype in data.get("buffers", {}).items():
        assert str(buffers[key].dtype) == dtype, key
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == data["params"]


# ------------------------------------------------------------------------------------------------- the checks bite
@by_set
def test_golden_checks_fail_on_a_perturbed_fixture_or_weight(golden):
    io = golden.tensors("unet_io.safetensors")
    unet = pipeline_for(golden).unet
    measured_before = dict(MEASURED)  # the deliberate failures below must not enter the report
    perturbed = dict(io)
    perturbed["out"] = io["out"].clone()
    perturbed["out"].view(-1)[7] += 5e-3  # one value, 50x the tolerance
    with pytest.raises(AssertionError, match="unet_io/out"):
        check_unet_forward(golden, perturbed, unet)
    # a weight nudged by 1e-2 in the last conv changes the output beyond tolerance
    weight = unet.out[2].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[(0,) * weight.dim()] += 1e-2  # any memory format
        with pytest.raises(AssertionError):
            check_unet_forward(golden, io, unet)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    check_unet_forward(golden, io, unet)  # restored: passes again
    MEASURED.clear()
    MEASURED.update(measured_before)
