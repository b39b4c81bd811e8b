"""Small weight files for tests: the reduced official-layout models of the golden fixtures, re-packaged the ways
users meet them (training .pth with wrappers, damaged copies, hostile pickles).

The public golden set is a reduced UNet + autoencoder with the official key names whose schedule equals release
realsr-v3's (load it with ``release="realsr-v3"``); the inpainting set pairs with release inpaint-imagenet.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
UNET = GOLDEN / "public" / "unet.safetensors"
AUTOENCODER = GOLDEN / "public" / "vae.safetensors"
SR_RELEASE = "realsr-v3"
INPAINT_UNET = GOLDEN / "public_inpaint" / "unet.safetensors"
INPAINT_AUTOENCODER = GOLDEN / "public_inpaint" / "vae.safetensors"
INPAINT_RELEASE = "inpaint-imagenet"


def training_style_pth(path: str | os.PathLike, source: Path = UNET, *, prefix: str = "module.",
                       wrapper: str | None = "state_dict") -> Path:
    """Write ``source``'s tensors as a torch .pth the way a DDP training run saves them:
    ``{wrapper: {prefix + key: tensor}}``."""
    tensors = {prefix + key: value for key, value in load_file(str(source)).items()}
    torch.save({wrapper: tensors} if wrapper else tensors, str(path))
    return Path(path)


class _RunsCommand:
    """Pickles into a call of os.system: what a hostile checkpoint does on a plain ``torch.load``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_pickle(path: str | os.PathLike, marker: str | os.PathLike) -> Path:
    """A .pth that, if unpickled with code execution allowed, creates the file ``marker``."""
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "payload": _RunsCommand(f"touch '{marker}'")}, str(path))
    return Path(path)


def truncated_copy(source: str | os.PathLike, path: str | os.PathLike, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of ``source``'s bytes, like an interrupted download."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * fraction)])
    return Path(path)


def pixel_space_unet(path: str | os.PathLike, space_to_depth: int = 2, seed: int = 0) -> Path:
    """A small pixel-space x4 UNet file as ``train/export.py`` writes one (no autoencoder; 32 px tiles; a network
    on a ``space_to_depth`` times coarser grid), with seeded random weights."""
    import resshift_core as rc
    from resshift_core.nets import ResShiftUNet, UNetConfig
    from resshift_core.schedule import ScheduleParams

    config = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=(1, 1),
                        attention_resolutions=(32 // space_to_depth // 2,), image_size=32, lq_size=32,
                        swin_embed_dim=32, num_heads=2, window_size=8, mlp_ratio=2.0, space_to_depth=space_to_depth)
    torch.manual_seed(seed)
    return rc.save_unet(ResShiftUNet(config), path, schedule=ScheduleParams(steps=4, kappa=1.0), scale=4,
                        latent_space=False, tile_size=32)

