"""train/: the loop learns, resumes exactly, survives a kill while saving, matches across process counts, exports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from train_helpers import (
    ROOT,
    SMALL_UNET,
    TINY_RECIPE,
    assert_states_equal,
    final_state,
    free_port,
    read_metrics,
    small_overrides,
    train_args,
)

from train import checkpoint, train
from train import config as cfg


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_training_lowers_the_loss_on_a_fixed_probe_batch(tmp_path):
    """20 steps at a high learning rate: the loss on fixed samples (same t, noise) falls clearly."""
    assert train.run(train_args(tmp_path, 20, *small_overrides())) == 0
    config = cfg.load_config(TINY_RECIPE, small_overrides())
    trainer = train.Trainer(config, train.Dist("cpu"))
    dataset = train.datamod.TrainPairs(train.datamod.collect_images(config["data"]["sources"]), config)
    indices = list(range(10_000, 10_008))  # samples the run never drew
    items = [dataset[i] for i in indices]
    gt, lq = torch.stack([i["gt"] for i in items]), torch.stack([i["lq"] for i in items])

    def probe() -> float:
        with torch.no_grad():
            return trainer.loss(gt, lq, indices)[0].item()

    before = probe()
    trainer.unet.load_state_dict(final_state(tmp_path)["unet"])
    after = probe()
    assert after < 0.6 * before, (before, after)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("loss", "lr", "grad_norm", "images_per_s"):
        assert all(key in r and r[key] == r[key] for r in records)


def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path):
    """Stopped at step 3 by --max-steps and resumed: the same losses, weights, EMA and optimizer state as one run
    (cosine LR over 6 steps with a warm-up, so the schedule position matters too)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    overrides = small_overrides(**{"optim.schedule": "cosine", "optim.warmup_steps": 2, "train.max_steps": 6,
                                   "optim.lr_min": 1e-4, "train.ema_warmup": "true"})
    assert train.run(train_args(straight, 6, *overrides)) == 0
    assert train.run(train_args(split, 3, *overrides)) == 0  # stops at 3 with a checkpoint
    assert [s for s, _ in checkpoint.list_checkpoints(split)] == [3]
    assert train.run(train_args(split, 6, *overrides)) == 0  # --resume auto continues at step 4
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(straight)]
    assert [r["lr"] for r in read_metrics(split)] == [r["lr"] for r in read_metrics(straight)]
    assert len({r["lr"] for r in read_metrics(straight)}) == 5  # 2 warm-up steps, then 4 cosine steps from the top
    a, b = final_state(straight), final_state(split)
    assert a["step"] == b["step"] == 6
    assert_states_equal(a["unet"], b["unet"])
    assert_states_equal(a["ema"], b["ema"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_a_time_limit_stops_cleanly_and_the_resumed_run_matches(tmp_path, caplog):
    """train.max_minutes (here: already spent after the first step) stops the run with a checkpoint; --max-minutes
    overrides it on the command line, and the resumed run follows the uninterrupted one."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    overrides = small_overrides(**{"train.max_steps": 4})
    assert train.run(train_args(straight, 4, *overrides)) == 0
    with caplog.at_level("INFO"):
        assert train.run(train_args(split, 4, *overrides, "train.max_minutes=1e-9")) == 0
    assert [s for s, _ in checkpoint.list_checkpoints(split)] == [1]
    assert "stopped (time limit) at step 1" in caplog.text
    assert train.run(train_args(split, 4, *overrides, "train.max_minutes=1e-9") + ["--max-minutes", "60"]) == 0
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(straight)]
    assert final_state(split)["step"] == 4
    assert_states_equal(final_state(split)["unet"], final_state(straight)["unet"])


def test_checkpoint_keys_have_no_wrapper_prefixes(tmp_path):
    assert train.run(train_args(tmp_path, 1, *small_overrides())) == 0
    state = final_state(tmp_path)
    for part in ("unet", "ema"):
        assert not [k for k in state[part] if k.startswith(("module.", "_orig_mod."))]
        assert "time_embed.0.weight" in state[part]


KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    from train import train
    real_save, calls = torch.save, [0]
    def save_then_die(obj, handle, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint: write part of it, then die like a killed process
            handle.write(b"PK\\x03\\x04" + b"x" * 100000)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, handle, *args, **kwargs)
    torch.save = save_then_die
    sys.exit(train.run(sys.argv[1:]))
""")


def test_a_kill_while_saving_leaves_the_previous_checkpoint_usable(tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(run_dir, 4, *small_overrides(**{"train.save_every": 2}))
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], env=_subprocess_env(), check=False, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [s for s, _ in checkpoint.list_checkpoints(run_dir)] == [2]
    assert list((run_dir / "checkpoints").glob("*.tmp")), "the partial file should be the temporary one"
    _, state = checkpoint.latest_valid(run_dir)
    assert state["step"] == 2
    # --resume auto continues from it and ends where an uninterrupted run ends
    assert train.run(args) == 0
    reference = tmp_path / "reference"
    assert train.run(train_args(reference, 4, *small_overrides(**{"train.save_every": 2}))) == 0
    assert_states_equal(final_state(run_dir)["unet"], final_state(reference)["unet"])


def test_latest_valid_skips_a_damaged_newest_checkpoint(tmp_path):
    assert train.run(train_args(tmp_path, 2, *small_overrides(**{"train.save_every": 1}))) == 0
    newest = checkpoint.checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, e.g. a disk that filled up
    path, state = checkpoint.latest_valid(tmp_path)
    assert state["step"] == 1 and path.name == "step_00000001.pt"


def test_two_processes_with_torchrun_match_one_process(tmp_path):
    """Same global batch (4 = 2 processes x 2 samples), same seeds: same losses and weights as one process."""
    overrides = small_overrides(**{"train.micro_batch": 1, "data.workers": 1})
    single, double = tmp_path / "one", tmp_path / "two"
    assert train.run(train_args(single, 3, *overrides)) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
               f"--master_port={free_port()}", "--master_addr=127.0.0.1", str(ROOT / "train" / "train.py"),
               *train_args(double, 3, *overrides)]
    result = subprocess.run(command, env=_subprocess_env(), check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close([r["loss"] for r in read_metrics(double)], [r["loss"] for r in read_metrics(single)],
                               rtol=1e-5, atol=1e-6)
    # Compare what the networks compute: biases right before a one-channel GroupNorm get only rounding noise as
    # gradient, which Adam scales up to +-lr steps of either sign, so those weights differ while the function agrees.
    config = cfg.load_config(TINY_RECIPE, overrides)
    x, lq = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 3])
    for part in ("unet", "ema"):
        outputs = []
        for run_dir in (single, double):
            network = train.ResShiftUNet(train.unet_config(config)).eval()
            network.load_state_dict(final_state(run_dir)[part])
            with torch.no_grad():
                outputs.append(network(x, t, lq=lq))
        torch.testing.assert_close(outputs[1], outputs[0], atol=2e-4, rtol=1e-4, msg=part)


