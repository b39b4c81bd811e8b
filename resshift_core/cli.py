"""Command-line interface: ``python -m resshift_core`` (installed as ``resshift``).

Subcommands::

    upscale INPUT... -o OUT_DIR   images and folders in, upscaled images out (sharded over ranks under torchrun)
    convert IN.pth OUT.safetensors [--release NAME]
    info FILE [--json]            what a weight file is
    releases [--json]             the official releases and the licence of their weights

Exit codes: 0 everything done (outputs that already existed count as done), 1 something failed (an image, a weight
file, a download), 2 usage error (no inputs, unknown release, bad option), 130 interrupted with Ctrl-C.

Image handling in ``upscale``:

* PNG, JPEG, WebP, TIFF and BMP in; PNG (default), JPEG, WebP or TIFF out, named ``<stem>.<ext>`` like the official
  script, keeping the folder structure below each input folder.
* The EXIF orientation is applied first. Grayscale in gives grayscale out; palette images become RGB(A).
* An alpha channel is upscaled on its own with bicubic interpolation and re-attached (JPEG output drops it).
* 16-bit input (grayscale, RGB and RGBA PNG, uncompressed RGB TIFF) keeps 16 bits in PNG output and, for grayscale,
  in TIFF output; 16-bit colour TIFF output is written with 8 bits (Pillow cannot write it).
* In folders, only files with an image extension are read; other files are reported and skipped without counting
  as failures. A file that cannot be read, or whose upscaling fails, is reported and the others go on (exit code 1).
* Inpainting releases take ``--mask``: one mask file for every input, or a folder of masks matched by file stem.
* Every image (or batch, see ``--batch-size``) starts from the same ``--seed``, so a result does not depend on the
  order of processing or on how files are shared among ranks; it does depend on the batch it was part of.
* Outputs are written to a temporary name and renamed, so an interrupted run never leaves a half-written image; an
  existing output is skipped unless ``--overwrite``, so running the same command again resumes.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import logging
import os
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputImageError, ResShiftError, UnknownScheduleError
from .runtime import tune_cpu_allocator

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib"}
# --format choice -> (Pillow format name, file extension)
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp"),
                  "tiff": ("TIFF", ".tiff")}
DEFAULT_SEED = 12345  # the official inference script's default
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Swin buffers stored in some checkpoints; they are recomputed, not learnt, so they are not parameters.
_BUFFER_SUFFIXES = (".attn_mask", ".relative_position_index")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UsageError(ResShiftError):
    """The command line asks for something impossible (exit code 2)."""


# ===================================================================================================== images
@dataclass
class DecodedImage:
    """An input image as the pipeline needs it, plus what is needed to write the result in the same kind.

    Attributes:
        rgb: (H, W, 3) float32 in [0, 1] (grayscale repeated on the three channels).
        alpha: (H, W) float32 in [0, 1], or None.
        grayscale: the source had one colour channel; the result is written as grayscale.
        sixteen_bit: the source had 16 bits per sample; the result is written with 16 where the format allows.
        icc_profile: the source's colour profile, kept when the output has the same kind of colour.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    sixteen_bit: bool
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def _wide_rawmodes(image) -> tuple[list, bool] | None:
    """Tiles that decode the low bytes of a 16-bit multi-channel image (and whether it is gray + alpha), or None
    when there is no such trick for this file.

    Pillow has no 16-bit colour mode: it decodes 48/64-bit PNG and TIFF by keeping the high byte of each sample.
    Decoding the same data again while telling the unpacker the opposite byte order keeps the low bytes instead
    (the bytes per pixel, which PNG un-filtering depends on, stay the same). Gray + alpha 16-bit PNG is decoded as
    its raw bytes through the 4-byte RGBA unpacker.
    """
    swaps = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B", "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B",
             "LA;16B": "RGBA"}
    tiles, rawmodes = [], set()
    for tile in image.tile or []:
        rawmode = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if image.mode in ("RGB", "RGBA") and ";16" in str(rawmode) and (
                rawmode not in swaps or tile.codec_name not in ("zip", "raw")):
            # e.g. compressed TIFF, decoded by libtiff, whose arguments cannot be changed this way
            logger.warning("%s has 16 bits per sample, but only 8 can be read from this kind of file",
                           getattr(image, "filename", "the image"))
            return None
        if rawmode not in swaps or tile.codec_name not in ("zip", "raw"):
            return None
        rawmodes.add(rawmode)
        new_args = swaps[rawmode] if isinstance(tile.args, str) else (swaps[rawmode],) + tuple(tile.args[1:])
        tiles.append(tile._replace(args=new_args))
    if not tiles or len(rawmodes) != 1:
        return None
    return tiles, rawmodes == {"LA;16B"}


