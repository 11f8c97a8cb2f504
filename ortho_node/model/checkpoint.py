"""Backbone checkpoints: our format (:mod:`ortho_node.model.card` files, :class:`ModelCard`) and the official
``.pt`` files.

Our format is a directory holding ``model.safetensors`` (the GaussianDiffusion state dict: the 13 schedule
buffers and the ``denoise_fn.`` UNet tensors, exactly the names of the official ``ema`` dict) and
``model_card.json`` (:class:`ModelCard`: architecture, plane, preprocessing, data, step, metrics, version
and the SHA-256 of the weights file). Loading never half-succeeds: every missing, unknown or mis-shaped
tensor is listed in one :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ortho_node.labels import Plane
from ortho_node.model.card import (
    CardFiles,
    CardKind,
    CheckpointError,
    load_strict,
    read_card_file,
    read_weights,
    save_card,
)
from ortho_node.model.diffusion import DiffusionConfig, GaussianDiffusion
from ortho_node.model.preprocessing import PreprocessSpec
from ortho_node.model.unet import UNet, UNetConfig

logger = logging.getLogger(__name__)

UNET_PREFIX = "denoise_fn."
#: Official files saved from a DistributedDataParallel-wrapped UNet carry this prefix instead.
DDP_PREFIX = "denoise_fn.module."
OFFICIAL_KEYS = ("step", "model", "ema", "opt")


@dataclass(frozen=True)
class ModelCard(CardFiles):
    """Everything needed to rebuild, trust and describe a backbone, stored beside its weights."""

    KIND: ClassVar[CardKind] = CardKind.BACKBONE

    plane: Plane
    unet: UNetConfig
    diffusion: DiffusionConfig
    preprocessing: PreprocessSpec
    version: str
    source: str
    training_data: str
    step: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def _json_values(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(
            plane=self.plane.value,
            unet=self.unet.to_dict(),
            diffusion=self.diffusion.to_dict(),
            preprocessing=self.preprocessing.to_dict(),
            metrics=dict(self.metrics),
        )
        return values

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> ModelCard:
        values.update(
            plane=Plane(values["plane"]),
            unet=UNetConfig.from_dict(values["unet"]),
            diffusion=DiffusionConfig.from_dict(values["diffusion"]),
            preprocessing=PreprocessSpec.from_dict(values["preprocessing"]),
        )
        return cls(**values)


def build_model(unet: UNetConfig, diffusion: DiffusionConfig | None = None) -> GaussianDiffusion:
    """A freshly initialised backbone (UNet inside its diffusion wrapper) on the CPU."""
    return GaussianDiffusion(UNet(unet), diffusion)


def preprocess_spec_for(unet: UNetConfig) -> PreprocessSpec:
    """The input grid a UNet of this configuration expects."""
    return PreprocessSpec(depth=unet.depth_size, size=unet.image_size)


def load_state(model: GaussianDiffusion, state: Mapping[str, torch.Tensor]) -> GaussianDiffusion:
    """Check, then load ``state`` into ``model`` (strictly); returns the model."""
    load_strict(model, state)
    return model


def save_checkpoint(directory: Path, model: GaussianDiffusion, card: ModelCard) -> ModelCard:
    """Write the backbone's weights and card (:func:`~ortho_node.model.card.save_card`); returns the card as
    written."""
    written = save_card(directory, model, card)
    logger.info("saved %s backbone (step %d) to %s", card.plane.value, card.step, directory)
    return written


def read_card(directory: Path) -> ModelCard:
    return read_card_file(directory, ModelCard)


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> tuple[GaussianDiffusion, ModelCard]:
    """Rebuild a backbone from our format, verifying the weights' hash against the card."""
    card = read_card(directory)
    model = load_state(build_model(card.unet, card.diffusion), read_weights(directory, card))
    return model.to(device), card


def normalise_official_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``denoise_fn.module.X`` (DDP-wrapped UNet) -> ``denoise_fn.X``; other keys unchanged."""
    return {
        (UNET_PREFIX + k[len(DDP_PREFIX) :] if k.startswith(DDP_PREFIX) else k): v for k, v in state.items()
    }


def read_official(path: Path, weights: str = "ema") -> tuple[dict[str, torch.Tensor], int]:
    """Read an official ``{step, model, ema, opt}`` file safely (``weights_only=True``, CPU).

    Args:
        weights: ``ema`` (what inference uses) or ``model`` (the raw training weights).
    Returns: (state dict with ``denoise_fn.`` keys, training step).
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping) or weights not in data:
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(f"{path}: expected an official checkpoint with keys {OFFICIAL_KEYS}, found {found}")
    state = data[weights]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: '{weights}' is not a state dict of tensors")
    return normalise_official_keys(state), int(data.get("step", 0))


def load_official(
    path: Path, unet: UNetConfig | None = None, diffusion: DiffusionConfig | None = None
) -> tuple[GaussianDiffusion, int]:
    """An official ``.pt`` file's EMA weights in a backbone of the given (default official) configuration."""
    state, step = read_official(path)
    return load_state(build_model(unet or UNetConfig.official(), diffusion), state), step


def convert_official(
    source: Path,
    directory: Path,
    plane: Plane,
    *,
    version: str,
    training_data: str = "official OrthoDiffusion pretraining data (see arXiv 2602.20752)",
) -> ModelCard:
    """Convert an official ``.pt`` file to our format; the tensors are copied bit for bit."""
    model, step = load_official(source)
    card = ModelCard(
        plane=plane,
        unet=model.denoise_fn.config,
        diffusion=model.config,
        preprocessing=preprocess_spec_for(model.denoise_fn.config),
        version=version,
        source=f"official checkpoint {source.name} (EMA weights)",
        training_data=training_data,
        step=step,
    )
    return save_checkpoint(directory, model, card)