def test_a_fresh_unet_starts_with_zeroed_residual_branches_like_the_official_class():
    """The official UNetModelSwin wraps the last convolution of every ResBlock in zero_module, so each block starts as
    its skip connection; a fresh network here must start the same way (with PyTorch's default initialisation there
    the tiny recipe learnt measurably slower), while ``model.init`` weights are loaded as they are."""
    from resshift_core.nets.unet import ResBlock

    config = cfg.load_config(TINY_RECIPE, [])
    model = train.build_unet(config)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    per_level = model.config.num_res_blocks
    assert len(blocks) == sum(per_level) + sum(n + 1 for n in per_level) + 2  # encoder, decoder, middle block
    for block in blocks:
        last = block.out_layers[-1]
        assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
        assert torch.count_nonzero(block.in_layers[-1].weight) > 0  # only the residual branch's output is zeroed
    block = next(b for b in blocks if isinstance(b.skip_connection, torch.nn.Identity))
    channels = block.in_layers[0].num_channels
    x, emb = torch.randn(2, channels, 16, 16), torch.randn(2, block.emb_layers[1].in_features)
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), x, atol=0, rtol=0)
    # the same seed gives the same network on every process
    torch.testing.assert_close(train.build_unet(config).state_dict(), model.state_dict(), atol=0, rtol=0)