def _decode_wide(path: Path, image, tiles: list, gray_alpha: bool) -> DecodedImage | None:
    """Full-precision decode of a 16-bit colour (or gray + alpha) image whose 8-bit decode ``image`` is loaded;
    None if this Pillow cannot do it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as low_source:
            low_source.tile = tiles
            low_source.load()
            low = np.asarray(ImageOps.exif_transpose(low_source)).astype(np.uint16)
    except (OSError, ValueError, SyntaxError) as error:
        logger.info("16-bit decode of %s not available (%s)", path, error)
        return None
    if gray_alpha:  # ``low`` holds the raw big-endian bytes: gray high, gray low, alpha high, alpha low
        gray = (low[..., 0] << 8 | low[..., 1]).astype(np.float32) / 65535.0
        alpha = (low[..., 2] << 8 | low[..., 3]).astype(np.float32) / 65535.0
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), alpha, True, True)
    high = np.asarray(ImageOps.exif_transpose(image)).astype(np.uint16)
    if low.shape != high.shape:
        return None
    samples = (high << 8 | low).astype(np.float32) / 65535.0
    alpha = samples[..., 3] if samples.shape[-1] == 4 else None
    return DecodedImage(np.ascontiguousarray(samples[..., :3]), alpha, False, True, image.info.get("icc_profile"))


def read_image(path: str | os.PathLike) -> DecodedImage:
    """Read an image file for upscaling (EXIF orientation applied).

    Raises:
        InputImageError: not an image, or a damaged / truncated one (the message says which).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            wide = _wide_rawmodes(image)
            image.load()
            if wide is not None:
                decoded = _decode_wide(path, image, *wide)
                if decoded is not None:
                    return decoded
                logger.warning("%s has 16 bits per sample but this Pillow cannot decode them; using 8 bits", path)
            return _decode_pillow(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise InputImageError("not an image file this program can read") from None
    except Image.DecompressionBombError as error:
        raise InputImageError(f"refused as too large ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InputImageError(f"damaged or truncated ({error or type(error).__name__})") from None


def _decode_pillow(image) -> DecodedImage:
    """A loaded, oriented Pillow image -> DecodedImage."""
    mode = image.mode
    icc = image.info.get("icc_profile")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.clip(np.asarray(image).astype(np.float32), 0, 65535) / 65535.0
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), None, True, True)
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("LA" if mode == "L" else "RGBA")  # a colour-key transparency becomes alpha
    elif mode in ("1", "F"):
        image = image.convert("L")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        icc = None  # a CMYK / Lab profile does not describe the RGB result
        image = image.convert("RGB")
    samples = np.asarray(image).astype(np.float32) / 255.0
    if image.mode in ("L", "LA"):
        gray = samples if image.mode == "L" else samples[..., 0]
        alpha = samples[..., 1] if image.mode == "LA" else None
        return DecodedImage(np.repeat(gray[..., None], 3, axis=2), alpha, True, False, icc)
    alpha = samples[..., 3] if image.mode == "RGBA" else None
    return DecodedImage(np.ascontiguousarray(samples[..., :3]), alpha, False, False, icc)


def upscale_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain bicubic resize of an alpha channel (float32 in [0, 1]) to (height, width)."""
    from PIL import Image

    resized = Image.fromarray(alpha.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def encode_png16(samples: np.ndarray) -> bytes:
    """(H, W, C) uint16 with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) -> 16-bit PNG file bytes.

    Pillow cannot write 16-bit colour PNG, so this writes it directly: one IDAT chunk, every row with the 'Sub'
    filter (each byte minus the byte one pixel to its left, modulo 256), which is cheap and compresses well.
    """
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    bytes_per_pixel = 2 * channels
    filtered = rows.copy()
    filtered[:, bytes_per_pixel:] = rows[:, bytes_per_pixel:] - rows[:, :-bytes_per_pixel]  # uint8 wraps mod 256
    payload = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (_PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(payload, 6))
            + chunk(b"IEND", b""))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def encode_result(rgb: np.ndarray, alpha: np.ndarray | None, source: DecodedImage, output_format: str,
                  quality: int) -> bytes:
    """The upscaled image as file bytes in ``output_format`` (a key of OUTPUT_FORMATS), in the kind of the source.

    Args:
        rgb: (H, W, 3) float in [0, 1], the network's result.
        alpha: (H, W) float in [0, 1] (already upscaled) or None.
        source: the decoded input (grayscale / 16-bit / profile).
    """
    from PIL import Image

    pil_format, _ = OUTPUT_FORMATS[output_format]
    planes = [rgb @ _LUMA_WEIGHTS] if source.grayscale else [rgb[..., 0], rgb[..., 1], rgb[..., 2]]
    if alpha is not None:
        if output_format == "jpg":
            _warn_once("JPEG has no alpha channel: the transparency of the input is dropped (use --format png)")
        else:
            planes.append(alpha)
    samples = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    buffer = io.BytesIO()
    if source.sixteen_bit and output_format in ("png", "tiff"):
        wide = np.round(samples * 65535.0).astype(np.uint16)
        if wide.shape[-1] == 1:
            Image.fromarray(wide[..., 0]).save(buffer, format=pil_format)  # Pillow writes mode I;16 natively
            return buffer.getvalue()
        if output_format == "png":
            return encode_png16(wide)
        _warn_once("16-bit colour TIFF cannot be written with Pillow: writing 8 bits per sample "
                   "(use --format png to keep 16 bits)")
    elif source.sixteen_bit:
        _warn_once(f"{pil_format} holds 8 bits per sample: 16-bit inputs are written with 8 bits")
    narrow = np.round(samples * 255.0).astype(np.uint8)
    image = Image.fromarray(narrow[..., 0] if narrow.shape[-1] == 1 else narrow)  # L, LA, RGB or RGBA
    options: dict = {}
    if output_format in ("jpg", "webp"):
        options["quality"] = quality
    if output_format == "jpg" and quality >= 90:
        options["subsampling"] = 0  # full-resolution colour: halving it would blur what was just upscaled
    # Keep the colour profile when the output has the same kind of colour as the source (WebP stores gray as RGB).
    if source.icc_profile and not (source.grayscale and output_format == "webp"):
        options["icc_profile"] = source.icc_profile
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _temporary_beside(path: Path) -> str:
    """A new hidden temporary file in ``path``'s folder (same file system, so the final rename is atomic), with the
    permissions a plain new file would get (mkstemp makes it private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return temporary


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so that ``path`` is
    either absent, the old file or the complete new file, even after Ctrl-C."""
    temporary = _temporary_beside(path)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


# ============================================================================================== planning jobs
@dataclass
class Job:
    """One input file and where its result goes."""

    source: Path
    output: Path


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # files in folders that are not images
    conflicts: list[tuple[Path, str]] = field(default_factory=list)  # inputs that cannot be done at all


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_folder(folder: Path, recursive: bool, excluded: set[Path]) -> list[Path]:
    """Files of a folder, sorted; sub-folders only if recursive. Hidden entries and the excluded paths (the output
    folder, the masks) are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d) and (root_path / d).resolve() not in excluded)
        found.extend(root_path / name for name in sorted(files)
                     if not _is_hidden(name) and (root_path / name).resolve() not in excluded)
        if not recursive:
            break
    return found


