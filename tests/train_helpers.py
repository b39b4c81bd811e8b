"""Small, fast training setups for the train/ tests (a reduced pixel-space UNet on scikit-image photos)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "train" / "configs" / "tiny_cpu.yaml"

# A 2-level UNet at 32 px: a few hundred ms per step on one core.
SMALL_UNET = ("model.unet={in_channels: 3, out_channels: 3, model_channels: 32, channel_mult: [1, 2], "
              "num_res_blocks: [1, 1], attention_resolutions: [32], image_size: 32, lq_size: 32, swin_depth: 2, "
              "swin_embed_dim: 32, num_heads: 2, window_size: 8, mlp_ratio: 2.0}")


def small_overrides(**extra) -> list[str]:
    """Overrides that turn the tiny recipe into a seconds-long test run (one thread, 32 px crops, batch 4, fp32 on
    every machine: the recipe's "auto" precision would follow the CPU)."""
    values = {
        "data.gt_size": 32, "train.global_batch": 4, "train.micro_batch": 2, "train.threads": 1,
        "train.val_every": 0, "train.save_every": 0, "train.log_every": 1, "optim.warmup_steps": 0,
        "optim.lr": 1e-3, "optim.schedule": "constant", "train.precision": "fp32",
        "data.sources": "[{skimage: [astronaut, coffee, camera]}]",
    }
    values.update(extra)
    return [SMALL_UNET] + [f"{key}={value}" for key, value in values.items()]


def train_args(run_dir: Path, steps: int, *overrides: str, resume: str = "auto") -> list[str]:
    return ["--config", str(TINY_RECIPE), "--run-dir", str(run_dir), "--resume", resume, "--max-steps", str(steps),
            "--no-progress", "--device", "cpu", *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "loss" in json.loads(line)]


def final_state(run_dir: Path) -> dict:
    from train import checkpoint

    found = checkpoint.latest_valid(run_dir)
    assert found is not None, f"no checkpoint in {run_dir}"
    return found[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_states_equal(first: dict, second: dict, atol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        if atol:
            torch.testing.assert_close(value, second[key], atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(value, second[key]), f"{key} differs"
