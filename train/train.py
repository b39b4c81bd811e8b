"""Train a ResShift UNet: the official recipes, one process or many (torchrun), resumable exactly.

    python train/train.py --config train/configs/realsr_v3.yaml --run-dir runs/v3 model.autoencoder.path=vq_f4.pth
    torchrun --nproc_per_node=8 train/train.py --config train/configs/realsr_v3.yaml --run-dir runs/v3 --resume auto
    python train/train.py --config train/configs/tiny_cpu.yaml --run-dir runs/tiny        # CPU, ~20 min

Top-down: distributed setup -> networks, EMA, optimizer -> data -> resume -> loop (micro-batches with gradient
accumulation, EMA, logging, validation, checkpoints) -> final checkpoint. Every sample's crop, degradation, timestep
and noise are seeded by (run seed, global sample index), so a global batch is the same for any number of processes
and a resumed run continues the uninterrupted one. Anything in the config can be overridden: ``optim.lr=1e-4``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package from the repository root instead of train/
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "train"

import torch
import torch.distributed as dist
import torch.nn.functional as F

from resshift_core import ResShiftError, ResShiftUNet, Schedule, ScheduleParams, UNetConfig, VQAutoencoder, VQConfig
from resshift_core.runtime import autocast_precision
from resshift_core.sampler import NoiseSource, sample

from . import checkpoint as ckpt
from . import config as cfg
from . import data as datamod
from .ema import EMA
from .losses import LPIPSUnavailable
from .metrics import psnr_y, ssim_y

logger = logging.getLogger("train")


# ---------------------------------------------------------------------------------------------- distributed


class Dist:
    """Rank, world size and device of this process (global rank from the launcher, never the local rank)."""

    def __init__(self, device_arg: str | None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wants_cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if wants_cuda:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if wants_cuda else "gloo")
        self.main = self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def any(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- networks


def unet_config(config: dict) -> UNetConfig:
    values = config["model"]["unet"] or {}
    unknown = sorted(set(values) - set(UNetConfig.__dataclass_fields__))
    if unknown:  # the group is free-form, so check it here: a misspelt key must not fall back to a default
        raise cfg.ConfigError(f"unknown model.unet key(s) {', '.join(unknown)}; UNetConfig's fields are "
                              f"{', '.join(UNetConfig.__dataclass_fields__)}")
    try:
        unet = UNetConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise cfg.ConfigError(f"model.unet: {error}") from error
    if config["model"]["space"] == "pixel" and (unet.in_channels != 3 or unet.out_channels != 3
                                                or unet.lq_size != unet.image_size):
        raise cfg.ConfigError("a pixel-space UNet needs in_channels = out_channels = 3 and lq_size == image_size "
                              "(its LR condition is the bicubic-upsampled image at HR size)")
    return unet


def zero_residual_branches(model: ResShiftUNet) -> ResShiftUNet:
    """Zero the last convolution of every ResBlock, as the official ``UNetModelSwin`` initialises it (its ResBlocks
    wrap that convolution in ``zero_module``), so that every block starts as its skip connection.

    ``ResShiftUNet`` (built for loading released weights) leaves PyTorch's default initialisation there. Without this
    a fresh network starts with a random residual added by each block and learns measurably slower (A/B against the
    official class in the README's Training section).
    """
    from resshift_core.nets.unet import ResBlock

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ResBlock):
                last = module.out_layers[-1]
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()
    return model


def build_unet(config: dict) -> ResShiftUNet:
    """The UNet, initialised as the official class does (seeded by the run seed, identical on every process; ResBlock
    residual branches zeroed), or loaded from ``model.init``."""
    torch.manual_seed(datamod.derive_seed(config["seed"], "init"))
    model = zero_residual_branches(ResShiftUNet(unet_config(config)))
    if config["model"]["init"]:
        from resshift_core.checkpoints import load_unet

        loaded = load_unet(config["model"]["init"])
        model.load_state_dict(loaded.model.state_dict())
    return model


def build_autoencoder(config: dict) -> VQAutoencoder | None:
    if config["model"]["space"] == "pixel":
        return None
    settings = config["model"]["autoencoder"]
    if settings["random_init"]:
        torch.manual_seed(datamod.derive_seed(config["seed"], "autoencoder"))
        model = VQAutoencoder(VQConfig.from_dict(settings["config"] or {}))
    else:
        if not settings["path"]:
            raise cfg.ConfigError(
                "a latent-space recipe needs the frozen VQ autoencoder: pass model.autoencoder.path=/path/to/"
                "autoencoder_vq_f4.pth (python -m resshift_core releases lists where it is downloaded from; the "
                "official weights are under the S-Lab License 1.0, non-commercial)")
        from resshift_core.checkpoints import load_autoencoder

        model = load_autoencoder(settings["path"])
    return model.eval().requires_grad_(False)


def schedule_of(config: dict) -> Schedule:
    return Schedule(ScheduleParams.from_dict(config["diffusion"]))


def learning_rate(config: dict, step: int) -> float:
    """LR of the optimizer step with 0-based index ``step``: linear warm-up, then constant or cosine to lr_min.

    The official trainer sets the LR after each step, so its first step runs at the full LR before the ramp starts;
    here the ramp starts at the first step (lr / warmup_steps), as a warm-up is meant to.
    """
    optim = config["optim"]
    base, warmup = float(optim["lr"]), int(optim["warmup_steps"])
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if optim["schedule"] == "cosine":
        total = max(1, int(config["train"]["max_steps"]) - warmup)
        progress = min(1.0, (step - warmup) / total)
        low = float(optim["lr_min"])
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return base


# ---------------------------------------------------------------------------------------------- loss


class Trainer:
    """Holds the networks and computes the loss of a micro-batch (SPEC §8)."""

    def __init__(self, config: dict, env: Dist):
        self.config = config
        self.env = env
        self.device = env.device
        self.space = config["model"]["space"]
        self.scale = int(config["scale"])
        self.schedule = schedule_of(config)
        self.lpips = None  # first, so that missing LPIPS weights are reported before minutes of network building
        loss = config["loss"]
        if float(loss["lpips_weight"]) > 0:
            if self.space == "pixel":
                raise cfg.ConfigError("LPIPS is for the latent recipes here; set loss.lpips_weight=0")
            from .losses import build_lpips

            self.lpips = build_lpips(loss["lpips_vgg_weights"], loss["lpips_random_backbone"],
                                     datamod.derive_seed(config["seed"], "lpips")).to(self.device)
        self.autoencoder = build_autoencoder(config)
        if self.autoencoder is not None:
            self.autoencoder.to(self.device)
        self.unet = build_unet(config).to(self.device)
        self.ema = EMA(self.unet, config["train"]["ema_decay"], config["train"]["ema_warmup"])
        self.ddp = None
        self.network = self.unet
        if env.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.unet, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.network = self.ddp
        if config["train"]["compile"]:  # compile around DDP, so that DDP still sees every bucket
            self.network = torch.compile(self.network)
        self.precision = config["train"]["precision"]
        if self.precision == "auto":
            self.precision = autocast_precision(str(self.device))
            logger.info("precision auto: %s on %s", self.precision, self.device)
        if self.precision == "fp32" and self.device.type == "cuda":  # fp32 means fp32: no TF32 matmuls or convs
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def upsample(self, lq_m11: torch.Tensor) -> torch.Tensor:
        """Bicubic x scale (torch, align_corners False, no antialias, unclamped), as the samplers do."""
        return F.interpolate(lq_m11, scale_factor=self.scale, mode="bicubic", align_corners=False)

    @torch.no_grad()
    def targets(self, gt_m11: torch.Tensor, lq_m11: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, y, condition): the clean state, the LR state and the UNet's LR input.

        Latent: x0 = encode(gt), y = encode(bicubic(lq)), condition = lq at LR size. Pixel: x0 = gt,
        y = bicubic(lq) at HR size, condition = y.
        """
        up = self.upsample(lq_m11)
        if self.autoencoder is None:
            return gt_m11, up, up
        return self.autoencoder.encode(gt_m11).float(), self.autoencoder.encode(up).float(), lq_m11

    def draws(self, indices, shape, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample timesteps (uniform over 0..T-1) and N(0, 1) noise, seeded by the global sample index."""
        seed = int(self.config["seed"])
        t = torch.tensor([int(datamod.numpy_rng(seed, "t", int(i)).integers(0, steps)) for i in indices],
                         dtype=torch.long)
        noise = torch.stack([torch.randn(shape, generator=datamod.torch_generator(seed, "eps", int(i)))
                             for i in indices])
        return t.to(self.device), noise.to(self.device)

    def loss(self, gt: torch.Tensor, lq: torch.Tensor, indices) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (mean over its samples). gt, lq: (b, 3, H, W) in [0, 1] on the device."""
        gt_m11, lq_m11 = gt * 2 - 1, lq * 2 - 1
        x0, y, condition = self.targets(gt_m11, lq_m11)
        t, noise = self.draws(indices, tuple(x0.shape[1:]), self.schedule.num_steps)
        x_t = self.schedule.q_sample(x0, y, t, noise)
        with self.autocast():
            pred = self.network(self.schedule.scale_input(x_t, t), t, lq=condition)
        pred = pred.float()
        mse = (pred - x0).pow(2).mean(dim=(1, 2, 3))
        terms = {"mse": mse.mean().detach()}
        total = float(self.config["loss"]["mse_weight"]) * mse.mean()
        if self.lpips is not None:
            with self.autocast():
                decoded = self.autoencoder.decode(pred).clamp(-1, 1)  # quantised, straight-through gradient
                perceptual = self.lpips(decoded.float(), gt_m11).view(-1)
            perceptual = torch.nan_to_num(perceptual.float(), nan=0.0)
            terms["lpips"] = perceptual.mean().detach()
            total = total + float(self.config["loss"]["lpips_weight"]) * perceptual.mean()
        return total, terms


# ---------------------------------------------------------------------------------------------- validation


def validation_pairs(config: dict) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, gt (1, 3, S, S), lq) held-out pairs: centre crops degraded like the training data (fixed seeds)."""
    val = config["data"]["validation"]
    if not val["sources"]:
        return []
    refs = datamod.collect_images(val["sources"], "data.validation.sources")[: int(val["count"])]
    scale, size = int(config["scale"]), int(val["size"])
    pairs = []
    for number, ref in enumerate(refs):
        image = ref.load()
        width, height = image.size
        side = min(size, width - width % scale, height - height % scale)
        left, top = (width - side) // 2, (height - side) // 2
        crop = image.crop((left, top, left + side, top + side))
        gt = datamod.pil_to_float(crop)[None]
        kind = config["data"]["degradation"]
        if kind == "pil_bicubic":
            from .degradations import pil_bicubic_downscale

            lq = datamod.pil_to_float(pil_bicubic_downscale(crop, scale))[None]
        elif kind == "bicubic":
            from .degradations import matlab_imresize

            lq = matlab_imresize(gt, 1 / scale).clamp(0, 1)
        else:
            from . import degradations as deg

            settings = deg.RealESRGANSettings.from_dict(config["data"].get("realesrgan") or {})
            rng = datamod.numpy_rng(config["seed"], "validation", number)
            kernels = {k: v[None] for k, v in deg.sample_kernels(rng, settings).items()}
            lq = deg.realesrgan_degrade(gt, kernels, scale, settings, [rng], rng,
                                        datamod.torch_generator(config["seed"], "validation", number))
        pairs.append((Path(ref.location).stem, gt, lq))
    return pairs


@torch.no_grad()
def validate(trainer: Trainer, pairs, run_dir: Path, step: int) -> dict:
    """Full sampling with the EMA model on the held-out pairs; mean PSNR-Y / SSIM-Y (and LPIPS); images saved."""
    from resshift_core.images import tensor_to_pil

    model = trainer.ema.model
    out_dir = run_dir / "validation" / f"step_{step:08d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    psnrs, ssims, lpipses = [], [], []
    for number, (name, gt, lq) in enumerate(pairs):
        gt, lq = gt.to(trainer.device), lq.to(trainer.device)
        lq_m11 = lq * 2 - 1
        up = trainer.upsample(lq_m11)
        if trainer.autoencoder is None:
            y, condition = up, up
        else:
            y, condition = trainer.autoencoder.encode(up).float(), lq_m11

        def denoise(x_in: torch.Tensor, t: torch.Tensor, condition=condition) -> torch.Tensor:
            return model(x_in, t, lq=condition).float()

        z0 = sample(denoise, y, trainer.schedule, NoiseSource.from_seed(number))
        image_m11 = z0 if trainer.autoencoder is None else trainer.autoencoder.decode(z0).float()
        result = (image_m11.clamp(-1, 1) + 1) / 2
        psnrs.append(psnr_y(result, gt, border=trainer.scale).item())
        ssims.append(ssim_y(result, gt, border=trainer.scale).item())
        if trainer.lpips is not None:
            lpipses.append(trainer.lpips(result * 2 - 1, gt * 2 - 1).mean().item())
        tensor_to_pil(result)[0].save(out_dir / f"{name}.png")
    metrics = {"val_psnr_y": sum(psnrs) / len(psnrs), "val_ssim_y": sum(ssims) / len(ssims)}
    if lpipses:
        metrics["val_lpips"] = sum(lpipses) / len(lpipses)
    return metrics


# ---------------------------------------------------------------------------------------------- the run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (train/configs/*.yaml)")
    parser.add_argument("--run-dir", required=True, help="folder for checkpoints, metrics.jsonl, validation images")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (newest valid checkpoint of the run, if any), 'none', or a checkpoint file")
    parser.add_argument("--max-steps", type=int, help="stop at this step with a checkpoint (the LR schedule still "
                                                      "spans train.max_steps; resume to continue)")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes (with a checkpoint); "
                                                          "default: train.max_minutes")
    parser.add_argument("--log-every", type=int, help="metrics.jsonl line every N steps (1: every step)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-lpips", action="store_true", help="train without the LPIPS term (loss.lpips_weight=0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=1e-4 train.global_batch=32")
    return parser.parse_args(argv)


def _open_metrics(run_dir: Path, start_step: int):
    """metrics.jsonl without lines past the resumed step (a resumed run rewrites what it redoes)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= start_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(temporary, path)
    return open(path, "a", encoding="utf-8")


def save_checkpoint(trainer: Trainer, optimizer, run_dir: Path, step: int, config: dict) -> Path:
    payload = {
        "format": ckpt.FORMAT,
        "step": step,
        "unet": ckpt.strip_prefixes(trainer.unet.state_dict()),
        "ema": ckpt.strip_prefixes(trainer.ema.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": ckpt.rng_state(),
        "config_json": json.dumps(config),
    }
    path = ckpt.write_atomic(payload, ckpt.checkpoint_path(run_dir, step))
    ckpt.prune(run_dir, config["train"]["keep_checkpoints"])
    return path


def run(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.log_every is not None:
        overrides.append(f"train.log_every={args.log_every}")
    if args.no_lpips:
        overrides.append("loss.lpips_weight=0")
    config = cfg.load_config(args.config, overrides)
    env = Dist(args.device)
    logging.basicConfig(level=logging.INFO if env.main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(message)s")
    if config["train"]["threads"]:
        torch.set_num_threads(int(config["train"]["threads"]))
    run_dir = Path(args.run_dir)
    if env.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.dump(config), encoding="utf-8")
    per_rank, micro_count = cfg.batch_split(config, env.world_size)
    micro = per_rank // micro_count
    global_batch = int(config["train"]["global_batch"])
    max_steps = int(config["train"]["max_steps"])  # the run's length: the LR schedule ends here
    stop_step = max_steps if args.max_steps is None else min(int(args.max_steps), max_steps)  # this invocation

    refs = datamod.collect_images(config["data"]["sources"])  # data problems are reported before any building
    trainer = Trainer(config, env)
    optim = config["optim"]
    optimizer = torch.optim.AdamW(trainer.unet.parameters(), lr=float(optim["lr"]),
                                  betas=tuple(float(b) for b in optim["betas"]), eps=float(optim["eps"]),
                                  weight_decay=float(optim["weight_decay"]))

    start_step = 0
    resumed = None
    if args.resume == "auto":
        resumed = ckpt.latest_valid(run_dir)
    elif args.resume and args.resume != "none":
        resumed = (Path(args.resume), ckpt.load(args.resume))
    if resumed is not None:
        path, state = resumed
        trainer.unet.load_state_dict(state["unet"])
        trainer.ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        trainer.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng(state["rng"])
        start_step = int(state["step"])
        logger.info("resumed from %s at step %d", path, start_step)

    dataset = datamod.TrainPairs(refs, config)
    sampler = datamod.StepBatchSampler(start_step, stop_step, global_batch, env.rank, env.world_size)
    loader = datamod.make_loader(dataset, sampler, int(config["data"]["workers"]), bool(config["data"]["pin_memory"]))
    positions = list(range(env.rank * per_rank, (env.rank + 1) * per_rank))
    pool = None
    if config["data"]["degradation"] == "realesrgan" and int(config["data"]["pool_size"]) > 0:
        pool = datamod.PairPool(int(config["data"]["pool_size"]), int(config["seed"]), positions)
        if start_step:
            pool.rebuild(start_step, _fresh_pair_factory(dataset, config, micro, global_batch, trainer.device))
    val_pairs = validation_pairs(config) if env.main else []

    metrics_file = _open_metrics(run_dir, start_step) if env.main else None
    writer = None
    if env.main and config["train"]["tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise cfg.ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") \
                from error
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    progress = None
    if env.main and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=stop_step, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.05)

    log_every = max(1, int(config["train"]["log_every"]))
    save_every = int(config["train"]["save_every"])
    val_every = int(config["train"]["val_every"])
    max_minutes = args.max_minutes if args.max_minutes is not None else config["train"]["max_minutes"]
    started = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    loss_sum = torch.zeros((), device=trainer.device)
    terms_sum: dict[str, torch.Tensor] = {}
    step = start_step
    trainer.unet.train()
    stopped_early = False
    for batch in loader:
        data = datamod.degrade_batch(batch, config, micro, trainer.device)
        gt, lq = data["gt"], data["lq"]
        if pool is not None:
            gt, lq = pool.exchange(step, gt, lq)
        indices = [int(i) for i in data["index"]]
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=trainer.device)
        for number in range(micro_count):
            rows = slice(number * micro, (number + 1) * micro)
            last = number == micro_count - 1
            # DDP all-reduces gradients only on the last micro-batch of a step
            sync = contextlib.nullcontext() if last or trainer.ddp is None else trainer.ddp.no_sync()
            with sync:
                loss, terms = trainer.loss(gt[rows], lq[rows], indices[rows])
                trainer.scaler.scale(loss / micro_count).backward()
            step_loss += loss.detach() / micro_count
            for key, value in terms.items():
                terms_sum[key] = terms_sum.get(key, 0) + value / micro_count
        trainer.scaler.unscale_(optimizer)
        clip = optim["grad_clip"]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainer.unet.parameters(), float(clip) if clip else math.inf)
        trainer.scaler.step(optimizer)
        trainer.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        trainer.ema.update(trainer.unet, step)
        window_steps += 1
        loss_sum += step_loss
        if progress is not None:
            progress.update(1)

        if step % log_every == 0 or step == stop_step:
            mean_loss = env.mean(loss_sum / window_steps).item()
            means = {k: env.mean(v / window_steps).item() for k, v in terms_sum.items()}
            elapsed = time.monotonic() - window_start
            record = {"step": step, "loss": mean_loss, **means, "lr": lr, "grad_norm": float(grad_norm),
                      "images_per_s": global_batch * window_steps / max(elapsed, 1e-9),
                      "elapsed_s": time.monotonic() - started}
            if env.main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if writer is not None:
                    for key, value in record.items():
                        if key != "step":
                            writer.add_scalar(f"train/{key}", value, step)
                if progress is not None:
                    progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2e}",
                                         img_s=f"{record['images_per_s']:.1f}")
            loss_sum.zero_()
            terms_sum = {}
            window_start, window_steps = time.monotonic(), 0

        if val_every and step % val_every == 0 and env.main and val_pairs:
            trainer.unet.eval()
            values = validate(trainer, val_pairs, run_dir, step)
            trainer.unet.train()
            metrics_file.write(json.dumps({"step": step, **values}) + "\n")
            metrics_file.flush()
            logger.info("step %d validation: %s", step, values)
            if writer is not None:
                for key, value in values.items():
                    writer.add_scalar(f"val/{key}", value, step)

        time_up = max_minutes is not None and (time.monotonic() - started) / 60 >= float(max_minutes)
        time_up = env.any(time_up)
        if (save_every and step % save_every == 0) or step == stop_step or time_up:
            if env.main:
                path = save_checkpoint(trainer, optimizer, run_dir, step, config)
                logger.info("saved %s", path)
            env.barrier()
        if time_up:
            stopped_early = step < stop_step
            break

    if progress is not None:
        progress.close()
    if metrics_file is not None:
        metrics_file.close()
    if writer is not None:
        writer.close()
    if env.main:
        logger.info("%s at step %d after %.1f min", "stopped (time limit)" if stopped_early else "finished", step,
                    (time.monotonic() - started) / 60)
    env.close()
    return 0


def _fresh_pair_factory(dataset, config: dict, micro: int, global_batch: int, device: torch.device):
    """``fresh(step, position) -> (gt, lq)``: the pair a lane received fresh at a past step (for the pool rebuild).

    Degrades the whole group of that position (its random choices are per group), cached per (step, group).
    """
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def fresh(step: int, position: int):
        first = position - position % micro
        key = (step, first)
        if key not in cache:
            indices = [step * global_batch + first + k for k in range(micro)]
            items = [dataset[i] for i in indices]
            batch = {name: torch.stack([item[name] for item in items]) for name in items[0] if name != "index"}
            batch["index"] = torch.tensor(indices)
            out = datamod.degrade_batch(batch, config, micro, device)
            cache[key] = (out["gt"], out["lq"])
        gt, lq = cache[key]
        return gt[position - first].clone(), lq[position - first].clone()

    return fresh


def main(argv=None) -> int:
    """Command-line entry: configuration, data, weight-file and LPIPS problems are one error line and exit status 2."""
    try:
        return run(argv)
    except (cfg.ConfigError, datamod.DataError, LPIPSUnavailable, ResShiftError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
