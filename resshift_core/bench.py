"""Speed benchmark of the pipeline (not a test): ``python -m resshift_core.bench``.

Builds full-size networks of a release with seeded random weights (or loads given files) and times complete
``upscale`` runs on an input made from a real photo (scikit-image's astronaut; a smooth synthetic image if
scikit-image is missing). Per case and dtype it prints, as a table and as JSON:

* device and dtype, input and output size;
* seconds per image: the median of ``--repeat`` runs after ``--warmup`` un-timed runs (and the first run's time,
  which includes one-off costs such as compilation), with the split between UNet, VAE encoder and VAE decoder;
* output megapixels per second;
* peak memory: on CPU the peak resident set size (VmHWM, reset with /proc/self/clear_refs after the networks are
  built) and its growth over the resident size before the first run; on CUDA ``max_memory_allocated``;
* FLOPs of one run (``torch.utils.flop_counter.FlopCounterMode``; counted with the networks on the ``meta`` device,
  which runs no arithmetic, or on the warm-up run when that is not possible), achieved GFLOP/s, and the fraction of
  the device's peak measured in the same sitting with large square matmuls in the same dtype;
* for reduced precision, the PSNR of the output against the fp32 output of the same case and seed (when fp32 is in
  the run).

The networks run as the library runs them by default (channels-last) and, on the CPU, with the allocator setting of
the command line (:func:`resshift_core.runtime.tune_cpu_allocator`); ``--no-channels-last`` and
``--default-allocator`` measure without them.

Each (case, dtype) runs in a fresh subprocess, so that peaks of one case do not leak into the next (the allocator
keeps freed memory). Reduced-precision cases whose predicted time per run exceeds ``--max-run-seconds`` are skipped
with the prediction (CPUs without bf16/fp16 instructions run those dtypes ~100x slower than fp32).

Examples::

    python -m resshift_core.bench                                   # v3-64 and v1-64, fp32 and bf16
    python -m resshift_core.bench --cases v3-256,v3-256-tiled --dtype fp32 --repeat 1
    python -m resshift_core.bench --device cuda --dtype fp32,bf16,fp16 --cases v3-64,v3-1024-tiled --json out.json
    python -m resshift_core.bench --unet my.safetensors --autoencoder vq.pth --cases 64,512-tiled
    python -m resshift_core.bench --list

Cases are ``[TAG-]SIZE[-tiled|-chopN]``: TAG ``v1``/``v2``/``v3`` is realsr-v1/v2/v3, another tag a release name,
no tag ``--release``; SIZE the square input side in pixels; ``-tiled`` latent tiling (``--tiling-mode``, tile sizes
from ``--tile-size`` etc. or the library's device defaults), ``-chopN`` the official patch-wise processing with
patches of N pixels (stride ``--chop-stride``, default the official script's: 448, 224, 48 for N = 512, 256, 64);
no suffix: untiled.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

PRESETS: dict[str, str] = {
    "v3-64": "realsr-v3, 64 -> 256, untiled",
    "v1-64": "realsr-v1 (15 steps), 64 -> 256, untiled",
    "v3-256": "realsr-v3, 256 -> 1024, untiled (VAE attention over a 256x256 latent)",
    "v3-256-tiled": "realsr-v3, 256 -> 1024, latent tiling",
    "v3-512-tiled": "realsr-v3, 512 -> 2048, latent tiling",
    "v3-512-chop64": "realsr-v3, 512 -> 2048, official patch-wise processing, 64 px patches, stride 48",
    "v3-1024-tiled": "realsr-v3, 1024 -> 4096, latent tiling",
}
DEFAULT_CASES = ("v3-64", "v1-64")
DEFAULT_DTYPES = ("fp32", "bf16")
_CASE_RE = re.compile(r"^(?:(?P<tag>[a-z][a-z0-9-]*?)-)?(?P<size>\d+)(?:-(?P<mode>tiled|chop(?P<chop>\d+)))?$")
OFFICIAL_CHOP_STRIDES = {512: 448, 256: 224, 64: 48}  # inference_resshift.py defaults for x4
_TAGS = {"v1": "realsr-v1", "v2": "realsr-v2", "v3": "realsr-v3"}
_MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    release: str
    size: int
    mode: str  # "off", "tiled" or "chop"
    chop: int | None = None


def parse_case(name: str, default_release: str) -> Case:
    from .releases import get_release

    match = _CASE_RE.match(name.strip().lower())
    if not match:
        raise SystemExit(f"bad case name {name!r}: expected [TAG-]SIZE[-tiled|-chopN], e.g. v3-64, 512-tiled "
                         f"(see --list)")
    tag = match["tag"]
    release = _TAGS.get(tag, tag) if tag else default_release
    try:
        release = get_release(release).name
    except Exception as error:
        raise SystemExit(f"case {name!r}: {error}") from None
    mode = match["mode"] or "off"
    chop = int(match["chop"]) if match["chop"] else None
    return Case(name.strip().lower(), release, int(match["size"]), "chop" if chop else mode, chop)


# ------------------------------------------------------------------------------------------------------- inputs
def input_image(size: int) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 1] from a real photo (scikit-image's astronaut), resized with PIL."""
    from PIL import Image

    try:
        from skimage import data  # imported lazily: an optional dependency

        array = data.astronaut()
        source = "astronaut"
    except Exception:  # scikit-image missing (or its data): a smooth synthetic image with some structure
        yy, xx = np.mgrid[0:512, 0:512].astype(np.float32) / 512
        array = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.5 + 0.4 * np.cos(5 * yy - 3 * xx),
                          0.5 + 0.3 * np.sin(9 * xx * yy + 1)], axis=-1)
        array = (array * 255).round().astype(np.uint8)
        source = "synthetic"
    image = Image.fromarray(array)
    if image.size != (size, size):
        resample = Image.LANCZOS if size < image.size[0] else Image.BICUBIC
        image = image.resize((size, size), resample)
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    input_image.source = source  # type: ignore[attr-defined]
    return tensor.contiguous()


