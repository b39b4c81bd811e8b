"""A browser demo: upload an image, get it upscaled by ResShift, compare before / after, download the PNG.

    pip install -e .[app]                      # or: pip install gradio
    python -m resshift_core.app                # http://127.0.0.1:7860, official weights downloaded on first use
    python -m resshift_core.app --unet my_unet.pth --autoencoder autoencoder_vq_f4.pth --release realsr-v3

The module imports gradio only inside the functions that build and launch the page, so ``import resshift_core.app``
works (and the library stays usable in ComfyUI / WebUI) without gradio installed. The page logic is thin: every image
operation goes through :class:`~resshift_core.pipeline.ResShiftPipeline`; :class:`UpscaleService` (no gradio) holds
the settings, the cache of loaded pipelines and the input checks, and the gradio handlers only translate its results
and errors into components and ``gr.Error`` messages.

Jobs are queued: ``--concurrency`` (default 1) of them run at once, the others wait in gradio's queue (``--queue-size``
places) and see their position.
"""

from __future__ import annotations

import argparse
import atexit
import html
import json
import inspect
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .color import COLOR_FIX_METHODS, check_color_fix
from .errors import CancelledError, CheckpointError, InputImageError, ResShiftError
from .imageio import mask_plane
from .releases import (
    DEFAULT_RELEASE,
    DEFAULT_SEED,
    LICENSE_URL,
    RELEASES,
    SINSR_LICENSE,
    SINSR_LICENSE_URL,
    WEIGHTS_LICENSE,
    Release,
    get_release,
)
from .runtime import DTYPE_CHOICES, choose_dtype, resolve_device, tune_cpu_allocator
from .sampler import MAX_SEED, check_seed
from .sampler import random_seed as core_random_seed
from .sizing import OutputSize, output_size, parse_size
from .tiling import chop_starts, default_chop_stride, validate_chop

logger = logging.getLogger(__name__)

LOCAL_CHOICE = "local"
OFFICIAL_CHOP_SIZE = 512  # LR pixels, as the official inference script
DEFAULT_MAX_PIXELS = 1024 * 1024
GRADIO_HINT = "pip install gradio  (or, from a checkout: pip install -e .[app])"

#: Tiling arguments of ``ResShiftPipeline.upscale`` the page exposes.
TILE_OPTIONS = ("tile_size", "tile_overlap")

ProgressFn = Callable[[Optional[float], str], None]


class AppSetupError(ResShiftError):
    """The app cannot start (gradio missing or too old, inconsistent arguments)."""


# ---------------------------------------------------------------------------------------------------- settings
@dataclass
class AppSettings:
    """What ``python -m resshift_core.app`` was started with.

    Attributes:
        release: the default release; with ``unet`` / ``autoencoder`` it names the schedule of those files.
        unet, autoencoder: local model files (both or neither), offered as the model "local files".
        cache_dir: the download cache (default ``RESSHIFT_CACHE`` or ``~/.cache/resshift``).
        device, dtype: where and in which precision the networks run (default: CUDA when available, in the core's
            precision for the device: float16 on CUDA, float32 on the CPU).
        max_pixels: largest accepted input, in LR pixels (width x height).
        concurrency: jobs run at once; the others are queued.
        queue_size: jobs that may wait in the queue (more are refused with "queue full").
        max_loaded: pipelines kept in memory (least recently used ones are dropped).
        output_dir: where result PNGs are written (default: a temporary folder removed at exit).
        output_max_age_s: result files older than this are deleted.
    """

    release: str = DEFAULT_RELEASE
    unet: str | None = None
    autoencoder: str | None = None
    cache_dir: str | None = None
    device: str | None = None
    dtype: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    concurrency: int = 1
    queue_size: int = 16
    max_loaded: int = 2
    output_dir: str | None = None
    output_max_age_s: float = 3600.0

    def __post_init__(self):
        self.release = get_release(self.release).name
        if (self.unet is None) != (self.autoencoder is None):
            raise AppSetupError("give both --unet and --autoencoder (local files), or neither (official releases)")
        if self.max_pixels < 1:
            raise AppSetupError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.concurrency < 1:
            raise AppSetupError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_loaded < 1:
            raise AppSetupError(f"max_loaded must be at least 1, got {self.max_loaded}")
        choose_dtype("cpu", self.dtype)  # a clear error for a bad name now rather than on the first run

    @property
    def has_local_model(self) -> bool:
        return self.unet is not None

    def resolved_device(self) -> str:
        return resolve_device(self.device or "auto")


