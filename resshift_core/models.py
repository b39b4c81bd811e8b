"""Model descriptors: a loaded network together with what a host needs to know about it (spandrel's idea).

    unet = load_model("resshift_realsrx4_s4_v3.pth")                  # kind, release, schedule found for you
    vae = load_model("autoencoder_vq_f4.pth", expect="autoencoder")
    pipe = ResShiftPipeline.from_loaded(unet, vae, device="cuda", dtype="fp16")
    unet.estimate_memory(512, 512, torch.float16)                       # bytes for its part of a 512 px run

The loaders (:func:`~resshift_core.checkpoints.load_model`) live with the file reading they are made of; this
module holds what they return. A host that already holds a state dict (ComfyUI's loaders, a training run) passes
the dict instead of a path, with ``name=`` the file name it came from so that official files are still recognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .memory import estimate_network_memory, weight_bytes
from .nets.unet import ResShiftUNet, UNetConfig
from .nets.vqgan import VQAutoencoder, VQConfig
from .releases import Release
from .runtime import choose_dtype
from .schedule import ScheduleParams
from .tiling import TileSettings

UNET_KIND, AUTOENCODER_KIND = "unet", "autoencoder"


@dataclass(frozen=True)
class CheckpointIdentity:
    """What a checkpoint is, decided in one place (:func:`~resshift_core.checkpoints.identify_checkpoint`).

    Attributes:
        kind: ``"unet"``, ``"autoencoder"``, or None for a file of neither kind.
        config: the architecture inferred from tensor shapes (UNetConfig / VQConfig), None when unknown.
        path: the file, or None for a state dict.
        metadata: the safetensors metadata (empty for .pth files).
        release: the release it belongs to (UNet), when known.
        release_source: how the release was decided: ``"argument"``, ``"file metadata"`` or ``"file name"``.
        schedule: its noise schedule (UNet), None when it cannot be known.
        one_step: SinSR-style single network call.
        scale: output / input size, when known without the autoencoder.
        task: ``"sr"``, ``"inpaint"`` or ``"faceir"`` (UNet).
        latent_space: False for a pixel-space UNet (no autoencoder); True otherwise.
        autoencoder: for a UNet, the name of the autoencoder it needs (key of ``AUTOENCODERS``) when known; for an
            autoencoder, its own name when known.
        tile_size: the UNet tile its author recommends (latent pixels; files from our trainer: the training crop).
        matches_release: for an identified UNet, whether its architecture is that of the release.
    """

    kind: str | None
    config: UNetConfig | VQConfig | None
    path: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    release: Release | None = None
    release_source: str | None = None
    schedule: ScheduleParams | None = None
    one_step: bool = False
    scale: int | None = None
    task: str | None = None
    latent_space: bool = True
    autoencoder: str | None = None
    tile_size: int | None = None
    matches_release: bool | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "state dict"



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
        return weight_bytes(self.network, dtype)

    def preferred_dtype(self, device: str | torch.device = "cpu", allow_half: bool = True) -> torch.dtype:
        """The precision to run in on ``device`` (:func:`~resshift_core.runtime.choose_dtype`): float16 on CUDA (as
        the official code runs), float32 elsewhere or when the host forbids half precision (the WebUI's
        --no-half)."""
        return choose_dtype(device, allow_half=allow_half)

    def preferred_tiles(self, device: str | torch.device = "cpu") -> TileSettings:
        """The tile settings this model runs with by default on ``device`` (sizes in latent pixels)."""
        tile_size = self.identity.tile_size if self.kind == UNET_KIND else None
        return TileSettings.resolve(torch.device(device), tiling="auto", tile_size=tile_size)

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
        return estimate_network_memory(self, height, width, dtype, tiles, batch=batch, device=torch.device(device))


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


__all__ = ["AUTOENCODER_KIND", "SUPPORTED_DTYPES", "UNET_KIND", "CheckpointIdentity", "ModelDescriptor", "UNetConfig",
           "descriptor_for"]