def plan_jobs(inputs: Sequence[str | os.PathLike], output_dir: Path, *, recursive: bool, extension: str,
              excluded: Sequence[Path] = ()) -> Plan:
    """Turn the command-line inputs into jobs: ``<output_dir>/<relative folder>/<stem><extension>``.

    Files named on the command line are always tried; in folders only files with an image extension are, the
    others are listed in ``plan.ignored``. Two inputs that would write the same output are a conflict (the later
    one is not done), as is an output that would replace its own input.
    """
    plan = Plan()
    excluded_resolved = {Path(p).resolve() for p in excluded}
    seen_sources: set[Path] = set()
    claimed: dict[Path, Path] = {}
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            candidates = []
            for file in _walk_folder(entry, recursive, excluded_resolved):
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append((file, file.relative_to(entry)))
                else:
                    plan.ignored.append((file, f"not an image file (extension '{file.suffix or 'none'}')"))
        elif entry.is_file():
            candidates = [(entry, Path(entry.name))]
        else:
            raise UsageError(f"input {entry} does not exist")
        for source, relative in candidates:
            resolved = source.resolve()
            if resolved in seen_sources:
                continue  # named twice (a file and its folder): done once
            seen_sources.add(resolved)
            output = output_dir / relative.parent / (relative.stem + extension)
            output_resolved = output.resolve()
            if output_resolved == resolved:
                reason = f"its output {output} would replace the input itself; choose another output folder"
                plan.conflicts.append((source, reason))
            elif output_resolved in claimed:
                reason = f"its output {output} is already the output of {claimed[output_resolved]}; rename one"
                plan.conflicts.append((source, reason))
            else:
                claimed[output_resolved] = source
                plan.jobs.append(Job(source, output))
    return plan


def _find_mask(mask_path: Path, job: Job, input_roots: Sequence[Path]) -> Path | None:
    """The mask of an input: ``mask_path`` itself if it is a file, else the file of the same stem in the mask
    folder (first in the same sub-folder as the input, then at the top)."""
    if mask_path.is_file():
        return mask_path
    relative_parent = Path()
    for root in input_roots:
        if root.is_dir():
            try:
                relative_parent = job.source.relative_to(root).parent
                break
            except ValueError:
                continue
    for folder in dict.fromkeys([mask_path / relative_parent, mask_path]):
        if folder.is_dir():
            for candidate in sorted(folder.iterdir()):
                if candidate.stem == job.source.stem and candidate.suffix.lower() in IMAGE_EXTENSIONS:
                    return candidate
    return None