@dataclass
class _Job:
    """One job's inputs, resolved, and what its run reported."""

    picture: Any
    seed: int
    chop: tuple[int | None, int | None]
    color_fix: str
    size: Any
    label: str
    tiles: Any = None
    mask: Any = None
    record: dict = field(default_factory=dict)
    plan: Any = None
    size_plan: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """One finished job: the comparison pair, the PNG to download and a one-line summary."""

    before_path: str
    result_path: str
    seed: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    seconds: float
    summary: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ the pipelines
class PipelineCache:
    """Loaded pipelines, one per (model, device, dtype), the least recently used dropped beyond ``max_loaded``.

    A lock guards the table; a second lock per key makes concurrent first requests for one model load it once,
    while requests for models already loaded are not held up by a load in progress. Failed loads are not cached,
    so a run after the user has put the missing file in place succeeds.
    """

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pipes: OrderedDict[tuple, Any] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}
        self._running: dict[tuple, threading.Lock] = {}

    def key(self, choice: str) -> tuple:
        return choice, self.settings.resolved_device(), self.settings.dtype

    def loaded(self, choice: str) -> bool:
        with self._lock:
            return self.key(choice) in self._pipes

    def run_lock(self, choice: str) -> threading.Lock:
        """Held while a job runs on this model: one pipeline runs one job at a time (its networks keep small
        caches that are not meant to be shared between threads); different models may run side by side."""
        with self._lock:
            return self._running.setdefault(self.key(choice), threading.Lock())

    def get(self, choice: str, on_download: Callable[[int, int | None], None] | None = None):
        key = self.key(choice)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._pipes:
                    self._pipes.move_to_end(key)
                    return self._pipes[key]
            pipe = self._load(choice, on_download)
            with self._lock:
                self._pipes[key] = pipe
                while len(self._pipes) > self.settings.max_loaded:
                    dropped, _ = self._pipes.popitem(last=False)
                    logger.info("dropped pipeline %s from memory", dropped[0])
                self._loading.pop(key, None)
            return pipe

    def _load(self, choice: str, on_download):
        from .assembly import HostFacts
        from .pipeline import ResShiftPipeline

        settings = self.settings
        device = settings.resolved_device()
        started = time.perf_counter()
        host = HostFacts(cache_dir=settings.cache_dir, progress=on_download if on_download is not None else False)
        if choice == LOCAL_CHOICE:
            if not settings.has_local_model:
                raise ResShiftError("this server was started without local model files (--unet / --autoencoder)")
            for kind, path in (("UNet", settings.unet), ("autoencoder", settings.autoencoder)):
                if not Path(path).is_file():
                    raise ResShiftError(f"the {kind} file {path} given at start-up does not exist (any more)")
            pipe = ResShiftPipeline.assemble(settings.unet, settings.autoencoder, release=settings.release,
                                             device=device, dtype=settings.dtype, host=host)
        else:
            pipe = ResShiftPipeline.assemble(release=choice, device=device, dtype=settings.dtype, host=host)
        logger.info("loaded %s on %s (%s) in %.1f s", choice, device, pipe.dtype, time.perf_counter() - started)
        return pipe


