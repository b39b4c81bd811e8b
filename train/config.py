"""Training configuration: YAML recipes with inheritance and command-line overrides.

A recipe is a nested mapping (see ``train/configs/*.yaml``). A file may name a ``base:`` recipe (a path relative to
itself) whose values it overrides key by key. Any value can then be overridden on the command line with dotted keys,
``optim.lr=1e-4 data.batch_size=16``; the value is parsed as YAML (``true``, ``[1, 2]``, ``null`` ...).

Every key a run reads is listed in :data:`DEFAULTS`, so a misspelt override is an error, not a silent no-op.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

# The full set of keys with their defaults. Recipes override them; nothing outside this tree is accepted.
DEFAULTS: dict = {
    "name": "run",
    "seed": 123456,
    "model": {
        "space": "latent",            # "latent" (frozen VQ autoencoder) or "pixel" (the network works on images)
        "unet": {},                   # UNetConfig fields (resshift_core.UNetConfig); missing ones take its defaults
        "autoencoder": {              # frozen VQ autoencoder of the latent recipes
            "path": None,             # file of the official autoencoder_vq_f4.pth (or its .safetensors)
            "name": "vq-f4",          # written into exported files
            "random_init": False,     # tests / speed checks only: a seeded random autoencoder instead of a file
            "config": {},             # VQConfig fields used with random_init
        },
        "init": None,                 # optional UNet file to start from (official .pth or our .safetensors)
    },
    "diffusion": {                    # resshift_core.ScheduleParams
        "steps": 4, "kappa": 2.0, "power": 0.3, "min_noise_level": 0.2, "etas_end": 0.99,
    },
    "scale": 4,
    "loss": {
        "mse_weight": 1.0,
        "lpips_weight": 0.0,          # > 0: LPIPS(VGG) between the decoded x0 prediction and the GT
        "lpips_vgg_weights": None,    # torchvision vgg16 weights file; default: torch hub's cache location
        "lpips_random_backbone": False,  # tests only: LPIPS with a seeded random VGG (no weights needed)
    },
    "optim": {
        "lr": 5e-5,
        "lr_min": 2e-5,
        "schedule": "constant",       # "constant" or "cosine" (after the warm-up, down to lr_min at the last step)
        "warmup_steps": 5000,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "grad_clip": None,            # max global gradient norm, or null (the official recipes do not clip)
    },
    "train": {
        "max_steps": 400000,
        "max_minutes": None,          # stop cleanly with a checkpoint after this many minutes of one invocation
                                      # (--max-minutes overrides it; resume continues towards max_steps)
        "global_batch": 96,           # samples per optimizer step, all processes together
        "micro_batch": 12,            # samples per forward/backward; the rest is gradient accumulation
        "precision": "fp16",          # "fp16" (autocast + GradScaler), "bf16" (autocast), "fp32", or "auto": fp16 on
                                      # CUDA, bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), fp32 on other CPUs
        "ema_decay": 0.999,
        "ema_warmup": False,          # decay min(ema_decay, (1 + n) / (10 + n)) at update n (short runs)
        "compile": False,             # torch.compile the UNet
        "threads": None,              # torch CPU threads per process (null: torch's default)
        "save_every": 10000,
        "keep_checkpoints": 3,
        "log_every": 100,
        "val_every": 10000,
        "tensorboard": False,
    },
    "data": {
        "sources": [],                # list of sources, see train/data.py (folder, imagenet, list, skimage)
        "degradation": "realesrgan",  # "realesrgan", "bicubic" (Matlab-style antialiased) or "pil_bicubic"
        "gt_size": 256,               # HR crop side
        "rescale_gt": True,           # realesrgan: crop max(min(h, w), gt_size) square and resize it to gt_size
        "flip": True,                 # random horizontal flip
        "dihedral": False,            # random flips and 90-degree rotations (bicubic recipes)
        "channel_shuffle": False,     # random RGB permutation of each pair (bicubic kinds): every hue in training
        "smallest_side": None,        # bicubic: resize the short side to this first (albumentations SmallestMaxSize)
        "workers": 4,
        "pin_memory": True,
        "pool_size": 10,              # realesrgan training-pair pool, in samples per batch position (0: off)
        "realesrgan": {},             # overrides of train.degradations.RealESRGANSettings
        "validation": {
            "sources": [],            # held-out images
            "size": 256,              # centre crop side (HR pixels), a multiple of the model's padding unit
            "count": 8,
        },
    },
}


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message says which key and what was expected."""


