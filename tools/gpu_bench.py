#!/usr/bin/env python3
"""Issue 21's GPU figures in one bounded run (called by ``tools/gpu_check.sh``; a benchmark tool, not a test).

Every stage runs in a child process of its own, under a hard time limit (its budget plus a start-up grace, never more
than what is left of ``--total-seconds``), and checks a soft budget before each run it starts, so that one stage cannot
eat the others' time. Each stage writes ``OUT/stage_<name>.json`` as it goes (a stage killed at its limit keeps what
it measured) and its output to ``OUT/stage_<name>.log``; at the end ``OUT/gpu_bench.json`` holds everything and
``OUT/gpu_table.md`` the README's GPU table (``tools/gpu_readme_table.py``, also runnable on its own).

Stages (``--stages``, in this order by default: the most wanted figures first):

  speed    whole-pipeline seconds per image with the default settings (tiles "auto"), fp16 and, where
           ``torch.cuda.is_bf16_supported()``, bf16; LR sides 64, 256, 512, 1024 px (-> 256 .. 4096); median of
           ``--repeat`` runs after one warm-up; peak memory (``max_memory_allocated``) against the core's estimate
           (``pipe.estimate_memory``: weights + the traced working memory of the plan that ran); FLOPs of one run
           (``resshift_core.planning.flop_counter()`` over the warm-up run up to ``--count-flops-max`` px, above it the
           planner's FLOP model ``plan_cost``) divided by the time and by the card's dense fp16 tensor peak looked up
           from its name (null when unknown; ``--peak-tflops`` overrides), and by a matmul peak measured now.
  side     ``tools/official_side_by_side.py`` (``--official`` / ``RESSHIFT_OFFICIAL``) at 64 and 256 px on the same
           random weights and replayed noise: seconds of both, ratio official / ours, PSNR between the outputs.
  cap      512 and 1024 px under an 8 GiB cap (``torch.cuda.set_per_process_memory_fraction(8 GiB / total)``): must
           finish; time of the first run (out-of-memory retries included) and of a second, peak, the plan the
           planner chose and the plan that ran, the retries (from the core's log), the free memory the planner saw.
  guard    the fp16 overflow guard on the device: a clean fp16 run (no rerun expected), then the UNet's output
           convolution and the decoder's ``conv_out`` scaled until float16 overflows: finite output, the warning,
           the precision of the rerun, the cost.
  tests    pytest: ``tests/test_cuda.py`` (``-k 'not compiled'`` unless ``--tests-all``), the float16 tests of
           ``tests/test_output_features.py`` and the CUDA test of ``tests/test_webui_extension.py``.
  compile  ``pipe.compile(mode=...)`` for each of ``--compile-modes`` (reduce-overhead, then max-autotune while time
           is left): per size of ``--compile-sizes`` the first call (compilation / graph capture included) and the
           steady time, the dynamo / inductor counters that moved (new graphs, recompiles), and whether an image of
           ANOTHER size, and the first size again, compile anything (recompile reasons are logged:
           ``torch._logging.set_logs(recompiles=True)``).

Inputs are on the device (as ``resshift_core.bench`` times them); outputs stay there. Weights: seeded random
full-size realsr-v3 networks, saved once in ``--weights`` with ``resshift_core.bench.save_random_weights`` and loaded
by every stage with ``ResShiftPipeline.assemble`` like a user file.

    python tools/gpu_bench.py --out gpu_results --official /path/to/ResShift          # on the GPU machine
    python tools/gpu_bench.py --device cpu --dry-run --out /tmp/gpu_dry                # this script, on a CPU

``--dry-run`` (for a CPU): the reduced fixture networks of the tests (``--full-size`` for the real ones), 16 and
32 px, one timed run, short peak measurements; stages that need CUDA record ``"skipped: no CUDA"``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

STAGES = ("speed", "side", "cap", "guard", "tests", "compile")
#: Soft budgets (seconds); with the children's start-up this fills --total-seconds 450 on an H100 / H200, compile (last)
#: getting what the others left, up to its budget.
DEFAULT_BUDGETS = {"speed": 100, "side": 50, "cap": 40, "guard": 15, "tests": 60, "compile": 240}
GRACE_S = 25  # a child's start (imports, CUDA context, weights) on top of its budget, before the hard kill
RELEASE = "realsr-v3"
GIB = 2 ** 30

#: Dense fp16 (= bf16) tensor-core TFLOP/s with fp32 accumulation, from NVIDIA's datasheets; the first name found
#: in ``torch.cuda.get_device_name()`` wins (so "H100 PCIe" before "H100", "L40S" before "L40" before "L4").
PEAK_FP16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("L4", 121.0), ("RTX 4090", 165.0), ("V100", 125.0))


def peak_tflops_for(name: str) -> float | None:
    for key, value in PEAK_FP16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


# ------------------------------------------------------------------------------------------------------ helpers
class Budget:
    """A stage's soft time budget: runs are started only while their predicted time fits what is left."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, predicted: float | None) -> bool:
        return self.left() > 0 and (predicted is None or predicted <= self.left())


class StageFile:
    """``OUT/stage_<name>.json``, rewritten after every record (atomically), so that a killed stage keeps its
    figures."""

    def __init__(self, out: Path, stage: str, budget_s: float, settings: dict):
        self.path = out / f"stage_{stage}.json"
        self.data = {"stage": stage, "status": "running", "budget_s": budget_s, "elapsed_s": 0.0,
                     "settings": settings, "records": []}
        self.start = time.monotonic()
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 2)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(temporary, self.path)

    def add(self, record: dict) -> dict:
        self.data["records"].append(record)
        self.write()
        print("» " + summary_line(self.data["stage"], record), flush=True)
        return record

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.write()