def test_config_overrides_are_checked():
    config = cfg.load_config(TINY_RECIPE, ["optim.lr=2e-4", "data.validation.count=1"])
    assert config["optim"]["lr"] == pytest.approx(2e-4) and config["data"]["validation"]["count"] == 1
    with pytest.raises(cfg.ConfigError, match="optim.lrr"):
        cfg.load_config(TINY_RECIPE, ["optim.lrr=1"])
    with pytest.raises(cfg.ConfigError, match="divisible"):
        cfg.batch_split(cfg.load_config(TINY_RECIPE, ["train.global_batch=6"]), 4)
    with pytest.raises(cfg.ConfigError, match="max_minutes must be a positive number"):
        cfg.load_config(TINY_RECIPE, ["train.max_minutes=-5"])
    with pytest.raises(cfg.ConfigError, match="unknown model.unet key.*space_to_dpth"):
        train.unet_config(cfg.load_config(TINY_RECIPE, ["model.unet.space_to_dpth=2"]))
    with pytest.raises(cfg.ConfigError, match="space_to_depth must be"):
        train.unet_config(cfg.load_config(TINY_RECIPE, ["model.unet.space_to_depth=3"]))


def test_precision_auto_follows_the_device(monkeypatch):
    """"auto": fp16 on CUDA, bf16 on a CPU with native bf16, fp32 on other CPUs; the trainer autocasts accordingly."""
    from resshift_core import runtime

    assert runtime.autocast_precision("cuda:0") == "fp16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.autocast_precision("cpu") == expected
        config = cfg.load_config(TINY_RECIPE, small_overrides(**{"train.precision": "auto"}))
        trainer = train.Trainer(config, train.Dist("cpu"))
        assert trainer.precision == expected
        assert trainer.autocast_dtype == (torch.bfloat16 if native else None)
    with pytest.raises(cfg.ConfigError, match="fp16, bf16, fp32 or auto"):
        cfg.load_config(TINY_RECIPE, ["train.precision=half"])


def test_full_recipes_inherit_the_official_values():
    v1 = cfg.load_config(ROOT / "train/configs/realsr_v1.yaml")
    v3 = cfg.load_config(ROOT / "train/configs/realsr_v3.yaml")
    bic = cfg.load_config(ROOT / "train/configs/bicsr.yaml")
    assert (v1["diffusion"]["steps"], v1["diffusion"]["min_noise_level"], v1["train"]["max_steps"]) == (15, 0.04, 300000)
    assert (v1["train"]["global_batch"], v1["train"]["micro_batch"], v1["loss"]["lpips_weight"]) == (64, 8, 0.0)
    assert (v3["diffusion"]["steps"], v3["optim"]["schedule"], v3["train"]["global_batch"]) == (4, "cosine", 96)
    assert v3["loss"]["lpips_weight"] == 1.0 and v3["train"]["ema_decay"] == 0.999
    assert bic["data"]["degradation"] == "bicubic" and bic["train"]["compile"] is True
    assert train.learning_rate(v3, 0) == pytest.approx(5e-5 / 5000)
    assert train.learning_rate(v3, 4999) == pytest.approx(5e-5)
    assert train.learning_rate(v3, 399_999) == pytest.approx(2e-5, rel=1e-6)
    assert train.learning_rate(v1, 200_000) == pytest.approx(5e-5)


def test_missing_lpips_weights_say_how_to_train_without(tmp_path, capsys):
    code = train.main(["--config", str(ROOT / "train/configs/realsr_v3.yaml"), "--run-dir", str(tmp_path),
                       "--device", "cpu", "loss.lpips_vgg_weights=" + str(tmp_path / "absent.pth"),
                       "model.autoencoder.random_init=true", "data.sources=[{skimage: [astronaut]}]"])
    message = capsys.readouterr().err
    assert code == 2
    assert "absent.pth" in message and "lpips_weight=0" in message and "--no-lpips" in message


