"""Gaussian diffusion around the UNet (DESIGN.md section 4): cosine schedule, q_sample, loss, DDIM sampler.

Symbols follow Ho et al. (2020) and Song et al. (2021): beta_t, alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s (``alphas_cumprod``), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
Buffer names and order are those of the official checkpoint; they are stored in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ortho_node.model.unet import UNet


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule: cosine (Nichol & Dhariwal 2021) over ``timesteps`` steps."""

    timesteps: int = 1000
    cosine_s: float = 0.008
    max_beta: float = 0.999

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "cosine", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DiffusionConfig:
        values = dict(values)
        schedule = values.pop("schedule", "cosine")
        if schedule != "cosine":
            raise ValueError(f"unsupported noise schedule {schedule!r}")
        return cls(**values)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t from abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), clipped at max_beta.

    Returns: [T] float64 (the official code computes the schedule in float64, then stores float32).
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((steps + s) / (1 + s) * torch.pi / 2) ** 2
    abar = abar / abar[0]
    return (1 - abar[1:] / abar[:-1]).clamp(min=0.0, max=max_beta)


def _schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official buffers, in the official order, computed in float64 from [T] betas."""
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - abar).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1).sqrt(),
        "posterior_variance": posterior_variance,
        # log clipped because the posterior variance is 0 at t = 0
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        # unused without conditioning; kept because the official checkpoint stores it
        "posterior_mean_coef3": 1.0 - (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
    }


def _at(buffer: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """buffer[t] reshaped to [B, 1, ..., 1] for broadcasting against an ndim-dimensional batch."""
    return buffer.gather(0, t).reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """The denoising UNet (``denoise_fn``) plus its noise schedule; the unit the official files store."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor

    def __init__(self, denoise_fn: UNet, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionConfig()
        self.denoise_fn = denoise_fn
        betas = cosine_betas(self.config.timesteps, self.config.cosine_s, self.config.max_beta)
        for name, value in _schedule_buffers(betas).items():
            self.register_buffer(name, value.to(torch.float32))

    @property
    def num_timesteps(self) -> int:
        return self.config.timesteps

    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.  x_0, noise: [B, ...]; t: [B] long."""
        return _at(self.sqrt_alphas_cumprod, t, x_0.ndim) * x_0 + _at(
            self.sqrt_one_minus_alphas_cumprod, t, x_0.ndim
        ) * noise

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        return _at(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - _at(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
        ) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)."""
        return (_at(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x_0) / _at(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
        )

    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t ~ U{0, ..., T-1}: [batch] long."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def training_losses(
        self, x_0: torch.Tensor, t: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The epsilon-prediction objective: mean over the batch of ||eps - eps_theta(x_t, t)||^2.

        Args:
            x_0: [B, C, D, H, W] clean volumes in [-1, 1].
            t: [B] long steps (uniform when None).
            noise: eps, same shape as x_0 (standard normal when None).
        Returns: scalar float32 loss.
        """
        t = self.sample_timesteps(x_0.shape[0], x_0.device) if t is None else t
        noise = torch.randn_like(x_0) if noise is None else noise
        eps_theta = self.denoise_fn(self.q_sample(x_0, t, noise), t)
        return F.mse_loss(eps_theta.float(), noise.float())

    @torch.inference_mode()
    def ddim_sample(
        self,
        shape: tuple[int, ...],
        *,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate volumes with DDIM (Song et al. 2021), eta = 0 deterministic, eta = 1 DDPM-like.

        Args:
            shape: (B, C, D, H, W) of the volumes to generate.
            steps: number of denoising steps, evenly spaced over [T-1, 0].
            generator: CPU generator for the initial noise and eta > 0 (reproducible on any device).
        Returns: [B, C, D, H, W] float32 volumes in [-1, 1].
        """
        device = self.betas.device
        x = torch.randn(shape, generator=generator).to(device)
        schedule = torch.linspace(self.num_timesteps - 1, 0, min(steps, self.num_timesteps)).round().long()
        steps_desc = schedule.tolist()
        for step, next_step in zip(steps_desc, steps_desc[1:] + [-1]):
            t = torch.full((shape[0],), step, device=device, dtype=torch.long)
            x_0 = self.predict_x0_from_eps(x, t, self.denoise_fn(x, t).float()).clamp(-1.0, 1.0)
            eps = self.predict_eps_from_x0(x, t, x_0)  # consistent with the clipped x_0
            abar = self.alphas_cumprod[step]
            abar_prev = self.alphas_cumprod[next_step] if next_step >= 0 else abar.new_ones(())
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            x = abar_prev.sqrt() * x_0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and next_step >= 0:
                x = x + sigma * torch.randn(shape, generator=generator).to(device)
        return x
