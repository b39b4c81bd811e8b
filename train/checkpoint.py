"""Training checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint (``RUN/checkpoints/step_00001234.pt``) holds the UNet and EMA weights (plain key names: no ``module.``
or ``_orig_mod.`` prefixes), the optimizer, the gradient scaler, the step (which is also the LR-schedule position and
the data position, see train/data.py), the RNG states and the config it was trained with.

Writing is atomic: the file is written under a temporary name in the same folder, flushed to disk and renamed, so a
process killed while saving leaves the previous checkpoints untouched and at most a ``*.tmp`` file, which is never
read. :func:`latest_valid` returns the newest checkpoint that loads, skipping damaged ones.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8,})\.pt$")
FORMAT = "resshift-train-1"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def strip_prefixes(state: dict) -> dict:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes from state-dict keys."""
    clean = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        clean[key] = value
    return clean


def write_atomic(payload: dict, path: str | os.PathLike) -> Path:
    """torch.save to ``path`` through a temporary file + fsync + rename (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint file, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely (``weights_only``: tensors and plain containers only).

    Raises:
        ValueError: the file is damaged (e.g. truncated) or is not a training checkpoint of this project.
    """
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        # torch's unpickling message suggests weights_only=False, which this project never does: leave it out
        detail = ("not a tensor-only PyTorch file" if isinstance(error, pickle.UnpicklingError)
                  else str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise ValueError(f"'{path}' is damaged or not a training checkpoint ({detail})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a training checkpoint of this project (expected one written by "
                         f"train/train.py under RUN/checkpoints/)")
    return payload


def latest_valid(run_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads completely, or None. Damaged ones are reported and skipped."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load(path)
        except ValueError as error:
            logger.warning("skipping damaged checkpoint %s (%s)", path, str(error).splitlines()[0] if str(error)
                           else type(error).__name__)
    return None


def prune(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the newest one)."""
    found = list_checkpoints(run_dir)
    for _, path in found[:max(0, len(found) - max(1, int(keep)))]:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
