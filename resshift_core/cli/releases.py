"""``releases``: the official releases, whether they are in the cache, and the licence of their weights."""

from __future__ import annotations

import json
from pathlib import Path

from ..download import default_cache_dir
from ..releases import AUTOENCODERS, DEFAULT_RELEASE, LICENSE_URL, RELEASES, WEIGHTS_LICENSE
from .common import EXIT_OK


def cmd_releases(args) -> int:
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    rows = []
    for release in RELEASES.values():
        autoencoder = AUTOENCODERS[release.autoencoder]
        rows.append({
            "name": release.name, "default": release.name == DEFAULT_RELEASE, "task": release.task,
            "scale": release.scale, "steps": release.num_network_calls, "file": release.file_name,
            "autoencoder": autoencoder.file_name, "license": release.license, "url": release.url,
            "cached": (cache / release.file_name).is_file() and (cache / autoencoder.file_name).is_file(),
            "description": release.description,
        })
    if args.json:
        print(json.dumps({"releases": rows, "weights_license": WEIGHTS_LICENSE, "license_url": LICENSE_URL,
                          "cache_dir": str(cache)}, indent=2))
        return EXIT_OK
    header = ("name", "task", "scale", "steps", "file", "autoencoder", "licence", "cached")
    table = [header] + [(r["name"] + (" *" if r["default"] else ""), r["task"], f"x{r['scale']}", str(r["steps"]),
                         r["file"], r["autoencoder"], r["license"], "yes" if r["cached"] else "no") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\n* default release. Cache folder: {cache}")
    print(f"The official weights are licensed by their authors under the {WEIGHTS_LICENSE}: see {LICENSE_URL}. "
          f"Downloading them means accepting it; this program's code is under its own licence.")
    return EXIT_OK
