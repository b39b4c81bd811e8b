"""Safe checkpoint loading: read -> canonicalise -> detect -> infer hyper-parameters -> build -> attach release.

* ``.safetensors`` files are read with safetensors; ``.pth`` / ``.pt`` / ``.ckpt`` only through
  ``torch.load(..., weights_only=True)``: a pickle that carries code is refused (never executed).
* Wrappers (``state_dict``, ``params_ema``, ``model``, ``ema``) are unwrapped; ``module.`` and ``_orig_mod.`` prefixes
  (DDP, torch.compile) are stripped.
* The Swin buffers ``attn_mask`` / ``relative_position_index`` are accepted when present and recomputed when absent.
* A UNet and an autoencoder are told apart by their keys; hyper-parameters come from tensor shapes, so any member of
  the family loads, including reduced test models.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnknownCheckpointError,
    UnknownScheduleError,
    UnsafeCheckpointError,
    WrongModelKindError,
)
from .models import AUTOENCODER_KIND, UNET_KIND, CheckpointIdentity, ModelDescriptor
from .nets.unet import ResShiftUNet, UNetConfig
from .nets.vqgan import VQAutoencoder, VQConfig
from .releases import RELEASES, Release, autoencoder_for_file_name, get_release, release_for_file_name
from .schedule import ScheduleParams

logger = logging.getLogger(__name__)

METADATA_PREFIX = "resshift."
FORMAT_VERSION = "1"
_WRAPPER_KEYS = ("state_dict", "params_ema", "ema", "model", "params", "net")
_PREFIXES = ("module.", "_orig_mod.")
# Swin buffers stored in some checkpoints: recomputed from the architecture, not learnt (not parameters).
BUFFER_SUFFIXES = (".attn_mask", ".relative_position_index")


@dataclass
class RawCheckpoint:
    """Tensors of one file after unwrapping, plus what the file says about itself."""

    path: Path | None
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def _describe(path: Path) -> str:
    return f"'{path}'"


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read a checkpoint file safely and return its canonical tensors (wrappers and prefixes removed).

    Raises:
        CheckpointError: missing file; CorruptCheckpointError: truncated / damaged;
        UnsafeCheckpointError: a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {_describe(path)} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {_describe(path)} is empty (0 bytes); download it again")
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        tensors, metadata = _read_safetensors(path)
    else:
        tensors, metadata = _read_torch_file(path), {}
    return RawCheckpoint(path, canonicalize(tensors, path), metadata)


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise CorruptCheckpointError(
            f"checkpoint {_describe(path)} is not a readable safetensors file ({error}); it is probably truncated "
            f"or damaged: download it again") from error
    return tensors, metadata


def _read_torch_file(path: Path) -> Mapping:
    try:
        # torch.serialization.load, not torch.load: hosts replace torch.load with checks of their own (the WebUI's
        # rejects the records recent PyTorch writes and returns None); weights_only is our safety.
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = _foreign_pickle_globals(path)
        if foreign:  # the pickle names Python objects to call: code, not data
            raise UnsafeCheckpointError(
                f"checkpoint {_describe(path)} is a pickle that needs to run code to load ({', '.join(foreign[:3])}), "
                f"which this project never does: it could be malicious. Use the official file, or a .safetensors "
                f"conversion of a trusted file.") from error
        raise CorruptCheckpointError(f"{_describe(path)} is not a readable PyTorch checkpoint (it is damaged, "
                                     f"truncated or another kind of file): download or export it again") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, struct.error) as error:
        raise CorruptCheckpointError(
            f"checkpoint {_describe(path)} is truncated or damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__});"
            f" download it again") from error


_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "numpy.core.multiarray._reconstruct",
                         "numpy.dtype", "numpy.ndarray", "builtins.set", "builtins.frozenset")


def _foreign_pickle_globals(path: Path) -> list[str]:
    """Globals (importable callables) that a pickle names, other than the tensor-rebuilding ones torch uses.

    Only parses the opcode stream (pickletools), never executes it. Reads ``*/data.pkl`` of a zip checkpoint or the
    raw file of a legacy one.
    """
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    names, strings = [], []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str):
                strings.append(argument)
    except Exception:  # a damaged stream: whatever was parsed before the damage still counts
        pass
    return [n for n in dict.fromkeys(names) if not n.startswith(_SAFE_GLOBAL_PREFIXES)]


def canonicalize(obj, path: Path | None = None) -> dict[str, torch.Tensor]:
    """Unwrap training wrappers and strip DDP / torch.compile prefixes; keep the tensors only."""
    where = _describe(path) if path else "the checkpoint"
    for _ in range(3):  # wrappers can nest, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()) and not any(k in obj for k in _WRAPPER_KEYS
                                                                               if isinstance(obj.get(k), Mapping)):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise UnknownCheckpointError(f"{where} holds a {type(obj).__name__}, not a dictionary of tensors")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        tensors[key] = value
    if not tensors:
        raise UnknownCheckpointError(f"{where} contains no tensors")
    return tensors


def detect_kind(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """'unet', 'autoencoder' or None, from the keys."""
    if "time_embed.0.weight" in tensors and "input_blocks.0.0.weight" in tensors:
        return UNET_KIND
    if "encoder.conv_in.weight" in tensors and "quantize.embedding.weight" in tensors:
        return AUTOENCODER_KIND
    return None


def _indices(tensors: Mapping, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in tensors if (m := regex.match(key))})


def _encoder_levels(tensors: Mapping[str, torch.Tensor], model_channels: int) -> tuple[list, list, list]:
    """Walk the encoder: a Downsample ('op') closes a level; other blocks are ResBlocks of the current level.
    Returns (channel_mult, num_res_blocks, has_swin) per level."""
    channel_mult, num_res_blocks, swin_levels = [], [], []
    count, level_mult, level_has_swin = 0, None, False
    for index in _indices(tensors, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in tensors:
            channel_mult.append(level_mult)
            num_res_blocks.append(count)
            swin_levels.append(level_has_swin)
            count, level_has_swin = 0, False
            continue
        out_ch = tensors[f"input_blocks.{index}.0.out_layers.3.weight"].shape[0]
        level_mult = out_ch // model_channels
        if count == 0:
            level_has_swin = f"input_blocks.{index}.1.patch_embed.proj.weight" in tensors
        count += 1
    channel_mult.append(level_mult)
    num_res_blocks.append(count)
    swin_levels.append(level_has_swin)
    return channel_mult, num_res_blocks, swin_levels


def _swin_window(tensors: Mapping[str, torch.Tensor], prefix: str) -> int:
    """The window of a Swin layer, from the size of its relative position bias table ((2w - 1)^2 rows)."""
    rows = tensors[prefix + "blocks.0.attn.relative_position_bias_table"].shape[0]
    return (int(round(math.sqrt(rows))) + 1) // 2


def _construction_size(tensors: Mapping[str, torch.Tensor], num_res_blocks: list, swin_levels: list,
                       image_size_hint: int | None, space_to_depth: int) -> tuple[int, int]:
    """(window_size, image_size on the network's grid): the windows level by level, and the construction size from
    the stored shift masks, else from a level whose window shrank to its own size, else the hint or the released
    layout (the deepest level exactly one window)."""
    num_levels = len(num_res_blocks)
    encoder_swin_prefix, index = {}, 1
    for level in range(num_levels):
        if swin_levels[level]:
            encoder_swin_prefix[level] = f"input_blocks.{index}.1."
        index += num_res_blocks[level] + (1 if level < num_levels - 1 else 0)
    windows = {level: _swin_window(tensors, p) for level, p in encoder_swin_prefix.items()}
    windows[num_levels - 1] = _swin_window(tensors, "middle_block.1.")  # the middle block sits at the deepest level
    window_size = max(windows.values())
    for level, prefix in sorted(encoder_swin_prefix.items()):
        mask = tensors.get(prefix + "blocks.1.attn_mask")
        if mask is not None:
            return window_size, 2 ** level * windows[level] * int(round(math.sqrt(mask.shape[0])))
    for level, window in sorted(windows.items()):
        if window < window_size:  # a level smaller than the window shrank it to its own size
            return window_size, 2 ** level * window
    if image_size_hint is None:
        logger.info("no shift masks in the UNet file; assuming construction size %d (released layout)",
                    window_size * 2 ** (num_levels - 1))
        return window_size, window_size * 2 ** (num_levels - 1)
    return window_size, image_size_hint // space_to_depth


def infer_unet_config(tensors: Mapping[str, torch.Tensor], image_size_hint: int | None = None,
                      space_to_depth: int = 1) -> UNetConfig:
    """UNet hyper-parameters from tensor shapes (channels, levels, heads, windows, LR path, mask input).

    The construction size ``image_size`` is read from the stored shift masks; without them it falls back to
    ``image_size_hint`` or to the size at which the deepest level is exactly one window (the released layout).
    ``space_to_depth`` cannot be told from shapes (a 48-channel output may be 3 channels unshuffled by 4): files from
    our trainer record it in their metadata, released files have none (1).
    """
    cells = space_to_depth ** 2
    model_channels = tensors["time_embed.0.weight"].shape[1]
    out_rows, in_rows = tensors["out.2.weight"].shape[0], tensors["input_blocks.0.0.weight"].shape[1]
    if out_rows % cells or in_rows % cells:
        raise ValueError(f"space_to_depth {space_to_depth} does not fit its channels (output {out_rows}, input "
                         f"{in_rows}: not multiples of {cells})")
    out_channels, first_in = out_rows // cells, in_rows // cells
    stages = len(_indices(tensors, r"feature_extractor\.(\d+)\.weight$"))
    if stages:
        cond_mask = tensors["feature_extractor.0.weight"].shape[1] == 4
        in_channels = first_in - tensors[f"feature_extractor.{3 * stages - 1}.op.weight"].shape[0]
    else:
        in_channels = out_channels
        cond_mask = first_in - in_channels == 4
    channel_mult, num_res_blocks, swin_levels = _encoder_levels(tensors, model_channels)
    swin = "middle_block.1."
    embed_dim = tensors[swin + "patch_embed.proj.weight"].shape[0]
    window_size, image_size = _construction_size(tensors, num_res_blocks, swin_levels, image_size_hint,
                                                 space_to_depth)
    # Sizes so far are on the network's (space-to-depth) grid; image_size is the input's.
    attention_resolutions = tuple(image_size // 2 ** level for level in range(len(channel_mult))
                                  if swin_levels[level])
    image_size *= space_to_depth
    emb_out = tensors["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    res_out = tensors["input_blocks.1.0.out_layers.3.weight"].shape[0]
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
        attention_resolutions=attention_resolutions, image_size=image_size, lq_size=image_size * 2 ** stages,
        cond_mask=cond_mask, swin_depth=len(_indices(tensors, r"middle_block\.1\.blocks\.(\d+)\.")),
        swin_embed_dim=embed_dim, num_heads=tensors[swin + "blocks.0.attn.relative_position_bias_table"].shape[1],
        window_size=window_size, mlp_ratio=tensors[swin + "blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        patch_norm=swin + "patch_embed.norm.weight" in tensors, use_scale_shift_norm=emb_out == 2 * res_out,
        space_to_depth=space_to_depth)


def infer_vq_config(tensors: Mapping[str, torch.Tensor]) -> VQConfig:
    """Autoencoder hyper-parameters from tensor shapes."""
    ch = tensors["encoder.conv_in.weight"].shape[0]
    levels = _indices(tensors, r"encoder\.down\.(\d+)\.")
    ch_mult, num_res_blocks = [], []
    for level in levels:
        blocks = _indices(tensors, rf"encoder\.down\.{level}\.block\.(\d+)\.")
        num_res_blocks.append(len(blocks))
        ch_mult.append(tensors[f"encoder.down.{level}.block.{blocks[-1]}.conv2.weight"].shape[0] // ch)
    embedding = tensors["quantize.embedding.weight"]
    attn_levels = tuple(level for level in levels if f"encoder.down.{level}.attn.0.q.weight" in tensors)
    return VQConfig(attn_levels=attn_levels, embed_dim=embedding.shape[1], n_embed=embedding.shape[0],
                    z_channels=tensors["encoder.conv_out.weight"].shape[0], ch=ch, ch_mult=tuple(ch_mult),
                    num_res_blocks=tuple(num_res_blocks), in_channels=tensors["encoder.conv_in.weight"].shape[1],
                    out_ch=tensors["decoder.conv_out.weight"].shape[0])


def load_into(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path | None = None) -> None:
    """Strict load that fills missing Swin buffers from the model and ignores extra buffers.

    Raises UnknownCheckpointError naming the first missing / unexpected / mis-shaped tensors.
    """
    expected = model.state_dict()
    tensors = dict(tensors)
    for key in list(tensors):
        if key not in expected and key.endswith(BUFFER_SUFFIXES):
            del tensors[key]  # e.g. a mask for a size this build does not shift at; recomputed anyway
    for key, value in expected.items():
        if key not in tensors and key.endswith(BUFFER_SUFFIXES):
            tensors[key] = value
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong_shape = [f"{k}: file {tuple(tensors[k].shape)} vs network {tuple(v.shape)}"
                   for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        where = _describe(path) if path else "the checkpoint"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with other shapes (e.g. {'; '.join(wrong_shape[:3])})")
        raise UnknownCheckpointError(f"{where} does not fit the network inferred from it: {', '.join(parts)}")
    model.load_state_dict(tensors, strict=True)


def _wrong_kind_message(path: Path | None, found: str, wanted: str) -> str:
    what = {UNET_KIND: "the ResShift UNet (diffusion network)", AUTOENCODER_KIND: "the VQ autoencoder"}
    where = _describe(path) if path else "this state dict"
    return (f"{where} looks like {what[found]}, but {what[wanted]} was expected here: "
            f"give it as {{arg:{found}}} instead")


def _unknown_message(path: Path | None, tensors: Mapping) -> str:
    sample = ", ".join(list(tensors)[:4])
    where = _describe(path) if path else "this state dict"
    return (f"{where} is neither a ResShift UNet nor its VQ autoencoder (first keys: {sample}). Expected an "
            f"official ResShift/SinSR file such as resshift_realsrx4_s4_v3.pth or autoencoder_vq_f4.pth, or a "
            f".safetensors file converted from one")


def _metadata_json(metadata: Mapping[str, str], key: str):
    value = metadata.get(METADATA_PREFIX + key)
    return None if value is None else json.loads(value)


def _metadata_is_latent(metadata: Mapping[str, str]) -> bool:
    """Whether a UNet file's metadata puts it in latent space (the default: every release is latent)."""
    return metadata.get(METADATA_PREFIX + "space", "latent") != "pixel"


def _infer_config(raw: RawCheckpoint, kind: str) -> UNetConfig | VQConfig:
    try:
        if kind == UNET_KIND:
            try:
                meta_config = _metadata_json(raw.metadata, "unet_config") or {}
            except ValueError:
                meta_config = None
            if not isinstance(meta_config, dict):  # hints only: a damaged record must not stop the shapes' reading
                logger.warning("%s: its resshift.unet_config metadata is not a JSON object; it is ignored",
                               raw.path or "the state dict")
                meta_config = {}
            return infer_unet_config(raw.tensors, image_size_hint=meta_config.get("image_size"),
                                     space_to_depth=int(meta_config.get("space_to_depth", 1)))
        return infer_vq_config(raw.tensors)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as error:
        what = "UNet" if kind == UNET_KIND else "autoencoder"
        problem = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise UnknownCheckpointError(f"{_describe(raw.path) if raw.path else 'this state dict'} has {what} keys but "
                                     f"an unexpected layout ({problem}); it is not a ResShift {what} this "
                                     f"project knows") from error


def _architecture_matches(release: Release, config: UNetConfig) -> bool:
    expected = release.unet
    return ((expected.in_channels, expected.model_channels, expected.channel_mult, expected.feature_stages,
             expected.cond_mask) == (config.in_channels, config.model_channels, config.channel_mult,
                                     config.feature_stages, config.cond_mask))


def identify_raw(raw: RawCheckpoint, release: str | Release | None = None) -> CheckpointIdentity:
    """Identify canonical tensors: kind, architecture, release (argument > metadata > official file name),
    schedule (argument's release > metadata > identified release) and what the metadata says of itself."""
    kind = detect_kind(raw.tensors)
    if kind is None:
        return CheckpointIdentity(None, None, raw.path, raw.metadata)
    config = _infer_config(raw, kind)
    meta = raw.metadata
    file_name = raw.path.name if raw.path is not None else ""
    if kind == AUTOENCODER_KIND:
        found = autoencoder_for_file_name(file_name) if file_name else None
        name = meta.get(METADATA_PREFIX + "autoencoder") or (found.name if found else None)
        return CheckpointIdentity(kind, config, raw.path, meta, autoencoder=name)

    found, source = None, None
    if isinstance(release, Release):
        found, source = release, "argument"
    elif release:
        found, source = get_release(release), "argument"
    elif meta.get(METADATA_PREFIX + "release") and meta[METADATA_PREFIX + "release"].replace("_", "-").lower() in \
            RELEASES:
        found, source = get_release(meta[METADATA_PREFIX + "release"]), "file metadata"
    if found is None and file_name:
        found = release_for_file_name(file_name)
        source = "file name" if found else None
    schedule_values = _metadata_json(meta, "schedule")
    if schedule_values and source != "argument":
        schedule = ScheduleParams.from_dict(schedule_values)
    else:
        schedule = found.schedule if found else None
    one_step = found.one_step if found else meta.get(METADATA_PREFIX + "one_step") == "true"
    latent_space = _metadata_is_latent(meta)
    scale = found.scale if found else (int(meta[METADATA_PREFIX + "scale"]) if METADATA_PREFIX + "scale" in meta
                                       else None)
    task = found.task if found else meta.get(METADATA_PREFIX + "task") or ("inpaint" if config.cond_mask else "sr")
    autoencoder = (found.autoencoder if found else meta.get(METADATA_PREFIX + "autoencoder")) if latent_space else None
    tile_size = int(meta[METADATA_PREFIX + "tile_size"]) if METADATA_PREFIX + "tile_size" in meta else None
    matches = _architecture_matches(found, config) if found else None
    if matches is False:
        logger.warning("%s was taken for release %s but its architecture differs from that release's; the "
                       "release's schedule is used anyway", raw.path or "the state dict", found.name)
    return CheckpointIdentity(kind, config, raw.path, meta, found, source, schedule, one_step, scale, task,
                              latent_space, autoencoder, tile_size, matches)


def as_raw_checkpoint(source: str | os.PathLike | Mapping, name: str | None = None) -> RawCheckpoint:
    """A file path (read safely) or a state dict a host already holds (canonicalised) as canonical tensors."""
    if isinstance(source, Mapping):
        path = Path(name) if name else None
        return RawCheckpoint(path, canonicalize(source, path), {})
    return read_checkpoint(source)


def identify_checkpoint(source: str | os.PathLike | Mapping, *, release: str | Release | None = None,
                        name: str | None = None) -> CheckpointIdentity:
    """What a checkpoint file (or a state dict) is: the one place that decides kind, architecture and release.

    Args:
        source: a file path (``.safetensors``, or ``.pth`` read with ``weights_only``), or a state dict.
        release: a release name the user gives (wins over metadata and file name).
        name: for a state dict, the file name it came from (identifies official files by name).
    Raises:
        CheckpointError subclasses for unreadable, unsafe or damaged files.
    """
    return identify_raw(as_raw_checkpoint(source, name), release)


def check_kind(raw: RawCheckpoint, kind: str | None, wanted: str | None) -> None:
    """Raise the clear error for a file of no known kind, or of the other kind than ``wanted``."""
    if kind is None:
        raise UnknownCheckpointError(_unknown_message(raw.path, raw.tensors))
    if wanted is not None and kind != wanted:
        raise WrongModelKindError(_wrong_kind_message(raw.path, kind, wanted), found=kind, expected=wanted)


def load_model(source: str | os.PathLike | Mapping, *, expect: str | None = None,
               release: str | Release | None = None, name: str | None = None) -> ModelDescriptor:
    """Read, identify, build and load one network.

    Args:
        source: a file (``.safetensors``, or ``.pth`` read with ``weights_only``) or a state dict.
        expect: ``"unet"`` or ``"autoencoder"``: a file of the other kind raises
            :class:`~resshift_core.errors.WrongModelKindError` saying where it belongs.
        release: the release of a UNet whose file does not say it (its schedule cannot be read from weights).
        name: for a state dict, the file name it came from.
    Raises:
        CheckpointError subclasses: unreadable, unsafe, damaged, wrong kind or unknown files.
    """
    if expect not in (None, UNET_KIND, AUTOENCODER_KIND):
        raise ValueError(f"expect must be 'unet', 'autoencoder' or None, got {expect!r}")
    raw = as_raw_checkpoint(source, name)
    check_kind(raw, detect_kind(raw.tensors), expect)
    identity = identify_raw(raw, release)
    network: torch.nn.Module
    if identity.kind == UNET_KIND:
        network = ResShiftUNet(identity.config)
    else:
        network = VQAutoencoder(identity.config)
    load_into(network, raw.tensors, raw.path)
    return ModelDescriptor(identity, network.eval().requires_grad_(False))


def load_unet(path: str | os.PathLike, release: str | Release | None = None) -> ModelDescriptor:
    """Load a UNet file; returns its :class:`~resshift_core.models.ModelDescriptor` (``.model`` is the network).

    The schedule is ``None`` when it cannot be known (an unknown file without metadata); see
    :func:`resolve_schedule`.
    """
    return load_model(path, expect=UNET_KIND, release=release)


def expected_payload_bytes(config: UNetConfig | VQConfig) -> int:
    """Bytes of tensor data in a float32 checkpoint of this architecture (buffers included): an official file is
    this plus a little container overhead, which identifies released files by size."""
    with torch.device("meta"):
        model = ResShiftUNet(config) if isinstance(config, UNetConfig) else VQAutoencoder(config)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def size_matches(path: Path, config: UNetConfig | VQConfig) -> bool:
    """True when the file's size is the architecture's payload plus at most 2% (+1 MiB) of container overhead."""
    payload = expected_payload_bytes(config)
    size = Path(path).stat().st_size
    return payload <= size <= payload * 1.02 + (1 << 20)


def load_autoencoder(path: str | os.PathLike) -> VQAutoencoder:
    """Load a VQ autoencoder file; returns the network (raises WrongModelKindError for a UNet file)."""
    return load_model(path, expect=AUTOENCODER_KIND).network


def resolve_schedule(loaded) -> ScheduleParams:
    """The schedule of a loaded UNet (a descriptor or identity), or a clear error asking for the release name."""
    if loaded.schedule is not None:
        return loaded.schedule
    where = _describe(loaded.path) if loaded.path else "this UNet"
    raise UnknownScheduleError(
        f"the noise schedule of {where} cannot be read from its weights (v1 and v3 have the same shapes but 15 "
        f"vs 4 steps). Say which release it is (one of: {', '.join(RELEASES)}), e.g. {{set:release=realsr-v3}}, "
        f"or convert it once with `python -m resshift_core convert IN OUT --release NAME`",
        choices=tuple(RELEASES))


@dataclass(frozen=True)
class OwnUNetFile:
    """What the header of a UNet file written by :func:`save_unet` without a release says (a model of one's own,
    e.g. from ``train/export.py``): enough for a host to list it, read without loading any tensor.

    Attributes:
        path: the file.
        scale: output / input size.
        latent_space: False for a pixel-space model (no autoencoder).
        autoencoder: the autoencoder it needs (key of ``AUTOENCODERS``), None in pixel space or when not recorded.
    """

    path: Path
    scale: int
    latent_space: bool
    autoencoder: str | None


def read_own_unet_header(path: str | os.PathLike) -> OwnUNetFile | None:
    """The :class:`OwnUNetFile` of a .safetensors UNet of one's own; None for any other file (a release, a converted
    release, an autoencoder, a .pth, a file without our metadata or with a scale that is not recorded, an unreadable
    file). Only the file's header is read."""
    from safetensors import safe_open

    path = Path(path)
    try:
        if not _looks_like_safetensors(path):
            return None
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - a host's file scan must not fail on one bad file; loading it will say why
        return None
    if meta.get(METADATA_PREFIX + "kind") != UNET_KIND or meta.get(METADATA_PREFIX + "release"):
        return None
    try:
        scale = int(meta[METADATA_PREFIX + "scale"])
    except (KeyError, ValueError):
        return None
    latent_space = _metadata_is_latent(meta)
    autoencoder = meta.get(METADATA_PREFIX + "autoencoder") if latent_space else None
    return OwnUNetFile(path, scale, latent_space, autoencoder) if scale >= 1 else None


def save_unet(model: ResShiftUNet, path: str | os.PathLike, *, release: str | None = None,
              schedule: ScheduleParams | None = None, one_step: bool = False, scale: int | None = None,
              latent_space: bool = True, autoencoder: str | None = None, tile_size: int | None = None,
              task: str | None = None) -> Path:
    """Write a UNet as .safetensors with what is needed to run it without further flags in the metadata.

    Args:
        release: the release it is (its schedule, scale, autoencoder and one-step flag are recorded too).
        schedule, one_step, scale, task: for a UNet of no release (a model of one's own).
        latent_space: False for a pixel-space model (it needs no autoencoder).
        autoencoder: name of the autoencoder it was trained with (key of ``AUTOENCODERS``).
        tile_size: the UNet tile to use by default (latent pixels), e.g. the training crop of a model whose
            GroupNorm statistics were learnt on crops.
    """
    from safetensors.torch import save_file

    metadata = {METADATA_PREFIX + "format_version": FORMAT_VERSION, METADATA_PREFIX + "kind": UNET_KIND,
                METADATA_PREFIX + "unet_config": json.dumps(model.config.to_dict()),
                METADATA_PREFIX + "space": "latent" if latent_space else "pixel"}
    if release:
        known = get_release(release)
        metadata[METADATA_PREFIX + "release"] = known.name
        schedule = schedule or known.schedule
        one_step = one_step or known.one_step
        scale = scale or known.scale
        autoencoder = autoencoder or known.autoencoder
        task = task or known.task
    optional = {"schedule": json.dumps(schedule.to_dict()) if schedule else None,
                "scale": str(int(scale)) if scale else None, "autoencoder": autoencoder if latent_space else None,
                "tile_size": str(int(tile_size)) if tile_size else None, "task": task}
    metadata.update({METADATA_PREFIX + key: value for key, value in optional.items() if value is not None})
    metadata[METADATA_PREFIX + "one_step"] = "true" if one_step else "false"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return Path(path)


def save_autoencoder(model: VQAutoencoder, path: str | os.PathLike, name: str | None = None) -> Path:
    """Write an autoencoder as .safetensors (its config and, if known, its release name in the metadata)."""
    from safetensors.torch import save_file

    metadata = {METADATA_PREFIX + "format_version": FORMAT_VERSION, METADATA_PREFIX + "kind": AUTOENCODER_KIND,
                METADATA_PREFIX + "vq_config": json.dumps(model.config.to_dict())}
    if name:
        metadata[METADATA_PREFIX + "autoencoder"] = name
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return Path(path)