def summary_line(stage: str, record: dict) -> str:
    """One readable line of a record for the log and the orchestrator's output."""
    keys = ("mode", "dtype", "network", "size", "status", "seconds", "first_seconds", "plan", "peak_gib",
            "estimate_ratio", "pct_fp16_peak", "oom_retries", "finite", "new_graphs", "speedup", "psnr",
            "passed", "failed", "skipped")
    if record.get("probe") == "sdpa" and record.get("keys"):
        backends = [f"{name} {value['seconds'] * 1e3:.2f} ms" if "seconds" in value else f"{name} refused"
                    for name, value in record.items() if isinstance(value, dict)]
        return (f"[{stage}] sdpa {record['dtype']} {record['queries']} queries x {record['keys']} keys, head 512: "
                + ", ".join(backends))
    parts = []
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return f"[{stage}] " + " ".join(parts)


class LogCapture(logging.Handler):
    """The core's log messages (INFO and up) during a block: out-of-memory retries, fp16 reruns, plans."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")

    def __enter__(self) -> LogCapture:
        self._logger = logging.getLogger("resshift_core")
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_upscale(pipe, image, seed: int, **kwargs):
    """One synchronised ``upscale`` with the default settings: (output, seconds)."""
    sync(pipe.device)
    start = time.perf_counter()
    out = pipe.upscale(image, seed=seed, **kwargs)
    sync(pipe.device)
    return out, time.perf_counter() - start


def free_device_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def short_plan(plan) -> str | None:
    if plan is None:
        return None
    meta = plan.metadata()
    if meta.get("tiling") == "off":
        return "untiled"
    unet = f"UNet {meta['unet_tiles']}x{meta['unet_tile'][0]}" if meta.get("unet_tile") else "UNet whole"
    vae = (f"VAE {meta['autoencoder_tiles']}x{meta['autoencoder_tile'][0]}" if meta.get("autoencoder_tile")
           else "VAE whole")
    return f"tiled: {unet}, {vae}"


def parse_list(text: str, kind=str) -> list:
    return [kind(item.strip()) for item in str(text).split(",") if item.strip()]


def git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+changes" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------------ context
class Context:
    """What every stage shares: the options, the device, the weights and the stage's budget and file."""

    def __init__(self, options: argparse.Namespace, stage: str):
        import torch

        self.options = options
        self.stage = stage
        self.device = torch.device(options.device)
        self.out = Path(options.out)
        self.budget = Budget(options.budgets[stage])
        self.file = StageFile(self.out, stage, options.budgets[stage], settings_of(options, stage))
        self.cuda = self.device.type == "cuda"

    def weight_paths(self) -> tuple[str, str]:
        if self.options.tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_weights import AUTOENCODER, UNET

            return str(UNET), str(AUTOENCODER)
        folder = Path(self.options.weights)
        return (str(folder / f"bench_unet_{RELEASE}.safetensors"),
                str(folder / "bench_autoencoder_vq-f4.safetensors"))

    def pipeline(self, dtype: str):
        import resshift_core as rc

        unet, autoencoder = self.weight_paths()
        return rc.ResShiftPipeline.assemble(unet, autoencoder, release=RELEASE, device=self.device, dtype=dtype)

    def skip(self, reason: str, **fields) -> dict:
        return self.file.add({"status": f"skipped: {reason}", **fields})

    def speed_record(self, dtype: str, size: int) -> dict | None:
        """The speed stage's record of (dtype, size), if that stage ran and timed it."""
        path = self.out / "stage_speed.json"
        if not path.is_file():
            return None
        for record in json.loads(path.read_text()).get("records", []):
            if record.get("dtype") == dtype and record.get("size") == size and record.get("seconds") is not None:
                return record
        return None


def settings_of(options: argparse.Namespace, stage: str) -> dict:
    keys = {"speed": ("sizes", "dtypes", "repeat", "warmup", "count_flops_max"),
            "side": ("side_sizes", "side_repeat"), "cap": ("cap_gib", "cap_sizes"), "guard": ("guard_size",),
            "tests": ("tests_all",), "compile": ("compile_modes", "compile_sizes", "compile_repeat")}[stage]
    return {"device": options.device, "dry_run": options.dry_run, "tiny_weights": options.tiny,
            **{key: getattr(options, key) for key in keys}}


def speed_dtypes(ctx: Context) -> list[str]:
    import torch

    if ctx.options.dtypes != "auto":
        return parse_list(ctx.options.dtypes)
    if ctx.cuda:
        return ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp16", "bf16"] if ctx.options.dry_run else ["fp32"]


# --------------------------------------------------------------------------------------------------- 1. speed
def predict(times: dict, dtype: str, size: int) -> float | None:
    """Seconds of one run of (dtype, size) from those already measured: the same size in another dtype, else the
    largest smaller size scaled by the area (+30%)."""
    same = [t for (d, s), t in times.items() if s == size]
    if same:
        return max(same)
    smaller = sorted(((s, t) for (d, s), t in times.items() if s < size and d == dtype), reverse=True) or \
        sorted(((s, t) for (d, s), t in times.items() if s < size), reverse=True)
    if not smaller:
        return None
    s, t = smaller[0]
    return t * (size / s) ** 2 * 1.3


