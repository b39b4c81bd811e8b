"""The table of released ResShift (and SinSR) checkpoints.

The schedule of a UNet cannot be read from its weights (v1 and v3 have identical shapes but 15 vs 4 steps), so an
official file is identified by its file name, or by a release name the user gives; files written by this project
carry the release and the schedule in their safetensors metadata.

Licence: the official ResShift weights are published by their authors under the **S-Lab License 1.0** (non-commercial
use only); SinSR, built on ResShift, redistributes under the same terms. This project's code is under its own
licence; downloading the weights means accepting theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ResShiftError
from .nets.unet import UNetConfig
from .nets.vqgan import VQConfig
from .schedule import ScheduleParams

RESSHIFT_URL = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"
SINSR_URL = "https://github.com/wyf0912/SinSR/releases/download/v1.0/"
WEIGHTS_LICENSE = "S-Lab License 1.0 (non-commercial use only)"
LICENSE_URL = "https://github.com/zsyOAOA/ResShift/blob/journal/LICENSE"
# SinSR's authors publish under their own terms (parts of their code come from ResShift, under the S-Lab License).
SINSR_LICENSE = "CC BY-NC-SA 4.0 (non-commercial use only; parts under ResShift's S-Lab License 1.0)"
SINSR_LICENSE_URL = "https://github.com/wyf0912/SinSR/blob/main/LICENSE"


@dataclass(frozen=True)
class AutoencoderRelease:
    """A released VQ autoencoder."""

    name: str
    file_name: str
    config: VQConfig
    sha256: str | None = None  # not published by the authors; filled in once verified
    license: str = WEIGHTS_LICENSE
    license_url: str = LICENSE_URL

    @property
    def url(self) -> str:
        return RESSHIFT_URL + self.file_name


@dataclass(frozen=True)
class Release:
    """A released UNet with everything needed to run it.

    Attributes:
        name: our short name (``realsr-v3``...).
        task: ``sr`` (super-resolution), ``inpaint`` or ``faceir``.
        scale: output / input size ratio.
        schedule: the noise schedule it was trained with.
        file_name: the official file name (also the name it is saved under in the cache).
        url: where the official file is published.
        autoencoder: name of the autoencoder it needs (key of :data:`AUTOENCODERS`).
        unet: its network hyper-parameters.
        one_step: SinSR-style: a single network call at t = T-1 whose x0 prediction is the result.
        description: one line for menus.
        sha256: checksum when known.
    """

    name: str
    task: str
    scale: int
    schedule: ScheduleParams
    file_name: str
    url: str
    autoencoder: str
    unet: UNetConfig
    one_step: bool = False
    description: str = ""
    sha256: str | None = None
    license: str = WEIGHTS_LICENSE
    license_url: str = LICENSE_URL

    @property
    def num_network_calls(self) -> int:
        return 1 if self.one_step else self.schedule.steps


_SR = UNetConfig()
_SCHEDULE_V1 = ScheduleParams(steps=15, kappa=2.0, power=0.3, min_noise_level=0.04, etas_end=0.99)
_SCHEDULE_S4 = ScheduleParams(steps=4, kappa=2.0, power=0.3, min_noise_level=0.2, etas_end=0.99)
_INPAINT = UNetConfig(lq_size=256, cond_mask=True)
_FACEIR = UNetConfig(in_channels=8, out_channels=8, lq_size=512)

AUTOENCODERS: dict[str, AutoencoderRelease] = {
    "vq-f4": AutoencoderRelease("vq-f4", "autoencoder_vq_f4.pth", VQConfig()),
    "vq-f4-face": AutoencoderRelease("vq-f4-face", "celeba256_vq_f4_dim3_face.pth", VQConfig()),
    "vq-f8-face": AutoencoderRelease("vq-f8-face", "ffhq512_vq_f8_dim8_face.pth",
                                     VQConfig(embed_dim=8, n_embed=4096, z_channels=8, ch=64, ch_mult=(1, 2, 4, 8),
                                              num_res_blocks=(1, 2, 3, 4))),
}

# name, task, scale, schedule, official file, where it is published, autoencoder, architecture, one step, menu line
_TABLE = (
    ("realsr-v3", "sr", 4, _SCHEDULE_S4, "resshift_realsrx4_s4_v3.pth", RESSHIFT_URL, "vq-f4", _SR, False,
     "real-world x4, 4 steps (journal version; the recommended default)"),
    ("realsr-v2", "sr", 4, _SCHEDULE_V1, "resshift_realsrx4_s15_v2.pth", RESSHIFT_URL, "vq-f4", _SR, False,
     "real-world x4, 15 steps (NeurIPS 2023, 500k iterations)"),
    ("realsr-v1", "sr", 4, _SCHEDULE_V1, "resshift_realsrx4_s15_v1.pth", RESSHIFT_URL, "vq-f4", _SR, False,
     "real-world x4, 15 steps (NeurIPS 2023, 300k iterations)"),
    ("bicsr", "sr", 4, _SCHEDULE_S4, "resshift_bicsrx4_s4.pth", RESSHIFT_URL, "vq-f4", _SR, False,
     "bicubic x4, 4 steps (for Matlab-bicubic down-scaled inputs)"),
    ("inpaint-imagenet", "inpaint", 1, _SCHEDULE_S4, "resshift_inpainting_imagenet_s4.pth", RESSHIFT_URL, "vq-f4",
     _INPAINT, False, "inpainting of natural images, 4 steps (mask: white = fill)"),
    ("inpaint-face", "inpaint", 1, _SCHEDULE_S4, "resshift_inpainting_face_s4.pth", RESSHIFT_URL, "vq-f4-face",
     _INPAINT, False, "inpainting of aligned faces, 4 steps (mask: white = fill)"),
    ("faceir", "faceir", 1, _SCHEDULE_S4, "resshift_faceir_s4.pth", RESSHIFT_URL, "vq-f8-face", _FACEIR, False,
     "blind restoration of aligned 512x512 faces, 4 steps"),
    ("sinsr-v1", "sr", 4, _SCHEDULE_V1, "SinSR_v1.pth", SINSR_URL, "vq-f4", _SR, True,
     "SinSR: real-world x4 in one step (distilled from ResShift v1)"),
    ("sinsr-v2", "sr", 4, _SCHEDULE_V1, "SinSR_v2.pth", SINSR_URL, "vq-f4", _SR, True,
     "SinSR v2: real-world x4 in one step"),
)
RELEASES: dict[str, Release] = {
    name: Release(name, task, scale, schedule, file_name, base_url + file_name, autoencoder, unet, one_step=one_step,
                  description=description,
                  **({"license": SINSR_LICENSE, "license_url": SINSR_LICENSE_URL} if base_url == SINSR_URL else {}))
    for name, task, scale, schedule, file_name, base_url, autoencoder, unet, one_step, description in _TABLE
}

DEFAULT_RELEASE = "realsr-v3"
DEFAULT_SEED = 12345  # the official inference script's default

# Architectures with no released checkpoint, for training and for loading one's own.
ARCHITECTURES: dict[str, UNetConfig] = {
    "realsr-x2": UNetConfig(lq_size=128),
}


def get_release(name: str) -> Release:
    """Look a release up by name (case-insensitive, '_' and '-' alike); a clear error lists the valid names."""
    key = name.strip().lower().replace("_", "-")
    if key in RELEASES:
        return RELEASES[key]
    raise ResShiftError(f"unknown release {name!r}; expected one of: {', '.join(RELEASES)}")


def _base_name(file_name: str) -> str:
    """The file name without its folders, whichever separator a host used."""
    return file_name.replace("\\", "/").rsplit("/", 1)[-1]


def release_for_file_name(file_name: str) -> Release | None:
    """The release whose official file (or cache name) this is, by base name; None if it is not one of them."""
    base = _base_name(file_name)
    aliases = {"resshift_inpaint_imagenet_s4.pth": "inpaint-imagenet",  # the name the official script saves under
               "resshift_inpaint_face_s4.pth": "inpaint-face"}
    if base in aliases:
        return RELEASES[aliases[base]]
    stem = base.rsplit(".", 1)[0]
    for release in RELEASES.values():
        if release.file_name.rsplit(".", 1)[0] == stem:
            return release
    return None


def official_file(file_name: str) -> Release | AutoencoderRelease | None:
    """The release or autoencoder whose official file is exactly ``file_name`` (a base name, as a host's model menu
    lists it), or None: what can be downloaded for that name."""
    base = _base_name(file_name)
    for item in list(RELEASES.values()) + list(AUTOENCODERS.values()):
        if item.file_name == base:
            return item
    return None


def autoencoder_for_file_name(file_name: str) -> AutoencoderRelease | None:
    base = _base_name(file_name).rsplit(".", 1)[0]
    for autoencoder in AUTOENCODERS.values():
        if autoencoder.file_name.rsplit(".", 1)[0] == base:
            return autoencoder
    return None


def official_kind(file_name: str) -> str | None:
    """``"unet"`` or ``"autoencoder"`` for an official file name (or a conversion with its stem), else None: what a
    host's file lists can tell from the name alone, without reading the file."""
    if release_for_file_name(file_name) is not None:
        return "unet"
    return "autoencoder" if autoencoder_for_file_name(file_name) is not None else None


def official_tile_range() -> tuple[int, int]:
    """(minimum, step) of the UNet tile sizes the released models take (latent pixels): what a host offers before
    a model is loaded (see :func:`~resshift_core.tiling.tile_size_range`)."""
    from .tiling import tile_size_range

    return tile_size_range(get_release(DEFAULT_RELEASE).unet.latent_multiple)
