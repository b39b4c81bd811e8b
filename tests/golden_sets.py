"""Discovery and comparison helpers for the golden fixture sets (outputs of the official code).

A set is a folder holding ``config.json``; ``RESSHIFT_GOLDEN`` names a folder of sets (or one set), default the
project's own copy in ``tests/fixtures/golden``. Optional files (chopped run, manifests) may be absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

DEFAULT_ROOT = Path(__file__).parent / "fixtures" / "golden"

# max-abs differences measured during the run, reported at the end of the session (see conftest.py)
MEASURED: dict[str, float] = {}


def golden_root() -> Path:
    return Path(os.environ.get("RESSHIFT_GOLDEN") or DEFAULT_ROOT)


def discover_sets() -> list[Path]:
    root = golden_root()
    if (root / "config.json").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/config.json"))


@dataclass
class GoldenSet:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def has(self, file_name: str) -> bool:
        return (self.path / file_name).is_file()

    def tensors(self, file_name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / file_name))

    @property
    def steps(self) -> int:
        return int(self.config["diffusion"]["params"]["steps"])

    def manifests(self) -> list[Path]:
        return sorted(self.path.glob("manifest_*.json"))


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> float:
    """Fail unless |actual - expected| <= atol + rtol |expected| everywhere; record and return the max-abs diff."""
    actual = actual.detach().float().cpu()
    expected = expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    worst = diff.max().item() if diff.numel() else 0.0
    MEASURED[name] = max(worst, MEASURED.get(name, 0.0))
    bound = atol + rtol * expected.abs()
    bad = diff > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {diff.numel()} values differ by more than atol={atol} "
                           f"rtol={rtol} (max-abs diff {worst:.3g})")
    return worst


def assert_indices_match(name: str, actual: torch.Tensor, expected: torch.Tensor,
                         boundary: torch.Tensor | None = None, margin: float = 1e-3) -> None:
    """Codebook indices must be equal wherever the official latent was farther than ``margin`` from a tie."""
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    differ = actual != expected
    if boundary is not None:
        differ &= boundary.cpu().reshape(differ.shape) > margin
    MEASURED[name + " (mismatches)"] = float(differ.sum())
    assert not differ.any(), f"{name}: {int(differ.sum())} codebook indices differ away from a tie"
