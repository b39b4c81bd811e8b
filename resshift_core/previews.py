"""Previews of a run in progress: the x0 prediction seen in RGB without running the decoder."""

from __future__ import annotations

import torch


class LatentPreview:
    """(B, C, h, w) latent -> (B, 3, h, w) float32 in [0, 1]: a linear map fitted once per pipeline from the
    encoder's latents of flat colours (pixel-space models: the image itself).

    Args:
        stages: the pipeline (:class:`~resshift_core.stages.PipelineStages`) whose encoder defines the map.
    """

    def __init__(self, stages):
        self.stages = stages
        self._rgb_map: torch.Tensor | None = None  # (C + 1, 3): latent channels and a bias -> RGB

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent.detach().float()
        if not self.stages.latent_space:
            return (latent[:, :3] * 0.5 + 0.5).clamp(0, 1)
        if self._rgb_map is None:
            self._rgb_map = self._fit()
        rgb_map = self._rgb_map.to(latent.device)
        rgb = torch.einsum("bchw,cd->bdhw", latent, rgb_map[:-1]) + rgb_map[-1].view(1, 3, 1, 1)
        return rgb.clamp(0, 1)

    @torch.inference_mode()
    def _fit(self) -> torch.Tensor:
        stages = self.stages
        levels = torch.linspace(0.0, 1.0, 4)
        colours = torch.cartesian_prod(levels, levels, levels)  # (64, 3) in [0, 1]
        side = 4 * stages.latent_factor
        images = (colours * 2 - 1).view(-1, 3, 1, 1).expand(-1, 3, side, side)
        latents = stages._run_encoder(images.to(stages.device, stages.dtype)).float().mean(dim=(2, 3)).cpu()
        design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)  # (64, C + 1)
        return torch.linalg.lstsq(design.double(), colours.double()).solution.float()  # (C + 1, 3)
