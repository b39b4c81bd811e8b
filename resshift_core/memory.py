"""How much memory a run needs, found by running it on the ``meta`` device (shapes only, no arithmetic).

The estimate is not a formula kept beside the networks: the pipeline's own code runs on meta tensors while a
dispatch mode follows the bytes of every live tensor storage, so tiling, blending, padding and every intermediate
of the networks are counted as they really happen. Network calls are traced once per input shape and then replayed
from a cache as a spike of their transient peak, so a tiled run of many tiles is estimated in a fraction of a second.

Which peak is reported depends on who allocates:

* CUDA: the peak of live tensor bytes;
* the CPU with :func:`resshift_core.tune_cpu_allocator` (freed blocks stay in the process): the peak of live tensor
  bytes;
* the CPU with glibc's default allocator: blocks below its mmap threshold (which adapts up to 32 MiB once large
  blocks have been freed) are served from the heap, whose resident size only grows during a run, while larger blocks
  are mapped and unmapped one by one. The peak resident size is then the heap's high-water mark plus the large blocks
  live at the time, which is what is reported.

Each gets an allowance for what no traced op allocates (convolution workspaces and scratch buffers, allocator
slack), calibrated against measured peaks (see the constants below and ``peak_of``).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .planning import RunPlan, TilesArgument, padded_side
from .runtime import parse_dtype
from .sizing import OutputSize
from .tiling import plan_tiles

logger = logging.getLogger(__name__)

GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
# What a run allocates beyond the tensors the trace sees (cuDNN's convolution workspaces on CUDA; oneDNN's scratch
# buffers and weight reorders, thread arenas and allocator slack on the CPU) grows with the largest convolution input
# of the run. Calibrated on realsr-v3 one-step runs (64-256 px untiled, 128-1024 px tiled) against the measured peak
# (CUDA: max_memory_allocated on an H200, fp16; CPU: resident-set growth, fp32, 2 cores):
_CUDA_CONV_FACTOR = 3.0            # peak + 3x: 0.92-1.07 of the measured peaks
_CPU_CONV_FACTOR = 1.5             # glibc's default allocator: heap model + 1.5x + 100 MiB: 0.86-1.21
_TUNED_CPU_CONV_FACTOR = 2.7       # tune_cpu_allocator() (nothing given back): peak + 2.7x + 100 MiB: 0.82-1.17
_CPU_FIXED_BYTES = 100 * 2 ** 20
_CONVOLUTIONS = {torch.ops.aten.convolution.default, torch.ops.aten.conv2d.default}


class TensorMemoryTracker(TorchDispatchMode):
    """Follows live tensor storages through the ops run under it (use on meta tensors).

    Attributes:
        live, peak: bytes of live storages created under the tracker, and their maximum.
        heap_peak: the glibc model's peak (heap high-water mark + mapped blocks live at the time).
    """

    def __init__(self, mmap_threshold: int = GLIBC_MMAP_THRESHOLD_MAX):
        super().__init__()
        self.mmap_threshold = mmap_threshold
        self.live = self.peak = 0
        self.small_live = self.small_high_water = self.large_live = self.heap_peak = 0
        self.largest_conv_input = 0
        self.paused = False  # while a network call is traced on its own (its tensors are counted by that trace)
        self._finalizers: dict[int, weakref.finalize] = {}

    def _note_peaks(self, extra_live: int = 0, extra_heap: int = 0) -> None:
        self.peak = max(self.peak, self.live + extra_live)
        self.small_high_water = max(self.small_high_water, self.small_live)
        self.heap_peak = max(self.heap_peak, self.small_high_water + self.large_live + extra_heap)

    def _adjust(self, size: int, sign: int) -> None:
        self.live += sign * size
        if size < self.mmap_threshold:
            self.small_live += sign * size
        else:
            self.large_live += sign * size

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._finalizers:  # a view of a storage already counted
            return
        size = storage.nbytes()
        self._adjust(size, +1)
        self._note_peaks()
        self._finalizers[key] = weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._finalizers.pop(key, None)
        self._adjust(size, -1)

    def spike(self, transient: NetworkTrace) -> None:
        """Account for a network call replayed from the cache: its transient peak on top of what is live now."""
        self._note_peaks(transient.peak, transient.heap_peak)
        self.largest_conv_input = max(self.largest_conv_input, transient.largest_conv_input)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.paused:
            return func(*args, **(kwargs or {}))
        if func in _CONVOLUTIONS and isinstance(args[0], torch.Tensor):
            self.largest_conv_input = max(self.largest_conv_input, args[0].numel() * args[0].element_size())
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


@dataclass(frozen=True)
class NetworkTrace:
    """One network call traced on meta: its transient peaks (beyond its inputs) and its output's shape."""

    peak: int
    heap_peak: int
    output_shape: tuple[int, ...]
    output_dtype: torch.dtype
    largest_conv_input: int = 0


