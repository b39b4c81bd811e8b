"""Training speed on this machine: images per second for the tiny recipe and the full-size recipes.

    python train/gpu_check.py                 # CUDA if present (fp16 autocast for the full-size configs), < 2 min
    python train/gpu_check.py --device cpu --steps 3

Runs ``train/train.py`` for a few steps per configuration in a temporary folder, with the real data pipeline on
scikit-image's photos (RealESRGAN degradation on the device for the real-world recipes), seeded random full-size
networks (no weight files needed: a random VQ autoencoder, and LPIPS with a random VGG when the ``lpips`` package is
installed, else without LPIPS), one process, the recipe's micro-batch as the batch. The rate is measured over the steps
after the first logged window (start-up and first-call costs excluded). Prints one JSON line per configuration and a
table; ``--json FILE`` also writes them to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHOTOS = "data.sources=[{skimage: [astronaut, coffee, chelsea, rocket, motorcycle_left, hubble_deep_field, retina]}]"


def cases(device: str, steps: int) -> list[tuple[str, str, list[str]]]:
    try:
        import lpips  # noqa: F401
        lpips_override = ["loss.lpips_random_backbone=true"]
    except ImportError:
        lpips_override = ["loss.lpips_weight=0"]
    full = ["model.autoencoder.random_init=true", PHOTOS, "data.workers=4", "train.val_every=0",
            "train.save_every=0", "data.pool_size=0"]
    half = "fp16" if device == "cuda" else "fp32"
    return [
        ("tiny_cpu", "tiny_cpu.yaml", ["train.val_every=0", "train.save_every=0", f"train.max_steps={steps * 4}"]),
        ("realsr_v3 (MSE + LPIPS)", "realsr_v3.yaml",
         full + lpips_override + ["train.global_batch=12", "train.micro_batch=12", f"train.precision={half}",
                                  f"train.max_steps={steps}"]),
        ("realsr_v1 (MSE)", "realsr_v1.yaml",
         full + ["train.global_batch=8", "train.micro_batch=8", f"train.precision={half}",
                 f"train.max_steps={steps}"]),
    ]


def measure(name: str, recipe: str, overrides: list[str], device: str, log_every: int) -> dict:
    from train import train

    with tempfile.TemporaryDirectory() as run_dir:
        started = time.monotonic()
        args = ["--config", str(ROOT / "train" / "configs" / recipe), "--run-dir", run_dir, "--resume", "none",
                "--device", device, "--no-progress", "--log-every", str(log_every), *overrides]
        train.run(args)
        lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "images_per_s" in r]
    timed = records[1:] or records  # the first window holds start-up costs
    images = sum(r["images_per_s"] for r in timed) / len(timed)
    return {"config": name, "device": device, "images_per_s": round(images, 3),
            "steps": records[-1]["step"] if records else 0, "wall_s": round(time.monotonic() - started, 1),
            "precision": _precision(recipe, overrides, device)}


def _precision(recipe: str, overrides: list[str], device: str) -> str:
    """The precision a measured run used: its override, or its recipe's (with "auto" resolved as the trainer does)."""
    from resshift_core.runtime import autocast_precision
    from train import config as cfg

    precision = cfg.load_config(ROOT / "train" / "configs" / recipe, overrides)["train"]["precision"]
    return autocast_precision(device) if precision == "auto" else precision


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per full-size configuration")
    parser.add_argument("--only", help="comma-separated subset: tiny,v3,v1")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    chosen = cases(args.device, args.steps)
    if args.only:
        keys = {"tiny": "tiny_cpu", "v3": "realsr_v3", "v1": "realsr_v1"}
        wanted = [keys[k.strip()] for k in args.only.split(",")]
        chosen = [c for c in chosen if any(c[0].startswith(w) for w in wanted)]
    results = []
    for name, recipe, overrides in chosen:
        log_every = max(1, args.steps // 4) if name != "tiny_cpu" else args.steps
        result = measure(name, recipe, overrides, args.device, log_every)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{'config':28s} {'device':6s} {'precision':9s} {'images/s':>9s}")
    for r in results:
        print(f"{r['config']:28s} {r['device']:6s} {r['precision']:9s} {r['images_per_s']:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