# -------------------------------------------------------------------------------------------------- the service
class UpscaleService:
    """Everything the page does, without gradio: model menu, input checks, one job, result files."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.pipelines = PipelineCache(settings)
        if settings.output_dir:
            self.output_dir = Path(settings.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.output_dir = Path(tempfile.mkdtemp(prefix="resshift_app_"))
            atexit.register(shutil.rmtree, self.output_dir, True)
        self._cancel_lock = threading.Lock()
        self._cancel_events: dict[str, threading.Event] = {}

    # ---- model menu
    def model_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the local files first when given, then every release."""
        choices = []
        if self.settings.has_local_model:
            label = (f"local files: {Path(self.settings.unet).name} + {Path(self.settings.autoencoder).name} "
                     f"({self.settings.release} schedule)")
            choices.append((label, LOCAL_CHOICE))
        for release in RELEASES.values():
            choices.append((f"{release.name}: {release.description}", release.name))
        return choices

    def default_choice(self) -> str:
        return LOCAL_CHOICE if self.settings.has_local_model else self.settings.release

    def _cache_folder(self) -> Path:
        from .download import default_cache_dir

        return Path(self.settings.cache_dir) if self.settings.cache_dir else default_cache_dir()

    def release_of(self, choice: str) -> Release:
        return get_release(self.settings.release if choice == LOCAL_CHOICE else choice)

    def describe(self, choice: str | None) -> str:
        """Markdown about a menu entry: what it does, its steps, its licence, whether its files are here."""
        if not choice:
            return ""
        try:
            release = self.release_of(choice)
        except ResShiftError as exc:
            return f"**{html.escape(str(exc))}**"
        steps = "1 network call" if release.one_step else f"{release.schedule.steps} steps"
        kind = {"sr": f"x{release.scale} super-resolution", "inpaint": "inpainting (needs a mask below)",
                "faceir": "face restoration (aligned 512x512 faces)"}.get(release.task, release.task)
        if choice == LOCAL_CHOICE:
            where = (f"Local files `{Path(self.settings.unet).name}` and `{Path(self.settings.autoencoder).name}`, "
                     f"run with the schedule of **{release.name}**.")
        else:
            from .releases import AUTOENCODERS

            folder = self._cache_folder()
            missing = [name for name in (release.file_name, AUTOENCODERS[release.autoencoder].file_name)
                       if not (folder / name).exists()]
            if self.pipelines.loaded(choice):
                where = "Loaded."
            elif missing:
                where = (f"Downloaded on first use from the authors' GitHub release into `{folder}` "
                         f"(missing: {', '.join(missing)}).")
            else:
                where = f"In the cache `{folder}`."
        return (f"{kind}, {steps}. {where} Weights: [{release.license}]({release.license_url}).")

    # ---- inputs
    def open_image(self, source):
        """An upload (path, PIL image or HxWxC array) -> :class:`~resshift_core.imageio.DecodedImage` by the
        project's image rules (orientation, 16 bits, alpha, profile), refusing non-images and images above
        ``max_pixels`` (checked from the header, before the pixels are decoded)."""
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        from .imageio import DecodedImage, read_image

        if source is None:
            raise InputImageError("upload an image first")
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InputImageError(f"the uploaded file {path.name} cannot be found on the server; upload it again")
            try:
                with Image.open(path) as header:
                    size = header.size
            except Image.DecompressionBombError as exc:
                raise InputImageError(f"{path.name} is far too large for this server ({exc})") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                raise InputImageError(f"{path.name} is not an image this server can read; upload a PNG, JPEG, WebP, "
                                      f"BMP or TIFF file") from None
            self.check_size(*size)
            return read_image(path)
        if not (hasattr(source, "size") and hasattr(source, "mode")):
            try:
                source = Image.fromarray(np.asarray(source))
            except (TypeError, ValueError):
                raise InputImageError(f"expected an image, got {type(source).__name__}") from None
        self.check_size(*source.size)
        return DecodedImage.from_pil(source)

    def check_size(self, width: int, height: int) -> None:
        limit = self.settings.max_pixels
        if width * height > limit:
            side = int(math.sqrt(limit))
            raise InputImageError(f"the image is {width}x{height} = {width * height:,} pixels; this server accepts "
                                  f"at most {limit:,} pixels (about {side}x{side}). Down-scale or crop it first.")
        if width < 1 or height < 1:
            raise InputImageError(f"the image is empty ({width}x{height})")

    @staticmethod
    def resolve_seed(seed, random_seed: bool) -> int:
        """The seed box and the "random seed" tick -> a seed, by the core's seed rules."""
        if random_seed:
            return core_random_seed()
        if seed is None or (isinstance(seed, float) and not math.isfinite(seed)):
            raise InputImageError("enter a seed (a whole number) or tick 'random seed'")
        return check_seed(seed)

    @staticmethod
    def resolve_chop(chop_size, chop_stride) -> tuple[int | None, int | None]:
        """The page's chop boxes (0 = off / the default stride) -> the core's chop arguments, validated."""
        size = int(chop_size or 0)
        stride = int(chop_stride or 0)
        if size < 0 or stride < 0:
            raise InputImageError("chop size and stride cannot be negative")
        if size == 0:
            return None, None
        validate_chop(size, stride or None)
        return size, stride or None

    @staticmethod
    def resolve_size(out_scale, out_size) -> OutputSize | None:
        """The page's output-size boxes (0 / empty = the model's own scale) -> an output size request."""
        size = output_size(scale=out_scale or None, size=parse_size(out_size) if str(out_size or "").strip()
                           else None)
        return None if size.is_native() else size

    # ---- cancellation (the Stop button)
    def cancel_event(self, session: str | None) -> threading.Event:
        with self._cancel_lock:
            event = self._cancel_events.setdefault(session or "", threading.Event())
            event.clear()
            return event

    def request_cancel(self, session: str | None) -> None:
        with self._cancel_lock:
            event = self._cancel_events.get(session or "")
        if event is not None:
            event.set()

    # ---- one job
    def run(self, image, choice: str | None = None, *, seed=DEFAULT_SEED, random_seed: bool = False,
            chop_size=0, chop_stride=0, mask=None, tile_size=None, tile_overlap=None, color_fix="none",
            out_scale=0, out_size="", progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
            source_name: str | None = None) -> RunResult:
        """Upscale one image with the chosen model; raises :class:`ResShiftError` subclasses with user-facing
        messages."""
        report = progress or (lambda fraction, desc: None)
        choice = choice or self.default_choice()
        if choice != LOCAL_CHOICE:
            get_release(choice)
        job = _Job(picture=self.open_image(image), seed=self.resolve_seed(seed, random_seed),
                   chop=self.resolve_chop(chop_size, chop_stride), color_fix=check_color_fix(color_fix),
                   size=self.resolve_size(out_scale, out_size),
                   label="local files" if choice == LOCAL_CHOICE else choice)
        for name, value in (("tile size", tile_size), ("tile overlap", tile_overlap)):
            if value is not None and value < 0:
                raise InputImageError(f"{name} cannot be negative")
        pipe = self._pipeline_for(choice, job.label, report)
        job.tiles = pipe.tiles(tile_size=int(tile_size or 0), tile_overlap=int(tile_overlap or 0) or None)
        job.mask = self._mask_for(pipe, mask, job)
        outputs, seconds = self._execute(pipe, choice, job, report, cancel)
        report(1.0, "saving the PNG")
        return self._save(pipe, job, image, source_name, outputs, seconds)

    def _pipeline_for(self, choice: str, label: str, report: ProgressFn):
        if not self.pipelines.loaded(choice):
            report(None, "loading the local model files" if choice == LOCAL_CHOICE
                   else f"loading {label} (its files are downloaded on first use)")

        def on_download(done: int, total: int | None) -> None:
            report(done / total if total else None,
                   f"downloading {label}: {done / 2 ** 20:.0f}" + (f" / {total / 2 ** 20:.0f} MB" if total else " MB"))

        return self.pipelines.get(choice, on_download)

    def _mask_for(self, pipe, mask, job: _Job):
        """The inpainting mask tensor (1, 1, H, W), or None; a mask given to another model is noted and ignored."""
        import torch

        if not pipe.unet.config.cond_mask:
            if mask is not None:
                job.notes.append("the mask was ignored (only the inpainting models use one)")
            return None
        if mask is None:
            raise InputImageError("this is an inpainting model: add a mask (white = region to fill) under "
                                  "'inpainting mask'")
        return torch.from_numpy(mask_plane(self.open_image(mask), job.picture))[None, None]

    def _execute(self, pipe, choice: str, job: _Job, report: ProgressFn, cancel) -> tuple:
        """The run itself, one job per model at a time; returns (B, 3, H', W') outputs and the seconds taken."""
        import torch

        picture = job.picture
        chop, stride = job.chop
        chopping = chop is not None and (picture.width > chop or picture.height > chop)

        def on_step(step) -> None:
            if step.phase != "denoise":
                where = "encoding" if step.phase == "encode" else "decoding"
            else:
                where = f"step {step.step or '?'}/{step.total_steps or '?'}" if step.step else "step"
            if chopping:  # official patches: one complete run per patch, one after the other
                where += f", patch {step.tile}/{step.total_tiles}"
            elif step.total_tiles > 1:
                where += f", tile {step.tile}/{step.total_tiles}"
            report(step.fraction, where)

        run_lock = self.pipelines.run_lock(choice)
        if not run_lock.acquire(blocking=False):
            report(None, "waiting for the model (another job is using it)")
            run_lock.acquire()
        try:
            report(0.0, "starting")
            logger.info("job started: %dx%d with %s, seed %d", picture.width, picture.height, job.label, job.seed)
            started = time.perf_counter()
            images = torch.from_numpy(picture.rgb).permute(2, 0, 1)[None].contiguous()
            outputs = pipe.upscale(images, mask=job.mask, seed=job.seed, callback=on_step, cancel=cancel,
                                   chop_size=chop, chop_stride=stride, max_input_pixels=self.settings.max_pixels,
                                   tiles=job.tiles, color_fix=job.color_fix, size=job.size)
            job.record = pipe.run_record(color_fix=job.color_fix)
            job.plan, job.size_plan = pipe.last_plan, pipe.last_size_plan
            seconds = time.perf_counter() - started
            logger.info("job finished: %dx%d in %.1f s", picture.width, picture.height, seconds)
        finally:
            run_lock.release()
        return outputs, seconds

    def _save(self, pipe, job: _Job, image, source_name: str | None, outputs, seconds: float) -> RunResult:
        """Write the result PNG (with its run record) and the bicubic input for the comparison; the summary."""
        from PIL import Image

        from .imageio import encode_image, to_pil, upscale_alpha, write_image

        picture = job.picture
        rgb = outputs[0].float().cpu().permute(1, 2, 0).numpy()
        out_height, out_width = rgb.shape[:2]
        alpha = None if picture.alpha is None else upscale_alpha(picture.alpha, out_width, out_height)
        self.prune_outputs()
        folder = Path(tempfile.mkdtemp(prefix="run_", dir=self.output_dir))
        stem = _safe_stem(source_name or (Path(image).stem if isinstance(image, (str, os.PathLike)) else "image"))
        release_name = pipe.release.name if pipe.release else job.label.replace(" ", "-")
        factor = f"{out_width}x{out_height}" if job.size is not None else f"x{pipe.scale}"
        result_path = folder / f"{stem}_resshift_{release_name}_{factor}_seed{job.seed}.png"
        write_image(result_path, encode_image(rgb, alpha, picture, "png", text={"resshift": json.dumps(job.record)}))
        # the input as the model saw it (16-bit, palette and gray included), up-sampled for the comparison slider
        before = to_pil(picture.rgb, picture.alpha, picture).resize((out_width, out_height), Image.BICUBIC)
        before_path = folder / f"{stem}_input_bicubic_{factor}.png"
        before.save(before_path, compress_level=1)
        summary = (f"**{job.label}**, seed {job.seed}: {picture.width}x{picture.height} → {out_width}x{out_height} "
                   f"in {seconds:.1f} s on {pipe.device} ({str(pipe.dtype).replace('torch.', '')}"
                   f"{self._how(job)})")
        if job.notes:
            summary += "; " + "; ".join(job.notes)
        return RunResult(str(before_path), str(result_path), job.seed, (picture.width, picture.height),
                         (out_width, out_height), seconds, summary, job.notes)

    @staticmethod
    def _how(job: _Job) -> str:
        """How the run was computed, for the summary: patches or tiles, passes, colour fix."""
        parts = []
        chop, stride = job.chop
        width, height = job.picture.width, job.picture.height
        if chop is not None and (width > chop or height > chop):
            stride_used = stride or default_chop_stride(chop)
            count = len(chop_starts(height, chop, stride_used)) * len(chop_starts(width, chop, stride_used))
            parts.append(f"{count} patches of {chop} px")
        elif job.plan is not None and not job.plan.is_official:
            parts.append(job.plan.describe())
        if job.size_plan is not None:
            parts.append(job.size_plan.describe())
        if job.color_fix != "none":
            parts.append(f"{job.color_fix} colour fix")
        return "".join(f", {part}" for part in parts)

    def prune_outputs(self) -> None:
        """Delete result folders older than ``output_max_age_s`` (gradio keeps its own copies while it needs
        them)."""
        limit = time.time() - self.settings.output_max_age_s
        for folder in self.output_dir.glob("run_*"):
            try:
                if folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return stem[:60]


