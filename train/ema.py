"""Exponential moving average of the UNet's weights (the model that is validated and exported).

Every process updates its own copy after every optimizer step from the same (all-reduced) weights, so the EMA is
identical on every rank without communication (the official trainer kept it on rank 0 only). Kept in float32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` for parameters; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        source = dict(model.named_parameters())
        for name, param in self.model.named_parameters():
            param.lerp_(source[name].detach().float(), 1.0 - self.decay)
        source_buffers = dict(model.named_buffers())
        for name, buffer in self.model.named_buffers():
            if name in source_buffers:
                buffer.copy_(source_buffers[name])

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