def _probe_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None if unreadable (reported later)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, struct.error):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def group_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Batches of up to ``batch_size`` same-size images, in the order of first appearance of each size."""
    if batch_size <= 1:
        return [[job] for job in jobs]
    by_size: dict[object, list[Job]] = {}
    for number, job in enumerate(jobs):
        size = _probe_size(job.source)
        by_size.setdefault(size if size is not None else ("unreadable", number), []).append(job)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


# ============================================================================================== distributed
@dataclass
class Distributed:
    """Rank and world size from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise.

    A gloo process group is opened only to collect the counts of every rank for the summary; without it each
    rank still does its own share, and rank 0 summarises what it knows.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group_open: bool = False

    @classmethod
    def from_environment(cls) -> Distributed:
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise UsageError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({error})") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"invalid RANK={rank} for WORLD_SIZE={world_size}")
        return cls(rank, world_size, local_rank)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def open_group(self) -> None:
        if not self.enabled or "MASTER_ADDR" not in os.environ:
            return
        import torch.distributed as dist

        if not dist.is_available():
            return
        try:
            # Ranks finish their shares at different times; the gather waits for the slowest, so no short timeout.
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=timedelta(days=7))
            self.group_open = True
        except (RuntimeError, ValueError) as error:
            logger.warning("could not open the process group (%s); each rank reports only its own files", error)

    def gather(self, value: dict) -> list[dict]:
        if not self.group_open:
            return [value]
        import torch.distributed as dist

        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def close(self) -> None:
        if self.group_open:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.group_open = False


# ================================================================================================ reporting
class Reporter:
    """Counts outcomes and prints one line per file: results to stdout, problems to stderr (through tqdm, so
    that progress bars are not torn)."""

    def __init__(self, prefix: str = "", quiet: bool = False):
        self.prefix = prefix
        self.quiet = quiet
        self.written = 0
        self.skipped = 0
        self.failures: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def _print(self, message: str, stream) -> None:
        from tqdm import tqdm

        tqdm.write(self.prefix + message, file=stream)

    def wrote(self, job: Job) -> None:
        self.written += 1
        if not self.quiet:
            self._print(f"written: {job.output}", sys.stdout)

    def skip(self, job: Job) -> None:
        self.skipped += 1
        if not self.quiet:
            self._print(f"skipped (output exists, --overwrite to redo): {job.output}", sys.stdout)

    def fail(self, source: Path, reason: str) -> None:
        self.failures.append((str(source), reason))
        self._print(f"failed: {source}: {reason}", sys.stderr)

    def ignore(self, source: Path, reason: str) -> None:
        self.ignored.append((str(source), reason))
        self._print(f"skipped (not an image): {source}: {reason}", sys.stderr)

    def counts(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "failures": self.failures, "ignored": self.ignored}


def summarise(all_counts: Sequence[dict], output_dir: Path, seconds: float) -> str:
    written = sum(c["written"] for c in all_counts)
    skipped = sum(c["skipped"] for c in all_counts)
    failures = [f for c in all_counts for f in c["failures"]]
    ignored = sum(len(c["ignored"]) for c in all_counts)
    parts = [f"{written} written", f"{skipped} skipped (output exists)", f"{len(failures)} failed"]
    if ignored:
        parts.append(f"{ignored} not an image")
    ranks = f" on {len(all_counts)} ranks" if len(all_counts) > 1 else ""
    lines = [f"done{ranks} in {seconds:.1f} s: {', '.join(parts)}; output folder: {output_dir}"]
    lines.extend(f"  failed: {source}: {reason}" for source, reason in failures)
    return "\n".join(lines)


class StepBar:
    """A tqdm bar over the sampling steps of one batch, fed by the pipeline's ``callback``."""

    def __init__(self, enabled: bool, description: str):
        self.enabled = enabled
        self.description = description
        self.bar = None

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.total, desc=self.description, unit="call", leave=False, file=sys.stderr)
        self.bar.update(progress.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ============================================================================================= model loading
def choose_device(requested: str, dist: Distributed) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return f"cuda:{dist.local_rank % torch.cuda.device_count()}" if dist.enabled else "cuda"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} was asked for but CUDA is not available here")
    if requested == "cuda" and dist.enabled:
        return f"cuda:{dist.local_rank}"  # one GPU per rank, as torchrun means it
    return requested


def choose_dtype(requested: str | None, device: str) -> str:
    if requested:
        return requested
    return "fp16" if device.startswith("cuda") else "fp32"


def upscale_accepts(*names: str) -> bool:
    """Whether ResShiftPipeline.upscale takes these keyword arguments (latent tiling is a newer addition)."""
    from . import pipeline

    parameters = inspect.signature(pipeline.ResShiftPipeline.upscale).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in names)


def release_named_in_file(path: Path):
    """The release a UNet file says it is (our metadata, else the official file name), without loading it."""
    from .checkpoints import METADATA_PREFIX
    from .releases import get_release, release_for_file_name

    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                name = (handle.metadata() or {}).get(METADATA_PREFIX + "release")
            if name:
                return get_release(name)
        except (OSError, SafetensorError, ResShiftError) as error:
            # a peek only: a damaged file or an unknown name is reported properly when the file is loaded
            logger.debug("could not read the release from %s: %s", path, error)
    return release_for_file_name(path.name)


