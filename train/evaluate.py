"""PSNR / SSIM on the Y channel of an exported model on held-out photos, against bicubic up-sampling.

    python train/evaluate.py tiny.safetensors --seeds 1 2 3 --out runs/tiny/eval          # through the CLI
    python train/evaluate.py tiny.safetensors --via api                                  # through the Python API

Each held-out photo (default: the tiny recipe's validation photos, which training never sees) is cropped to a
multiple of the scale and downscaled with ``PIL.Image.resize(..., BICUBIC)``, the LR files are written as PNG, and
the model up-scales them with ``python -m resshift_core upscale`` (default) with ``--one-step`` and with the full
sampler, once per seed each (the seed draws the starting noise, which moves the one-step result too). Baselines: PIL
bicubic and torch bicubic (align_corners False) up-sampling of the same LR.
PSNR-Y / SSIM-Y ignore ``scale`` pixels at each border. Prints a table and writes ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "train"

import torch
import torch.nn.functional as F

from . import data as datamod
from .degradations import pil_bicubic_downscale
from .metrics import psnr_y, ssim_y

HELD_OUT = ("chelsea", "coffee", "rocket")


def prepare(names: list[str], scale: int, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (gt (1, 3, H, W), lr (1, 3, H/scale, W/scale)) in [0, 1]; LR PNGs written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for name in names:
        ref = datamod.ImageRef(name if "/" in name or "." in name else f"skimage:{name}")
        image = ref.load()
        width, height = image.size
        image = image.crop((0, 0, width - width % scale, height - height % scale))
        lr = pil_bicubic_downscale(image, scale)
        stem = Path(name).stem
        lr.save(folder / f"{stem}.png")
        pairs[stem] = (datamod.pil_to_float(image)[None], datamod.pil_to_float(lr)[None])
    return pairs


def bicubic_baselines(pairs, scale: int) -> dict[str, dict[str, torch.Tensor]]:
    from PIL import Image

    from resshift_core.images import tensor_to_pil

    out = {}
    for stem, (gt, lr) in pairs.items():
        pil_lr = tensor_to_pil(lr)[0]
        pil_up = pil_lr.resize((pil_lr.width * scale, pil_lr.height * scale), Image.BICUBIC)
        torch_up = F.interpolate(lr * 2 - 1, scale_factor=scale, mode="bicubic", align_corners=False)
        out[stem] = {"bicubic_pil": datamod.pil_to_float(pil_up)[None], "bicubic_torch": (torch_up.clamp(-1, 1) + 1) / 2}
    return out


def run_cli(unet: Path, lr_dir: Path, out_dir: Path, seed: int, one_step: bool, device: str) -> None:
    command = [sys.executable, "-m", "resshift_core", "upscale", str(lr_dir), "-o", str(out_dir), "--unet", str(unet),
               "--seed", str(seed), "--device", device, "--dtype", "fp32", "--overwrite", "--no-progress"]
    if one_step:
        command.append("--one-step")
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def read_outputs(out_dir: Path, stems) -> dict[str, torch.Tensor]:
    from PIL import Image

    results = {}
    for stem in stems:
        with Image.open(out_dir / f"{stem}.png") as image:
            results[stem] = datamod.pil_to_float(image.convert("RGB"))[None]
    return results


def upscale_api(unet_path: Path, pairs, seed: int, one_step: bool, device: str) -> dict[str, torch.Tensor]:
    """The same through the Python API (``ResShiftPipeline.assemble`` of a pixel-space file: no autoencoder)."""
    from resshift_core import ResShiftPipeline

    pipe = ResShiftPipeline.assemble(unet_path, device=device, dtype="fp32")
    return {stem: pipe.upscale(lr, seed=seed, one_step=True if one_step else None).cpu()
            for stem, (_, lr) in pairs.items()}


def score(results: dict[str, torch.Tensor], pairs, scale: int) -> dict:
    psnrs = {s: psnr_y(results[s], pairs[s][0], border=scale).item() for s in pairs}
    ssims = {s: ssim_y(results[s], pairs[s][0], border=scale).item() for s in pairs}
    return {"psnr_y": statistics.fmean(psnrs.values()), "ssim_y": statistics.fmean(ssims.values()),
            "per_image_psnr_y": psnrs}


def summarise(report: dict, seeds: list[int]) -> dict:
    """Mean, min, max and spread (dB) of one-step and full PSNR-Y over the seeds, and the mean gains over the better
    of the two bicubic baselines (the targets of the tiny recipe are gains: one step >= +0.3 dB, full >= -0.2 dB)."""
    base = max(report["bicubic_pil"]["psnr_y"], report["bicubic_torch"]["psnr_y"])
    summary: dict = {"bicubic_psnr_y": base, "seeds": list(seeds)}
    for kind in ("one_step", "full"):
        values = [report[f"{kind}_seed{seed}"]["psnr_y"] for seed in seeds]
        summary.update({f"{kind}_mean_psnr_y": statistics.fmean(values), f"{kind}_min_psnr_y": min(values),
                        f"{kind}_max_psnr_y": max(values), f"{kind}_spread_db": max(values) - min(values),
                        f"{kind}_gain_db": statistics.fmean(values) - base})
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unet", help="exported UNet (.safetensors from train/export.py)")
    parser.add_argument("--images", nargs="+", default=list(HELD_OUT),
                        help="held-out photos: scikit-image sample names or image files")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--via", choices=["cli", "api"], default="cli")
    parser.add_argument("--out", help="folder for LR inputs, outputs and results.json (default: a temporary one)")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda); fp32 either way")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        pairs = prepare(args.images, args.scale, out / "lr")
        report: dict = {"unet": str(args.unet), "images": list(pairs), "scale": args.scale, "via": args.via}
        for name, results in _transpose(bicubic_baselines(pairs, args.scale)).items():
            report[name] = score(results, pairs, args.scale)
        runs = [(f"one_step_seed{s}", s, True) for s in args.seeds] + [(f"full_seed{s}", s, False) for s in args.seeds]
        for label, seed, one_step in runs:
            if args.via == "cli":
                target = out / label
                run_cli(Path(args.unet), out / "lr", target, seed, one_step, args.device)
                results = read_outputs(target, pairs)
            else:
                results = upscale_api(Path(args.unet), pairs, seed, one_step, args.device)
            report[label] = {"seed": seed, **score(results, pairs, args.scale)}
        report["summary"] = summarise(report, args.seeds)
        (out / "results.json").write_text(json.dumps(report, indent=1)) if args.out else None
        print(json.dumps(report["summary"], indent=1))
        print(f"\n{'method':22s} {'PSNR-Y':>8s} {'SSIM-Y':>7s}  per image")
        for label in ["bicubic_pil", "bicubic_torch"] + [r[0] for r in runs]:
            values = report[label]
            per = ", ".join(f"{k} {v:.2f}" for k, v in values["per_image_psnr_y"].items())
            print(f"{label:22s} {values['psnr_y']:8.3f} {values['ssim_y']:7.4f}  {per}")
    return 0


def _transpose(nested: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for stem, methods in nested.items():
        for method, tensor in methods.items():
            out.setdefault(method, {})[stem] = tensor
    return out


if __name__ == "__main__":
    sys.exit(main())
