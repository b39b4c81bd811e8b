"""CPU side by side: the official ResShift sampler and resshift_core, one image per whole process.

Every configuration runs in a fresh Python process that loads the weights (timed apart), runs exactly one image
(scikit-image's astronaut resized with PIL to ``--size``) and reports the wall seconds of that one run, the peak RSS
of the run (VmHWM, reset through /proc/self/clear_refs right before it) and the output's shape. A benchmark tool,
not a test; nothing else should run on the machine while it measures.

Weights: seeded full-size random weights of a release (default realsr-v3 UNet + vq-f4 autoencoder, official key
names, safetensors), written once by ``resshift_core.bench.save_random_weights`` into ``--weights`` (default
/tmp/sbs_weights) when absent. Threads: torch's default (nothing is set).

Configurations (``--configs``, comma-separated):
    official                 the official sampler (``ResShiftSampler.inference`` of a checkout of
                             https://github.com/zsyOAOA/ResShift, branch journal, given with ``--official``), fp32,
                             patch-wise with ``--chop-size`` / ``--chop-stride`` (default 64 / 48), seed ``--seed``.
                             Its model building is replaced by a CPU one (same config, our safetensors loaded with
                             tools/official_side_by_side.load)
                             and ``Tensor.cuda`` is the identity; the rest is its code.
    ours-fp32, ours-bf16     ResShiftPipeline.assemble(...) + tune_cpu_allocator() as the command line does, default
                             settings (tiles="auto"); the plan it chose is reported.
    ours-untiled-DTYPE       the same with tiles="off"
    ours-tiled-DTYPE         the same with tiles="latent"
    cli-DTYPE                ``python -m resshift_core upscale`` as a whole process (default settings), timed from
                             outside (includes start-up and loading); the plan is read from the PNG's metadata.

    python tools/cpu_side_by_side.py --configs official,ours-fp32,ours-bf16 --size 256 --json /tmp/sbs_256.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "SBS_RESULT "
OFFICIAL_CONFIG = "configs/realsr_swinunet_realesrgan256_journal.yaml"  # the official CLI's config for realsr v3
DEFAULT_CONFIGS = "official,ours-fp32,ours-bf16"
KNOWN = ("official", "ours-fp32", "ours-bf16", "ours-untiled-fp32", "ours-untiled-bf16",
         "ours-tiled-fp32", "ours-tiled-bf16", "cli-fp32", "cli-bf16")


# ------------------------------------------------------------------------------------------------- in the child
def _peak_reset() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _mib(kib):
    return None if kib is None else round(kib / 1024, 1)


def _timed_run(run) -> dict:
    """Run ``run()`` once with a fresh peak-RSS mark; wall seconds, peak and RSS before."""
    import gc

    gc.collect()
    rss_before = _status_kib("VmRSS")
    reset = _peak_reset()
    start = time.perf_counter()
    value = run()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"value": value, "run_seconds": seconds, "peak_rss_mib": _mib(peak), "rss_before_run_mib": _mib(rss_before),
            "peak_reset": reset}


def child_ours(spec: dict) -> dict:
    import torch

    import resshift_core
    from resshift_core.bench import input_image

    tuned = resshift_core.tune_cpu_allocator()  # before loading, as resshift_core/cli/upscale.py does
    start = time.perf_counter()
    pipe = resshift_core.ResShiftPipeline.assemble(spec["unet"], spec["autoencoder"], release=spec["release"],
                                                   device="cpu", dtype=spec["dtype"])
    load_seconds = time.perf_counter() - start
    image = input_image(spec["size"])
    kwargs = {} if spec["tiles"] is None else {"tiles": spec["tiles"]}
    timed = _timed_run(lambda: pipe.upscale(image, seed=spec["seed"], **kwargs))
    out = timed.pop("value")
    plan = pipe.last_plan
    return {**timed, "load_seconds": load_seconds, "output_shape": list(out.shape),
            "plan": plan.describe() if plan is not None else None,
            "plan_metadata": plan.metadata() if plan is not None else None, "dtype": str(pipe.dtype),
            "allocator_tuned": tuned, "threads": torch.get_num_threads(), "input": input_image.source,
            "output_mean": float(out.float().mean())}


def child_official(spec: dict) -> dict:
    official = str(Path(spec["official"]).resolve())
    sys.path.insert(0, official)  # its top-level packages (models, ldm, utils, datapipe, its own basicsr) first
    os.chdir(official)
    import torch
    import torchvision.transforms.functional as tv_functional

    # torchvision >= 0.17 dropped functional_tensor, which the official basicsr copy imports (data pipeline only)
    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    import sampler as official_sampler
    from omegaconf import OmegaConf
    from utils import util_common, util_image

    sys.path.insert(1, str(ROOT / "tools"))
    from official_side_by_side import UNET_PARAMS, VQ_PARAMS, load

    sys.path.remove(official)
    sys.path.insert(0, official)  # official_side_by_side put the project first: the official code stays first
    assert Path(official_sampler.__file__).resolve().parent == Path(official), official_sampler.__file__
    configs = OmegaConf.load(Path(official) / OFFICIAL_CONFIG)
    configs.diffusion.params.sf = 4  # what inference_resshift.get_configs sets
    # the architecture the safetensors were written for (tools/official_side_by_side) must be the config's
    for name, ours in (("model", UNET_PARAMS), ("autoencoder", VQ_PARAMS)):
        theirs = OmegaConf.to_container(configs[name].params, resolve=True)
        if theirs != ours:
            raise SystemExit(f"the official {name} config differs from tools/official_side_by_side: {theirs}")

    class CpuSampler(official_sampler.ResShiftSampler):
        def build_model(self):  # BaseSampler.build_model without .cuda() and with our safetensors
            self.base_diffusion = util_common.instantiate_from_config(self.configs.diffusion)
            model = util_common.instantiate_from_config(self.configs.model)
            load(model, spec["unet"])
            self.freeze_model(model)
            self.model = model.eval()
            autoencoder = util_common.instantiate_from_config(self.configs.autoencoder)
            load(autoencoder, spec["autoencoder"])
            autoencoder.eval()
            self.autoencoder = autoencoder

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its inference() moves the input with .cuda()
    start = time.perf_counter()
    sampler = CpuSampler(configs, sf=4, chop_size=spec["chop_size"], chop_stride=spec["chop_stride"], chop_bs=1,
                         use_amp=False, seed=spec["seed"],
                         padding_offset=configs.model.params.get("lq_size", 64))
    load_seconds = time.perf_counter() - start

    calls = []
    original_sample_func = sampler.sample_func

    def counted_sample_func(y0, *args, **kwargs):
        calls.append(list(y0.shape))
        return original_sample_func(y0, *args, **kwargs)

    sampler.sample_func = counted_sample_func
    io = {"seconds": 0.0}

    def timed_io(function):
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                io["seconds"] += time.perf_counter() - begin
        return wrapper

    util_image.imread = timed_io(util_image.imread)
    util_image.imwrite = timed_io(util_image.imwrite)
    workdir = Path(spec["workdir"])
    in_path = workdir / "official_input.png"
    out_dir = workdir / "official_out"
    _write_input_png(spec["size"], in_path)
    timed = _timed_run(lambda: sampler.inference(in_path, out_dir, mask_path=None, bs=1, noise_repeat=False))
    timed.pop("value")
    from PIL import Image

    with Image.open(out_dir / in_path.name) as result:
        shape = [1, len(result.getbands()), result.height, result.width]
        import numpy as np

        output_mean = float(np.asarray(result, dtype=np.float32).mean() / 255)
    return {**timed, "load_seconds": load_seconds, "output_shape": shape, "io_seconds": io["seconds"],
            "run_seconds_without_io": timed["run_seconds"] - io["seconds"], "patches": len(calls),
            "patch_shapes": sorted({tuple(c) for c in calls}), "chop_size": spec["chop_size"],
            "chop_stride": spec["chop_stride"], "dtype": "torch.float32", "threads": torch.get_num_threads(),
            "official_code": str(Path(official_sampler.__file__).resolve()), "output_mean": output_mean,
            "plan": f"official patch-wise, {len(calls)} patches"}


def child_weights(spec: dict) -> dict:
    from resshift_core.bench import save_random_weights

    paths = save_random_weights([spec["release"]], spec["weights_seed"], Path(spec["folder"]))
    return {"paths": paths[spec["release"]]}


def _write_input_png(size: int, path: Path) -> None:
    """The benchmark's photo as a lossless 8-bit PNG (input_image is uint8 / 255, so nothing is lost)."""
    import numpy as np
    from PIL import Image

    from resshift_core.bench import input_image

    array = (input_image(size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def child_main(kind: str, spec_json: str) -> None:
    sys.path.insert(0, str(ROOT))
    spec = json.loads(spec_json)
    result = {"official": child_official, "ours": child_ours, "weights": child_weights}[kind](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- the driver
def run_child(kind: str, spec: dict, timeout: float | None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return {**json.loads(lines[-1][len(RESULT_TAG):]), "process_seconds": wall}


def run_cli(dtype: str, size: int, paths, release: str, seed: int, workdir: Path, timeout: float | None) -> dict:
    """The command line as one whole process, default settings; rusage of that one child for its peak."""
    image = workdir / f"cli_input_{size}.png"
    _write_input_png(size, image)
    out_dir = workdir / f"cli_out_{dtype}_{size}"
    command = [sys.executable, "-m", "resshift_core", "upscale", str(image), "-o", str(out_dir), "--unet", paths[0],
               "--autoencoder", paths[1], "--release", release, "--dtype", dtype, "--device", "cpu", "--seed",
               str(seed), "--offline", "--overwrite", "--no-progress"]
    start = time.perf_counter()
    with open(workdir / f"cli_{dtype}_{size}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        tail = (workdir / f"cli_{dtype}_{size}.log").read_text().strip().splitlines()[-6:]
        return {"error": f"exit {process.returncode}: " + " | ".join(tail)}
    from PIL import Image

    with Image.open(out_dir / (image.stem + ".png")) as result:
        record = json.loads(result.text.get("resshift", "{}"))
        shape = [1, len(result.getbands()), result.height, result.width]
    return {"process_seconds": wall, "run_seconds": None, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "output_shape": shape, "dtype": dtype,
            "plan": f"tiling {record.get('tiling')}, unet_tiles {record.get('unet_tiles')}, autoencoder_tiles "
                    f"{record.get('autoencoder_tiles')}", "plan_metadata": record,
            "note": "process_seconds includes start-up and loading; peak from rusage (whole process)"}


def ensure_weights(folder: Path, release: str, seed: int) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT))
    from resshift_core.releases import get_release

    unet = folder / f"bench_unet_{release}.safetensors"  # the names save_random_weights gives
    autoencoder = folder / f"bench_autoencoder_{get_release(release).autoencoder}.safetensors"
    if unet.is_file() and autoencoder.is_file():
        return str(unet), str(autoencoder)
    print(f"writing seeded random weights of {release} (seed {seed}) into {folder} ...", flush=True)
    result = run_child("weights", {"release": release, "weights_seed": seed, "folder": str(folder)}, None)
    if "error" in result:
        raise SystemExit("cannot write the weights: " + result["error"])
    return tuple(result["paths"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of {', '.join(KNOWN)} "
                                                                   f"(default {DEFAULT_CONFIGS})")
    parser.add_argument("--size", default="256", help="input side(s) in px, comma-separated (output: 4x)")
    parser.add_argument("--chop-size", type=int, default=64, help="official: LR patch size (its CLI default is "
                                                                  "512; 64 is its fastest setting that fits)")
    parser.add_argument("--chop-stride", type=int, default=48, help="official: patch stride (its CLI: 448 for 512, "
                                                                    "48 for 64)")
    parser.add_argument("--official", default=os.environ.get("RESSHIFT_OFFICIAL", "/tmp/ResShift"),
                        help="checkout of the official code, branch journal (default $RESSHIFT_OFFICIAL or "
                             "/tmp/ResShift)")
    parser.add_argument("--weights", default="/tmp/sbs_weights", help="folder of the random weights (written when "
                                                                     "absent)")
    parser.add_argument("--release", default="realsr-v3")
    parser.add_argument("--weights-seed", type=int, default=12345, help="seed of the random weights (the bench's)")
    parser.add_argument("--seed", type=int, default=12345, help="noise seed of every run (the CLIs' default)")
    parser.add_argument("--repeat", type=int, default=1, help="processes per configuration and size (interleaved; "
                                                                  "ratios use the medians)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per child process (default none; not for cli-*)")
    parser.add_argument("--workdir", default=None, help="inputs and outputs of the runs (default: a temporary "
                                                        "folder)")
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child_main(*options.child)
        return

    configs = [c.strip() for c in options.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in KNOWN]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(KNOWN)}")
    sizes = [int(s) for s in options.size.split(",")]
    if "official" in configs and not (Path(options.official) / "sampler.py").is_file():
        parser.error(f"no official checkout at {options.official} (give --official DIR holding sampler.py)")
    paths = ensure_weights(Path(options.weights), options.release, options.weights_seed)
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="cpu_sbs_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}
    print(f"weights {paths[0]} + {paths[1]}; workdir {workdir}; {machine}", flush=True)

    results = []
    for size, repeat, config in [(s, r, c) for s in sizes for r in range(options.repeat) for c in configs]:
        spec = {"size": size, "seed": options.seed, "unet": paths[0], "autoencoder": paths[1],
                "release": options.release, "workdir": str(workdir / f"{config}_{size}")}
        print(f"[{time.strftime('%H:%M:%S')}] {config} at {size} px (run {repeat + 1} of {options.repeat}), "
              f"load average {os.getloadavg()[0]:.2f} ...", flush=True)
        if config == "official" and min(size, options.chop_size) <= 32:
            result = {"error": "the official sampler pads every patch to a multiple of 64 px with reflection, "
                               "which needs patch sides over 32 px (size and chop size > 32)"}
        elif config == "official":
            result = run_child("official", {**spec, "official": options.official,
                                            "chop_size": options.chop_size,
                                            "chop_stride": options.chop_stride}, options.timeout)
        elif config.startswith("cli-"):
            result = run_cli(config.split("-")[1], size, paths, options.release, options.seed, workdir,
                             options.timeout)
        else:
            parts = config.split("-")
            tiles = {"untiled": "off", "tiled": "latent"}.get(parts[1]) if len(parts) == 3 else None
            result = run_child("ours", {**spec, "dtype": parts[-1], "tiles": tiles}, options.timeout)
        result = {"config": config, "size": size, "repeat": repeat, **result}
        results.append(result)
        print("    " + (result["error"] if "error" in result else
                        f"run {_fmt(result.get('run_seconds'))} s, load {_fmt(result.get('load_seconds'))} s, "
                        f"process {_fmt(result.get('process_seconds'))} s, peak {result.get('peak_rss_mib')} "
                        f"MiB, out {result.get('output_shape')}, {result.get('plan')}"), flush=True)

    ratios = summarize(results, sizes)
    if options.json:
        Path(options.json).write_text(json.dumps({"machine": machine, "options": vars(options), "weights": paths,
                                                  "results": results, "ratios": ratios}, indent=2, default=str))
        print(f"wrote {options.json}")


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarize(results: list[dict], sizes: list[int]) -> list[dict]:
    print()
    header = (f"{'config':<20} {'size':>5} {'#':>2} {'run s':>9} {'load s':>8} {'proc s':>8} {'peak MiB':>9} "
              f"{'output':>18}  plan")
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['config']:<20} {r['size']:>5} {r['repeat'] + 1:>2}  ERROR {r['error'][:150]}")
            continue
        shape = "x".join(str(v) for v in r.get("output_shape") or [])
        print(f"{r['config']:<20} {r['size']:>5} {r['repeat'] + 1:>2} {_fmt(r.get('run_seconds')):>9} "
              f"{_fmt(r.get('load_seconds')):>8} {_fmt(r.get('process_seconds')):>8} {r.get('peak_rss_mib')!s:>9} "
              f"{shape:>18}  {r.get('plan')}")
    ratios = []
    for size in sizes:
        done = [r for r in results if r["size"] == size and "error" not in r and r.get("run_seconds")]
        seconds = {name: statistics.median(r["run_seconds"] for r in done if r["config"] == name)
                   for name in dict.fromkeys(r["config"] for r in done)}
        plans = {r["config"]: r.get("plan") for r in done}
        official = seconds.get("official")
        for name, value in seconds.items():
            if official and name.startswith("ours"):
                ratios.append({"size": size, "ratio": f"official / {name}", "value": official / value})
        for dtype in ("fp32", "bf16"):
            untiled, tiled = seconds.get(f"ours-untiled-{dtype}"), seconds.get(f"ours-tiled-{dtype}")
            if untiled and tiled:
                same = plans[f"ours-untiled-{dtype}"] == plans[f"ours-tiled-{dtype}"]
                ratios.append({"size": size, "ratio": f"untiled / tiled {dtype}", "value": untiled / tiled,
                               "note": "same plan (nothing tiled at this size): the ratio is noise" if same else ""})
    if ratios:
        print()
        for r in ratios:
            print(f"{r['size']:>5} px  {r['ratio']:<32} {r['value']:.2f}  {r.get('note', '')}")
    return ratios


if __name__ == "__main__":
    main()