def _merge(base: dict, override: Mapping, where: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "base":
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, f"{where}{key}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_known(values: Mapping, reference: Mapping, where: str = "") -> None:
    """Raise for keys that DEFAULTS does not know (free-form blocks are the ones whose default is an empty dict)."""
    for key, value in values.items():
        if key not in reference:
            raise ConfigError(f"unknown config key '{where}{key}'; known keys here: {', '.join(sorted(reference))}")
        if isinstance(reference[key], dict) and reference[key] and isinstance(value, Mapping):
            _check_known(value, reference[key], f"{where}{key}.")


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file with its ``base:`` chain resolved (not yet merged with DEFAULTS)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; recipes live in train/configs/")
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path}' must hold a mapping of settings, found {type(values).__name__}")
    base = values.get("base")
    if base:
        return _merge(read_recipe(path.parent / base), values, "")
    return dict(values)


def parse_override(text: str) -> tuple[list[str], object]:
    """'optim.lr=1e-4' -> (['optim', 'lr'], 0.0001)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string; treat number-like strings as numbers
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return keys, value


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node, reference = config, DEFAULTS
        for depth, key in enumerate(keys[:-1]):
            if reference is not None and isinstance(reference, dict) and reference and key not in reference:
                raise ConfigError(f"unknown config key '{'.'.join(keys[:depth + 1])}' in override '{text}'")
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{'.'.join(keys[:depth + 1])}' is a value, not a group, in override '{text}'")
            reference = reference.get(key) if isinstance(reference, dict) else None
        last = keys[-1]
        if isinstance(reference, dict) and reference and last not in reference:
            raise ConfigError(f"unknown config key '{'.'.join(keys)}' in override '{text}'; known keys here: "
                              f"{', '.join(sorted(reference))}")
        node[last] = value
    return config


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict:
    """DEFAULTS <- recipe file (with its bases) <- command-line overrides, checked against the known keys."""
    recipe = read_recipe(path) if path else {}
    _check_known(recipe, DEFAULTS)
    config = _merge(DEFAULTS, recipe, "")
    config = apply_overrides(config, overrides)
    _check_known(config, DEFAULTS)
    validate(config)
    return config


def validate(config: dict) -> None:
    """Cross-field checks with messages that say what to change."""
    train = config["train"]
    if config["model"]["space"] not in ("latent", "pixel"):
        raise ConfigError(f"model.space must be 'latent' or 'pixel', got {config['model']['space']!r}")
    if train["precision"] not in ("fp16", "bf16", "fp32", "auto"):
        raise ConfigError(f"train.precision must be fp16, bf16, fp32 or auto, got {train['precision']!r}")
    if config["optim"]["schedule"] not in ("constant", "cosine"):
        raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', got {config['optim']['schedule']!r}")
    minutes = train["max_minutes"]
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise ConfigError(f"train.max_minutes must be a positive number of minutes or null (no time limit), "
                          f"got {minutes!r}")
    if int(train["global_batch"]) < 1 or int(train["micro_batch"]) < 1:
        raise ConfigError("train.global_batch and train.micro_batch must be positive")
    if config["data"]["degradation"] not in ("realesrgan", "bicubic", "pil_bicubic"):
        raise ConfigError(f"data.degradation must be realesrgan, bicubic or pil_bicubic, "
                          f"got {config['data']['degradation']!r}")
    if int(config["data"]["gt_size"]) % int(config["scale"]):
        raise ConfigError(f"data.gt_size ({config['data']['gt_size']}) must be a multiple of scale ({config['scale']})")


def batch_split(config: dict, world_size: int) -> tuple[int, int]:
    """(samples per process, micro-batches per process) for a world size; errors say how to fix the numbers."""
    global_batch, micro = int(config["train"]["global_batch"]), int(config["train"]["micro_batch"])
    if global_batch % world_size:
        raise ConfigError(f"train.global_batch={global_batch} is not divisible by the {world_size} processes; "
                          f"choose a multiple of {world_size}")
    per_rank = global_batch // world_size
    micro = min(micro, per_rank)
    if per_rank % micro:
        raise ConfigError(f"each of the {world_size} processes gets {per_rank} samples, not a multiple of "
                          f"train.micro_batch={micro}; change train.micro_batch or train.global_batch")
    return per_rank, per_rank // micro


def dump(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)
