"""``upscale``: images and folders in, upscaled images out (sharded over ranks under torchrun)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..color import COLOR_FIX_METHODS
from ..errors import InputImageError, ResShiftError
from ..imageio import OUTPUT_FORMATS, DecodedImage, encode_image, mask_plane, read_image, upscale_alpha, write_image
from ..releases import DEFAULT_RELEASE, DEFAULT_SEED, get_release
from ..runtime import DTYPE_CHOICES, resolve_device, tune_cpu_allocator
from ..sampler import check_seed
from ..sizing import output_size, parse_size
from ..tiling import TILING_MODES, TileSettings, validate_chop
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, exit_code_for, message_of, release_named
from .distributed import Distributed
from .jobs import Job, _find_mask, group_batches, plan_jobs
from .reporting import Reporter, StepBar, summarise

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    """The options of ``upscale``."""
    up = parser
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders")
    up.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    up.add_argument("-r", "--recursive", action="store_true", help="also sub-folders (structure kept in OUT_DIR)")
    up.add_argument("--format", choices=sorted(OUTPUT_FORMATS), default="png", help="output format (default png)")
    up.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality 1-100 (default 95)")
    up.add_argument("--release", default=None,
                    help=f"official release (default {DEFAULT_RELEASE}); with --unet: names its release when the "
                         f"file does not say it")
    up.add_argument("--unet", metavar="FILE", help="local UNet file (.pth or .safetensors)")
    up.add_argument("--autoencoder", metavar="FILE", help="local autoencoder file (default: the release's, cached; "
                                                            "none for pixel-space models)")
    up.add_argument("--cache-dir", metavar="DIR", help="weights cache (default $RESSHIFT_CACHE or ~/.cache/resshift)")
    up.add_argument("--offline", action="store_true", help="never download; missing files are an error")
    up.add_argument("--seed", type=int, default=DEFAULT_SEED,
                    help=f"random seed (default {DEFAULT_SEED}); each image gets the result it would get alone")
    up.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, ...")
    up.add_argument("--dtype", choices=list(DTYPE_CHOICES), help="network precision (default fp16 on cuda, "
                                                                   "fp32 otherwise)")
    up.add_argument("--color-fix", choices=list(COLOR_FIX_METHODS), default="none",
                    help="bring the output's colours back to the input's: wavelet (keeps detail) or adain; none "
                         "(default) is the official computation")
    up.add_argument("--scale", type=float, metavar="FACTOR",
                    help="output size as a factor of the input (e.g. 2, 3, 8): the fewest x4 passes, then one "
                         "anti-aliased resize")
    up.add_argument("--size", metavar="WxH", help="output size in pixels: 2048x1536, or one side (2048x or x1536) "
                                                  "keeping the aspect ratio")
    up.add_argument("--tiling", choices=list(TILING_MODES), default=None,
                    help="auto (default): the official untiled computation when it fits in memory and costs at "
                         "most 1.5x the tiled one, tiles beyond; off: never tile; latent: always tile (the default "
                         "when --tile is given)")
    up.add_argument("--tile", type=int, metavar="N", help="latent tiling: largest UNet tile (latent pixels)")
    up.add_argument("--overlap", type=int, metavar="N", help="latent tiling: least overlap of UNet tiles")
    up.add_argument("--vae-tile", type=int, metavar="N", help="latent tiling: largest autoencoder tile (latent px)")
    up.add_argument("--chop-size", type=int, metavar="PX", help="official patch-wise mode: LR patch size")
    up.add_argument("--chop-stride", type=int, metavar="PX", help="patch stride (default chop size - 1/8)")
    up.add_argument("--one-step", action="store_true",
                    help="one network call at the last step, its x0 prediction as the result (how SinSR runs; a "
                         "fast preview for any model)")
    up.add_argument("--batch-size", type=int, default=1, help="images of the same size processed together")
    up.add_argument("--mask", metavar="FILE_OR_DIR", help="inpainting masks (white = fill), matched by file stem")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    up.add_argument("--no-progress", action="store_true", help="no progress bars")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no per-file lines for successes")


class Upscaler:
    """Runs the jobs of one rank: batches, the pipeline, writing, reporting."""

    def __init__(self, pipe, args, reporter: Reporter, show_progress: bool, upscale_options: dict,
                 input_roots: Sequence[Path]):
        """``upscale_options``: the keyword arguments of every ``pipe.upscale`` call (tiles, sizes, colour fix)."""
        self.pipe = pipe
        self.args = args
        self.reporter = reporter
        self.show_progress = show_progress
        self.upscale_options = upscale_options
        self.input_roots = input_roots
        self.needs_mask = bool(pipe.unet.config.cond_mask)

    def run(self, jobs: Sequence[Job]) -> None:
        """Upscale and write ``jobs`` (whose outputs are to be (re)written)."""
        from tqdm import tqdm

        image_bar = tqdm(total=len(jobs), desc="images", unit="img", file=sys.stderr,
                         disable=not self.show_progress)
        try:
            for batch in group_batches(jobs, self.args.batch_size):
                self.run_batch(batch)
                image_bar.update(len(batch))
        finally:
            image_bar.close()

    def _read(self, job: Job) -> tuple[DecodedImage, np.ndarray | None]:
        image = read_image(job.source)
        if not self.needs_mask:
            return image, None
        mask_file = _find_mask(Path(self.args.mask), job, self.input_roots)
        if mask_file is None:
            raise InputImageError(f"no mask named {job.source.stem}.* in {self.args.mask}")
        try:
            mask = read_image(mask_file)
        except InputImageError as error:
            raise InputImageError(f"its mask {mask_file}: {error}") from None
        return image, mask_plane(mask, image, f"its mask {mask_file}")

    def run_batch(self, batch: Sequence[Job]) -> None:
        loaded: dict[tuple[int, int], list] = {}
        for job in batch:
            try:
                image, mask = self._read(job)
            except InputImageError as error:
                self.reporter.fail(job.source, message_of(error))
                continue
            loaded.setdefault((image.height, image.width), []).append((job, image, mask))
        for group in loaded.values():  # the header sizes may have lied (broken EXIF): group by decoded size
            self.run_group(group)

    def run_group(self, group: list) -> None:
        import torch

        images = torch.from_numpy(np.stack([image.rgb for _, image, _ in group])).permute(0, 3, 1, 2)
        masks = None
        if self.needs_mask:
            masks = torch.from_numpy(np.stack([mask for _, _, mask in group]))[:, None]
        names = ", ".join(job.source.name for job, _, _ in group)
        step_bar = StepBar(self.show_progress, f"steps ({names})"[:60])
        try:
            result = self.pipe.upscale(images.contiguous(), mask=masks, seed=self.args.seed, callback=step_bar,
                                       **self.upscale_options)
        except ResShiftError as error:
            for job, _, _ in group:
                self.reporter.fail(job.source, f"upscaling failed: {message_of(error)}")
            return
        except (RuntimeError, ValueError) as error:  # incl. out of memory after the retries: report, go on
            for job, _, _ in group:
                self.reporter.fail(job.source, f"upscaling failed: {error}")
            return
        finally:
            step_bar.close()
        record = self.pipe.run_record(color_fix=self.upscale_options.get("color_fix"))
        text = {"resshift": json.dumps(record)}
        outputs = result.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        for (job, image, _), rgb in zip(group, outputs):
            try:
                alpha = None if image.alpha is None else upscale_alpha(image.alpha, rgb.shape[1], rgb.shape[0])
                data = encode_image(rgb, alpha, image, self.args.format, self.args.quality, text=text)
                write_image(job.output, data)
            except (OSError, ValueError) as error:
                self.reporter.fail(job.source, f"cannot write {job.output}: {error}")
                continue
            self.reporter.wrote(job)


def load_pipeline(args, device: str, show_progress: bool):
    """The pipeline the options ask for (local files, the release's cached files, or a mix), through the core's one
    assembly. Every file that must be downloaded and cannot be is named in one error."""
    from ..assembly import HostFacts
    from ..pipeline import ResShiftPipeline

    host = HostFacts(cache_dir=args.cache_dir, download=not args.offline, progress=show_progress)
    return ResShiftPipeline.assemble(args.unet, args.autoencoder, release=args.release, device=device,
                                     dtype=args.dtype or "auto", host=host)


def check_options(args) -> tuple[dict, str]:
    """Usage errors found before anything is loaded; returns the keyword arguments for ``upscale`` and the
    device."""
    from ..errors import InvalidArgumentError

    if args.batch_size < 1:
        raise InvalidArgumentError("batch_size", args.batch_size, "at least 1")
    if not 1 <= args.quality <= 100:
        raise InvalidArgumentError("quality", args.quality, "from 1 to 100")
    check_seed(args.seed)
    release = release_named(args.release) if args.release else (None if args.unet else get_release(
        DEFAULT_RELEASE))
    output_dir = Path(args.output)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"the output {output_dir} exists and is not a folder")
    if args.mask and not Path(args.mask).exists():
        raise UsageError(f"the mask {args.mask} does not exist")
    validate_chop(args.chop_size, args.chop_stride)
    if args.chop_size is not None and (args.tile is not None or args.tiling not in (None, "off")):
        raise UsageError("--chop-size is the official patch-wise mode; it does not combine with latent tiling "
                         "(--tile / --tiling)")
    size = output_size(scale=args.scale, size=parse_size(args.size) if args.size else None)
    device = resolve_device(args.device)
    # The release's own architecture is known before loading: its tile limits are checked now (a file's later).
    latent_multiple = release.unet.latent_multiple if release is not None and args.unet is None else None
    TileSettings.resolve(device, tiling=args.tiling, tile_size=args.tile, tile_overlap=args.overlap,
                         vae_tile_size=args.vae_tile, latent_multiple=latent_multiple)
    options = {"chop_size": args.chop_size, "chop_stride": args.chop_stride,
               "one_step": True if args.one_step else None, "color_fix": args.color_fix,
               "size": None if size.is_native() else size}
    return {k: v for k, v in options.items() if v is not None}, device


def _load_and_run(args, jobs: list[Job], reporter: Reporter, dist: Distributed, show_progress: bool,
                  upscale_options: dict, device: str) -> tuple[str, int] | None:
    """Load the weights and do ``jobs``; returns (message, exit code) when the weights cannot be used."""
    from ..errors import InvalidArgumentError

    if device.startswith("cuda") and dist.enabled and ":" not in device:
        device = resolve_device(device, dist.local_rank)
    elif args.device == "auto" and dist.enabled:
        device = resolve_device("auto", dist.local_rank)
    if device == "cpu":
        tune_cpu_allocator()  # our own process: keep freed feature maps in the heap (10-15% faster on the CPU)
    try:
        pipe = load_pipeline(args, device, show_progress)
        tiles = pipe.tiles(args.tiling, args.tile, args.overlap, args.vae_tile)
    except (ResShiftError, InvalidArgumentError) as error:  # missing / damaged / wrong files, offline, bad tiles
        return message_of(error), exit_code_for(error)
    upscale_options = {**upscale_options, "tiles": tiles}
    needs_mask = bool(pipe.unet.config.cond_mask)
    if needs_mask and not args.mask:
        return "this is an inpainting model: give the masks with --mask FILE_OR_FOLDER (white = fill)", 2
    if args.mask and not needs_mask:
        return "--mask is for the inpainting releases; this model takes no mask", 2
    logger.info("rank %d of %d: %d files to do on %s (%s)", dist.rank, dist.world_size, len(jobs), pipe.device,
                pipe.dtype)
    Upscaler(pipe, args, reporter, show_progress, upscale_options, [Path(p) for p in args.inputs]).run(jobs)
    return None


def cmd_upscale(args) -> int:
    started = time.monotonic()
    upscale_options, device = check_options(args)
    dist = Distributed.from_environment()
    output_dir = Path(args.output)
    excluded = [output_dir] + ([Path(args.mask)] if args.mask else [])
    plan = plan_jobs(args.inputs, output_dir, recursive=args.recursive, extension=OUTPUT_FORMATS[args.format][1],
                     excluded=excluded)
    if not plan.jobs and not plan.conflicts:
        raise UsageError("no image files found in the inputs"
                         + ("" if args.recursive or not plan.skipped_folders else
                            f" ({len(plan.skipped_folders)} sub-folders skipped: use -r to look into them)"))

    is_main = dist.rank == 0
    show_progress = not args.no_progress and not args.quiet and is_main
    reporter = Reporter(prefix=f"[rank {dist.rank}] " if dist.enabled else "", quiet=args.quiet)
    if is_main:  # problems found while planning are the same on every rank: report them once
        for source, reason in plan.ignored:
            reporter.ignore(source, reason)
        for source, reason in plan.conflicts:
            reporter.fail(source, reason)
        if plan.skipped_folders:
            names = ", ".join(str(p) for p in plan.skipped_folders[:3])
            more = f" and {len(plan.skipped_folders) - 3} more" if len(plan.skipped_folders) > 3 else ""
            reporter.note(f"{len(plan.skipped_folders)} sub-folder(s) skipped ({names}{more}): use -r to include "
                          f"them")
    pending = []
    for job in plan.jobs[dist.rank::dist.world_size]:  # file i goes to rank i % world: disjoint and complete
        if job.output.exists() and not args.overwrite:
            reporter.skip(job)  # done by an earlier run: this is what makes a rerun resume
        else:
            pending.append(job)

    dist.open_group()
    try:
        # Nothing left to do on this rank: do not even load the weights.
        load_error = _load_and_run(args, pending, reporter, dist, show_progress, upscale_options,
                                   device) if pending else None
    except KeyboardInterrupt:
        dist.close()  # no gather: the other ranks are being interrupted too
        print(f"interrupted: {reporter.written} written; run the same command again to go on (finished outputs "
              f"are skipped)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        dist.close()
        raise
    all_counts = dist.gather(reporter.counts())
    dist.close()
    if load_error is not None:
        print(f"{reporter.prefix}error: {load_error[0]}", file=sys.stderr)
        return load_error[1]
    if is_main:
        print(summarise(all_counts, output_dir, time.monotonic() - started))
    return EXIT_FAILED if reporter.failures else EXIT_OK