# ------------------------------------------------------------------------------------------------------ weights
def _perturb_zeros(module: torch.nn.Module, generator: torch.Generator) -> int:
    """Give small random values to all-zero float parameters (zero-initialised output layers, norm biases), so
    that no branch of the network is trivially zero. Returns how many tensors were changed."""
    changed = 0
    with torch.no_grad():
        for _, parameter in sorted(module.named_parameters()):
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
                changed += 1
    return changed


def random_networks(release_name: str, seed: int):
    """Full-size UNet and autoencoder of a release with seeded random weights, built on the CPU in float32.

    The codebook is drawn around the statistics of the encoder's latents of a real image, so that decoding
    quantises to a spread of codes like a trained model does.
    """
    from .nets.unet import ResShiftUNet
    from .nets.vqgan import VQAutoencoder
    from .releases import AUTOENCODERS, get_release

    release = get_release(release_name)
    torch.manual_seed(seed)
    unet = ResShiftUNet(release.unet)
    autoencoder = VQAutoencoder(AUTOENCODERS[release.autoencoder].config)
    generator = torch.Generator().manual_seed(seed + 1)
    _perturb_zeros(unet, generator)
    _perturb_zeros(autoencoder, generator)
    with torch.inference_mode():
        latent = autoencoder.encode(input_image(64) * 2 - 1)
        mean = latent.mean(dim=(0, 2, 3))
        std = latent.std(dim=(0, 2, 3)).clamp_min(1e-3)
        codebook = autoencoder.quantize.embedding.weight
        codebook.copy_(mean + std * torch.randn(codebook.shape, generator=generator))
    return unet.eval(), autoencoder.eval()


def save_random_weights(releases: list[str], seed: int, folder: Path) -> dict[str, tuple[str, str]]:
    """Write the random networks of each release with the project's save functions; returns {release: (unet,
    autoencoder) paths}. Releases with the same architecture share weights (same seed), each file carrying its
    release in the metadata."""
    from .checkpoints import save_autoencoder, save_unet
    from .releases import get_release

    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, tuple[str, str]] = {}
    built: dict = {}
    for name in releases:
        release = get_release(name)
        key = (release.unet, release.autoencoder)
        if key not in built:
            built[key] = random_networks(name, seed)
        unet, autoencoder = built[key]
        unet_path = folder / f"bench_unet_{name}.safetensors"
        autoencoder_path = folder / f"bench_autoencoder_{release.autoencoder}.safetensors"
        save_unet(unet, unet_path, release=name)
        if not autoencoder_path.exists():
            save_autoencoder(autoencoder, autoencoder_path, name=release.autoencoder)
        paths[name] = (str(unet_path), str(autoencoder_path))
    built.clear()
    gc.collect()
    return paths


# ------------------------------------------------------------------------------------------------------ device
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


def _best_rate(device: torch.device, make, sizes, target_s: float) -> dict:
    """Best GFLOP/s of ``make(size) -> (run, flops)`` over growing sizes (stopping once one call takes more than
    target_s / 4, so that slow dtypes stay small), best of a few repeats per size."""
    best = {"size": sizes[0], "gflops": 0.0}
    for size in sizes:
        run, flops = make(size)
        run()
        elapsed = math.inf
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            elapsed = min(elapsed, time.perf_counter() - start)
        if flops / elapsed / 1e9 > best["gflops"]:
            best = {"size": size, "gflops": flops / elapsed / 1e9}
        if elapsed > target_s / 4:
            break
    return best


def measure_peak(device: torch.device, dtype: torch.dtype, target_s: float = 2.0) -> dict:
    """The device's practical peak in ``dtype``, measured now: a square matmul (up to 4096^2; BLAS), the reference
    of the "% peak" column, and a channels-last 3x3 convolution of 256 channels (up to a 256^2 map; the convolution
    library, which on some CPUs beats the BLAS), the reference of the stricter "% conv" column. Sizes grow while
    one call is short, so slow dtypes (bf16 on CPUs without bf16 instructions) stay quick to measure."""
    import torch.nn.functional as F

    def matmul(size):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        return (lambda: a @ b), 2 * size ** 3

    def conv(size, channels=256):
        cl = torch.channels_last
        x = torch.randn(1, channels, size, size, device=device).to(dtype).contiguous(memory_format=cl)
        w = (torch.randn(channels, channels, 3, 3, device=device) * 0.02).to(dtype).contiguous(memory_format=cl)
        return (lambda: F.conv2d(x, w, padding=1)), 2 * channels * channels * 9 * size * size

    with torch.inference_mode():
        mm = _best_rate(device, matmul, [512, 1024, 2048, 4096], target_s)
        cv = _best_rate(device, conv, [16, 32, 64, 128, 256], target_s)
    return {"gflops": mm["gflops"], "matmul_size": mm["size"], "conv_size": cv["size"], "conv_gflops": cv["gflops"]}