def test_latent_recipe_without_autoencoder_is_a_clear_error(tmp_path, capsys):
    code = train.main(["--config", str(ROOT / "train/configs/realsr_v1.yaml"), "--run-dir", str(tmp_path),
                       "--device", "cpu", "data.sources=[{skimage: [astronaut]}]"])
    assert code == 2 and "model.autoencoder.path" in capsys.readouterr().err


def test_export_upscales_through_the_public_api_and_the_cli(tmp_path):
    from PIL import Image

    import resshift_core as rc
    from train import export

    run_dir = tmp_path / "run"
    assert train.run(train_args(run_dir, 2, *small_overrides())) == 0
    exported = export.export(run_dir, tmp_path / "tiny.safetensors")
    identity = rc.identify_checkpoint(exported)
    assert identity.kind == "unet" and identity.scale == 4 and not identity.latent_space
    assert identity.tile_size == 32 and identity.schedule.steps == 4
    unet = rc.load_model(exported, expect="unet")
    # the exported weights are the EMA weights of the newest checkpoint
    ema = final_state(run_dir)["ema"]
    assert all(torch.equal(unet.network.state_dict()[k], v) for k, v in ema.items())
    pipe = rc.ResShiftPipeline.from_loaded(unet, None, device="cpu", dtype="fp32")
    lr = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    hr = pipe.upscale(lr, seed=3)
    assert hr.shape == (1, 3, 48, 80) and 0 <= hr.min() and hr.max() <= 1
    assert torch.equal(hr, pipe.upscale(lr, seed=3))

    image_path = tmp_path / "photo.png"
    Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(image_path)
    for extra in ([], ["--one-step"]):
        out_dir = tmp_path / ("out" + "".join(extra))
        result = subprocess.run([sys.executable, "-m", "resshift_core", "upscale", str(image_path), "-o", str(out_dir),
                                 "--unet", str(exported), "--device", "cpu", "--no-progress", *extra],
                                env=_subprocess_env(), check=False, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        with Image.open(out_dir / "photo.png") as upscaled:
            assert upscaled.size == (80, 48)


def test_a_space_to_depth_model_trains_exports_and_upscales_tiled(tmp_path):
    """A pixel-space UNet on a 2x coarser grid: its file says so, loads without flags and upscales any size in tiles
    of its training crop (the tiles' multiple includes the factor)."""
    import resshift_core as rc
    from train import export

    s2d_unet = SMALL_UNET.replace("attention_resolutions: [32]", "attention_resolutions: [16]").replace(
        "mlp_ratio: 2.0}", "mlp_ratio: 2.0, space_to_depth: 2}")
    run_dir = tmp_path / "run"
    assert train.run(train_args(run_dir, 3, *small_overrides(), s2d_unet)) == 0
    exported = export.export(run_dir, tmp_path / "s2d.safetensors")
    unet = rc.load_model(exported, expect="unet")
    # the coarse grid needs multiples of 16 (its 8 px windows at the 2x down-sampled level): 32 input pixels
    assert unet.network.config.space_to_depth == 2 and unet.network.config.latent_multiple == 32
    ema = final_state(run_dir)["ema"]
    assert all(torch.equal(unet.network.state_dict()[k], v) for k, v in ema.items())
    pipe = rc.ResShiftPipeline.from_loaded(unet, None, device="cpu", dtype="fp32")
    lr = torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(0))  # 52x84 out: tiles of 32
    plan = pipe.plan(13, 21)
    assert plan.unet_tiles is not None and len(plan.unet_tiles) > 1
    for one_step in (False, True):
        hr = pipe.upscale(lr, seed=3, one_step=one_step)
        assert hr.shape == (1, 3, 52, 84) and 0 <= hr.min() and hr.max() <= 1
        assert torch.equal(hr, pipe.upscale(lr, seed=3, one_step=one_step))