# ------------------------------------------------------------------------------------------------------ gradio
def import_gradio():
    """Import gradio, or raise a clear error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        raise AppSetupError(f"the web app needs gradio, which is not installed ({exc}): {GRADIO_HINT}") from None
    major = int(str(getattr(gr, "__version__", "0")).split(".")[0] or 0)
    if major < 4:
        raise AppSetupError(f"the web app needs gradio 4 or newer, found {gr.__version__}: pip install -U gradio")
    return gr


def comparison_html(before_url: str, after_url: str, width: int, height: int) -> str:
    """A before / after slider without ``gr.ImageSlider`` (gradio < 5): two stacked images, the upper one clipped
    by a range input (inline handlers: gradio inserts HTML without running <script> tags)."""
    before_url, after_url = html.escape(before_url, quote=True), html.escape(after_url, quote=True)
    return (
        f'<div class="resshift-compare" style="position:relative;max-width:100%;max-height:512px;'
        f'aspect-ratio:{width}/{height};overflow:hidden">'
        f'<img class="resshift-after" src="{after_url}" alt="after" width="{width}" height="{height}" '
        f'style="position:absolute;inset:0;width:100%;height:100%;object-fit:contain">'
        f'<img class="resshift-before" src="{before_url}" alt="before" width="{width}" height="{height}" '
        f'style="position:absolute;inset:0;width:100%;height:100%;object-fit:contain;clip-path:inset(0 50% 0 0)">'
        f'</div>'
        f'<input type="range" min="0" max="100" value="50" aria-label="before / after" style="width:100%" '
        f'oninput="this.previousElementSibling.querySelector(\'.resshift-before\').style.clipPath='
        f'\'inset(0 \'+(100-this.value)+\'% 0 0)\'">'
        f'<div style="display:flex;justify-content:space-between;font-size:smaller"><span>before (bicubic)</span>'
        f'<span>after (ResShift)</span></div>')


def _file_url(gr, path: str) -> str:
    major = int(gr.__version__.split(".")[0])
    return ("gradio_api/file=" if major >= 5 else "file=") + path


def make_handlers(service: UpscaleService, *, slider: bool = True):
    """The gradio event handlers: ``run`` (one job), ``stop`` (the Stop button) and ``describe`` (model menu)."""
    gr = import_gradio()
    from .download import DownloadError

    def run(image, model, seed, random_seed, chop_size, chop_stride, mask=None, tile_size=None, tile_overlap=None,
            color_fix="none", out_scale=0, out_size="", request: gr.Request = None,
            progress=gr.Progress()):  # noqa: B008 (the gradio idiom)
        session = getattr(request, "session_hash", None)
        event = service.cancel_event(session)

        def report(fraction, desc):
            progress(fraction, desc=desc)

        try:
            result = service.run(image, model, seed=seed, random_seed=random_seed, chop_size=chop_size,
                                 chop_stride=chop_stride, mask=mask, tile_size=tile_size, tile_overlap=tile_overlap,
                                 color_fix=color_fix, out_scale=out_scale, out_size=out_size, progress=report,
                                 cancel=event.is_set)
        except CancelledError:
            raise _error(gr, "stopped", title="Stopped") from None
        except ResShiftError as exc:
            message = str(exc)
            if model == LOCAL_CHOICE and isinstance(exc, CheckpointError):
                message = f"the model files given at start-up (--unet / --autoencoder) cannot be used: {message}"
            elif isinstance(exc, DownloadError) and service.settings.has_local_model:
                message += ("\n\nThis server was started with local model files: choose 'local files' in the "
                            "model menu to use them.")
            elif isinstance(exc, DownloadError):
                message += ("\n\nOr start the app with --unet FILE --autoencoder FILE to use files you have "
                            "downloaded yourself.")
            raise _error(gr, message, print_exception=False) from None
        except MemoryError:
            raise _error(gr, "out of memory: use a smaller image, or smaller tiles / chop size") from None
        except Exception as exc:  # the page shows a message instead of a stuck progress bar
            if "out of memory" in str(exc).lower():
                raise _error(gr, f"out of memory on {service.settings.resolved_device()}: use a smaller image, "
                                 f"or smaller tiles / chop size") from None
            logger.exception("unexpected error")
            raise _error(gr, f"unexpected error: {type(exc).__name__}: {exc}") from None
        if slider:
            pair = (result.before_path, result.result_path)
        else:
            pair = comparison_html(_file_url(gr, result.before_path), _file_url(gr, result.result_path),
                                   *result.output_size)
        return pair, result.result_path, result.summary, result.seed

    def stop(request: gr.Request = None):
        service.request_cancel(getattr(request, "session_hash", None))

    # Real classes, not the strings ``from __future__ import annotations`` makes: gradio finds gr.Request by type.
    run.__annotations__ = {"request": gr.Request}
    stop.__annotations__ = {"request": gr.Request}
    return run, stop, service.describe


def _error(gr, message: str, **options):
    """``gr.Error`` with the options this gradio version knows (``title``, ``print_exception``...); it stays on the
    page until closed. Gradio renders the message as HTML: it is escaped, its line breaks kept."""
    options.setdefault("duration", None)
    text = html.escape(message).replace("\n", "<br>")
    return gr.Error(text, **_supported(gr.Error.__init__, options))


def _supported(function, options: dict) -> dict:
    """The options this gradio version's ``function`` accepts (others are dropped, with a debug note)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    dropped = [name for name in options if name not in parameters]
    if dropped:
        logger.debug("gradio %s: %s has no %s", function.__qualname__, function.__name__, dropped)
    return {name: value for name, value in options.items() if name in parameters}


