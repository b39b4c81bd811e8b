"""Export a training run's EMA weights as a .safetensors file that resshift_core, the CLI and the plugins load.

    python train/export.py runs/v3 -o my_v3.safetensors                  # newest valid checkpoint of the run
    python train/export.py runs/v3/checkpoints/step_00400000.pt -o v3.safetensors --weights model

The file carries, in its metadata (written by ``resshift_core.checkpoints.save_unet``), the schedule, the scale,
whether the model works in latent or pixel space, the autoencoder it was trained with and the training crop as the
default tile size, so ``python -m resshift_core upscale IN -o OUT --unet FILE`` needs no further flags (a pixel-space
model needs no ``--autoencoder``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "train"

from resshift_core import ResShiftUNet, ScheduleParams

from . import checkpoint as ckpt
from .train import unet_config


class ExportError(ValueError):
    """Nothing exportable where the user pointed; the message says what was expected."""


def read_source(source: str | Path) -> tuple[Path, dict]:
    """A run folder (its newest valid checkpoint) or a checkpoint file -> (path, checkpoint)."""
    source = Path(source)
    if source.is_dir():
        found = ckpt.latest_valid(source)
        if found is None:
            raise ExportError(f"'{source}' holds no valid training checkpoint (expected {source}/checkpoints/"
                              f"step_*.pt written by train/train.py)")
        return found
    if source.is_file():
        return source, ckpt.load(source)
    raise ExportError(f"'{source}' is neither a run folder nor a checkpoint file")


def export(source: str | Path, output: str | Path, weights: str = "ema") -> Path:
    """Write the EMA (or raw) UNet weights of a run / checkpoint to ``output`` (.safetensors); returns its path."""
    from resshift_core.checkpoints import save_unet

    _, state = read_source(source)
    config = json.loads(state["config_json"])
    model = ResShiftUNet(unet_config(config))
    model.load_state_dict(ckpt.strip_prefixes(state["ema" if weights == "ema" else "unet"]))
    latent = config["model"]["space"] == "latent"
    # The training crop in the UNet's own pixels: HR pixels / autoencoder factor (latent) or HR pixels (pixel space).
    crop = int(config["data"]["gt_size"])
    tile = crop * model.config.image_size // model.config.lq_size // int(config["scale"]) if latent else crop
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_unet(model, output, schedule=ScheduleParams.from_dict(config["diffusion"]), scale=int(config["scale"]),
              latent_space=latent, autoencoder=config["model"]["autoencoder"]["name"] if latent else None,
              tile_size=tile)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run folder (newest valid checkpoint) or a checkpoint file")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="the EMA weights (default, what the recipes validate) or the raw trained weights")
    args = parser.parse_args(argv)
    try:
        written = export(args.source, args.output, args.weights)
    except (ExportError, ValueError, RuntimeError, OSError) as error:  # damaged or foreign checkpoint files too
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
