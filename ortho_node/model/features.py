"""Diffusion features (DESIGN.md section 4): noise a volume to step t once, run the UNet, read one block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ortho_node.labels import Plane
from ortho_node.model.diffusion import GaussianDiffusion
from ortho_node.model.runtime import autocast, match_memory_format

#: The paper's default: t = 100, output of the middle block.
DEFAULT_T = 100
DEFAULT_BLOCK = "mid_2"


@dataclass(frozen=True)
class FeatureSpec:
    """Which activation represents a plane: diffusion step ``t`` and block name."""

    t: int = DEFAULT_T
    block: str = DEFAULT_BLOCK


def seeded_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise [1, *shape[1:]] from ``seed``, drawn on the CPU so every device gets the same."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape[1:]), generator=generator)


def extract_features(
    model: GaussianDiffusion,
    volume: torch.Tensor,
    t: int | Sequence[int] | torch.Tensor = DEFAULT_T,
    block: str = DEFAULT_BLOCK,
    noise_seed: int = 0,
    *,
    use_autocast: bool = True,
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, then the activation of ``block`` for x_t.

    Args:
        model: a backbone on its device (see ``runtime.prepare_for_inference``).
        volume: x_0, [B, 1, D, H, W] preprocessed volumes in [-1, 1] (any device; moved to the model's).
        t: one step for the whole batch, or [B] steps (one per volume).
        block: a name from ``model.denoise_fn.block_names`` (``in_*``, ``mid_0..2``, ``out_*``, ``final``).
        noise_seed: eps comes from this seed and is the same for every volume of the batch, so a volume's
            features do not depend on what it is batched with.
        use_autocast: bf16 autocast on CUDA (ignored on CPU).
    Returns:
        [B, C, d, h, w] float32 on the model's device; the official default (t=100, mid_2) gives
        [B, 256, 1, 16, 16] for a 16 x 256 x 256 input.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must be [B, C, D, H, W], got {tuple(volume.shape)}")
    device = model.betas.device
    x_0 = volume.to(device=device, dtype=torch.float32)
    steps = torch.as_tensor(t, dtype=torch.long, device=device).expand(x_0.shape[0]).contiguous()
    if (steps < 0).any() or (steps >= model.num_timesteps).any():
        raise ValueError(f"t must lie in [0, {model.num_timesteps - 1}], got {steps.tolist()}")
    noise = seeded_noise(x_0.shape, noise_seed).to(device)
    with torch.inference_mode(), autocast(device, use_autocast):
        x_t = match_memory_format(model.q_sample(x_0, steps, noise), model)
        features = model.denoise_fn.activations(x_t, steps, (block,))[block]
    return features.float()


def extract_plane_features(
    models: Mapping[Plane, GaussianDiffusion],
    volumes: Mapping[Plane, torch.Tensor],
    specs: Mapping[Plane, FeatureSpec],
    noise_seed: int = 0,
) -> dict[Plane, torch.Tensor]:
    """Features of several planes (one backbone each), every plane batched over studies.

    Args:
        volumes: per plane [B, 1, D, H, W]; specs: per plane (t, block), e.g. the official
            fusion's sagittal 200/mid_0, coronal 150/mid_0, axial 50/mid_2.
    Returns: per plane [B, C, d, h, w] float32.
    """
    missing = sorted(p.value for p in volumes if p not in models or p not in specs)
    if missing:
        raise ValueError(f"no backbone or feature spec for planes {missing}")
    return {
        plane: extract_features(models[plane], volume, specs[plane].t, specs[plane].block, noise_seed)
        for plane, volume in volumes.items()
    }
