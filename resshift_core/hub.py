"""Official release files in a local cache folder, downloaded on first use.

Layout: ``<cache>/<official file name>`` (the cache folder is ``RESSHIFT_CACHE`` or ``~/.cache/resshift``, see
:func:`resshift_core.download.default_cache_dir`). Users who download by hand put the files there, or pass paths.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .download import OfflineError, default_cache_dir, download_file
from .releases import AUTOENCODERS, LICENSE_URL, WEIGHTS_LICENSE, Release, get_release

logger = logging.getLogger(__name__)

def fetch_file(file_name: str, url: str, sha256: str | None = None, *, cache_dir: str | os.PathLike | None = None,
               download: bool = True, progress=True) -> Path:
    """One official file from the cache folder, downloaded when missing (and ``download`` allows it).

    Raises:
        OfflineError: missing and not downloadable; the message says from where and to where.
    """
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    destination = folder / file_name
    if not download:
        if destination.is_file():
            return destination
        raise OfflineError(f"{file_name} is not in the cache and downloading is off: download it from {url} "
                           f"and save it as {destination}", url=url, path=destination)
    folder.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        logger.info("downloading %s (weights licensed under the %s: %s)", file_name, WEIGHTS_LICENSE, LICENSE_URL)
    return download_file(url, destination, expected_sha256=sha256, progress=progress,
                         source_page=url.rsplit("/", 1)[0].replace("/download/", "/tag/"))


def fetch_release_files(name: str | Release, *, cache_dir: str | os.PathLike | None = None, download: bool = True,
                        progress=True) -> tuple[Path, Path, Release]:
    """Paths of a release's UNet and autoencoder files, downloading what is missing.

    Returns:
        (unet_path, autoencoder_path, release).
    Raises:
        OfflineError: a file is missing and cannot be downloaded; the message says from where and to where.
    """
    release = name if isinstance(name, Release) else get_release(name)
    autoencoder = AUTOENCODERS[release.autoencoder]
    unet_path = fetch_file(release.file_name, release.url, release.sha256, cache_dir=cache_dir, download=download,
                           progress=progress)
    autoencoder_path = fetch_file(autoencoder.file_name, autoencoder.url, autoencoder.sha256, cache_dir=cache_dir,
                                  download=download, progress=progress)
    return unet_path, autoencoder_path, release
