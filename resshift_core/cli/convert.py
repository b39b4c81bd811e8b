"""``convert``: a checkpoint (official .pth, a training file) to .safetensors with what it is in the metadata."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..checkpoints import AUTOENCODER_KIND, UNET_KIND, check_kind, save_autoencoder, save_unet
from ..imageio import temporary_beside
from ..checkpoints import load_model
from ..releases import RELEASES
from .common import EXIT_FAILED, EXIT_OK, UsageError, release_named


def cmd_convert(args) -> int:
    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"{source} does not exist or is not a file")
    if target.exists() and target.resolve() == source.resolve():
        raise UsageError("the output must be another file than the input")
    if target.exists() and not args.overwrite:
        print(f"error: {target} exists; pass --overwrite to replace it", file=sys.stderr)
        return EXIT_FAILED
    release = release_named(args.release) if args.release else None
    if target.suffix.lower() != ".safetensors":
        print(f"warning: {target} does not end in .safetensors; it is written in safetensors format anyway",
              file=sys.stderr)

    loaded = load_model(source, release=release)  # read once; the file's kind decides what is written
    identity = loaded.identity
    temporary = temporary_beside(target)
    try:
        if identity.kind == UNET_KIND:
            save_unet(loaded.network, temporary, release=identity.release.name if identity.release else None,
                      schedule=identity.schedule, one_step=identity.one_step, scale=identity.scale,
                      latent_space=identity.latent_space, autoencoder=identity.autoencoder,
                      tile_size=identity.tile_size)
            if identity.release is not None:
                what = f"UNet of release {identity.release.name}"
            elif identity.schedule is not None:
                what = "UNet (schedule from the source file's metadata)"
            else:
                what = "UNet, release unknown"
                print(f"warning: the release of {source.name} could not be identified from its file name or "
                      f"metadata, so its noise schedule is unknown and the converted file will need --release at "
                      f"every use. To record it, convert again with --release NAME (one of: {', '.join(RELEASES)}):"
                      f"\n  python -m resshift_core convert {source} {target} --release NAME --overwrite",
                      file=sys.stderr)
        elif identity.kind == AUTOENCODER_KIND:
            name = release.autoencoder if release else identity.autoencoder
            save_autoencoder(loaded.network, temporary, name=name)
            what = f"autoencoder{f' {name}' if name else ''}"
        else:  # pragma: no cover - load_model raised the library's explanation already
            check_kind(None, None, None)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    print(f"wrote {target} ({what})")
    return EXIT_OK