def model_flops(pipe, plan) -> float | None:
    """FLOPs of the network calls of a plan by the planner's model (counted on the meta device, weight 1)."""
    try:
        from resshift_core.planning import plan_cost

        vq = pipe.autoencoder.config if pipe.latent_space else None
        return float(plan_cost(plan, pipe.unet.config, vq, pipe.latent_factor))
    except Exception as error:  # noqa: BLE001 - a figure beside the timing
        print(f"  (FLOP model unavailable: {error_text(error)})", flush=True)
        return None


def measured_matmul_tflops(ctx: Context, dtype: str) -> float | None:
    try:
        from resshift_core.bench import measure_peak
        from resshift_core.runtime import parse_dtype

        peak = measure_peak(ctx.device, parse_dtype(dtype), target_s=0.1 if ctx.options.dry_run else 0.6)
        return peak["gflops"] / 1e3
    except Exception as error:  # noqa: BLE001
        print(f"  (matmul peak not measured: {error_text(error)})", flush=True)
        return None


def measure_size(ctx: Context, pipe, dtype: str, size: int, repeat: int, spec_tflops: float | None,
                 matmul_tflops: float | None, times: dict) -> dict:
    """One size with the default settings: plan and estimate first (so that the FLOP counter sees no trace), a
    warm-up (FLOP-counted up to --count-flops-max), then the timed runs."""
    import torch

    from resshift_core.bench import input_image
    from resshift_core.planning import flop_counter

    options = ctx.options
    record: dict = {"dtype": dtype, "size": size, "output": size * pipe.scale, "tiles": "auto (default)"}
    image = input_image(size).to(ctx.device)
    plan = pipe.plan(size, size)  # cached: upscale() runs this plan
    record["plan_planned"] = plan.describe()
    try:
        record["estimate_bytes"] = pipe.estimate_memory(size, size)
        record["working_estimate_bytes"] = pipe.working_memory_of(plan)
    except Exception as error:  # noqa: BLE001 - a figure beside the timing
        record["estimate_error"] = error_text(error)
    free_device_memory(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else None
    with LogCapture() as log:
        if size <= options.count_flops_max:
            with flop_counter() as counter:
                _, first = timed_upscale(pipe, image, options.seed)
            record["flops"] = float(counter.get_total_flops())
            record["flops_method"] = "flop_counter() over the warm-up run"
        else:
            _, first = timed_upscale(pipe, image, options.seed)
            record["flops_method"] = "planner FLOP model (plan_cost), network calls only"
        for _ in range(max(0, options.warmup - 1)):
            timed_upscale(pipe, image, options.seed)
        record["first_seconds"] = first
        record["plan"] = short_plan(pipe.last_plan)
        record["plan_described"] = pipe.last_plan.describe() if pipe.last_plan else None
        record["plan_meta"] = pipe.last_plan.metadata() if pipe.last_plan else None
        record["flops_model"] = model_flops(pipe, pipe.last_plan)
        if record.get("flops") is None:
            record["flops"] = record["flops_model"]
        # as many timed runs as fit (at least one): the warm-up's time bounds one run
        fitting = int(max(0.0, ctx.budget.left() - 1.0) // max(first, 1e-3))
        runs = max(1, min(repeat, fitting))
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        seconds = []
        for number in range(runs):
            out, elapsed = timed_upscale(pipe, image, options.seed)
            seconds.append(elapsed)
            if number == runs - 1:
                record["finite"] = bool(torch.isfinite(out).all())
            del out  # not alive during the next run: the peak is one run's
    record.update(status="ok" if runs == repeat else f"ok ({runs} of {repeat} timed runs: budget)",
                  seconds=statistics.median(seconds), seconds_all=seconds,
                  megapixels_per_second=(size * pipe.scale) ** 2 / 1e6 / statistics.median(seconds),
                  oom_retries=log.count("out of memory"), fp16_reruns=log.count("overflowed"),
                  log=log.messages[-12:])
    times[(dtype, size)] = record["seconds"]
    if record.get("flops"):
        achieved = record["flops"] / record["seconds"] / 1e12
        record["tflops_per_second"] = achieved
        record["peak_tflops_spec"] = spec_tflops
        record["pct_fp16_peak"] = 100 * achieved / spec_tflops if spec_tflops else None
        record["matmul_tflops_measured"] = matmul_tflops
        record["pct_measured_matmul_peak"] = 100 * achieved / matmul_tflops if matmul_tflops else None
    if ctx.cuda:
        peak = torch.cuda.max_memory_allocated(ctx.device)
        record.update(peak_bytes=peak, peak_gib=peak / GIB, base_bytes=base,
                      peak_reserved_bytes=torch.cuda.max_memory_reserved(ctx.device))
        if record.get("estimate_bytes"):
            record["estimate_ratio"] = record["estimate_bytes"] / peak
            record["working_ratio"] = record["working_estimate_bytes"] / max(1, peak - base)
            record["estimate_within_25pct"] = 0.75 <= record["estimate_ratio"] <= 1.25
    else:
        record["memory"] = "skipped: no CUDA (the estimate is computed; max_memory_allocated is CUDA only)"
    return record


def sdpa_probe(ctx: Context, dtype: str) -> None:
    """Which scaled_dot_product_attention backend takes the autoencoder's attention (one head of 512 channels, the
    shape its query chunks have: 4096 queries against all keys), and how fast each one runs it."""
    import torch
    import torch.nn.functional as F

    from resshift_core.runtime import parse_dtype

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as error:
        ctx.skip(f"torch.nn.attention unavailable ({error})", probe="sdpa")
        return
    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    backends = [(name, getattr(SDPBackend, name)) for name in names if hasattr(SDPBackend, name)]
    keys_list = (256, 1024) if ctx.options.dry_run else (4096, 16384, 65536)
    generator = torch.Generator(ctx.device).manual_seed(0)
    for keys in keys_list:
        queries = min(keys, 4096)
        shape = lambda n: (1, 1, n, 512)  # noqa: E731
        q = torch.randn(shape(queries), device=ctx.device, generator=generator).to(parse_dtype(dtype))
        k = torch.randn(shape(keys), device=ctx.device, generator=generator).to(q.dtype)
        v = torch.randn(shape(keys), device=ctx.device, generator=generator).to(q.dtype)
        record: dict = {"probe": "sdpa", "dtype": dtype, "queries": queries, "keys": keys, "head_dim": 512,
                        "heads": 1, "status": "ok"}
        reference = None
        for name, backend in [("default", None)] + backends:
            try:
                with torch.inference_mode(), sdpa_kernel([backend]) if backend is not None else nullcontext():
                    out = F.scaled_dot_product_attention(q, k, v)
                    runs = []
                    for _ in range(3):
                        sync(ctx.device)
                        start = time.perf_counter()
                        out = F.scaled_dot_product_attention(q, k, v)
                        sync(ctx.device)
                        runs.append(time.perf_counter() - start)
                if reference is None:
                    reference = out.float()
                record[name] = {"seconds": min(runs),
                                "max_abs_diff_vs_default": float((out.float() - reference).abs().max())}
            except Exception as error:  # noqa: BLE001 - "does not take this shape" is the answer
                record[name] = {"error": error_text(error)[:160]}
        ctx.file.add(record)
        del q, k, v
        free_device_memory(ctx.device)


def stage_speed(ctx: Context) -> None:
    import torch

    options = ctx.options
    name = torch.cuda.get_device_name(ctx.device) if ctx.cuda else "cpu"
    spec = options.peak_tflops or (peak_tflops_for(name) if ctx.cuda else None)
    times: dict = {}
    for dtype in speed_dtypes(ctx):
        if not ctx.budget.allows(predict(times, dtype, options.sizes[0])):
            ctx.skip("time budget", dtype=dtype)
            continue
        if dtype == speed_dtypes(ctx)[0] and ctx.options.sdpa_probe:
            try:
                sdpa_probe(ctx, dtype)
            except Exception as error:  # noqa: BLE001 - a side figure
                ctx.file.add({"probe": "sdpa", "status": f"failed: {error_text(error)}"})
        pipe = ctx.pipeline(dtype)
        matmul = measured_matmul_tflops(ctx, dtype)
        for size in options.sizes:
            guess = predict(times, dtype, size)
            # a warm-up and at least one timed run must fit (the counted warm-up costs more)
            if guess is not None and not ctx.budget.allows(guess * (2.5 if size <= options.count_flops_max else 2)):
                ctx.skip(f"time budget ({ctx.budget.left():.0f} s left, predicted {guess:.1f} s per run)",
                         dtype=dtype, size=size, predicted_seconds=guess)
                continue
            try:
                ctx.file.add(measure_size(ctx, pipe, dtype, size, options.repeat, spec, matmul, times))
            except Exception as error:  # noqa: BLE001 - the other sizes go on
                traceback.print_exc()
                ctx.file.add({"dtype": dtype, "size": size, "status": f"failed: {error_text(error)}"})
            free_device_memory(ctx.device)
        del pipe
        free_device_memory(ctx.device)


# ----------------------------------------------------------------------------------------------------- 2. cap
def stage_cap(ctx: Context) -> None:
    import torch

    from resshift_core.bench import input_image
    from resshift_core.memory import available_memory

    if not ctx.cuda:
        ctx.skip("no CUDA (the memory cap is torch.cuda.set_per_process_memory_fraction)")
        return
    options = ctx.options
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    cap = int(options.cap_gib * GIB)
    fraction = min(1.0, cap / total)
    torch.cuda.set_per_process_memory_fraction(fraction, ctx.device)
    pipe = ctx.pipeline("fp16")
    for size in options.cap_sizes:
        guess = ctx.speed_record("fp16", size)
        guess = guess["seconds"] if guess else None
        if not ctx.budget.allows(guess):
            ctx.skip(f"time budget ({ctx.budget.left():.0f} s left)", size=size, cap_gib=options.cap_gib)
            continue
        record: dict = {"dtype": "fp16", "size": size, "output": size * pipe.scale, "cap_gib": options.cap_gib,
                        "fraction": fraction, "total_bytes": total,
                        "planner_free_bytes": available_memory(ctx.device)}
        try:
            record["plan_planned"] = short_plan(pipe.plan(size, size))
            record["estimate_bytes"] = pipe.estimate_memory(size, size)
        except Exception as error:  # noqa: BLE001
            record["estimate_error"] = error_text(error)
        image = input_image(size).to(ctx.device)
        free_device_memory(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            with LogCapture() as log:
                out, first = timed_upscale(pipe, image, options.seed)
            record.update(first_seconds=first, plan=short_plan(pipe.last_plan), oom_retries=log.count("out of memory"),
                          finite=bool(torch.isfinite(out).all()), log=log.messages[-12:])
            del out
            record["peak_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
            record["peak_gib"] = record["peak_bytes"] / GIB
            record["status"] = "ok: finished under the cap"
            if ctx.budget.allows(first):  # a second run: does it pay the retries again?
                free_device_memory(ctx.device)
                with LogCapture() as log:
                    out, again = timed_upscale(pipe, image, options.seed)
                del out
                record.update(seconds=again, oom_retries_second=log.count("out of memory"),
                              plan_second=short_plan(pipe.last_plan))
            else:
                record["seconds"] = first
        except Exception as error:  # noqa: BLE001 - the issue's requirement failed: say how
            traceback.print_exc()
            record["status"] = f"failed under the cap: {error_text(error)}"
            record["peak_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
        if record.get("estimate_bytes") and record.get("peak_bytes"):
            record["estimate_ratio"] = record["estimate_bytes"] / record["peak_bytes"]
        ctx.file.add(record)
        free_device_memory(ctx.device)
    torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)


# --------------------------------------------------------------------------------------------------- 3. guard
def stage_guard(ctx: Context) -> None:
    import torch

    from resshift_core.bench import input_image
    from resshift_core.runtime import device_supports_bf16

    options = ctx.options
    pipe = ctx.pipeline("fp16")
    image = input_image(options.guard_size).to(ctx.device)
    bf16 = device_supports_bf16(ctx.device)
    timed_upscale(pipe, image, options.seed)  # warm-up
    with LogCapture() as log:
        clean, clean_s = timed_upscale(pipe, image, options.seed)
    ctx.file.add({"network": "none (clean fp16 run)", "size": options.guard_size, "seconds": clean_s,
                  "finite": bool(torch.isfinite(clean).all()), "reruns": log.count("overflowed"),
                  "status": "ok" if log.count("overflowed") == 0 else "failed: a clean run was rerun",
                  "bf16_supported": bf16})
    targets = {"unet": lambda: pipe.unet.out[-1], "decoder": lambda: pipe.autoencoder.decoder.conv_out}
    for network, module_of in targets.items():
        if not ctx.budget.allows(clean_s * 4):
            ctx.skip("time budget", network=network)
            continue
        record: dict = {"network": network, "size": options.guard_size, "bf16_supported": bf16}
        try:
            module = module_of()
            saved = module.weight.detach().clone()
            for factor in (3e4, 1e6):  # the tests' factor; more where these weights stay in range
                with torch.no_grad():
                    module.weight.copy_(saved * factor)
                with LogCapture() as log:
                    out, seconds = timed_upscale(pipe, image, options.seed)
                if log.count("overflowed"):
                    break
            with torch.no_grad():
                module.weight.copy_(saved)
            reruns = [m for m in log.messages if "overflowed" in m]
            wider = sorted({m.rsplit(" ", 1)[-1] for m in reruns})
            finite = bool(torch.isfinite(out).all())
            record.update(factor=factor, seconds=seconds, clean_seconds=clean_s, finite=finite,
                          reruns=len(reruns), rerun_dtypes=wider, first_warning=reruns[0] if reruns else None,
                          dtype_after=str(next(pipe.unet.parameters()).dtype).replace("torch.", ""),
                          mean=float(out.float().mean()))
            expected = "bfloat16" if bf16 else "float32"
            ok = finite and reruns and expected in wider and record["dtype_after"] == "float16"
            record["status"] = "ok" if ok else ("failed: no overflow provoked" if not reruns else
                                                f"failed: finite={finite}, reruns in {wider}, expected {expected}")
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            record["status"] = f"failed: {error_text(error)}"
        ctx.file.add(record)


# ------------------------------------------------------------------------------------------------- 4. compile
def counter_snapshot() -> dict:
    from torch._dynamo.utils import counters

    return {group: dict(values) for group, values in counters.items()}


def counter_delta(before: dict, after: dict) -> dict:
    delta = {}
    for group, values in after.items():
        for key, value in values.items():
            change = value - before.get(group, {}).get(key, 0)
            if change:
                delta[f"{group}.{key}"] = change
    return delta


def new_graphs(delta: dict) -> int:
    """Graphs compiled in a step: dynamo's unique graphs (each new frame compile or recompile makes one)."""
    return int(delta.get("stats.unique_graphs", 0))


def compile_order(sizes: list[int]) -> list[int]:
    """The order of the compile stage's images: the first size, a second size (does it compile again?), the first
    size again (is it cached?), then the other sizes."""
    if len(sizes) < 2:
        return list(sizes)
    return [sizes[0], sizes[1], sizes[0], *sizes[2:]]


def stage_compile(ctx: Context) -> None:
    import torch

    from resshift_core.bench import input_image

    options = ctx.options
    try:
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    except Exception as error:  # noqa: BLE001 - older PyTorch: the counters still tell
        print(f"(recompile logging unavailable: {error_text(error)})", flush=True)
    compile_times: list[float] = []
    for index, mode in enumerate(options.compile_modes):
        predicted = sum(compile_times) * (2 if mode == "max-autotune" else 1) if compile_times else None
        if index and not ctx.budget.allows(predicted):
            ctx.skip(f"time budget ({ctx.budget.left():.0f} s left; the previous mode took "
                     f"{sum(compile_times):.0f} s to compile)", mode=mode)
            continue
        torch._dynamo.reset()
        pipe = ctx.pipeline("fp16").compile(mode=mode)
        print(f"== compile mode={mode}", flush=True)
        seen: set[int] = set()
        for step, size in enumerate(compile_order(options.compile_sizes)):
            again = size in seen
            eager = ctx.speed_record("fp16", size)
            # The second image is the question (does another size compile again?): it is always started while any
            # time is left; killed at the stage's limit, its record says how long it had run. Later images start
            # only where their predicted time fits.
            if step >= 2 and not ctx.budget.allows((eager["seconds"] * 3 if eager else None) if again
                                                   else (compile_times[-1] if compile_times else None)):
                ctx.skip(f"time budget ({ctx.budget.left():.0f} s left)", mode=mode, size=size, again=again)
                continue
            if ctx.budget.left() < 5:
                ctx.skip("time budget spent", mode=mode, size=size, again=again)
                continue
            record: dict = {"mode": mode, "dtype": "fp16", "size": size, "step": step + 1, "again": again,
                            "eager_seconds": eager["seconds"] if eager else None,
                            "started_at": time.time(),
                            "status": "running (still in this call when the stage was killed)"}
            ctx.file.data["records"].append(record)  # written before the call: a kill leaves it
            ctx.file.write()
            image = input_image(size).to(ctx.device)
            try:
                before = counter_snapshot()
                with LogCapture() as log:
                    out, first = timed_upscale(pipe, image, options.seed)
                delta = counter_delta(before, counter_snapshot())
                record["inductor_cache"] = (f"{delta.get('inductor.fxgraph_cache_hit', 0)} hit, "
                                            f"{delta.get('inductor.fxgraph_cache_miss', 0)} miss")
                record.update(first_seconds=first, new_graphs=new_graphs(delta), counters_first=delta,
                              plan=short_plan(pipe.last_plan), finite=bool(torch.isfinite(out).all()),
                              oom_retries=log.count("out of memory"), fp16_reruns=log.count("overflowed"))
                del out
                if not again:
                    compile_times.append(first)
                runs: list[float] = []
                before = counter_snapshot()
                for _ in range(options.compile_repeat):  # steady runs, as many as fit (one at least if any)
                    guess = max(runs) if runs else (eager["seconds"] if eager else first)
                    if not ctx.budget.allows(guess):
                        break
                    runs.append(timed_upscale(pipe, image, options.seed)[1])
                steady = counter_delta(before, counter_snapshot())
                median = statistics.median(runs) if runs else None
                record.update(seconds=median, seconds_all=runs, new_graphs_steady=new_graphs(steady),
                              counters_steady=steady, speedup=eager["seconds"] / median if eager and runs else None,
                              compile_seconds=first - median if runs else None, status="ok")
                if again:
                    record["seen_size_compiles"] = record["new_graphs"] > 0
                elif step:
                    record["another_size_compiles"] = record["new_graphs"] > 0
            except Exception as error:  # noqa: BLE001 - the other sizes and modes go on
                traceback.print_exc()
                record["status"] = f"failed: {error_text(error)}"
            ctx.file.data["records"].pop()
            ctx.file.add(record)
            seen.add(size)
            free_device_memory(ctx.device)
        del pipe
        torch._dynamo.reset()
        free_device_memory(ctx.device)


# ---------------------------------------------------------------------------------------- 5./6. side and tests
def run_command(ctx: Context, argv: list[str], log_name: str) -> tuple[int | None, str]:
    """A command under the stage's budget, its output kept in OUT/<log_name>; (exit status or None on timeout,
    output)."""
    timeout = max(5.0, ctx.budget.left())
    print("$ " + " ".join(argv), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        code = None
    (ctx.out / log_name).write_text(output)
    return code, output


def stage_side(ctx: Context) -> None:
    options = ctx.options
    if not options.official:
        ctx.skip("set RESSHIFT_OFFICIAL (or --official) to a checkout of the official code")
        return
    if options.tiny:
        ctx.skip("the official script builds the full-size realsr-v3 networks: run with full-size weights")
        return
    unet, autoencoder = ctx.weight_paths()
    dtype = "fp16" if ctx.cuda else "fp32"
    argv = [sys.executable, str(ROOT / "tools" / "official_side_by_side.py"), "--official", options.official,
            "--unet", unet, "--autoencoder", autoencoder, "--sizes", ",".join(map(str, options.side_sizes)),
            "--repeat", str(options.side_repeat), "--device", options.device, "--ours-dtype", dtype]
    code, output = run_command(ctx, argv, "side_by_side.log")
    found = 0
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            record.update(status="ok", dtype=dtype, psnr=record.get("psnr_ours_vs_official"),
                          speedup=record.get("speedup"), ours_tiles="off (the script's setting)")
            ours = ctx.speed_record(dtype, record["size"])
            if ours:  # the ratio against our default settings, as users run it
                record["ours_default_seconds"] = ours["seconds"]
                record["ratio_official_over_ours_default"] = record["official_seconds"] / ours["seconds"]
            ctx.file.add(record)
            found += 1
    if code != 0 or not found:
        tail = output.strip().splitlines()[-5:]
        ctx.file.add({"status": "killed at the stage's time limit" if code is None else f"exit status {code}",
                      "sizes_done": found, "tail": tail})


def stage_tests(ctx: Context) -> None:
    selection = "(cuda or float16)" if ctx.options.tests_all else "(cuda or float16) and not compiled"
    argv = [sys.executable, "-m", "pytest", "-v", "-rA", "-s", "-p", "no:cacheprovider", "tests/test_cuda.py",
            "tests/test_output_features.py", "tests/test_webui_extension.py", "-k", selection]
    code, output = run_command(ctx, argv, "tests.log")
    counts = {}
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if summary:
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary[-1]):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    if not summary:  # cut short: count the verbose lines ("tests/x.py::name PASSED [ 10%]")
        for word in ("passed", "failed", "skipped", "error"):
            counts[word] = len(re.findall(rf"^\S+::\S+ {word.upper()}", output, re.MULTILINE))
    failures = sorted({line.split(" ", 1)[1].split(" - ")[0] for line in output.splitlines()
                       if line.startswith(("FAILED ", "ERROR "))})
    memory = [line.strip() for line in output.splitlines() if line.strip().startswith("memory ")]
    status = "killed at the stage's time limit" if code is None else ("ok" if code == 0 else f"exit status {code}")
    ctx.file.add({"status": status, "passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
                  "skipped": counts.get("skipped", 0), "errors": counts.get("error", 0),
                  "deselected": counts.get("deselected", 0), "selection": selection, "failures": failures[:20],
                  "memory_lines": memory, "cuda": ctx.cuda,
                  "summary": summary[-1].strip("= ") if summary else None})


STAGE_FUNCTIONS = {"speed": stage_speed, "side": stage_side, "cap": stage_cap, "guard": stage_guard,
                   "tests": stage_tests, "compile": stage_compile}


def run_child(options: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx = Context(options, options.child)
    if ctx.cuda:
        import torch

        torch.cuda.init()
    try:
        STAGE_FUNCTIONS[options.child](ctx)
        ctx.file.finish("done")
    except Exception as error:  # noqa: BLE001 - recorded; the orchestrator goes on with the next stage
        traceback.print_exc()
        ctx.file.finish(f"failed: {error_text(error)}")
    return 0


# ------------------------------------------------------------------------------------------------ orchestrator
def environment(options: argparse.Namespace) -> dict:
    import torch

    device = torch.device(options.device)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "python": platform.python_version(), "device": str(device),
            "revision": git_revision(), "dry_run": options.dry_run, "weights": "reduced fixture networks (tests)"
            if options.tiny else f"random full-size {RELEASE} (seed {options.seed}), {options.weights}"}
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: on a CPU, run with --device cpu --dry-run")
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        name = torch.cuda.get_device_name(device)
        meta.update(gpu=name, total_memory_bytes=properties.total_memory,
                    capability=f"{properties.major}.{properties.minor}", cudnn=torch.backends.cudnn.version(),
                    bf16_supported=torch.cuda.is_bf16_supported(),
                    peak_fp16_tflops=options.peak_tflops or peak_tflops_for(name),
                    peak_source="--peak-tflops" if options.peak_tflops else "datasheet table (gpu_bench.py)")
        try:
            meta["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                                             f"--id={device.index or 0}"], capture_output=True, text=True,
                                            timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["driver"] = None
    else:
        from resshift_core.bench import device_name

        meta.update(gpu=None, cpu=device_name(device), driver=None, peak_fp16_tflops=None,
                    note="no CUDA: a dry run of the script; no GPU figure")
    return meta


def ensure_weights(options: argparse.Namespace) -> dict:
    """The random full-size weights in --weights (built once, then reused)."""
    if options.tiny:
        return {"weights": "fixtures", "seconds": 0.0}
    folder = Path(options.weights)
    files = [folder / f"bench_unet_{RELEASE}.safetensors", folder / "bench_autoencoder_vq-f4.safetensors"]
    if all(path.is_file() for path in files):
        return {"weights": "reused", "seconds": 0.0}
    from resshift_core.bench import save_random_weights

    start = time.monotonic()
    save_random_weights([RELEASE], options.seed, folder)
    return {"weights": "built", "seconds": time.monotonic() - start}


def child_argv(options: argparse.Namespace, stage: str) -> list[str]:
    """This command line again for one stage, with that stage's budget as the orchestrator set it."""
    return [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--budget",
            f"{stage}={options.budgets[stage]:.1f}", "--child", stage]


_RUNNING: list[tuple[subprocess.Popen, Path]] = []  # the stage now running: its process and its JSON file


def _terminate(signum, frame) -> None:
    """``timeout`` (or Ctrl-C) stops the orchestrator: the stage's process group goes with it, and its file says so."""
    for process, path in _RUNNING:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        try:
            data = json.loads(path.read_text())
            data["status"] = f"killed: the whole run was stopped (signal {signum}; figures so far kept)"
            for record in data.get("records", []):
                if str(record.get("status", "")).startswith("running"):
                    record["status"] = "killed: still in this call when the run was stopped"
            path.write_text(json.dumps(data, indent=1, default=str))
        except (OSError, ValueError):
            pass
    raise SystemExit(128 + signum)


def run_stage_process(options: argparse.Namespace, stage: str, limit: float) -> dict:
    """One stage in a child process of its own session, killed with its children at ``limit`` seconds."""
    out = Path(options.out)
    log_path = out / f"stage_{stage}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(child_argv(options, stage), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _RUNNING[:] = [(process, out / f"stage_{stage}.json")]
        try:
            code = process.wait(timeout=limit)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code, killed = None, True
        _RUNNING.clear()
    elapsed = time.monotonic() - start
    path = out / f"stage_{stage}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"stage": stage, "records": []}
    if killed:
        data["status"] = f"killed at its hard limit of {limit:.0f} s (figures so far kept)"
        for record in data.get("records", []):
            if str(record.get("status", "")).startswith("running"):
                ran = time.time() - record.get("started_at", time.time())
                record["status"] = f"killed: still in this call after {ran:.0f} s"
    elif data.get("status") in (None, "running"):
        data["status"] = f"the stage process exited with {code} (see {log_path.name})"
    data["wall_s"] = round(elapsed, 1)
    data["hard_limit_s"] = round(limit, 1)
    path.write_text(json.dumps(data, indent=1, default=str))
    lines = log_path.read_text(errors="replace").splitlines()
    for line in lines:
        if line.startswith("» "):
            print(line[2:], flush=True)
    if not str(data["status"]).startswith("done"):
        print("\n".join("    " + line for line in lines[-15:]), flush=True)
    print(f"== {stage}: {data['status']} ({elapsed:.0f} s)", flush=True)
    return data


def orchestrate(options: argparse.Namespace) -> int:
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = environment(options)
    print(f"device: {meta.get('gpu') or meta.get('cpu')}; torch {meta['torch']}; driver {meta.get('driver')}",
          flush=True)
    meta["weights_build"] = ensure_weights(options)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    results = {"meta": meta, "stages": {}}
    for stage in options.stages:
        for stale in (out / f"stage_{stage}.json",):
            stale.unlink(missing_ok=True)
        left = options.total_seconds - (time.monotonic() - start)
        if left < 15:
            results["stages"][stage] = {"stage": stage, "status": "skipped: --total-seconds spent", "records": []}
            (out / f"stage_{stage}.json").write_text(json.dumps(results["stages"][stage], indent=1))
            print(f"== {stage}: skipped (--total-seconds spent)", flush=True)
            continue
        options.budgets[stage] = min(options.budgets[stage], max(5.0, left - GRACE_S))
        print(f"== {stage} (budget {options.budgets[stage]:.0f} s)", flush=True)
        limit = min(options.budgets[stage] + GRACE_S, left)
        results["stages"][stage] = run_stage_process(options, stage, limit)
    results["total_wall_s"] = round(time.monotonic() - start, 1)
    (out / "gpu_bench.json").write_text(json.dumps(results, indent=1, default=str))
    import gpu_readme_table

    table = gpu_readme_table.render(out)
    (out / "gpu_table.md").write_text(table)
    print("\n" + table)
    print(f"total {results['total_wall_s']:.0f} s; results in {out}/ (gpu_bench.json, gpu_table.md, stage_*.json, "
          f"stage_*.log)", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------ options
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true",
                        help="for a CPU: fixture networks, 16/32 px, one timed run (tests this script)")
    parser.add_argument("--full-size", action="store_true", help="with --dry-run: the full-size random weights")
    parser.add_argument("--stages", default=",".join(STAGES), help="of " + ", ".join(STAGES))
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="a stage's time budget (defaults: " +
                             ", ".join(f"{k}={v}" for k, v in DEFAULT_BUDGETS.items()) + ")")
    parser.add_argument("--total-seconds", type=float, default=450.0,
                        help="the whole run's limit (weights, every stage and its start)")
    parser.add_argument("--weights", default=os.environ.get("WEIGHTS", "/tmp/resshift_gpu_weights"))
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--sizes", help="LR sides of the speed stage (default 64,256,512,1024; dry run 16,32)")
    parser.add_argument("--dtypes", default="auto", help="auto: fp16, and bf16 where the card has it")
    parser.add_argument("--repeat", type=int, help="timed runs per size (median; default 3, dry run 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--count-flops-max", type=int, default=512,
                        help="count FLOPs with flop_counter() up to this side; the planner's model above")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense fp16 TFLOP/s (default: by its name)")
    parser.add_argument("--no-sdpa-probe", dest="sdpa_probe", action="store_false",
                        help="skip the SDPA backend probe at the autoencoder's attention shape (speed stage)")
    parser.add_argument("--cap-gib", type=float, default=8.0)
    parser.add_argument("--cap-sizes", default="512,1024")
    parser.add_argument("--guard-size", type=int)
    parser.add_argument("--compile-modes", default="reduce-overhead,max-autotune")
    parser.add_argument("--compile-sizes", help="default 64,256,512 (dry run 16,32); the first again at the end")
    parser.add_argument("--compile-repeat", type=int, default=3)
    parser.add_argument("--official", default=os.environ.get("RESSHIFT_OFFICIAL") or None)
    parser.add_argument("--side-sizes", default="64,256")
    parser.add_argument("--side-repeat", type=int, default=2)
    parser.add_argument("--tests-all", action="store_true", default=bool(os.environ.get("CUDA_TESTS_ALL")),
                        help="include the torch.compile test of tests/test_cuda.py")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    return parser


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    options = build_parser().parse_args(argv)
    dry = options.dry_run
    options.tiny = dry and not options.full_size
    options.sizes = parse_list(options.sizes or ("16,32" if dry else "64,256,512,1024"), int)
    options.repeat = options.repeat or (1 if dry else 3)
    options.cap_sizes = parse_list(options.cap_sizes, int)
    options.compile_sizes = parse_list(options.compile_sizes or ("16,32" if dry else "64,256,512"), int)
    options.compile_modes = parse_list(options.compile_modes)
    options.side_sizes = parse_list(options.side_sizes, int)
    options.guard_size = options.guard_size or (16 if dry else 64)
    if dry:
        options.compile_repeat = min(options.compile_repeat, 1)
    options.stages = parse_list(options.stages)
    unknown = [stage for stage in options.stages if stage not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
    options.budgets = dict(DEFAULT_BUDGETS)
    for item in options.budget:
        stage, _, seconds = item.partition("=")
        if stage not in STAGES or not seconds:
            raise SystemExit(f"--budget {item!r}: expected STAGE=SECONDS with STAGE one of {', '.join(STAGES)}")
        options.budgets[stage] = float(seconds)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if options.child:
        return run_child(options)
    return orchestrate(options)


if __name__ == "__main__":
    sys.exit(main())
