"""Backbone checkpoints: our format (safetensors + JSON model card) and the official ``.pt`` files.

Our format is a directory holding ``model.safetensors`` (the GaussianDiffusion state dict: the 13 schedule
buffers and the ``denoise_fn.`` UNet tensors, exactly the names of the official ``ema`` dict) and
``model_card.json`` (:class:`ModelCard`: architecture, plane, preprocessing, data, step, metrics, version
and the SHA-256 of the weights file). Loading never half-succeeds: every missing, unknown or mis-shaped
tensor is listed in one :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ortho_node import __version__
from ortho_node.labels import Plane
from ortho_node.model.diffusion import DiffusionConfig, GaussianDiffusion
from ortho_node.model.preprocessing import PreprocessSpec
from ortho_node.model.unet import UNet, UNetConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_FORMAT = 1
UNET_PREFIX = "denoise_fn."
#: Official files saved from a DistributedDataParallel-wrapped UNet carry this prefix instead.
DDP_PREFIX = "denoise_fn.module."
OFFICIAL_KEYS = ("step", "model", "ema", "opt")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into, or its files are inconsistent."""


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, trust and describe a backbone, stored beside its weights."""

    plane: Plane
    unet: UNetConfig
    diffusion: DiffusionConfig
    preprocessing: PreprocessSpec
    version: str
    source: str
    training_data: str
    step: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    software_version: str = __version__
    created: str = ""
    card_format: int = CARD_FORMAT

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        values.update(
            plane=self.plane.value,
            unet=self.unet.to_dict(),
            diffusion=self.diffusion.to_dict(),
            preprocessing=self.preprocessing.to_dict(),
            metrics=dict(self.metrics),
        )
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        values = json.loads(text)
        if values.get("card_format") != CARD_FORMAT:
            raise CheckpointError(f"unsupported model card format {values.get('card_format')!r}")
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


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise one CheckpointError listing every missing, unknown and shape-mismatched tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} != model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items)}"
        for label, items in (("missing", missing), ("unknown", unknown), ("shape mismatch", mismatched))
        if items
    ]
    if problems:
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(problems))


def load_state(model: GaussianDiffusion, state: Mapping[str, torch.Tensor]) -> GaussianDiffusion:
    """Check, then load ``state`` into ``model`` (strictly); returns the model."""
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(weights: Path, expected_sha256: str) -> None:
    """Refuse weights whose hash is not the one their card records (altered or swapped files)."""
    actual = file_sha256(weights)
    if actual != expected_sha256:
        raise CheckpointError(f"{weights}: sha256 {actual} does not match the model card ({expected_sha256})")


def save_checkpoint(directory: Path, model: GaussianDiffusion, card: ModelCard) -> ModelCard:
    """Write ``model.safetensors`` and ``model_card.json`` (with the weights' hash) into ``directory``.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written pair
    that looks valid: the card's hash would not match.
    Returns: the card as written (hash, file name and creation time filled in).
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights, card_path = directory / WEIGHTS_FILE, directory / CARD_FILE
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    tmp_weights = weights.with_suffix(".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt", "ortho_node_card": CARD_FILE})
    tmp_weights.replace(weights)
    written = dataclasses.replace(
        card,
        weights_file=WEIGHTS_FILE,
        weights_sha256=file_sha256(weights),
        created=card.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    tmp_card = card_path.with_suffix(".tmp")
    tmp_card.write_text(written.to_json(), encoding="utf-8")
    tmp_card.replace(card_path)
    logger.info("saved %s backbone (step %d) to %s", card.plane.value, card.step, directory)
    return written


def read_card(directory: Path) -> ModelCard:
    return ModelCard.from_json((directory / CARD_FILE).read_text(encoding="utf-8"))


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> tuple[GaussianDiffusion, ModelCard]:
    """Rebuild a backbone from our format, verifying the weights' hash against the card."""
    card = read_card(directory)
    weights = directory / card.weights_file
    verify_weights(weights, card.weights_sha256)
    model = load_state(build_model(card.unet, card.diffusion), load_file(str(weights)))
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