def test_export_of_an_empty_run_folder_is_a_clear_error(tmp_path, capsys):
    from train import export

    assert export.main([str(tmp_path), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "no valid training checkpoint" in capsys.readouterr().err


LATENT_OVERRIDES = [
    "model.space=latent", "model.autoencoder.random_init=true",
    "model.autoencoder.config={ch: 32, ch_mult: [1, 2, 4], num_res_blocks: 1, n_embed: 64}",
    ("model.unet={model_channels: 32, channel_mult: [1, 2], num_res_blocks: [1, 1], attention_resolutions: [16], "
     "image_size: 16, lq_size: 16, swin_embed_dim: 32, num_heads: 2, window_size: 4, mlp_ratio: 2.0}"),
    "loss.lpips_weight=1.0", "loss.lpips_random_backbone=true", "data.degradation=realesrgan", "data.gt_size=64",
    "data.pool_size=2", "data.workers=1", "data.dihedral=false", "train.precision=bf16",
]


def test_latent_realesrgan_recipe_with_lpips_and_pool_resumes_exactly(tmp_path):
    """The real-world recipe's path on small networks: VQ latents, LPIPS through the decoder, the RealESRGAN
    degradation with the pair pool (rebuilt on resume), bf16 autocast; stopped at 3 and resumed to 4 = one run."""
    pytest.importorskip("lpips", reason="the LPIPS term needs the lpips package (pip install -e '.[train]')")
    overrides = small_overrides(**{"train.global_batch": 2, "train.micro_batch": 1}) + LATENT_OVERRIDES
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.run(train_args(straight, 4, *overrides)) == 0
    assert train.run(train_args(split, 3, *overrides)) == 0
    assert train.run(train_args(split, 4, *overrides)) == 0
    first, second = read_metrics(straight), read_metrics(split)
    assert [r["loss"] for r in second] == [r["loss"] for r in first]
    assert all(r["lpips"] > 0 and r["mse"] > 0 for r in first)
    assert_states_equal(final_state(split)["unet"], final_state(straight)["unet"])


def test_evaluate_scores_one_step_and_full_per_seed_through_cli_and_api(tmp_path):
    """evaluate.py: bicubic baselines computed right, one-step and full runs per seed, CLI and API agree."""
    import json

    import numpy as np
    from PIL import Image

    from train import evaluate, export
    from train.metrics import psnr_y

    run_dir = tmp_path / "run"
    assert train.run(train_args(run_dir, 2, *small_overrides())) == 0
    exported = export.export(run_dir, tmp_path / "tiny.safetensors")
    photo = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    reports = {}
    for via in ("api", "cli"):
        out = tmp_path / via
        assert evaluate.main([str(exported), "--images", str(photo), "--seeds", "1", "2", "--via", via,
                              "--out", str(out)]) == 0
        reports[via] = json.loads((out / "results.json").read_text())
    report = reports["cli"]
    summary = report["summary"]
    assert summary["seeds"] == [1, 2]
    for kind in ("one_step", "full"):
        values = [report[f"{kind}_seed{seed}"]["psnr_y"] for seed in (1, 2)]
        assert summary[f"{kind}_spread_db"] == pytest.approx(max(values) - min(values))
        assert summary[f"{kind}_gain_db"] == pytest.approx(sum(values) / 2 - summary["bicubic_psnr_y"])
    # the PIL bicubic baseline is PIL's own x4 of the PIL-downscaled photo, scored on the Y channel
    with Image.open(photo) as image:
        small = image.resize((13, 10), Image.BICUBIC)
        up = torch.from_numpy(np.array(small.resize((52, 40), Image.BICUBIC))).permute(2, 0, 1)[None] / 255
    gt = torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255
    assert report["bicubic_pil"]["psnr_y"] == pytest.approx(psnr_y(up, gt, border=4).item(), abs=1e-4)
    # the CLI writes 8-bit PNGs, the API scores floats: the same seeds agree to rounding
    for label in ("one_step_seed1", "full_seed2"):
        assert reports["api"][label]["psnr_y"] == pytest.approx(report[label]["psnr_y"], abs=0.05)
