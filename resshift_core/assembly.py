"""How a pipeline is put together: which files, which autoencoder, which precision, which device.

Every front-end (the command line, the web app, the benchmark, ComfyUI, the WebUI, training) builds its pipeline
through :meth:`ResShiftPipeline.assemble <resshift_core.pipeline.ResShiftPipeline.assemble>`, which asks this module
three rules, each decided here only:

* :func:`needed_autoencoder`: the autoencoder a UNet runs with (none in pixel space);
* :func:`~resshift_core.hub.release_files`: the official files a release needs;
* :func:`~resshift_core.runtime.choose_dtype`: the precision on a device, given what the host says
  (:class:`HostFacts`).

A host brings its own facts: ComfyUI its chosen dtype and model folders, the WebUI ``--no-half`` /
``--upcast-sampling``, its model folders and its downloader. Without them the core's cache and downloader are used.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import load_model, resolve_schedule
from .errors import CheckpointError, ResShiftError, WrongModelKindError
from . import hub
from .hub import WeightFile
from .models import ModelDescriptor
from .releases import AUTOENCODERS, DEFAULT_RELEASE, AutoencoderRelease, Release, get_release, official_file
from .runtime import choose_dtype, resolve_device
from .schedule import Schedule
from .stages import ModelSpec

logger = logging.getLogger(__name__)

#: What a host's file finder does: an official or listed file name -> its local path, or None when absent.
FindFile = Callable[[str], "str | os.PathLike | None"]
#: What a host's downloader does: official files -> their local paths (raises the core's OfflineError when it
#: cannot, see :func:`resshift_core.hub.missing_files_error`).
FetchFiles = Callable[[Sequence[WeightFile]], Sequence["str | os.PathLike"]]


@dataclass(frozen=True)
class HostFacts:
    """What the program hosting the pipeline decides itself; every field is optional.

    Attributes:
        dtype: the host's precision for "auto" (ComfyUI's ``unet_dtype``), or a function of the loaded UNet's
            descriptor that gives it (ComfyUI sizes it by the parameter count).
        allow_half: False under the WebUI's ``--no-half``: "auto" then runs float32.
        upcast: the WebUI's ``--upcast-sampling``: "auto" then runs float32.
        find_file: the host's model folders (see :data:`FindFile`); official files found there are not fetched.
        fetch: the host's downloader (see :data:`FetchFiles`); default: the core's cache and downloader.
        cache_dir, download, progress: for the core's downloader (``download=False``: offline).
        folders: the host's model folders, named in the error for a file found nowhere.
    """

    dtype: torch.dtype | str | Callable[[ModelDescriptor], torch.dtype | str | None] | None = None
    allow_half: bool = True
    upcast: bool = False
    find_file: FindFile | None = None
    fetch: FetchFiles | None = None
    cache_dir: str | os.PathLike | None = None
    download: bool = True
    progress: object = True
    folders: tuple[str, ...] = ()

    def host_dtype(self, unet: ModelDescriptor):
        return self.dtype(unet) if callable(self.dtype) else self.dtype

    def local_paths(self, files: Sequence[WeightFile]) -> list[Path]:
        """Local paths of official files: the host's folders first, then one fetch for all that are missing (so
        that, offline, one error names every missing file)."""
        found: dict[str, Path] = {}
        if self.find_file is not None:
            for item in files:
                path = self.find_file(item.file_name)
                if path is not None:
                    found[item.file_name] = Path(path)
        missing = [item for item in files if item.file_name not in found]
        if missing:
            fetched = (self.fetch(missing) if self.fetch is not None else
                       hub.fetch_files(missing, cache_dir=self.cache_dir, download=self.download,
                                       progress=self.progress))
            found.update({item.file_name: Path(path) for item, path in zip(missing, fetched)})
        return [found[item.file_name] for item in files]


def needed_autoencoder(unet: ModelDescriptor) -> AutoencoderRelease | None:
    """The autoencoder a UNet runs with: none for a pixel-space UNet; the one its release or file names; for a
    latent UNet that names none (a converted file without metadata), the default release's, which every x4
    release shares (the pipeline still checks that the pair fits)."""
    if not unet.latent_space:
        return None
    name = unet.identity.autoencoder
    if name is None:
        name = get_release(DEFAULT_RELEASE).autoencoder
        logger.info("%s names no autoencoder; using %s (that of the x4 releases)", unet.identity.name, name)
    known = AUTOENCODERS.get(name)
    if known is None:
        raise ResShiftError(f"{unet.identity.name} asks for the autoencoder {name!r}, which is not one of the "
                            f"official ones ({', '.join(AUTOENCODERS)}): give its file as {{arg:autoencoder}}")
    return known


def _as_release(release: str | Release | None) -> Release | None:
    return release if isinstance(release, Release) or release is None else get_release(release)


def _found_locally(name, host: HostFacts) -> Path | None:
    """A file the user named, as a path or in the host's folders; None when it is neither."""
    path = Path(name)
    if path.exists():
        return path
    found = host.find_file(str(name)) if host.find_file is not None else None
    return Path(found) if found is not None else None