def load_pipeline(args, device: str, dtype: str, show_progress: bool):
    """The pipeline the options ask for: local files, the release's cached files, or a mix of both."""
    from .hub import fetch_file
    from .pipeline import ResShiftPipeline
    from .releases import AUTOENCODERS, DEFAULT_RELEASE, get_release

    download = not args.offline
    if args.unet and args.autoencoder:
        return ResShiftPipeline.from_files(args.unet, args.autoencoder, release=args.release, device=device,
                                           dtype=dtype)
    if args.unet:
        release = get_release(args.release) if args.release else release_named_in_file(Path(args.unet))
        if release is None:
            release = get_release(DEFAULT_RELEASE)
            logger.info("using the autoencoder of %s for %s", release.name, args.unet)
        autoencoder = AUTOENCODERS[release.autoencoder]
        autoencoder_path = fetch_file(autoencoder.file_name, autoencoder.url, autoencoder.sha256,
                                      cache_dir=args.cache_dir, download=download, progress=show_progress)
        return ResShiftPipeline.from_files(args.unet, autoencoder_path, release=args.release, device=device,
                                           dtype=dtype)
    release = get_release(args.release or DEFAULT_RELEASE)
    if args.autoencoder:
        unet_path = fetch_file(release.file_name, release.url, release.sha256, cache_dir=args.cache_dir,
                               download=download, progress=show_progress)
        return ResShiftPipeline.from_files(unet_path, args.autoencoder, release=release, device=device, dtype=dtype)
    return ResShiftPipeline.from_release(release.name, cache_dir=args.cache_dir, device=device, dtype=dtype,
                                         download=download, progress=show_progress)


# ================================================================================================ upscaling
class Upscaler:
    """Runs the jobs of one rank: batches, the pipeline, writing, reporting."""

    def __init__(self, pipe, args, reporter: Reporter, show_progress: bool, upscale_options: dict,
                 input_roots: Sequence[Path]):
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
        if (mask.height, mask.width) != (image.height, image.width):
            raise InputImageError(f"its mask {mask_file} is {mask.width}x{mask.height} but the image is "
                                  f"{image.width}x{image.height}")
        return image, mask.rgb @ _LUMA_WEIGHTS

    def run_batch(self, batch: Sequence[Job]) -> None:
        loaded: dict[tuple[int, int], list] = {}
        for job in batch:
            try:
                image, mask = self._read(job)
            except InputImageError as error:
                self.reporter.fail(job.source, str(error))
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
        except (ResShiftError, RuntimeError, ValueError) as error:  # incl. out of memory: report, go on
            for job, _, _ in group:
                self.reporter.fail(job.source, f"upscaling failed: {error}")
            return
        finally:
            step_bar.close()
        outputs = result.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        for (job, image, _), rgb in zip(group, outputs):
            try:
                alpha = None if image.alpha is None else upscale_alpha(image.alpha, rgb.shape[1], rgb.shape[0])
                data = encode_result(rgb, alpha, image, self.args.format, self.args.quality)
                write_atomically(job.output, data)
            except (OSError, ValueError) as error:
                self.reporter.fail(job.source, f"cannot write {job.output}: {error}")
                continue
            self.reporter.wrote(job)


def _tiling_options(args) -> dict:
    options = {}
    if args.chop_size is not None:
        options["chop_size"] = args.chop_size
    if args.chop_stride is not None:
        options["chop_stride"] = args.chop_stride
    tiling = {name: value for name, value in (("tile_size", args.tile), ("tile_overlap", args.overlap))
              if value is not None}
    if tiling and not upscale_accepts(*tiling):
        raise UsageError("--tile / --overlap need latent tiling (ResShiftPipeline.upscale(tile_size=..., "
                         "tile_overlap=...)), which this version of resshift_core does not have; use "
                         "--chop-size / --chop-stride for the official patch-wise mode instead")
    options.update(tiling)
    return options


def _check_upscale_options(args) -> dict:
    """Usage errors found before anything is loaded; returns the extra keyword arguments for ``upscale``."""
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 1 <= args.quality <= 100:
        raise UsageError("--quality must be between 1 and 100")
    if args.release:
        from .releases import get_release

        try:
            get_release(args.release)
        except ResShiftError as error:
            raise UsageError(str(error)) from None
    output_dir = Path(args.output)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"the output {output_dir} exists and is not a folder")
    if args.mask and not Path(args.mask).exists():
        raise UsageError(f"the mask {args.mask} does not exist")
    return _tiling_options(args)


def _load_and_run(args, jobs: list[Job], reporter: Reporter, dist: Distributed, show_progress: bool,
                  upscale_options: dict) -> tuple[str, int] | None:
    """Load the weights and do ``jobs``; returns (message, exit code) when the weights cannot be used."""
    device = choose_device(args.device, dist)
    dtype = choose_dtype(args.dtype, device)
    if device == "cpu":
        tune_cpu_allocator()  # our own process: keep freed feature maps in the heap (10-15% faster on the CPU)
    try:
        pipe = load_pipeline(args, device, dtype, show_progress)
    except UnknownScheduleError as error:
        return str(error), EXIT_USAGE
    except ResShiftError as error:  # missing / damaged / wrong weight files, offline, download failures
        return str(error), EXIT_FAILED
    needs_mask = bool(pipe.unet.config.cond_mask)
    if needs_mask and not args.mask:
        return "this is an inpainting model: give the masks with --mask FILE_OR_FOLDER (white = fill)", EXIT_USAGE
    if args.mask and not needs_mask:
        return "--mask is for the inpainting releases; this model takes no mask", EXIT_USAGE
    logger.info("rank %d of %d: %d files to do on %s (%s)", dist.rank, dist.world_size, len(jobs), device, dtype)
    Upscaler(pipe, args, reporter, show_progress, upscale_options, [Path(p) for p in args.inputs]).run(jobs)
    return None