def header_markdown(service: UpscaleService) -> str:
    return (
        "# ResShift super-resolution\n"
        "Upload a low-resolution image, pick a model and press **Run**: the result is shown next to the input "
        "(bicubic) with a before / after slider, and can be downloaded as PNG. Inputs up to "
        f"{service.settings.max_pixels:,} pixels. Jobs are queued: {service.settings.concurrency} at a time.")


def license_markdown() -> str:
    return (
        f"**Licence of the model weights.** The official ResShift weights are published by their authors under the "
        f"[{WEIGHTS_LICENSE}]({LICENSE_URL}), the SinSR weights under [{SINSR_LICENSE}]({SINSR_LICENSE_URL}): "
        f"research and other non-commercial use only. "
        f"Downloading or using them through this page means accepting those terms. This demo's code has its own "
        f"licence (see the project's LICENSE).")


def build_demo(service: UpscaleService, *, slider: bool | None = None):
    """The page (a ``gr.Blocks``), queued with ``service.settings.concurrency`` jobs at a time."""
    gr = import_gradio()
    if slider is None:
        slider = hasattr(gr, "ImageSlider")
    run, stop, describe = make_handlers(service, slider=slider)
    blocks_options = _supported(gr.Blocks.__init__, {"title": "ResShift super-resolution",
                                                      "delete_cache": (600, int(service.settings.output_max_age_s))})
    with gr.Blocks(**blocks_options) as demo:
        gr.Markdown(header_markdown(service))
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="low-resolution input", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], elem_id="input-image", height=320)
                model = gr.Dropdown(choices=service.model_choices(), value=service.default_choice(), label="model",
                                    elem_id="model-choice")
                model_info = gr.Markdown(describe(service.default_choice()), elem_id="model-info")
                with gr.Row():
                    seed = gr.Number(value=DEFAULT_SEED, precision=0, minimum=0, maximum=MAX_SEED, label="seed",
                                     elem_id="seed")
                    random_seed = gr.Checkbox(value=False, label="random seed", elem_id="random-seed")
                with gr.Accordion("output size and colour", open=False):
                    with gr.Row():
                        out_scale = gr.Number(value=0, minimum=0, label="scale (e.g. 2, 3, 8; 0 = the model's x4)",
                                              elem_id="out-scale")
                        out_size = gr.Textbox(value="", label="or size WxH (2048x, x1536; empty = by scale)",
                                              elem_id="out-size")
                    color_fix = gr.Radio(choices=list(COLOR_FIX_METHODS), value="none", elem_id="color-fix",
                                         label="colour fix: bring the colours back to the input's (none = the "
                                               "official computation)")
                with gr.Accordion("large images: tiling and patch-wise processing", open=False):
                    tile_inputs = []
                    tile_labels = {"tile_size": "tile size (latent px = LR px for x4; 0 = automatic)",
                                   "tile_overlap": "tile overlap (latent px; 0 = automatic)"}
                    gr.Markdown("Images run untiled (the official computation) while that fits in memory and costs "
                                "at most 1.5x the tiled run; larger ones are cut into overlapping latent tiles, "
                                "blended smoothly, with one noise field. A tile size here always tiles.")
                    for name in TILE_OPTIONS:
                        tile_inputs.append(gr.Number(value=0, precision=0, minimum=0, label=tile_labels[name],
                                                     elem_id=name.replace("_", "-")))
                    chop_size = gr.Number(value=0, precision=0, minimum=0,
                                          label="official chop size (LR px; independent runs on patches averaged; "
                                                "0 = off)", elem_id="chop-size")
                    chop_stride = gr.Number(value=0, precision=0, minimum=0,
                                            label="chop stride (LR px; 0 = chop size - chop size / 8)",
                                            elem_id="chop-stride")
                with gr.Accordion("inpainting mask (inpaint-* models only)", open=False):
                    mask = gr.Image(label="mask: white = region to fill, same size as the image", type="filepath",
                                    image_mode=None, sources=["upload", "clipboard"], elem_id="mask-image",
                                    height=200)
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run-button")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
            with gr.Column(scale=1):
                if slider:
                    result = gr.ImageSlider(label="before (bicubic)  |  after (ResShift)", type="filepath",
                                            format="png", interactive=False, elem_id="result-slider")
                else:
                    result = gr.HTML(label="before / after", elem_id="result-slider")
                download = gr.File(label="result (PNG)", interactive=False, elem_id="result-file")
                info = gr.Markdown(elem_id="run-info")
        gr.Markdown(license_markdown(), elem_id="license")

        model.change(describe, inputs=model, outputs=model_info, queue=False)
        job = run_button.click(run, inputs=[image, model, seed, random_seed, chop_size, chop_stride, mask,
                                            *tile_inputs, color_fix, out_scale, out_size],
                               outputs=[result, download, info, seed], api_name="upscale",
                               **_supported(run_button.click, {"show_progress_on": [result]}))
        stop_button.click(stop, inputs=None, outputs=None, cancels=[job], queue=False)
    demo.queue(default_concurrency_limit=service.settings.concurrency, max_size=service.settings.queue_size)
    return demo