def _wanted_official(name, host: HostFacts) -> WeightFile | None:
    """The official file behind a bare official file name that is not here yet (to be fetched)."""
    if name is None or isinstance(name, ModelDescriptor) or _found_locally(name, host) is not None:
        return None
    return official_file(str(name)) if Path(str(name)).name == str(name) else None


def _local_path(name: str | os.PathLike, host: HostFacts, fetched: dict[str, Path]) -> Path:
    """The local file of a name: a path, a file in the host's folders, or an official file fetched already."""
    found = _found_locally(name, host) or fetched.get(str(name))
    if found is not None:
        return found
    if host.folders:  # a host with model folders: say where the file was looked for
        raise CheckpointError(f"{name} is not in the model folders ({', '.join(host.folders)}) and is not an "
                              f"official file that could be downloaded: put the file there and refresh the list")
    return Path(name)  # the loader says that the file does not exist


def _fetch_named(unet, autoencoder, release: Release | None, host: HostFacts) -> tuple[Release | None, dict]:
    """Fetch, in one request, every official file named or implied and not here (so that, offline, one error
    names them all): the release's files when no UNet is given, named official files otherwise."""
    if unet is None:
        release = release or get_release(DEFAULT_RELEASE)
        wanted = hub.release_files(release) if autoencoder is None else [release]
    else:
        unet_file = _wanted_official(unet, host)
        if unet_file is None:  # a local UNet: its autoencoder is fetched once the UNet says it needs one
            return release, {}
        wanted = [unet_file]
        if isinstance(unet_file, Release):  # every release is latent: its autoencoder comes in the same request
            named = _wanted_official(autoencoder, host) if autoencoder is not None else \
                AUTOENCODERS[unet_file.autoencoder]
            wanted += [named] if named is not None else []
    return release, dict(zip((item.file_name for item in wanted), host.local_paths(wanted)))


def load_networks(unet: str | os.PathLike | ModelDescriptor | None = None,
                  autoencoder: str | os.PathLike | ModelDescriptor | None = None, *,
                  release: str | Release | None = None,
                  host: HostFacts | None = None) -> tuple[ModelDescriptor, ModelDescriptor | None]:
    """The UNet and the autoencoder a pipeline is built from.

    Args:
        unet: a descriptor, a file (path or official file name), or None for ``release``'s own file (the default
            release when neither is given).
        autoencoder: a descriptor, a file, or None for :func:`needed_autoencoder`. Given for a pixel-space UNet,
            it is not used (with a warning).
        release: names the UNet's release when its file does not say it (its schedule cannot be read from weights).
    Raises:
        OfflineError: files are missing and cannot be had (every one named). CheckpointError subclasses: bad files.
        UnknownScheduleError: a UNet of unknown schedule (name its release).
    """
    host = host or HostFacts()
    release = _as_release(release)
    check_kinds(unet if isinstance(unet, ModelDescriptor) else None,
                autoencoder if isinstance(autoencoder, ModelDescriptor) else None)
    release, fetched = _fetch_named(unet, autoencoder, release, host)
    if unet is None:
        unet = fetched[release.file_name]
        if autoencoder is None:
            autoencoder = fetched[AUTOENCODERS[release.autoencoder].file_name]
    if not isinstance(unet, ModelDescriptor):
        unet = load_model(_local_path(unet, host, fetched), expect="unet", release=release)
    elif release is not None:
        unet = renamed_release(unet, release)
    resolve_schedule(unet)  # an unknown schedule is said before an autoencoder is fetched
    if not unet.latent_space:
        if autoencoder is not None:
            logger.info("%s is a pixel-space model: no autoencoder is used with it", unet.identity.name)
        return unet, None
    if autoencoder is None:
        needed = needed_autoencoder(unet)
        autoencoder = fetched.get(needed.file_name) or host.local_paths([needed])[0]
    elif not isinstance(autoencoder, ModelDescriptor) and str(autoencoder) not in fetched:
        named = _wanted_official(autoencoder, host)
        if named is not None:
            fetched[named.file_name] = host.local_paths([named])[0]
    if not isinstance(autoencoder, ModelDescriptor):
        autoencoder = load_model(_local_path(autoencoder, host, fetched), expect="autoencoder")
    return unet, autoencoder


def renamed_release(unet: ModelDescriptor, release: str | Release) -> ModelDescriptor:
    """The UNet taken as ``release`` (its schedule, scale and one-step flag), when the caller names another release
    than its file says."""
    release = _as_release(release)
    if unet.release is release:
        return unet
    return load_model(dict(unet.network.state_dict()), expect="unet", release=release, name=unet.identity.name)