def cmd_upscale(args) -> int:
    started = time.monotonic()
    upscale_options = _check_upscale_options(args)
    dist = Distributed.from_environment()
    output_dir = Path(args.output)
    excluded = [output_dir] + ([Path(args.mask)] if args.mask else [])
    plan = plan_jobs(args.inputs, output_dir, recursive=args.recursive, extension=OUTPUT_FORMATS[args.format][1],
                     excluded=excluded)
    if not plan.jobs and not plan.conflicts:
        raise UsageError("no image files found in the inputs"
                         + ("" if args.recursive else " (use -r to look into sub-folders)"))

    is_main = dist.rank == 0
    show_progress = not args.no_progress and not args.quiet and is_main
    reporter = Reporter(prefix=f"[rank {dist.rank}] " if dist.enabled else "", quiet=args.quiet)
    if is_main:  # problems found while planning are the same on every rank: report them once
        for source, reason in plan.ignored:
            reporter.ignore(source, reason)
        for source, reason in plan.conflicts:
            reporter.fail(source, reason)
    pending = []
    for job in plan.jobs[dist.rank::dist.world_size]:  # file i goes to rank i % world: disjoint and complete
        if job.output.exists() and not args.overwrite:
            reporter.skip(job)  # done by an earlier run: this is what makes a rerun resume
        else:
            pending.append(job)

    dist.open_group()
    try:
        # Nothing left to do on this rank: do not even load the weights.
        load_error = _load_and_run(args, pending, reporter, dist, show_progress, upscale_options) if pending else None
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


# ================================================================================================== convert
def cmd_convert(args) -> int:
    from .checkpoints import (
        AUTOENCODER_KIND,
        METADATA_PREFIX,
        UNET_KIND,
        detect_kind,
        load_autoencoder,
        load_unet,
        read_checkpoint,
        save_autoencoder,
        save_unet,
    )
    from .releases import RELEASES, autoencoder_for_file_name, get_release

    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        raise UsageError(f"{source} does not exist or is not a file")
    if target.exists() and target.resolve() == source.resolve():
        raise UsageError("the output must be another file than the input")
    if target.exists() and not args.overwrite:
        print(f"error: {target} exists; pass --overwrite to replace it", file=sys.stderr)
        return EXIT_FAILED
    release = None
    if args.release:
        try:
            release = get_release(args.release)
        except ResShiftError as error:
            raise UsageError(str(error)) from None
    if target.suffix.lower() != ".safetensors":
        print(f"warning: {target} does not end in .safetensors; it is written in safetensors format anyway",
              file=sys.stderr)

    raw = read_checkpoint(source)
    kind, metadata = detect_kind(raw.tensors), raw.metadata
    del raw  # the loaders read the file again; do not hold two copies of the weights
    temporary = _temporary_beside(target)
    try:
        if kind == UNET_KIND:
            loaded = load_unet(source, release)
            save_unet(loaded.model, temporary, release=loaded.release.name if loaded.release else None,
                      schedule=loaded.schedule, one_step=loaded.one_step)
            if loaded.release is not None:
                what = f"UNet of release {loaded.release.name}"
            elif loaded.schedule is not None:
                what = "UNet (schedule from the source file's metadata)"
            else:
                what = "UNet, release unknown"
                print(f"warning: the release of {source.name} could not be identified from its file name or "
                      f"metadata, so its noise schedule is unknown and the converted file will need --release at "
                      f"every use. To record it, convert again with --release NAME (one of: {', '.join(RELEASES)})",
                      file=sys.stderr)
        elif kind == AUTOENCODER_KIND:
            model = load_autoencoder(source)
            name = release.autoencoder if release else None
            if name is None:
                found = autoencoder_for_file_name(source.name)
                name = found.name if found else metadata.get(METADATA_PREFIX + "autoencoder")
            save_autoencoder(model, temporary, name=name)
            what = f"autoencoder{f' {name}' if name else ''}"
        else:
            load_unet(source)  # neither kind: this raises the library's explanation (UnknownCheckpointError)
            raise UsageError(f"{source} is not a ResShift checkpoint")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    print(f"wrote {target} ({what})")
    return EXIT_OK


