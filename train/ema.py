"""Exponential moving average of the UNet's weights (the model that is validated and exported).

Every process updates its own copy after every optimizer step from the same (all-reduced) weights, so the EMA is
identical on every rank without communication (the official trainer kept it on rank 0 only). Kept in float32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` for parameters; buffers are copied.

    With ``warmup`` the decay of update number n is min(decay, (1 + n) / (10 + n)), so that a short run's average
    does not keep a share of the random initial weights (0.999^4000 = 1.8% after 4,000 steps); the official recipes
    run for 300k+ steps and use the plain decay.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay of the update made after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        decay = self.decay_at(step)
        source = dict(model.named_parameters())
        for name, param in self.model.named_parameters():
            param.lerp_(source[name].detach().float(), 1.0 - decay)
        source_buffers = dict(model.named_buffers())
        for name, buffer in self.model.named_buffers():
            if name in source_buffers:
                buffer.copy_(source_buffers[name])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
