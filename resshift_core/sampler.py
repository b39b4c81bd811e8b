"""The ResShift reverse process as a plain loop (paper Eq. 4, 6, 7), independent of networks and image handling.

A *denoiser* is ``denoise(x_in, t) -> x0``: it receives the scaled state x_t / sqrt(kappa^2 eta_t + 1) and the
(B,) int64 step index, and predicts the clean latent. Noise comes from a :class:`NoiseSource`, so a run can use a
seed, a ``torch.Generator``, or replay recorded draws. The official code draws T + 1 tensors per run, in this order:
the prior, then one after every network call (also at t = 0, where it is multiplied by zero); this loop does the
same, so recorded official noise replays exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import CancelledError, ResShiftError
from .schedule import Schedule


@dataclass
class StepProgress:
    """What a progress callback receives after every network call of a run.

    ``done`` / ``total`` count the network calls of the whole run, so a host drives its progress bar with one line
    (``bar.update_absolute(p.done, p.total)``): every encoder and decoder call (one per autoencoder tile), every UNet
    call (one per tile and step) and, in the official patch-wise mode, all of them for every patch. ``done`` only
    grows and ends at ``total``.

    Attributes:
        done, total: network calls finished, and in the whole run.
        phase: ``"encode"``, ``"denoise"`` or ``"decode"``.
        step, total_steps: 1-based denoising step and the number of steps (both 0 outside "denoise").
        t: diffusion index of the step (T-1 ... 0; -1 outside "denoise").
        x_t: (B, C, h, w) float32 state after the step (None outside "denoise"; during a tiled step, the state
            before it).
        x0_pred: (B, C, h, w) float32 x0 prediction, never NaN (during a tiled step, tiles not yet computed show
            the previous prediction; None outside "denoise").
        tile, total_tiles: 1-based tile (or patch) and their number (1, 1 when the image is one piece).
    """

    done: int
    total: int
    phase: str = "denoise"
    step: int = 0
    total_steps: int = 0
    t: int = -1
    x_t: torch.Tensor | None = None
    x0_pred: torch.Tensor | None = None
    tile: int = 1
    total_tiles: int = 1
    to_rgb: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def preview(self) -> torch.Tensor | None:
        """(B, 3, h, w) float32 in [0, 1]: the x0 prediction seen through a cheap latent-to-RGB map (no decoder
        run; at latent resolution), or None outside "denoise"."""
        if self.x0_pred is None or self.to_rgb is None:
            return None
        return self.to_rgb(self.x0_pred)

    def preview_pil(self, index: int = 0):
        """The preview of image ``index`` of the batch as an 8-bit RGB PIL image, or None outside "denoise"."""
        from .images import tensor_to_pil

        picture = self.preview()
        return None if picture is None else tensor_to_pil(picture[index:index + 1])[0]


ProgressCallback = Callable[[StepProgress], None]
CancelCheck = Callable[[], bool]


#: Seeds are whole numbers from 0 to this (what torch.Generator.manual_seed takes; ComfyUI's seed widget range).
MAX_SEED = 2 ** 64 - 1


def check_seed(seed) -> int:
    """A seed as given by a user (int, or a float / text holding a whole number) -> int in [0, :data:`MAX_SEED`].

    Raises:
        InvalidArgumentError: anything else.
    """
    from .errors import InvalidArgumentError

    if isinstance(seed, bool):
        whole = False
    elif isinstance(seed, int):
        value, whole = seed, True
    else:
        try:
            number = float(seed)
            whole = number.is_integer()
            value = int(number) if whole else 0
        except (TypeError, ValueError, OverflowError):
            whole = False
    if not whole or not 0 <= value <= MAX_SEED:
        raise InvalidArgumentError("seed", seed, f"a whole number from 0 to {MAX_SEED}")
    return value


def random_seed() -> int:
    """A fresh seed in [0, 2^31 - 1) (what a run without seed uses; hosts that show seeds draw theirs here)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())