# ===================================================================================================== info
def describe_checkpoint(path: str | os.PathLike) -> dict:
    """What a weight file is: kind, inferred architecture, release and schedule, parameters, dtype, metadata.

    Raises the library's CheckpointError for unsafe, damaged or unreadable files.
    """
    from .checkpoints import (
        AUTOENCODER_KIND,
        METADATA_PREFIX,
        UNET_KIND,
        detect_kind,
        infer_unet_config,
        infer_vq_config,
        read_checkpoint,
    )
    from .releases import autoencoder_for_file_name, get_release, release_for_file_name
    from .schedule import ScheduleParams

    path = Path(path)
    raw = read_checkpoint(path)
    kind = detect_kind(raw.tensors)
    parameters = {k: t for k, t in raw.tensors.items() if not k.endswith(_BUFFER_SUFFIXES)}
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in parameters.values())
    info: dict = {
        "file": str(path), "size_bytes": path.stat().st_size,
        "format": "safetensors" if raw.metadata or path.suffix.lower() == ".safetensors" else "torch pickle",
        "kind": kind or "unknown", "tensors": len(raw.tensors),
        "parameters": int(sum(t.numel() for t in parameters.values())),
        "dtype": dtypes.most_common(1)[0][0] if dtypes else None, "dtypes": dict(dtypes),
        "metadata": dict(raw.metadata),
    }
    if kind == UNET_KIND:
        meta_config = raw.metadata.get(METADATA_PREFIX + "unet_config")
        hint = json.loads(meta_config).get("image_size") if meta_config else None
        config = infer_unet_config(raw.tensors, image_size_hint=hint)
        info["architecture"] = {
            **config.to_dict(), "levels": len(config.channel_mult), "lr_feature_stages": config.feature_stages,
            "lr_path": ("LR image concatenated to the latent" if config.feature_stages == 0 else
                        f"LR feature extractor, {config.feature_stages} stride-2 stages "
                        f"(/{2 ** config.feature_stages})"),
        }
        release, source = None, None
        named = raw.metadata.get(METADATA_PREFIX + "release")
        if named:
            try:
                release, source = get_release(named), "file metadata"
            except ResShiftError:
                info["release_note"] = f"the metadata names an unknown release {named!r}"
        if release is None:
            release = release_for_file_name(path.name)
            source = "file name" if release else None
        schedule_json = raw.metadata.get(METADATA_PREFIX + "schedule")
        schedule = ScheduleParams.from_dict(json.loads(schedule_json)) if schedule_json else (
            release.schedule if release else None)
        info["release"] = release.name if release else None
        info["release_source"] = source
        info["schedule"] = schedule.to_dict() if schedule else None
        info["one_step"] = release.one_step if release else raw.metadata.get(METADATA_PREFIX + "one_step") == "true"
        if release is not None:
            expected = release.unet
            info["matches_release_architecture"] = (
                (expected.in_channels, expected.model_channels, expected.channel_mult, expected.feature_stages,
                 expected.cond_mask) == (config.in_channels, config.model_channels, config.channel_mult,
                                         config.feature_stages, config.cond_mask))
            info["scale"] = release.scale
            info["task"] = release.task
    elif kind == AUTOENCODER_KIND:
        config = infer_vq_config(raw.tensors)
        info["architecture"] = {**config.to_dict(), "downsample_factor": config.downsample_factor}
        found = autoencoder_for_file_name(path.name)
        info["autoencoder"] = raw.metadata.get(METADATA_PREFIX + "autoencoder") or (found.name if found else None)
    else:
        info["first_keys"] = list(raw.tensors)[:8]
    return info


def format_info(info: dict) -> str:
    kinds = {"unet": "UNet (ResShift diffusion network)", "autoencoder": "VQ autoencoder",
             "unknown": "unknown: neither a ResShift UNet nor its VQ autoencoder"}
    lines = [f"file:         {info['file']} ({info['size_bytes'] / 1e6:.1f} MB, {info['format']})",
             f"kind:         {kinds[info['kind']]}"]
    arch = info.get("architecture")
    if info["kind"] == "unet":
        lines += [
            f"architecture: {arch['levels']} levels, model channels {arch['model_channels']} x "
            f"{tuple(arch['channel_mult'])}, res blocks {tuple(arch['num_res_blocks'])}",
            f"              Swin: depth {arch['swin_depth']}, embed {arch['swin_embed_dim']}, {arch['num_heads']} "
            f"heads, window {arch['window_size']}, mlp ratio {arch['mlp_ratio']:g}, at latent sizes "
            f"{tuple(arch['attention_resolutions'])}",
            f"              latent channels in/out {arch['in_channels']}/{arch['out_channels']}, "
            f"mask input: {'yes' if arch['cond_mask'] else 'no'}, LR path: {arch['lr_path']}",
            f"              construction size: latent {arch['image_size']}, LR {arch['lq_size']} px "
            f"(padding multiple)"]
        if info["release"]:
            fits = "" if info.get("matches_release_architecture", True) else \
                " (but its architecture differs from the release's: a reduced or retrained model)"
            lines.append(f"release:      {info['release']} (from the {info['release_source']}; {info['task']}, "
                         f"x{info['scale']}){fits}")
        else:
            lines.append("release:      unknown: pass --release NAME when using it (see `releases`), or convert it "
                         "with `convert IN OUT --release NAME`")
        if info["schedule"]:
            s = info["schedule"]
            steps = f"{s['steps']} steps" + (" (one network call: SinSR)" if info["one_step"] else "")
            lines.append(f"schedule:     {steps}, kappa {s['kappa']:g}, power {s['power']:g}, min noise level "
                         f"{s['min_noise_level']:g}, eta_T end {s['etas_end']:g}")
        else:
            lines.append("schedule:     unknown: pass --release")
    elif info["kind"] == "autoencoder":
        lines += [f"architecture: latent {arch['embed_dim']} channels, codebook {arch['n_embed']}, ch {arch['ch']} x "
                  f"{tuple(arch['ch_mult'])}, res blocks {tuple(arch['num_res_blocks'])}, downsampling "
                  f"/{arch['downsample_factor']}",
                  f"identified:   {info['autoencoder'] or 'not an official file name'}"]
    else:
        lines.append(f"first keys:   {', '.join(info['first_keys'])}")
    lines.append(f"parameters:   {info['parameters']:,} in {info['tensors']} tensors")
    lines.append(f"dtype:        {info['dtype']}" + (f" (mixed: {info['dtypes']})" if len(info["dtypes"]) > 1 else ""))
    if info["metadata"]:
        lines.append("metadata:")
        lines.extend(f"  {key} = {value}" for key, value in sorted(info["metadata"].items()))
    return "\n".join(lines)


