"""The ResShift noise schedule and the closed-form parts of its Markov chain (paper Eq. 1-10).

Everything here follows the official implementation (journal branch), which differs from the paper's text in two
places that change results:

* ``etas_end`` is the *square root* of the last eta, so eta_T = 0.99**2 = 0.9801, not the paper's 0.999;
* the first value is sqrt(eta_1) = min(min_noise_level / kappa, min_noise_level), without the paper's 0.001 cap.

Steps are 0-based: ``t = 0`` is the paper's step 1 (the least noisy) and ``t = T - 1`` the paper's step T. The arrays
are computed in float64 numpy, like the official code; a value is cast to the working dtype only when it multiplies a
tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class ScheduleParams:
    """The five numbers that define a ResShift schedule (all released models use the exponential schedule).

    Attributes:
        steps: T, the number of diffusion steps.
        kappa: kappa, the noise scale of Eq. 1.
        power: p of Eq. 10.
        min_noise_level: kappa * sqrt(eta_1) target; the official code sets sqrt(eta_1) = min(level / kappa, level).
        etas_end: sqrt(eta_T) (0.99 for every release).
    """

    steps: int
    kappa: float = 2.0
    power: float = 0.3
    min_noise_level: float = 0.2
    etas_end: float = 0.99

    def to_dict(self) -> dict:
        return {"steps": self.steps, "kappa": self.kappa, "power": self.power,
                "min_noise_level": self.min_noise_level, "etas_end": self.etas_end}

    @classmethod
    def from_dict(cls, values: dict) -> ScheduleParams:
        return cls(steps=int(values["steps"]), kappa=float(values["kappa"]), power=float(values["power"]),
                   min_noise_level=float(values["min_noise_level"]), etas_end=float(values["etas_end"]))


def exponential_sqrt_etas(params: ScheduleParams) -> np.ndarray:
    """sqrt(eta_t) for t = 0..T-1 (Eq. 9-10 with the official first and last values), float64, shape (T,)."""
    steps = params.steps
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got steps={steps}")
    first = min(params.min_noise_level / params.kappa, params.min_noise_level)  # sqrt(eta_1)
    if steps == 1:
        return np.array([params.etas_end], dtype=np.float64)
    # Eq. 10: b_0 = exp(log(sqrt(eta_T) / sqrt(eta_1)) / (T - 1)), beta_t = ((t-1)/(T-1))^p * (T-1).
    base = np.exp(np.log(params.etas_end / first) / (steps - 1))
    beta = np.linspace(0, 1, steps, endpoint=True) ** params.power * (steps - 1)
    return first * base ** beta  # Eq. 9


@dataclass
class Schedule:
    """All per-step constants of the chain, float64 numpy arrays of shape (T,), index t = 0..T-1.

    Attributes:
        params: the defining numbers.
        sqrt_etas, etas: sqrt(eta_t) and eta_t.
        etas_prev: eta_{t-1} with eta_{-1} = 0.
        alpha: alpha_t = eta_t - eta_{t-1} (Eq. 1).
        posterior_variance: kappa^2 * eta_{t-1} / eta_t * alpha_t (Eq. 6), zero at t = 0.
        posterior_variance_clipped: the same with the t = 0 entry replaced by the t = 1 one (as officially).
        posterior_log_variance_clipped: its natural log.
        posterior_mean_coef1, posterior_mean_coef2: eta_{t-1}/eta_t and alpha_t/eta_t (Eq. 6-7).
        weight_loss_mse: 0.5 / clipped variance * (alpha/eta)^2, the official (unused) MSE weights.
    """

    params: ScheduleParams
    sqrt_etas: np.ndarray = field(init=False)
    etas: np.ndarray = field(init=False)
    etas_prev: np.ndarray = field(init=False)
    alpha: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_variance_clipped: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)
    weight_loss_mse: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        kappa = self.params.kappa
        self.sqrt_etas = exponential_sqrt_etas(self.params)
        self.etas = self.sqrt_etas ** 2
        if not (np.all(self.etas > 0) and np.all(self.etas <= 1)):
            raise ValueError(f"schedule {self.params} gives eta outside (0, 1]: {self.etas}")
        self.etas_prev = np.append(0.0, self.etas[:-1])
        self.alpha = self.etas - self.etas_prev
        self.posterior_variance = kappa ** 2 * self.etas_prev / self.etas * self.alpha
        if self.params.steps > 1:
            self.posterior_variance_clipped = np.append(self.posterior_variance[1], self.posterior_variance[1:])
        else:  # a one-step chain never adds noise; keep the log finite
            self.posterior_variance_clipped = np.ones(1, dtype=np.float64)
        self.posterior_log_variance_clipped = np.log(self.posterior_variance_clipped)
        self.posterior_mean_coef1 = self.etas_prev / self.etas
        self.posterior_mean_coef2 = self.alpha / self.etas
        self.weight_loss_mse = 0.5 / self.posterior_variance_clipped * (self.alpha / self.etas) ** 2

    @classmethod
    def from_params(cls, steps: int, kappa: float = 2.0, power: float = 0.3, min_noise_level: float = 0.2,
                    etas_end: float = 0.99) -> Schedule:
        return cls(ScheduleParams(steps, kappa, power, min_noise_level, etas_end))

    @property
    def num_steps(self) -> int:
        return self.params.steps

    @property
    def kappa(self) -> float:
        return self.params.kappa

    # ---- per-step scalars (python floats, so no precision is lost until they meet a tensor) ----

    def input_divisor(self, t: int) -> float:
        """sqrt(kappa^2 eta_t + 1): the network sees x_t divided by this (official ``normalize_input``)."""
        return math.sqrt(self.kappa ** 2 * float(self.etas[t]) + 1.0)

    def step_std(self, t: int) -> float:
        """Standard deviation of the noise added when leaving step t (0 at t = 0)."""
        return 0.0 if t == 0 else math.exp(0.5 * float(self.posterior_log_variance_clipped[t]))

    # ---- tensor operations ----

    def _per_sample(self, values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as a float32 tensor broadcastable to ``like`` (one value per batch element), cast to like's dtype.

        The cast to float32 first mirrors the official ``_extract_into_tensor``.
        """
        picked = torch.from_numpy(values).to(device=t.device)[t].float()
        return picked.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward marginal, Eq. 2: x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise.

        Args:
            x0, y, noise: (B, C, h, w) latents of the HR image, of the up-sampled LR image, and N(0, 1) noise.
            t: (B,) int64 step indices.
        """
        eta = self._per_sample(self.etas, t, x0)
        sqrt_eta = self._per_sample(self.sqrt_etas, t, x0)
        return eta * (y - x0) + x0 + sqrt_eta * self.kappa * noise

    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Start of sampling, p(x_T | y_0) of Eq. 4: x_T = y + kappa sqrt(eta_T) noise (mean y itself, as officially)."""
        t = torch.full((y.shape[0],), self.num_steps - 1, dtype=torch.long, device=y.device)
        return y + self._per_sample(self.sqrt_etas, t, y) * self.kappa * noise

    def scale_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network input x_t / sqrt(kappa^2 eta_t + 1) (official latent-space normalisation)."""
        eta = self._per_sample(self.etas, t, x_t)
        divisor = torch.sqrt(eta * self.kappa ** 2 + 1)
        return x_t / divisor

    def posterior_mean(self, x_t: torch.Tensor, x0_pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x0), Eq. 6-7: eta_{t-1}/eta_t x_t + alpha_t/eta_t x0."""
        return (self._per_sample(self.posterior_mean_coef1, t, x_t) * x_t
                + self._per_sample(self.posterior_mean_coef2, t, x_t) * x0_pred)

    def add_step_noise(self, mean: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} = mean + [t != 0] exp(0.5 log sigma^2_t) noise (Eq. 6 variance, clipped as officially)."""
        nonzero = (t != 0).to(mean.dtype).view(-1, *([1] * (mean.dim() - 1)))
        log_var = self._per_sample(self.posterior_log_variance_clipped, t, mean)
        return mean + nonzero * torch.exp(0.5 * log_var) * noise
