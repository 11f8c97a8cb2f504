"""The noise schedule, the forward process, the loss and the DDIM sampler."""

from __future__ import annotations

import torch
from torch import nn

from ortho_node.model.diffusion import DiffusionConfig, GaussianDiffusion, cosine_betas


class OracleDenoiser(nn.Module):
    """Predicts the exact noise that leads from a known x_0 to x_t: a perfect model of one volume."""

    def __init__(self, x_0: torch.Tensor, diffusion_buffers: GaussianDiffusion) -> None:
        super().__init__()
        self.x_0 = x_0
        self.schedule = diffusion_buffers

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.schedule.alphas_cumprod[t].double().reshape(-1, 1, 1, 1, 1)
        return ((x_t.double() - abar.sqrt() * self.x_0) / (1 - abar).sqrt()).float()


def _diffusion(denoiser: nn.Module | None = None) -> GaussianDiffusion:
    return GaussianDiffusion(denoiser or nn.Identity())  # type: ignore[arg-type]


def test_cosine_schedule_shape_and_limits():
    betas = cosine_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and betas.max() == 0.999 and (betas.diff() >= 0).all()
    assert DiffusionConfig.from_dict(DiffusionConfig().to_dict()) == DiffusionConfig()


def test_q_sample_is_the_closed_form_forward_process():
    model = _diffusion()
    x_0, noise, t = torch.rand(3, 1, 2, 4, 4) * 2 - 1, torch.randn(3, 1, 2, 4, 4), torch.tensor([0, 100, 999])
    abar = torch.cumprod(1 - cosine_betas(1000), dim=0)[t].reshape(-1, 1, 1, 1, 1)  # float64
    expected = abar.sqrt() * x_0 + (1 - abar).sqrt() * noise
    x_t = model.q_sample(x_0, t, noise)
    assert torch.allclose(x_t.double(), expected, atol=1e-6)
    # Inverting at t = 999 divides by sqrt(abar) = 5e-5, which float32 cannot do exactly: check t < 999.
    assert torch.allclose(model.predict_x0_from_eps(x_t, t, noise)[:2], x_0[:2], atol=1e-5)


def test_training_loss_is_mse_of_predicted_noise(tiny_model):
    x_0, t, noise = torch.rand(2, 1, 16, 32, 32) * 2 - 1, torch.tensor([5, 500]), torch.randn(2, 1, 16, 32, 32)
    loss = tiny_model.training_losses(x_0, t, noise)
    with torch.no_grad():
        eps_theta = tiny_model.denoise_fn(tiny_model.q_sample(x_0, t, noise), t)
    assert torch.allclose(loss, ((eps_theta - noise) ** 2).mean())
    # The output convolution starts at zero, so an untrained model predicts eps = 0 and the loss is E[eps^2].
    assert torch.allclose(loss, (noise**2).mean())


def test_ddim_with_a_perfect_denoiser_recovers_the_volume():
    x_0 = torch.rand(1, 1, 4, 8, 8, dtype=torch.float64) * 2 - 1
    model = _diffusion()
    model.denoise_fn = OracleDenoiser(x_0, model)
    for eta in (0.0, 1.0):
        sample = model.ddim_sample((1, 1, 4, 8, 8), steps=20, eta=eta, generator=torch.Generator().manual_seed(0))
        assert sample.shape == x_0.shape
        assert torch.allclose(sample.double(), x_0, atol=1e-4)


def test_ddim_sampling_is_reproducible(tiny_model):
    def draw() -> torch.Tensor:
        return tiny_model.ddim_sample((1, 1, 16, 32, 32), steps=3, generator=torch.Generator().manual_seed(7))

    first = draw()
    assert torch.equal(first, draw())
    assert torch.isfinite(first).all() and first.abs().max() <= 1.0 + 1e-5
