"""The perceptual term of the v3 / bicubic recipes: LPIPS (VGG), built without any download.

LPIPS needs two sets of weights: the small linear heads, which ship inside the ``lpips`` package on PyPI, and the
VGG16 backbone (torchvision's ImageNet weights, ``vgg16-397923af.pth``), which must already be on this machine. Where
it is missing the error says where to put it, and how to train without LPIPS (``loss.lpips_weight=0``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

VGG_FILE = "vgg16-397923af.pth"
# lpips' VGG is cut into five slices of torchvision's vgg16().features at these layer indices.
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


class LPIPSUnavailable(RuntimeError):
    """LPIPS was asked for but cannot be built here; the message says how to fix it or switch it off."""


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE


def build_lpips(vgg_weights: str | os.PathLike | None = None, random_backbone: bool = False,
                seed: int = 0) -> nn.Module:
    """An LPIPS(VGG) module (eval, frozen) taking two (B, 3, H, W) images in [-1, 1] and returning (B, 1, 1, 1).

    Args:
        vgg_weights: torchvision vgg16 weights file; default torch hub's cache (``~/.cache/torch/hub/checkpoints``).
        random_backbone: tests only: a seeded random VGG, so the loss path runs without the weights file.
    """
    try:
        import lpips
    except ImportError as error:
        raise LPIPSUnavailable("the LPIPS loss needs the 'lpips' package: pip install lpips (or pip install -e "
                               "'.[train]'); to train without it set loss.lpips_weight=0 (or pass --no-lpips)") \
            from error
    if random_backbone:
        torch.manual_seed(seed)
        return _lpips_module(lpips)
    path = Path(vgg_weights).expanduser() if vgg_weights else default_vgg_path()
    if not path.is_file():
        raise LPIPSUnavailable(
            f"the LPIPS loss needs torchvision's VGG16 ImageNet weights, not found at '{path}'. Copy {VGG_FILE} "
            f"there (it is what torchvision.models.vgg16(weights='IMAGENET1K_V1') downloads) or point "
            f"loss.lpips_vgg_weights=/path/to/{VGG_FILE} at it; to train without LPIPS set loss.lpips_weight=0 "
            f"(or pass --no-lpips)")
    module = _lpips_module(lpips)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    mapped = {}
    for number, (start, stop) in enumerate(_SLICES, start=1):
        for layer in range(start, stop):
            for kind in ("weight", "bias"):
                key = f"features.{layer}.{kind}"
                if key in state:
                    mapped[f"slice{number}.{layer}.{kind}"] = state[key]
    missing = module.net.load_state_dict(mapped, strict=False).missing_keys
    if missing:
        raise LPIPSUnavailable(f"'{path}' is not torchvision's vgg16 weights file (missing {missing[:3]})")
    return module.eval().requires_grad_(False)


def _lpips_module(lpips) -> nn.Module:
    """lpips' VGG LPIPS with its packaged linear heads and an uninitialised backbone (never downloads)."""
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated 'pretrained' argument
        warnings.simplefilter("ignore", UserWarning)
        module = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    return module.eval().requires_grad_(False)