class NoiseSource:
    """Standard-normal draws for a run: from a generator (default: CPU, so a seed gives the same image on every
    device) or replayed from a list of recorded tensors.

    One seed, one picture: every image of a batch gets the draw a batch of one would get (one field of shape
    (1, C, h, w), shared), so an image's result does not depend on the batch it is in or its place there; twin frames
    come out alike and the frames of a video share one noise field. Replayed noise is used as recorded.
    """

    def __init__(self, generator: torch.Generator | None = None, replay: Iterable[torch.Tensor] | None = None):
        self.generator = generator
        self._replay = None if replay is None else iter(list(replay))
        self.draws = 0

    @classmethod
    def from_seed(cls, seed: int | None) -> NoiseSource:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        return cls(generator)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """A float32 N(0, 1) tensor shaped like ``like``, on like's device."""
        self.draws += 1
        if self._replay is not None:
            try:
                value = next(self._replay)
            except StopIteration:
                raise ResShiftError(f"the recorded noise ran out after {self.draws - 1} draws; a run needs one draw for the "
                                   f"prior and one per network call") from None
            if value.shape != like.shape:
                raise ResShiftError(f"recorded noise draw {self.draws - 1} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(like.shape)}")
            return value.to(device=like.device, dtype=torch.float32)
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        field = torch.randn((1,) + tuple(like.shape[1:]), generator=self.generator, device=gen_device,
                            dtype=torch.float32)
        return field.to(like.device).expand(like.shape)


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("the run was cancelled")


def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor, schedule: Schedule,
           noise: NoiseSource, *, one_step: bool = False, callback: ProgressCallback | None = None,
           cancel: CancelCheck | None = None, trace: dict | None = None) -> torch.Tensor:
    """Run the chain from the LR latent to the predicted HR latent.

    Args:
        denoise: the network, ``denoise(x_in, t) -> x0`` on (B, C, h, w) float32 tensors.
        y: (B, C, h, w) float32 latent of the (up-sampled) LR image, unquantised.
        schedule: the model's schedule.
        noise: where the T + 1 draws come from.
        one_step: SinSR: a single call at t = T-1 whose x0 prediction is the result (one draw).
        callback: called after every network call with a :class:`StepProgress` (``done`` / ``total`` count the
            steps of this chain).
        cancel: polled before every network call; True raises :class:`CancelledError`.
        trace: if a dict, receives the intermediate tensors under the official fixture names.
    Returns:
        (B, C, h, w) float32 final latent (equal to the x0 prediction of the last call).
    """
    last = schedule.num_steps - 1
    x = schedule.prior_sample(y, noise(y))  # Eq. 4: x_T ~ N(y, kappa^2 eta_T I)
    if trace is not None:
        trace["z_y"], trace["z_T"] = y, x
    steps: Sequence[int] = [last] if one_step else range(last, -1, -1)
    for number, t in enumerate(steps):
        check_cancel(cancel)
        t_batch = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        x_in = schedule.scale_input(x, t_batch)
        x0_pred = denoise(x_in, t_batch).float()  # f_theta of Eq. 7: no clamping in latent space
        if one_step:
            mean, x_next = x0_pred, x0_pred
        else:
            mean = schedule.posterior_mean(x, x0_pred, t_batch)  # Eq. 6-7
            x_next = schedule.add_step_noise(mean, t_batch, noise(x))
        if trace is not None:
            prefix = f"step{number:02d}."
            trace.update({prefix + "z_t": x, prefix + "x_in": x_in, prefix + "model_out": x0_pred,
                          prefix + "mean": mean, prefix + "sample": x_next})
        x = x_next
        if callback is not None:
            callback(StepProgress(number + 1, len(steps), "denoise", number + 1, len(steps), t, x, x0_pred))
    if trace is not None:
        trace["z_0"] = x
    return x
