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

def fetch_release_files(name: str | Release, *, cache_dir: str | os.PathLike | None = None, download: bool = True,
                        progress=True) -> tuple[Path, Path, Release]:
    """Paths of a release's UNet and autoencoder files, downloading what is missing.

    Returns:
        (unet_path, autoencoder_path, release).
    Raises:
        OfflineError: a file is missing and cannot be downloaded; the message says from where and to where.
    """
    release = name if isinstance(name, Release) else get_release(name)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    autoencoder = AUTOENCODERS[release.autoencoder]
    paths = []
    for file_name, url, sha in ((release.file_name, release.url, release.sha256),
                                (autoencoder.file_name, autoencoder.url, autoencoder.sha256)):
        destination = folder / file_name
        if destination.exists() and not download:
            paths.append(destination)
            continue
        if not download:
            raise OfflineError(f"{file_name} is not in the cache and downloading is off: download it from {url} "
                               f"and save it as {destination}", url=url, path=destination)
        if not destination.exists():
            logger.info("downloading %s (weights licensed under the %s: %s)", file_name, WEIGHTS_LICENSE, LICENSE_URL)
        paths.append(download_file(url, destination, expected_sha256=sha, progress=progress,
                                   source_page=url.rsplit("/", 1)[0].replace("/download/", "/tag/")))
    return paths[0], paths[1], release
