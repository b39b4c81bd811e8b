"""What every command shares: exit codes, the usage error, and the command line's words for the core's advice."""

from __future__ import annotations

from ..errors import InvalidArgumentError, ResShiftError, UnknownScheduleError, Vocabulary

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: How the command line names the settings the core's messages refer to.
CLI_WORDS = Vocabulary(names={
    "release": "--release", "unet": "--unet", "autoencoder": "--autoencoder", "tiling": "--tiling",
    "tile_size": "--tile", "tile_overlap": "--overlap", "vae_tile_size": "--vae-tile", "vae_overlap": "--vae-tile",
    "tile_batch_size": "--tile-batch", "chop_size": "--chop-size", "chop_stride": "--chop-stride",
    "dtype": "--dtype", "device": "--device", "seed": "--seed", "cache_dir": "--cache-dir", "offline": "--offline",
    "mask": "--mask", "scale": "--scale", "batch_size": "--batch-size", "quality": "--quality",
    "one_step": "--one-step", "color_fix": "--color-fix", "size": "--size", "width": "--size", "height": "--size",
    "longest_side": "--size",
}, setting="{name} {value}")


class UsageError(ResShiftError):
    """The command line asks for something impossible (exit code 2)."""


def release_named(name: str):
    """The release of a ``--release`` option, or a usage error listing the valid names."""
    from ..releases import get_release

    try:
        return get_release(name)
    except ResShiftError as error:
        raise UsageError(str(error)) from None


def exit_code_for(error: ResShiftError) -> int:
    """Usage errors (a bad option, a release to name) exit with 2; everything else that failed with 1."""
    return EXIT_USAGE if isinstance(error, (UsageError, InvalidArgumentError, UnknownScheduleError)) else EXIT_FAILED


def message_of(error: ResShiftError) -> str:
    """The error's message with its advice in command-line words."""
    return error.render(CLI_WORDS)