def launch(settings: AppSettings, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_file_size: str = "64mb", prevent_thread_lock: bool = False):
    """Build the page and serve it (blocks unless ``prevent_thread_lock``); returns the demo."""
    gr = import_gradio()
    if settings.resolved_device() == "cpu":
        tune_cpu_allocator()  # the app owns its process: keep freed feature maps in the heap (faster on the CPU)
    service = UpscaleService(settings)
    demo = build_demo(service)
    options = _supported(demo.launch, {
        "server_name": host, "server_port": port, "share": share, "show_error": True, "max_file_size": max_file_size,
        "allowed_paths": [str(service.output_dir)], "ssr_mode": False, "prevent_thread_lock": prevent_thread_lock,
        "mcp_server": False})
    logger.info("gradio %s, device %s, dtype %s, default model %s", gr.__version__, settings.resolved_device(),
                settings.dtype, service.default_choice())
    demo.launch(**options)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resshift_core.app",
        description="ResShift super-resolution in the browser (gradio). The official weights are downloaded on "
                    f"first use; they are under the {WEIGHTS_LICENSE}.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 "
                                                            "serves the local network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--release", default=DEFAULT_RELEASE,
                        help=f"default model, or the schedule of --unet (one of: {', '.join(RELEASES)})")
    parser.add_argument("--unet", help="a local UNet file (.pth / .safetensors), offered as 'local files'")
    parser.add_argument("--autoencoder", help="the local autoencoder file that goes with --unet")
    parser.add_argument("--cache-dir", help="download cache (default $RESSHIFT_CACHE or ~/.cache/resshift)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_CHOICES],
                        help="network precision (auto: fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="largest input accepted, in pixels (default 1024*1024)")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once; more are queued (default 1)")
    parser.add_argument("--queue-size", type=int, default=16, help="jobs that may wait (default 16)")
    parser.add_argument("--share", action="store_true", help="also publish through a gradio share link (off)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = AppSettings(release=args.release, unet=args.unet, autoencoder=args.autoencoder,
                               cache_dir=args.cache_dir, device=args.device, dtype=args.dtype,
                               max_pixels=args.max_pixels, concurrency=args.concurrency, queue_size=args.queue_size)
        launch(settings, host=args.host, port=args.port, share=args.share)
    except ResShiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
