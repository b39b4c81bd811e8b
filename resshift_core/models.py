"""Model descriptors: a loaded network together with what a host needs to know about it (spandrel's idea).

    unet = load_model("resshift_realsrx4_s4_v3.pth")                  # kind, release, schedule found for you
    vae = load_model("autoencoder_vq_f4.pth", expect="autoencoder")
    pipe = ResShiftPipeline.from_loaded(unet, vae, device="cuda", dtype="fp16")
    unet.estimate_memory(512, 512, torch.float16)                       # bytes for its part of a 512 px run

A host that already holds a state dict (ComfyUI's loaders, a training run) passes the dict instead of a path, with
``name=`` the file name it came from so that official files are still recognised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import (
    AUTOENCODER_KIND,
    UNET_KIND,
    CheckpointIdentity,
    as_raw_checkpoint,
    check_kind,
    detect_kind,
    identify_raw,
    load_into,
)
from .nets.unet import ResShiftUNet, UNetConfig
from .nets.vqgan import VQAutoencoder
from .releases import Release
from .tiling import TileSettings

#: Precisions every network of the family runs in (normalisation statistics and codebook search stay float32).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class ModelDescriptor:
    """A loaded UNet or autoencoder and what is known about it.

    Attributes:
        identity: what the file is (:class:`~resshift_core.checkpoints.CheckpointIdentity`).
        network: the network, in eval mode without gradients, on the CPU in float32 as loaded.
    """

    identity: CheckpointIdentity
    network: nn.Module

    # ---- what the file is
    @property
    def kind(self) -> str:
        return self.identity.kind

    @property
    def path(self) -> Path | None:
        return self.identity.path

    @property
    def release(self) -> Release | None:
        return self.identity.release

    @property
    def task(self) -> str | None:
        return self.identity.task

    @property
    def scale(self) -> int | None:
        return self.identity.scale

    @property
    def schedule(self):
        return self.identity.schedule

    @property
    def one_step(self) -> bool:
        return self.identity.one_step

    @property
    def latent_space(self) -> bool:
        return self.identity.latent_space

    @property
    def config(self):
        return self.network.config

    @property
    def model(self) -> nn.Module:
        """The network (the name older code used)."""
        return self.network

    # ---- what a host plans with
    @property
    def latent_multiple(self) -> int:
        """UNet: the multiple latent sides must have; autoencoder: its down-sampling factor."""
        if self.kind == UNET_KIND:
            return self.network.config.latent_multiple
        return self.network.downsample_factor

    @property
    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return SUPPORTED_DTYPES

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def weight_bytes(self, dtype: torch.dtype | str | None = None) -> int:
        """Bytes of the weights on the device in ``dtype`` (the codebook stays float32; buffers as they are)."""
        from .memory import weight_bytes

        return weight_bytes(self.network, dtype)

    def preferred_dtype(self, device: str | torch.device = "cpu", allow_half: bool = True) -> torch.dtype:
        """The precision to run in on ``device``: float16 on CUDA (as the official code runs), float32 elsewhere or
        when the host forbids half precision (the WebUI's --no-half)."""
        from .pipeline import parse_dtype
        from .runtime import default_dtype

        return parse_dtype(default_dtype(str(device)) if allow_half else "fp32")

    def preferred_tiles(self, device: str | torch.device = "cpu") -> TileSettings:
        """The tile settings this model runs with by default on ``device`` (sizes in latent pixels)."""
        tile_size = self.identity.tile_size if self.kind == UNET_KIND else None
        defaults = TileSettings.for_device(torch.device(device))
        overlap = min(defaults.overlap, tile_size // 4) if tile_size else None  # as the pipeline sizes it
        return TileSettings.for_device(torch.device(device), tile_size=tile_size, overlap=overlap)

    def preferred_tile_size(self, device: str | torch.device = "cpu") -> int:
        """Largest tile (latent pixels) this model runs by default on ``device``: the UNet tile for a UNet, the
        autoencoder tile for an autoencoder."""
        tiles = self.preferred_tiles(device)
        return tiles.tile_size if self.kind == UNET_KIND else tiles.vae_tile_size

    def estimate_memory(self, height: int, width: int, dtype: torch.dtype | str | None = None,
                        tiles: TileSettings | None = None, *, batch: int = 1,
                        device: str | torch.device = "cpu") -> int:
        """Bytes this network needs on ``device`` for its part of a run on a ``height`` x ``width`` input image
        (input pixels): its weights plus the peak of its working memory (tiles as ``tiles``, default the
        device's). For a whole run (both networks and the tensors between them) ask the pipeline
        (:meth:`ResShiftPipeline.estimate_memory`)."""
        from .memory import estimate_network_memory

        return estimate_network_memory(self, height, width, dtype, tiles, batch=batch, device=torch.device(device))


def load_model(source: str | os.PathLike | Mapping, *, expect: str | None = None,
               release: str | Release | None = None, name: str | None = None) -> ModelDescriptor:
    """Read, identify, build and load one network.

    Args:
        source: a file (``.safetensors``, or ``.pth`` read with ``weights_only``) or a state dict.
        expect: ``"unet"`` or ``"autoencoder"``: a file of the other kind raises
            :class:`~resshift_core.errors.WrongModelKindError` saying where it belongs.
        release: the release of a UNet whose file does not say it (its schedule cannot be read from weights).
        name: for a state dict, the file name it came from.
    Raises:
        CheckpointError subclasses: unreadable, unsafe, damaged, wrong kind or unknown files.
    """
    if expect not in (None, UNET_KIND, AUTOENCODER_KIND):
        raise ValueError(f"expect must be 'unet', 'autoencoder' or None, got {expect!r}")
    raw = as_raw_checkpoint(source, name)
    check_kind(raw, detect_kind(raw.tensors), expect)
    identity = identify_raw(raw, release)
    network: nn.Module
    if identity.kind == UNET_KIND:
        network = ResShiftUNet(identity.config)
    else:
        network = VQAutoencoder(identity.config)
    load_into(network, raw.tensors, raw.path)
    return ModelDescriptor(identity, network.eval().requires_grad_(False))


def descriptor_for(network: nn.Module, *, release: Release | None = None, schedule=None, scale: int | None = None,
                   one_step: bool = False, latent_space: bool = True) -> ModelDescriptor:
    """A descriptor for a network built in memory (tests, training, benchmarks) rather than read from a file."""
    if isinstance(network, ResShiftUNet):
        kind, config = UNET_KIND, network.config
        task = release.task if release else ("inpaint" if config.cond_mask else "sr")
        identity = CheckpointIdentity(
            kind, config, release=release, release_source="argument" if release else None,
            schedule=schedule or (release.schedule if release else None), one_step=one_step or bool(
                release and release.one_step), scale=scale or (release.scale if release else None), task=task,
            latent_space=latent_space, autoencoder=release.autoencoder if release and latent_space else None)
    elif isinstance(network, VQAutoencoder):
        identity = CheckpointIdentity(AUTOENCODER_KIND, network.config)
    else:
        raise TypeError(f"expected a ResShiftUNet or a VQAutoencoder, got {type(network).__name__}")
    return ModelDescriptor(identity, network)


__all__ = ["SUPPORTED_DTYPES", "ModelDescriptor", "UNetConfig", "descriptor_for", "load_model"]