def cmd_info(args) -> int:
    info = describe_checkpoint(args.file)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return EXIT_OK if info["kind"] != "unknown" else EXIT_FAILED


# ================================================================================================= releases
def cmd_releases(args) -> int:
    from .download import default_cache_dir
    from .releases import AUTOENCODERS, DEFAULT_RELEASE, LICENSE_URL, RELEASES, WEIGHTS_LICENSE

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


# =================================================================================================== parser
def build_parser() -> argparse.ArgumentParser:
    from .releases import DEFAULT_RELEASE

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log more (loading, devices, downloads)")

    parser = argparse.ArgumentParser(prog="resshift", description="ResShift diffusion super-resolution.",
                                     epilog="Exit codes: 0 ok, 1 something failed, 2 usage error, 130 interrupted.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser("upscale", parents=[common], help="upscale images and folders",
                             description="Upscale images (files and folders). Under torchrun the files are shared "
                                         "among the ranks; outputs that exist are skipped, so a rerun resumes.")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders")
    up.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    up.add_argument("-r", "--recursive", action="store_true", help="also sub-folders (structure kept in OUT_DIR)")
    up.add_argument("--format", choices=sorted(OUTPUT_FORMATS), default="png", help="output format (default png)")
    up.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality 1-100 (default 95)")
    up.add_argument("--release", default=None,
                    help=f"official release (default {DEFAULT_RELEASE}); with --unet: names its release when the "
                         f"file does not say it")
    up.add_argument("--unet", metavar="FILE", help="local UNet file (.pth or .safetensors)")
    up.add_argument("--autoencoder", metavar="FILE", help="local autoencoder file (default: the release's, cached)")
    up.add_argument("--cache-dir", metavar="DIR", help="weights cache (default $RESSHIFT_CACHE or ~/.cache/resshift)")
    up.add_argument("--offline", action="store_true", help="never download; missing files are an error")
    up.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    up.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, ...")
    up.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="network precision (default fp16 on cuda, "
                                                                        "fp32 otherwise)")
    up.add_argument("--chop-size", type=int, metavar="PX", help="official patch-wise mode: LR patch size")
    up.add_argument("--chop-stride", type=int, metavar="PX", help="patch stride (default chop size - 1/8)")
    up.add_argument("--tile", type=int, metavar="N", help="latent tiling: tile size")
    up.add_argument("--overlap", type=int, metavar="N", help="latent tiling: tile overlap")
    up.add_argument("--batch-size", type=int, default=1, help="images of the same size processed together")
    up.add_argument("--mask", metavar="FILE_OR_DIR", help="inpainting masks (white = fill), matched by file stem")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    up.add_argument("--no-progress", action="store_true", help="no progress bars")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no per-file lines for successes")
    up.set_defaults(handler=cmd_upscale)

    conv = commands.add_parser("convert", parents=[common], help="convert an official .pth to .safetensors",
                               description="Load a checkpoint safely and write it as .safetensors with its "
                                           "architecture, release and schedule in the metadata.")
    conv.add_argument("input", metavar="IN", help="checkpoint (.pth / .safetensors)")
    conv.add_argument("output", metavar="OUT", help="output .safetensors file")
    conv.add_argument("--release", help="release of a UNet whose file name does not say it")
    conv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    conv.set_defaults(handler=cmd_convert)

    inf = commands.add_parser("info", parents=[common], help="say what a weight file is")
    inf.add_argument("file", metavar="FILE")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(handler=cmd_info)

    rel = commands.add_parser("releases", parents=[common], help="list the official releases and their licence")
    rel.add_argument("--json", action="store_true", help="machine-readable output")
    rel.add_argument("--cache-dir", metavar="DIR", help="cache folder to check for downloaded files")
    rel.set_defaults(handler=cmd_releases)
    return parser


def _attach_log_handler(verbose: bool) -> Callable[[], None]:
    """Show the package's warnings (info with -v) on stderr for the duration of one command."""
    package_logger = logging.getLogger(__name__.rsplit(".", 1)[0])
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
    _warned.clear()
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ResShiftError as error:  # the library's messages say what to do
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # unforeseen: one line for the user, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(error).__name__}: {error} (run again with -v for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        detach()


if __name__ == "__main__":
    sys.exit(main())