class MemoryProbe:
    """Replaces the pipeline's network calls while a run is traced: traces each distinct call once, then replays
    it as a spike and an empty output of the right shape."""

    def __init__(self, tracker: TensorMemoryTracker, cache: dict):
        self.tracker = tracker
        self.cache = cache

    def call(self, name: str, function: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        key = (name,) + tuple((tuple(t.shape), t.dtype, t.is_contiguous()) for t in inputs
                              if isinstance(t, torch.Tensor))
        trace = self.cache.get(key)
        if trace is None:
            inner = TensorMemoryTracker(self.tracker.mmap_threshold)
            self.tracker.paused = True  # the call's own tensors are the inner trace's; the outer one gets a spike
            try:
                with inner:
                    output = function(*inputs)
                    shape, dtype = tuple(output.shape), output.dtype
                    del output
            finally:
                self.tracker.paused = False
            trace = NetworkTrace(inner.peak, inner.heap_peak, shape, dtype, inner.largest_conv_input)
            self.cache[key] = trace
        self.tracker.spike(trace)
        return torch.empty(trace.output_shape, dtype=trace.output_dtype, device="meta")


def weight_bytes(network: nn.Module, dtype: torch.dtype | str | None = None) -> int:
    """Bytes of a network's parameters and buffers on a device in ``dtype`` (None: as they are). Floating tensors
    take ``dtype``; the VQ codebook stays float32 (see :class:`~resshift_core.nets.vqgan.VectorQuantizer`)."""

    target = parse_dtype(dtype) if dtype is not None else None
    keep_float32 = {id(p) for m in network.modules() if getattr(m, "keeps_float32", False)
                    for p in m.parameters()}
    total = 0
    for tensor in list(network.parameters()) + list(network.buffers()):
        size = tensor.element_size()
        if target is not None and tensor.is_floating_point() and id(tensor) not in keep_float32:
            size = torch.empty((), dtype=target).element_size()
        total += tensor.numel() * size
    return total


def peak_of(tracker: TensorMemoryTracker, device: torch.device) -> int:
    """The peak that matters on ``device`` (see the module docstring), with what the trace cannot see."""
    from .runtime import cpu_allocator_tuned

    conv = tracker.largest_conv_input
    if device.type == "cuda":
        return int(tracker.peak + _CUDA_CONV_FACTOR * conv)
    if device.type == "cpu" and cpu_allocator_tuned():
        return int(tracker.peak + _TUNED_CPU_CONV_FACTOR * conv + _CPU_FIXED_BYTES)
    if device.type == "cpu":
        return int(tracker.heap_peak + _CPU_CONV_FACTOR * conv + _CPU_FIXED_BYTES)
    return tracker.peak


def available_memory(device: torch.device) -> int | None:
    """Bytes a run may use on ``device`` now: free CUDA memory (within the process's cap when one is set with
    ``torch.cuda.set_per_process_memory_fraction``), or the CPU's available memory (Linux ``MemAvailable``); None
    when it cannot be told."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        try:
            fraction = torch.cuda.get_per_process_memory_fraction(device)
        except (AttributeError, RuntimeError):  # an older torch: no cap to read
            fraction = 1.0
        if fraction < 1.0:  # the caching allocator refuses more than this share of the card, whatever is free
            free = min(free, int(fraction * total) - torch.cuda.memory_allocated(device))
        return max(0, int(free))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def estimate_network_memory(descriptor, height: int, width: int, dtype=None, tiles=None, *, batch: int = 1,
                            device: torch.device = torch.device("cpu")) -> int:
    """Weights plus the largest working memory of one network's calls on a ``height`` x ``width`` image: the LR
    input for a UNet, the (up-sampled) image it encodes for an autoencoder. Tiles as ``tiles`` (default: the
    device's); the tensors of the rest of the run are not counted (ask the pipeline for a whole run)."""

    dtype = parse_dtype(dtype)
    tiles = tiles or descriptor.preferred_tiles(device)
    network = meta_copy(descriptor.network, dtype)
    config = network.config

    def tile_shape(side_h: int, side_w: int, size: int, overlap: int, multiple: int = 1) -> tuple[int, int]:
        if tiles.mode == "off" or (tiles.mode == "auto" and max(side_h, side_w) <= size):
            return side_h, side_w
        plan = plan_tiles(side_h, side_w, size, overlap, multiple)
        return plan.rows.size, plan.cols.size

    calls: list[tuple[str, list[torch.Tensor]]] = []
    if descriptor.kind == "unet":
        stages = 2 ** config.feature_stages
        multiple = config.lq_size if descriptor.latent_space else max(1, config.latent_multiple // (
            descriptor.scale or 1))
        lr_h, lr_w = padded_side(height, multiple), padded_side(width, multiple)
        latent_h, latent_w = ((lr_h // stages, lr_w // stages) if descriptor.latent_space
                              else (lr_h * (descriptor.scale or 1), lr_w * (descriptor.scale or 1)))
        th, tw = tile_shape(latent_h, latent_w, tiles.tile_size, tiles.overlap, config.latent_multiple)
        tile_batch = batch * (tiles.batch_size if (th, tw) != (latent_h, latent_w) else 1)
        calls.append(("unet", [torch.empty(tile_batch, config.in_channels, th, tw, dtype=dtype, device="meta"),
                               torch.zeros(tile_batch, dtype=torch.long, device="meta"),
                               torch.empty(tile_batch, config.condition_channels, th, tw, dtype=dtype,
                                           device="meta")]))
    else:
        factor = config.downsample_factor
        latent_h, latent_w = padded_side(height, factor) // factor, padded_side(width, factor) // factor
        th, tw = tile_shape(latent_h, latent_w, tiles.vae_tile_size, tiles.vae_overlap)
        calls.append(("encoder", [torch.empty(batch, config.in_channels, th * factor, tw * factor, dtype=dtype,
                                              device="meta")]))
        calls.append(("decoder", [torch.empty(batch, config.z_channels, th, tw, dtype=dtype, device="meta")]))
    tracker = TensorMemoryTracker()
    probe = MemoryProbe(tracker, {})
    while calls:
        name, inputs = calls.pop(0)
        for tensor in inputs:  # the inputs occupy memory during the call too
            tracker.track(tensor)
        with tracker, torch.inference_mode():
            probe.call(name, _network_function(network, name), *inputs)
        del inputs
    return weight_bytes(descriptor.network, dtype) + peak_of(tracker, device)


def _network_function(network: nn.Module, name: str) -> Callable[..., torch.Tensor]:
    if name == "unet":
        return lambda x, t, features: network(x, t, lq_features=features)
    if name == "encoder":
        return network.encode
    return network.decoder


_META_COPIES: dict = {}


def meta_copy(network: nn.Module, dtype: torch.dtype, channels_last: bool = True) -> nn.Module:
    """The same architecture on the meta device (no memory), in ``dtype`` and memory format, built once."""
    key = (type(network), network.config, dtype, channels_last)
    copy = _META_COPIES.get(key)
    if copy is None:
        with torch.device("meta"):
            copy = type(network)(network.config)
        copy.eval().requires_grad_(False)
        copy.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        _META_COPIES[key] = copy
    return copy


def trace_run(run: Callable[[], object], probe_cache: dict, device: torch.device,
              install: Callable[[MemoryProbe | None], None]) -> int:
    """Peak working bytes of ``run`` (a pipeline run on meta tensors), its network calls replayed from
    ``probe_cache``; ``install`` puts the probe in place for the run and removes it after (None)."""
    tracker = TensorMemoryTracker()
    install(MemoryProbe(tracker, probe_cache))
    try:
        with tracker, torch.inference_mode():
            run()
    finally:
        install(None)
    return peak_of(tracker, device)


class _MetaNoise:
    """Noise for a traced run on meta tensors: shapes only."""

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(like.shape, dtype=torch.float32, device=like.device)


def run_working_memory(stages, plan, dtype: torch.dtype, probe_cache: dict) -> int:
    """Peak bytes of a planned run beyond the weights: the stages of a pipeline
    (:class:`~resshift_core.stages.PipelineStages`) run on meta copies of its networks, traced.

    Args:
        stages: the pipeline whose run is estimated. plan: the run (:class:`~resshift_core.planning.RunPlan`).
        probe_cache: the pipeline's cache of traced network calls (per input shape).
    """
    unet = meta_copy(stages.unet, dtype, stages.channels_last)
    autoencoder = meta_copy(stages.autoencoder, dtype, stages.channels_last) if stages.latent_space else None
    meta = stages.on_meta(dtype, unet, autoencoder)
    lr_m11 = torch.empty(plan.batch, 3, plan.height, plan.width, device="meta")
    mask = torch.empty(plan.batch, 1, plan.height, plan.width, device="meta") if unet.config.cond_mask else None

    def run():
        latent = meta._encode_stage(lr_m11, mask, lr_m11, plan, None, None)
        latent = meta._sample_stage(latent, _MetaNoise(), None, None, None)
        meta._decode_stage(latent, None, None, mask_back=True)

    def install(probe):
        meta._probe = probe

    return trace_run(run, probe_cache, stages.device, install)


def describe_bytes(count: int) -> str:
    return f"{count / 2 ** 30:.2f} GiB" if count >= 2 ** 30 else f"{count / 2 ** 20:.0f} MiB"


__all__: Sequence[str] = ["TensorMemoryTracker", "available_memory", "describe_bytes", "weight_bytes"]


class MemoryMixin:
    """What a run of a pipeline (:class:`~resshift_core.pipeline.ResShiftPipeline`) needs in memory: its weights and
    the working memory of its plans, traced (see the module docstring). Uses the pipeline's networks, ``device``,
    ``dtype``, ``plan``, ``plan_size`` and ``_probe_cache``."""

    def _memory_budget(self) -> int | None:
        """Bytes a run may use on the pipeline's device now (None: cannot be told)."""
        return available_memory(self.device)

    def _fits(self, plan: RunPlan, budget: float) -> bool:
        """Whether a plan's working memory fits ``budget`` bytes; a trace that cannot run (an unusual PyTorch
        build) says yes, so that "auto" keeps the official computation rather than failing."""
        try:
            return self.working_memory_of(plan) <= budget
        except Exception as error:  # noqa: BLE001 - the estimate is advice; a run must not fail because of it
            logger.warning("memory estimate unavailable (%s: %s); assuming the untiled run fits",
                           type(error).__name__, error)
            return True

    def weight_bytes(self, dtype: str | torch.dtype | None = None) -> int:
        """Bytes of both networks' weights on the device in ``dtype`` (default: the pipeline's)."""
        dtype = parse_dtype(dtype) if dtype is not None else self.dtype
        return sum(weight_bytes(network, dtype) for network in self.networks)

    def working_memory_of(self, plan: RunPlan, dtype: torch.dtype | None = None) -> int:
        """Peak bytes of a planned run beyond the weights, traced on the meta device (see :mod:`.memory`)."""
        return run_working_memory(self, plan, dtype or self.dtype, self._probe_cache)

    def estimate_memory(self, height: int, width: int, *, batch: int = 1, dtype: str | torch.dtype | None = None,
                        tiles: TilesArgument = None, one_step: bool | None = None) -> int:
        """Bytes a run on a batch of ``height`` x ``width`` LR images needs on the pipeline's device: the weights
        plus the peak working memory of the run as planned with these settings."""
        dtype = parse_dtype(dtype) if dtype is not None else self.dtype
        return self.weight_bytes(dtype) + self.working_memory(height, width, batch=batch, dtype=dtype, tiles=tiles,
                                                              one_step=one_step)

    def working_memory(self, height: int, width: int, *, batch: int = 1, dtype: str | torch.dtype | None = None,
                       tiles: TilesArgument = None, one_step: bool | None = None,
                       size: OutputSize | None = None) -> int:
        """:meth:`estimate_memory` without the weights: what a host with the weights already on the device (for
        ComfyUI, ``memory_required``) must keep free. With an output ``size``, the largest of its passes."""
        tiles = self._tiles_of(tiles)
        size_plan = self.plan_size(width, height, size)
        inputs = [(width, height), *size_plan.pass_sizes[:-1]]
        return max(self.working_memory_of(self.plan(h, w, batch=batch, tiles=t, one_step=one_step),
                                          parse_dtype(dtype) if dtype is not None else None)
                   for (w, h), t in zip(inputs, self._pass_tiles(tiles, size_plan.passes)))