# ------------------------------------------------------------------------------------------------------- memory
def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_mib() -> float:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; process-lifetime peak


# ------------------------------------------------------------------------------------------------------- FLOPs
from .planning import flop_counter  # noqa: E402  (counts SDPA too)

_COMPONENTS = {"ResShiftUNet": "unet", "Encoder": "vae_encoder", "Decoder": "vae_decoder"}


def _flop_summary(counter) -> dict:
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    split = {name: 0 for name in _COMPONENTS.values()}
    for module, ops in counts.items():
        if module in _COMPONENTS:
            split[_COMPONENTS[module]] += sum(ops.values())
    split["other"] = total - sum(split.values())
    by_op = {str(op): int(value) for op, value in counts.get("Global", {}).items()}
    return {"total": int(total), "split": split, "by_op": by_op}


# ----------------------------------------------------------------------------------------------------- one case
def chop_stride(case: Case, options: argparse.Namespace) -> int:
    """Stride of a -chopN case: --chop-stride, else the official script's default for N, else the library's
    default (:func:`~resshift_core.tiling.default_chop_stride`, N - N/8)."""
    from .tiling import default_chop_stride

    return options.chop_stride or OFFICIAL_CHOP_STRIDES.get(case.chop, default_chop_stride(case.chop))


def upscale_kwargs(case: Case, options: argparse.Namespace, pipe) -> dict:
    """Keyword arguments of ``upscale`` for a case: untiled and chopped cases run with ``tiles="off"``, tiled ones
    with the settings ``pipe.tiles`` makes of ``--tiling-mode`` and the tile options given (the model's and the
    device's defaults for the rest)."""
    if case.mode == "chop":
        return {"chop_size": case.chop, "chop_stride": chop_stride(case, options), "tiles": "off"}
    if case.mode == "off":
        return {"tiles": "off"}
    return {"tiles": pipe.tiles(options.tiling_mode, options.tile_size, options.tile_overlap, options.vae_tile_size,
                                options.tile_batch_size)}


def recorded_kwargs(kwargs: dict) -> dict:
    """``upscale`` keyword arguments as a JSON-serialisable record (tile settings as a dict of their fields)."""
    from .tiling import TileSettings

    return {key: asdict(value) if isinstance(value, TileSettings) else value for key, value in kwargs.items()}


def build_pipeline(case: Case, paths: tuple[str, str], device, dtype, meta: bool = False,
                   channels_last: bool = True):
    """The pipeline of a case from weight files, built like a host builds it (``ResShiftPipeline.assemble``);
    ``meta``: the same networks on the meta device (no data; ``paths`` are then configs; descriptors and
    ``from_loaded``)."""
    from .pipeline import ResShiftPipeline

    if not meta:
        return ResShiftPipeline.assemble(paths[0], paths[1], release=case.release, device=device, dtype=dtype,
                                         channels_last=channels_last)
    from .models import descriptor_for
    from .nets.unet import ResShiftUNet
    from .nets.vqgan import VQAutoencoder
    from .releases import get_release

    unet_config, vq_config = paths  # configs, not paths
    with torch.device("meta"):
        unet, autoencoder = ResShiftUNet(unet_config), VQAutoencoder(vq_config)
    return ResShiftPipeline.from_loaded(descriptor_for(unet, release=get_release(case.release)),
                                        descriptor_for(autoencoder), device="meta", dtype=torch.float32,
                                        channels_last=channels_last)


def chop_patch_count(size: int, chop: int, stride: int) -> int:
    """Patches of the official patch-wise processing of a size x size image."""
    from .tiling import chop_starts

    return len(chop_starts(size, chop, stride)) ** 2