def check_kinds(unet: ModelDescriptor, autoencoder: ModelDescriptor | None) -> None:
    """Swapped descriptors raise :class:`WrongModelKindError` saying where each belongs."""
    for descriptor, wanted in ((unet, "unet"), (autoencoder, "autoencoder")):
        if descriptor is not None and descriptor.kind != wanted:
            raise WrongModelKindError(
                f"{descriptor.identity.name} is {'a UNet' if descriptor.kind == 'unet' else 'an autoencoder'}, "
                f"given where the {wanted} belongs: give it as {{arg:{descriptor.kind}}} instead",
                found=descriptor.kind, expected=wanted)


def infer_scale(unet, autoencoder) -> int:
    """Scale of an SR model from its networks: LR pixels per latent pixel is lq_size / image_size; output pixels per
    latent pixel is the autoencoder factor."""
    lr_per_latent = unet.config.lq_size // unet.config.image_size
    return max(1, autoencoder.downsample_factor // lr_per_latent)


def model_spec(unet, autoencoder, schedule, scale: int, *, one_step: bool = False,
               padding_multiple: int | None = None, tile_size: int | None = None) -> ModelSpec:
    """The facts of a UNet / autoencoder pair (networks), checked to fit each other.

    Raises:
        ResShiftError: a latent-space UNet without autoencoder, or a pair that does not fit (scale, channels).
    """
    config = unet.config
    scale = int(scale)
    if autoencoder is None:
        if config.feature_stages != 0 or config.in_channels != 3:
            raise ResShiftError("this UNet works on a latent (its LR path or channels are those of a latent "
                                "model): give its autoencoder as {arg:autoencoder}")
        latent_factor = 1
        padding = padding_multiple or config.latent_multiple // math.gcd(config.latent_multiple, scale)
    else:
        if scale * 2 ** config.feature_stages != autoencoder.downsample_factor:
            raise ResShiftError(
                f"scale x{scale} does not fit this UNet / autoencoder pair (LR path /{2 ** config.feature_stages},"
                f" autoencoder /{autoencoder.downsample_factor}): the expected scale is "
                f"x{autoencoder.downsample_factor // 2 ** config.feature_stages}")
        if autoencoder.config.embed_dim != config.in_channels:
            raise ResShiftError(f"the autoencoder's latent has {autoencoder.config.embed_dim} channels but the "
                                f"UNet expects {config.in_channels}: they are not a pair (face models need their "
                                f"own autoencoder, see the release table)")
        latent_factor = autoencoder.downsample_factor
        padding = padding_multiple or config.lq_size
    return ModelSpec(schedule if isinstance(schedule, Schedule) else Schedule(schedule), scale, one_step, padding,
                     latent_factor, config.latent_multiple, tile_size)


def pipeline_arguments(unet: ModelDescriptor, autoencoder: ModelDescriptor | None, *, scale: int | None = None,
                       padding_multiple: int | None = None) -> dict:
    """The pipeline's constructor arguments for loaded descriptors: the networks, schedule, scale, one-step flag,
    release and tile from what the files say (the constructor checks that the pair fits, :func:`model_spec`)."""
    check_kinds(unet, autoencoder)
    schedule = resolve_schedule(unet)
    if unet.latent_space and autoencoder is None:
        needed = AUTOENCODERS.get(unet.identity.autoencoder or "")
        which = f" ({needed.file_name})" if needed else ""
        raise ResShiftError(f"{unet.identity.name} is a latent-space UNet: it needs its autoencoder{which}; "
                            f"give it as {{arg:autoencoder}}")
    network_ae = autoencoder.network if autoencoder is not None and unet.latent_space else None
    if scale is None:
        scale = unet.scale or (infer_scale(unet.network, network_ae) if network_ae is not None else None)
    if scale is None:
        raise ResShiftError(f"the scale of the pixel-space model {unet.identity.name} is not recorded in its "
                            f"file; give it as {{arg:scale}}")
    return {"unet": unet.network, "autoencoder": network_ae, "schedule": schedule, "scale": scale,
            "one_step": unet.one_step, "release": unet.release, "padding_multiple": padding_multiple,
            "tile_size": unet.identity.tile_size}


def device_and_dtype(unet: ModelDescriptor, device=None, dtype=None,
                     host: HostFacts | None = None) -> tuple[torch.device, torch.dtype]:
    """The device (``auto``: CUDA when there is one) and the precision a pipeline runs in (the core's rule with the
    host's facts, :func:`~resshift_core.runtime.choose_dtype`)."""
    host = host or HostFacts()
    if isinstance(device, torch.device):
        chosen_device = device
    else:
        chosen_device = torch.device(resolve_device(device) if device is None or str(device) == "auto"
                                     else str(device))
    return chosen_device, choose_dtype(chosen_device, dtype, host_dtype=host.host_dtype(unet),
                                       allow_half=host.allow_half, upcast=host.upcast)
