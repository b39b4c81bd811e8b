"""Command-line interface: ``python -m resshift_core`` (installed as ``resshift``).

Subcommands, one module each::

    upscale INPUT... -o OUT_DIR   images and folders in, upscaled images out (sharded over ranks under torchrun)
    convert IN.pth OUT.safetensors [--release NAME]
    info FILE [--json]            what a weight file is
    releases [--json]             the official releases and the licence of their weights

Exit codes: 0 everything done (outputs that already existed count as done), 1 something failed (an image, a weight
file, a download), 2 usage error (no inputs, unknown release, an option out of range: found before any weights are
loaded), 130 interrupted with Ctrl-C.

Image handling in ``upscale`` (the rules of :mod:`resshift_core.imageio`):

* PNG, JPEG, WebP, TIFF and BMP in; PNG (default), JPEG, WebP or TIFF out, named ``<stem>.<ext>`` like the official
  script, keeping the folder structure below each input folder.
* The EXIF orientation is applied first. Grayscale in gives grayscale out; palette images become RGB(A).
* An alpha channel is upscaled on its own with bicubic interpolation and re-attached (JPEG output drops it).
* 16-bit input keeps 16 bits in PNG output and, for grayscale, in TIFF output.
* PNG outputs carry how they were made (release, seed, steps, tiling) in a ``resshift`` text chunk.
* In folders, only files with an image extension are read; other files are reported and skipped without counting
  as failures; sub-folders are only entered with ``-r`` (the run says how many it left out). A file that cannot
  be read, or whose upscaling fails, is reported and the others go on (exit code 1).
* Inpainting releases take ``--mask``: one mask file for every input, or a folder of masks matched by file stem.
* Every image (or batch, see ``--batch-size``) starts from the same ``--seed``, so a result does not depend on the
  order of processing or on how files are shared among ranks; it does depend on the batch it was part of.
* Outputs are written to a temporary name and renamed, so an interrupted run never leaves a half-written image; an
  existing output is skipped unless ``--overwrite``, so running the same command again resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Callable

from ..errors import ResShiftError
from ..imageio import reset_warnings
from . import convert, info, releases, upscale
from .common import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, exit_code_for, message_of

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log more (loading, devices, downloads)")

    parser = argparse.ArgumentParser(prog="resshift", description="ResShift diffusion super-resolution.",
                                     epilog="Exit codes: 0 ok, 1 something failed, 2 usage error, 130 interrupted.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("upscale", parents=[common], help="upscale images and folders",
                             description="Upscale images (files and folders). Under torchrun the files are shared "
                                         "among the ranks; outputs that exist are skipped, so a rerun resumes.")
    upscale.add_arguments(up)
    up.set_defaults(handler=upscale.cmd_upscale)

    conv = commands.add_parser("convert", parents=[common], help="convert an official .pth to .safetensors",
                               description="Load a checkpoint safely and write it as .safetensors with its "
                                           "architecture, release and schedule in the metadata.")
    conv.add_argument("input", metavar="IN", help="checkpoint (.pth / .safetensors)")
    conv.add_argument("output", metavar="OUT", help="output .safetensors file")
    conv.add_argument("--release", help="release of a UNet whose file name does not say it")
    conv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    conv.set_defaults(handler=convert.cmd_convert)

    inf = commands.add_parser("info", parents=[common], help="say what a weight file is")
    inf.add_argument("file", metavar="FILE")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(handler=info.cmd_info)

    rel = commands.add_parser("releases", parents=[common], help="list the official releases and their licence")
    rel.add_argument("--json", action="store_true", help="machine-readable output")
    rel.add_argument("--cache-dir", metavar="DIR", help="cache folder to check for downloaded files")
    rel.set_defaults(handler=releases.cmd_releases)
    return parser


def _attach_log_handler(verbose: bool) -> Callable[[], None]:
    """Show the package's warnings (info with -v) on stderr for the duration of one command."""
    package_logger = logging.getLogger(__name__.split(".")[0])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if verbose else logging.WARNING)

    def detach() -> None:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)

    return detach


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or an argparse usage error (2)
        return int(exit_request.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    detach = _attach_log_handler(args.verbose)
    reset_warnings()
    try:
        return args.handler(args)
    except ResShiftError as error:  # the library's messages say what to do, in command-line words
        print(f"error: {message_of(error)}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # unforeseen: one line for the user, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(error).__name__}: {error} (run again with -v for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        detach()


if __name__ == "__main__":
    sys.exit(main())
