"""Official release files in a local cache folder, downloaded on first use.

Layout: ``<cache>/<official file name>`` (the cache folder is ``RESSHIFT_CACHE`` or ``~/.cache/resshift``, see
:func:`resshift_core.download.default_cache_dir`). Users who download by hand put the files there, or pass paths.
When files cannot be had, one :class:`~resshift_core.download.OfflineError` names every missing file of the request
at once, with where to download it from and where to save it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .download import OfflineError, default_cache_dir, download_file
from .errors import NeededFile, missing_files_message, reason_of
from .releases import (
    AUTOENCODERS,
    LICENSE_URL,
    WEIGHTS_LICENSE,
    AutoencoderRelease,
    Release,
    get_release,
    official_file,
)

logger = logging.getLogger(__name__)

WeightFile = Release | AutoencoderRelease


def fetch_files(files: Sequence[WeightFile], *, cache_dir: str | os.PathLike | None = None, download: bool = True,
                progress=True) -> list[Path]:
    """Paths of official weight files (releases and autoencoders) in the cache, downloading what is missing.

    Raises:
        OfflineError: some files are missing and cannot be had; ``.files`` lists all of them, and the message says
            from where to where for each.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    paths: list[Path] = []
    missing: list[NeededFile] = []
    reasons: list[str] = []
    for item in files:
        destination = folder / item.file_name
        if destination.is_file() and not download:
            paths.append(destination)
            continue
        if not download:
            missing.append(NeededFile(item.file_name, item.url, destination))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            logger.info("downloading %s (weights licensed under the %s: %s)", item.file_name, item.license,
                        item.license_url)
        try:
            paths.append(download_file(item.url, destination, expected_sha256=item.sha256, progress=progress,
                                       source_page=item.url.rsplit("/", 1)[0].replace("/download/", "/tag/")))
        except OfflineError as error:
            missing.append(NeededFile(item.file_name, item.url, destination))
            reasons.append(reason_of(error))
    if missing:
        reason = "downloading is switched off ({arg:offline})" if not download else "; ".join(dict.fromkeys(reasons))
        raise missing_files_error(missing, reason)
    return paths


def missing_files_error(missing: Sequence[NeededFile], reason: str) -> OfflineError:
    """The error for weight files that cannot be had: every file with its address and place, and the licence of
    the weights (hosts with their own downloader raise it too, so the wording is the same everywhere)."""
    licences = dict.fromkeys((official.license, official.license_url) for official in
                             filter(None, (official_file(item.name) for item in missing)))
    licences = licences or {(WEIGHTS_LICENSE, LICENSE_URL): None}
    message = missing_files_message(missing, reason) + "".join(
        f"\nThe weights are licensed by their authors under the {name}: {url}" for name, url in licences)
    return OfflineError(message, url=missing[0].url, path=missing[0].path, files=tuple(missing))


def release_files(name: str | Release, autoencoder: str | None = None) -> list[WeightFile]:
    """The files a release needs: its UNet and its autoencoder (or the named one)."""
    release = name if isinstance(name, Release) else get_release(name)
    return [release, AUTOENCODERS[autoencoder or release.autoencoder]]


def fetch_release_files(name: str | Release, *, cache_dir: str | os.PathLike | None = None, download: bool = True,
                        progress=True) -> tuple[Path, Path, Release]:
    """Paths of a release's UNet and autoencoder files, downloading what is missing.

    Returns:
        (unet_path, autoencoder_path, release).
    Raises:
        OfflineError: files are missing and cannot be downloaded; the message names all of them.
    """
    release = name if isinstance(name, Release) else get_release(name)
    unet_path, autoencoder_path = fetch_files(release_files(release), cache_dir=cache_dir, download=download,
                                              progress=progress)
    return unet_path, autoencoder_path, release