def count_flops_meta(case: Case, configs, options) -> dict | None:
    """FLOPs of one run with the networks on the meta device (shapes only: no arithmetic, no memory).

    A chopped case is a set of independent runs of one patch size: one patch is counted and multiplied.
    """
    if case.mode == "chop" and case.size > case.chop:
        patches = chop_patch_count(case.size, case.chop, chop_stride(case, options))
        one = count_flops_meta(Case(case.name, case.release, case.chop, "off"), configs, options)
        if one is None:
            return None
        return {"total": one["total"] * patches, "official_graph_total": one["official_graph_total"] * patches,
                "split": {k: v * patches for k, v in one["split"].items()},
                "by_op": {k: v * patches for k, v in one["by_op"].items()},
                "method": f"counted on the meta device for one {case.chop} px patch, x {patches} patches"}
    from .nets.layers import NearestUpsampleConv

    pipe = build_pipeline(case, configs, "meta", torch.float32, meta=True)
    kwargs = upscale_kwargs(case, options, pipe)
    # The official graph runs its upsampling convs on the upsampled map; adding back what that costs gives the work
    # the official code does for this output, so that GFLOP/s can also be read as an effective rate.
    saved = [0]

    def count_saved(module, args):
        saved[0] += 2 * module.multiply_adds_saved(tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(count_saved) for net in (pipe.unet, pipe.autoencoder)
             for m in net.modules() if isinstance(m, NearestUpsampleConv)]
    try:
        with flop_counter() as counter:
            pipe.upscale(input_image(case.size), seed=options.seed, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    summary = _flop_summary(counter)
    summary["official_graph_total"] = summary["total"] + saved[0]
    return summary


class ComponentTimer:
    """Wall time spent in the UNet, the VAE encoder and decoder (forward hooks; exclusive of nested components)."""

    def __init__(self, pipe, device: torch.device):
        self.device = device
        self.totals = {"unet": 0.0, "vae_encoder": 0.0, "vae_decoder": 0.0}
        self.calls = {name: 0 for name in self.totals}
        self.stack: list[tuple[str, float]] = []
        self.handles = []
        modules = {"unet": [pipe.unet], "vae_encoder": [pipe.autoencoder.encoder],
                   "vae_decoder": [pipe.autoencoder.decoder]}
        for name, items in modules.items():
            for module in items:
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name):
        def hook(module, args):
            _sync(self.device)
            self.stack.append((name, time.perf_counter()))
        return hook

    def _leave(self, name):
        def hook(module, args, output):
            _sync(self.device)
            entered_name, start = self.stack.pop()
            elapsed = time.perf_counter() - start
            self.totals[entered_name] += elapsed
            self.calls[entered_name] += 1
            if self.stack:  # nested: do not count it twice
                self.totals[self.stack[-1][0]] -= elapsed
        return hook

    def reset(self) -> None:
        for name in self.totals:
            self.totals[name] = 0.0
            self.calls[name] = 0

    def split(self, repeat: int, mean_wall: float) -> dict:
        """Record fields of ``repeat`` timed runs of mean wall time ``mean_wall``: mean seconds per run in each
        network ("other": the rest: padding, noise, quantisation, blending) and network calls per run."""
        split = {k: v / repeat for k, v in self.totals.items()}
        split["other"] = mean_wall - sum(split.values())
        return {"seconds_split": split, "network_calls": {k: v // repeat for k, v in self.calls.items()}}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class CaseRunner:
    """One case ready to run: its pipeline, input image and ``upscale`` arguments."""

    pipe: object
    image: torch.Tensor
    kwargs: dict
    seed: int
    device: torch.device

    def run(self) -> tuple[torch.Tensor, float, float]:
        """One synchronised ``upscale``: (output, wall seconds, CPU seconds of this process)."""
        _sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        out = self.pipe.upscale(self.image, seed=self.seed, **self.kwargs)
        _sync(self.device)
        return out, time.perf_counter() - wall, time.process_time() - cpu

    def counted_run(self, method: str) -> tuple[dict, float]:
        """One run under the FLOP counter: (its FLOP summary with ``method``, its wall seconds)."""
        with flop_counter() as counter:
            _, wall, _ = self.run()
        flops = _flop_summary(counter)
        flops["method"] = method
        return flops, wall


def estimate_record(pipe, size: int, tiles) -> dict:
    """The library's own estimate of what a size x size run needs beyond the weights, and its plan, to compare with
    the measurement (an error is recorded, never raised: a figure beside the timing)."""
    try:
        return {"estimated_working_mib": pipe.working_memory(size, size, tiles=tiles) / _MIB,
                "plan": pipe.plan(size, size, tiles=tiles).describe()}
    except Exception as error:  # noqa: BLE001 - a figure beside the timing, never a reason to lose the timing
        return {"estimate_error": f"{type(error).__name__}: {error}"}


def start_memory(device: torch.device) -> tuple[float, dict]:
    """Collect garbage and reset the peak-memory mark; returns the memory in use now (MiB, the base of the growth)
    and the record fields of the reset (on the CPU whether the peak could be reset)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / _MIB, {}
    fields = {"peak_reset": _reset_cpu_peak()}
    return (_status_kib("VmRSS") or 0) / 1024, fields


def memory_record(device: torch.device, base_memory: float, peak_reset: bool | None) -> dict:
    """Peak memory since :func:`start_memory` and its growth over ``base_memory`` (MiB), as record fields."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / _MIB
        return {"peak_memory_mib": peak, "memory_growth_mib": peak - base_memory,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / _MIB, "memory_kind": "cuda allocated"}
    peak = _cpu_peak_mib()
    return {"peak_memory_mib": peak, "memory_growth_mib": peak - base_memory,
            "memory_kind": "RSS peak (VmHWM)" if peak_reset else "ru_maxrss (process lifetime)"}


def warm_up(runner: CaseRunner, warmup: int, flops: dict | None) -> tuple[float | None, dict | None]:
    """The un-timed runs; FLOPs are counted on the first when not counted before. Returns (the first run's
    seconds, the FLOP summary)."""
    first_s = None
    for number in range(warmup):
        if flops is None and number == 0:
            flops, first_s = runner.counted_run("counted on the warm-up run")
        else:
            _, elapsed, _ = runner.run()
            first_s = first_s if first_s is not None else elapsed
    return first_s, flops


def timed_runs(runner: CaseRunner, repeat: int, dtype: torch.dtype, peak_seconds: float):
    """The timed runs, between two measurements of the device's peak. Returns (last output, wall seconds, CPU
    seconds, the ``device_peak`` record)."""
    # The device's peak right before and after the timed runs, in this process: the speed of a shared or
    # frequency-scaling machine drifts, so a peak measured minutes earlier can be 15% off.
    peaks = [measure_peak(runner.device, dtype, target_s=peak_seconds / 2)]
    out, walls, cpus = None, [], []
    for _ in range(repeat):
        out, wall, cpu = runner.run()
        walls.append(wall)
        cpus.append(cpu)
    peaks.append(measure_peak(runner.device, dtype, target_s=peak_seconds / 2))
    device_peak = {"gflops": max(p["gflops"] for p in peaks), "conv_gflops": max(p["conv_gflops"] for p in peaks),
                   "measured": peaks, "reference": "best of the measurements before and after the runs"}
    return out, walls, cpus, device_peak


def timing_record(out: torch.Tensor, walls: list[float], cpus: list[float], first_s: float | None, flops: dict,
                  options: argparse.Namespace, device: torch.device) -> dict:
    """The result fields of the timed runs: sizes, seconds, throughput, CPU use and FLOP rates."""
    seconds = statistics.median(walls)
    out_h, out_w = out.shape[-2:]
    return dict(status="ok", output=[int(out_h), int(out_w)], seconds=seconds, seconds_min=min(walls),
                seconds_all=walls, first_run_seconds=first_s, warmup=options.warmup, repeat=options.repeat,
                megapixels_per_second=out_h * out_w / 1e6 / seconds,
                cpu_utilisation=(statistics.median(cpus) / seconds / torch.get_num_threads()
                                 if device.type == "cpu" else None),
                flops=flops["total"], flops_split=flops["split"], flops_by_op=flops.get("by_op"),
                flops_method=flops.get("method", "?"), gflops_per_second=flops["total"] / seconds / 1e9,
                flops_official_graph=flops.get("official_graph_total"),
                load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)


def prepare_case(case: Case, dtype_name: str, options: argparse.Namespace,
                 paths: tuple[str, str]) -> tuple[CaseRunner, dict]:
    """Build a case's pipeline (compiled with --compile) and input; returns its runner and the record so far
    (settings, input, upscale arguments, the library's memory estimate)."""
    from .runtime import cpu_allocator_tuned, parse_dtype, tune_cpu_allocator

    device = torch.device(options.device)
    dtype = parse_dtype(dtype_name)
    if options.tuned_allocator and device.type == "cpu":
        tune_cpu_allocator()
    record: dict = {"case": case.name, "release": case.release, "mode": case.mode, "dtype": dtype_name,
                    "device": str(device), "threads": torch.get_num_threads(), "channels_last": options.channels_last,
                    "cpu_allocator": "heap (runtime.tune_cpu_allocator)" if cpu_allocator_tuned() else "default"}
    pipe = build_pipeline(case, paths, device, dtype, channels_last=options.channels_last)
    kwargs = upscale_kwargs(case, options, pipe)
    if options.compile:
        pipe.compile()
        record["compiled"] = True
    runner = CaseRunner(pipe, input_image(case.size).to(device), kwargs, options.seed, device)
    record.update(input=[case.size, case.size], input_source=getattr(input_image, "source", "?"),
                  upscale_kwargs=recorded_kwargs(kwargs))
    if case.mode != "chop":  # the library's own estimate of what the run needs beyond the weights, to compare
        record.update(estimate_record(pipe, case.size, kwargs["tiles"]))
    return runner, record


def run_case(case: Case, dtype_name: str, options: argparse.Namespace, paths: tuple[str, str],
             output_path: str | None, flops: dict | None) -> dict:
    """Time one case in this process. Returns its result record."""
    from .runtime import parse_dtype

    runner, record = prepare_case(case, dtype_name, options, paths)
    base_memory, reset_fields = start_memory(runner.device)
    record.update(reset_fields)
    timer = None if options.compile else ComponentTimer(runner.pipe, runner.device)
    first_s, flops = warm_up(runner, options.warmup, flops)
    if timer:
        timer.reset()
    out, walls, cpus, record["device_peak"] = timed_runs(runner, options.repeat, parse_dtype(dtype_name),
                                                         options.peak_seconds)
    if timer:
        record.update(timer.split(options.repeat, statistics.fmean(walls)))
        timer.remove()
    if flops is None:  # no warm-up run to count on (--warmup 0) and no meta count
        flops, _ = runner.counted_run("counted on an extra run")
    record.update(memory_record(runner.device, base_memory, record.get("peak_reset")))
    record.update(timing_record(out, walls, cpus, first_s, flops, options, runner.device))
    if output_path:
        np.save(output_path, out.float().cpu().numpy())
    return record


# ------------------------------------------------------------------------------------------------------- report
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def format_table(records: list[dict], peaks: dict) -> str:
    header = ["case", "dtype", "in -> out", "s/img", "min s", "1st run s", "MP/s", "peak MiB", "+MiB", "est +MiB",
              "GFLOP",
              "GFLOP/s", "peak", "% peak", "% conv", "PSNR/fp32", "unet/enc/dec s", "cpu use"]
    rows = [header]
    notes, effective_notes = [], []
    for r in records:
        if r.get("status") != "ok":
            word = str(r.get("status", "failed")).split(":")[0]
            rows.append([r["case"], r["dtype"], f"({word}, see below)"] + [""] * (len(header) - 3))
            notes.append(f"{r['case']} {r['dtype']}: {r.get('status')}")
            continue
        case_peak = r.get("device_peak") or peaks.get(r["dtype"], {})
        peak, conv_peak = case_peak.get("gflops"), case_peak.get("conv_gflops")
        split = r.get("seconds_split")
        official = r.get("flops_official_graph")
        if official and peak:
            effective = official / r["seconds"] / 1e9
            effective_notes.append(f"{r['case']} {r['dtype']}: {official / 1e9:.0f} GFLOP in the official graph (this "
                                   f"code runs {r['flops'] / 1e9:.0f}): effective {effective:.1f} GFLOP/s = "
                                   f"{100 * effective / peak:.0f}% of peak")
        rows.append([
            r["case"], r["dtype"], f"{r['input'][0]}x{r['input'][1]} -> {r['output'][0]}x{r['output'][1]}",
            _fmt(r["seconds"], ".2f"), _fmt(r["seconds_min"], ".2f"), _fmt(r.get("first_run_seconds"), ".2f"),
            _fmt(r["megapixels_per_second"], ".4f"), _fmt(r["peak_memory_mib"], ".0f"),
            _fmt(r["memory_growth_mib"], ".0f"), _fmt(r.get("estimated_working_mib"), ".0f"),
            _fmt(r["flops"] / 1e9, ".0f"), _fmt(r["gflops_per_second"], ".1f"),
            _fmt(peak, ".1f"), _fmt(100 * r["gflops_per_second"] / peak if peak else None, ".0f"),
            _fmt(100 * r["gflops_per_second"] / conv_peak if conv_peak else None, ".0f"),
            _fmt(r.get("psnr_vs_fp32"), ".1f"),
            "/".join(f"{split[k]:.1f}" for k in ("unet", "vae_encoder", "vae_decoder")) if split else "-",
            _fmt(r.get("cpu_utilisation"), ".0%"),
        ])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).rjust(widths[i]) if i > 2 else str(cell).ljust(widths[i])
                       for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in records:
        if r.get("status") != "ok":
            continue
        runs = r.get("seconds_all") or []
        spread = max(runs) / min(runs) - 1 if runs and min(runs) > 0 else 0.0
        use = r.get("cpu_utilisation")
        if spread > 0.15 or (use is not None and use < 0.8):
            notes.append(f"{r['case']} {r['dtype']}: noisy? runs {', '.join(f'{x:.2f}' for x in runs)} s"
                         + (f", cpu use {use:.0%} of {r.get('threads', '?')} threads" if use is not None else "")
                         + ": other processes probably competed for the device; 'min s' is the better estimate")
    notes += effective_notes
    for r in records:
        if r.get("status") == "ok" and r.get("estimated_working_mib") and r.get("memory_growth_mib"):
            ratio = r["estimated_working_mib"] / r["memory_growth_mib"]
            notes.append(f"{r['case']} {r['dtype']}: {r.get('plan', '')}; memory beyond the weights measured "
                         f"{r['memory_growth_mib']:.0f} MiB ({r['memory_kind']}), estimated "
                         f"{r['estimated_working_mib']:.0f} MiB ({ratio:.2f}x)")
    methods = sorted({r.get("flops_method") for r in records if r.get("status") == "ok"})
    if methods:
        notes.append("FLOPs: " + "; ".join(methods))
    return "\n".join(lines + [""] + notes)


# --------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resshift_core.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated cases (default {','.join(DEFAULT_CASES)}; see --list)")
    parser.add_argument("--list", action="store_true", help="list the named cases and exit")
    parser.add_argument("--dtype", default=",".join(DEFAULT_DTYPES), help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--release", default="realsr-v3", help="release of cases without a tag (default realsr-v3)")
    parser.add_argument("--unet", help="UNet weights file instead of random weights (the case still picks the "
                                       "release, i.e. the schedule)")
    parser.add_argument("--autoencoder", help="autoencoder weights file instead of random weights")
    parser.add_argument("--seed", type=int, default=12345, help="weights and noise seed")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="un-timed runs before timing")
    parser.add_argument("--tiling-mode", default="latent", choices=["auto", "latent"],
                        help="mode of -tiled cases (default latent: always tiled)")
    parser.add_argument("--tile-size", type=int, help="UNet tile (latent px) of -tiled cases")
    parser.add_argument("--tile-overlap", type=int)
    parser.add_argument("--vae-tile-size", type=int)
    parser.add_argument("--tile-batch-size", type=int)
    parser.add_argument("--chop-stride", type=int, help="stride of -chopN cases (default: the official one for "
                                                        "N = 512, 256, 64 (448, 224, 48), else N - N/8)")
    parser.add_argument("--compile", action="store_true", help="call pipe.compile() first (torch.compile)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="run the networks in NCHW memory format (default: channels-last, the library default)")
    parser.add_argument("--default-allocator", dest="tuned_allocator", action="store_false",
                        help="keep glibc's default malloc settings (default: runtime.tune_cpu_allocator(), as the "
                             "command line does)")
    parser.add_argument("--max-run-seconds", type=float, default=600.0,
                        help="skip reduced-precision cases predicted to take longer per run (0: never skip)")
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="time budget of one peak measurement (sizes grow until one call takes a quarter of it)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': print them)")
    parser.add_argument("--save-weights", help="keep the random weight files in this folder")
    parser.add_argument("--in-process", action="store_true",
                        help="run every case in this process (peak memory then depends on earlier cases)")
    # internal: one case in a fresh subprocess
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--output-npy", help=argparse.SUPPRESS)
    parser.add_argument("--flops-json", help=argparse.SUPPRESS)
    return parser


def _child_argv(options, case: Case, dtype: str, paths, result: str, output: str | None, flops: dict | None,
                work: Path) -> list[str]:
    argv = [sys.executable, "-m", "resshift_core.bench", "--case", case.name, "--dtype", dtype, "--device",
            options.device, "--release", case.release, "--seed", str(options.seed), "--repeat", str(options.repeat),
            "--warmup", str(options.warmup), "--tiling-mode", options.tiling_mode, "--paths", json.dumps(paths),
            "--result", result, "--peak-seconds", str(options.peak_seconds)]
    for option in ("threads", "tile_size", "tile_overlap", "vae_tile_size", "tile_batch_size", "chop_stride"):
        value = getattr(options, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    if options.compile:
        argv.append("--compile")
    if not options.channels_last:
        argv.append("--no-channels-last")
    if not options.tuned_allocator:
        argv.append("--default-allocator")
    if output:
        argv += ["--output-npy", output]
    if flops is not None:
        flops_path = work / f"flops_{case.name}.json"
        flops_path.write_text(json.dumps(flops))
        argv += ["--flops-json", str(flops_path)]
    return argv


def _child_main(options) -> int:
    case = parse_case(options.case, options.release)
    flops = json.loads(Path(options.flops_json).read_text()) if options.flops_json else None
    try:
        record = run_case(case, options.dtype, options, tuple(json.loads(options.paths)), options.output_npy, flops)
    except Exception as error:  # reported in the table, the other cases go on
        record = {"case": case.name, "release": case.release, "dtype": options.dtype,
                  "status": f"failed: {type(error).__name__}: {error}"}
    Path(options.result).write_text(json.dumps(record))
    return 0


def list_cases() -> None:
    """Print the named cases (--list)."""
    for name, text in PRESETS.items():
        print(f"{name:16s} {text}{'  (default)' if name in DEFAULT_CASES else ''}")
    print("\nAny [TAG-]SIZE[-tiled|-chopN] works too, e.g. 128, v1-256-tiled, bicsr-64.")


def cases_and_dtypes(options: argparse.Namespace) -> tuple[list[Case], list[str]]:
    """The cases and the dtype names of the command line (dtypes without repeats, fp32 first)."""
    from .runtime import parse_dtype

    cases = [parse_case(name, options.release) for name in options.cases.split(",") if name.strip()]
    dtypes = [d.strip().lower() for d in options.dtype.split(",") if d.strip()]
    dtypes = sorted(dict.fromkeys(dtypes), key=lambda d: parse_dtype(d) != torch.float32)  # fp32 first
    return cases, dtypes


def prepare_weights(options: argparse.Namespace, releases: list[str], work: Path) -> tuple[dict, dict, str]:
    """The weights of each release: random (saved with the project's functions, loaded by each case like a user
    file) or the files given. Returns ({release: (unet, autoencoder) paths}, {release: (unet, autoencoder)
    configs}, a description for the report)."""
    from .checkpoints import identify_checkpoint
    from .releases import AUTOENCODERS, get_release

    if options.unet or options.autoencoder:
        if not (options.unet and options.autoencoder):
            raise SystemExit("--unet and --autoencoder go together")
        paths = {name: (options.unet, options.autoencoder) for name in releases}
        unet_config = identify_checkpoint(options.unet, release=releases[0]).config  # the shapes, for FLOP counts
        vq_config = identify_checkpoint(options.autoencoder).config
        configs = {name: (unet_config, vq_config) for name in releases}
        return paths, configs, f"files {options.unet}, {options.autoencoder}"
    folder = Path(options.save_weights) if options.save_weights else work
    print(f"building random weights (seed {options.seed}) for {', '.join(releases)} ...", flush=True)
    paths = save_random_weights(releases, options.seed, folder)
    configs = {name: (get_release(name).unet, AUTOENCODERS[get_release(name).autoencoder].config)
               for name in releases}
    return paths, configs, f"random (seed {options.seed})" + (f", saved in {folder}" if options.save_weights else "")


def measure_peaks(device: torch.device, dtypes: list[str], peak_seconds: float) -> dict:
    """The device's peak in each dtype at the start (printed); {dtype name: :func:`measure_peak` result}."""
    from .runtime import parse_dtype

    peaks = {}
    for dtype in dtypes:
        peaks[dtype] = peak = measure_peak(device, parse_dtype(dtype), target_s=peak_seconds)
        print(f"peak {dtype}: {peak['gflops']:.1f} GFLOP/s (matmul {peak['matmul_size']}^2: "
              f"{peak['gflops']:.1f}, channels-last conv3x3 256ch {peak['conv_size']}^2: {peak['conv_gflops']:.1f})",
              flush=True)
    return peaks


def meta_flops(case: Case, configs, options: argparse.Namespace) -> dict | None:
    """A case's FLOPs counted on the meta device, on the CPU only (meta counting uses the CPU tile defaults: exact
    on the CPU only); None elsewhere or when counting fails (the cases then count on their warm-up run)."""
    if torch.device(options.device).type != "cpu":
        return None
    try:
        flops = count_flops_meta(case, configs, options)
        if flops is not None:
            flops.setdefault("method", "counted on the meta device")
        return flops
    except Exception as error:
        print(f"  (meta FLOP count failed for {case.name}: {error}; counting on the warm-up run)")
        return None


def skip_status(dtype: str, fp32: dict | None, flops: dict | None, peaks: dict, limit: float) -> str | None:
    """Why a reduced-precision case is skipped (its predicted seconds per run exceed ``limit``), or None to run it."""
    from .runtime import parse_dtype

    if not limit or parse_dtype(dtype) == torch.float32:
        return None
    if fp32 is not None:  # the fp32 time scaled by the ratio of the matmul peaks
        predicted = fp32["seconds"] * peaks[fp32["dtype"]]["gflops"] / peaks[dtype]["gflops"]
    elif flops is not None:  # half the matmul peak: typical of these networks in fp32
        predicted = flops["total"] / (0.5 * peaks[dtype]["gflops"] * 1e9)
    else:
        return None
    if predicted <= limit:
        return None
    return (f"skipped: predicted {predicted:.0f} s per run (> --max-run-seconds {limit:.0f}) from the {dtype} peak "
            f"of {peaks[dtype]['gflops']:.1f} GFLOP/s")


def run_case_process(options: argparse.Namespace, case: Case, dtype: str, paths, flops: dict | None,
                     work: Path, output: str) -> dict:
    """Run one case in a fresh subprocess (or in this process with --in-process); returns its record, a failure
    record when it failed."""
    if options.in_process:
        try:
            return run_case(case, dtype, options, paths, output, flops)
        except Exception as error:
            return {"case": case.name, "dtype": dtype, "status": f"failed: {type(error).__name__}: {error}"}
    result = work / f"result_{case.name}_{dtype}.json"
    argv = _child_argv(options, case, dtype, paths, str(result), output, flops, work)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    completed = subprocess.run(argv, env=env)
    if result.exists():
        return json.loads(result.read_text())
    return {"case": case.name, "dtype": dtype,
            "status": f"failed: the case process exited with {completed.returncode}"
                      + (" (killed: out of memory?)" if completed.returncode in (-9, 137) else "")}


def run_cases(options: argparse.Namespace, cases: list[Case], dtypes: list[str], paths: dict, configs: dict,
              peaks: dict, work: Path) -> list[dict]:
    """Run every (case, dtype), fp32 first, printing progress; reduced precision is compared with the fp32 output
    (PSNR) or skipped when predicted too slow. Returns the records."""
    from .runtime import parse_dtype

    records: list[dict] = []
    outputs: dict[tuple[str, str], str] = {}
    for case in cases:
        flops = meta_flops(case, configs[case.release], options)
        for dtype in dtypes:
            fp32 = next((r for r in records if r["case"] == case.name and r.get("status") == "ok"
                         and parse_dtype(r["dtype"]) == torch.float32), None)
            skipped = skip_status(dtype, fp32, flops, peaks, options.max_run_seconds)
            if skipped:
                records.append({"case": case.name, "release": case.release, "dtype": dtype, "status": skipped})
                print(f"{case.name} {dtype}: {skipped}", flush=True)
                continue
            print(f"running {case.name} {dtype} ...", flush=True)
            output = str(work / f"out_{case.name}_{dtype}.npy")
            record = run_case_process(options, case, dtype, paths[case.release], flops, work, output)
            if record.get("status") == "ok":
                outputs[(case.name, dtype)] = output
                if fp32 is not None and (case.name, fp32["dtype"]) in outputs:
                    record["psnr_vs_fp32"] = psnr(np.load(output), np.load(outputs[(case.name, fp32["dtype"])]))
                print(f"  {record['seconds']:.2f} s/img (runs {', '.join(f'{s:.2f}' for s in record['seconds_all'])})",
                      flush=True)
            else:
                print(f"  {record.get('status')}", flush=True)
            records.append(record)
    return records


def report(options: argparse.Namespace, device: torch.device, weights: str, peaks: dict, records: list[dict]) -> None:
    """Print the table and its notes; write (or print, --json -) the JSON report."""
    result = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "weights": weights, "peaks": peaks, "cases": records,
              "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print()
    print(f"device: {result['device']}; weights: {weights}; median of {options.repeat} runs after "
          f"{options.warmup} warm-up")
    print("peak at the start: " + ", ".join(f"{d} matmul {p['gflops']:.1f} GFLOP/s, conv3x3 {p['conv_gflops']:.1f}"
                                             for d, p in peaks.items())
          + "; '% peak' (matmul) and '% conv' use the better of two measurements made right before and after each "
            "case's timed runs")
    print(format_table(records, peaks))
    if options.json == "-":
        print()
        print(json.dumps(result, indent=1, default=str))
    elif options.json:
        Path(options.json).write_text(json.dumps(result, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    """The command: arguments, weights, the device's peaks, every case, the report (or one case in a child)."""
    options = build_parser().parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.case:
        return _child_main(options)
    if options.list:
        list_cases()
        return 0
    cases, dtypes = cases_and_dtypes(options)
    device = torch.device(options.device)
    work = Path(tempfile.mkdtemp(prefix="resshift_bench_"))  # case results, outputs, random weights: removed at exit
    atexit.register(shutil.rmtree, work, True)
    paths, configs, weights = prepare_weights(options, sorted({case.release for case in cases}), work)
    print(f"device: {device_name(device)}; torch {torch.__version__}", flush=True)
    peaks = measure_peaks(device, dtypes, options.peak_seconds)
    records = run_cases(options, cases, dtypes, paths, configs, peaks, work)
    report(options, device, weights, peaks, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
