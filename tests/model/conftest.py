"""Shared fixtures for the backbone tests: the reference files and small, deterministic inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ortho_node.model.checkpoint import build_model
from ortho_node.model.diffusion import GaussianDiffusion
from ortho_node.model.unet import UNetConfig
from tests.conftest import SHARED
from tests.model.volumes import blob_volume

REFERENCE = SHARED / "reference"


def read_reference(name: str) -> dict[str, Any]:
    return json.loads((REFERENCE / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return read_reference("orthodiffusion-checkpoint-manifest.json")


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    return read_reference("orthodiffusion-golden-features.json")


@pytest.fixture(scope="session")
def official_model() -> GaussianDiffusion:
    torch.manual_seed(0)
    return build_model(UNetConfig.official()).eval()


@pytest.fixture()
def tiny_model() -> GaussianDiffusion:
    """The reduced topology on a 16 x 32 x 32 grid: every block, a fraction of a second per pass."""
    torch.manual_seed(0)
    return build_model(UNetConfig(model_channels=16, norm_groups=8, image_size=32)).eval()


@pytest.fixture(scope="session")
def smooth_volume() -> Callable[[tuple[int, int, int], int], np.ndarray]:
    """Factory: ``smooth_volume(shape, seed)`` -> float32 (slices, rows, cols)."""
    return blob_volume


@pytest.fixture()
def old_card_folder(tmp_path: Path) -> Path:
    """A model folder holding a card as models shipped before 2026-12-06 wrote it (no ``kind``, no operating
    points, min-max preprocessing): a kept copy of the card, without its weights."""
    from ortho_node.model.card import CARD_FILE

    kept = Path(__file__).resolve().parents[1] / "data" / "model_card_minmax_2026.json"
    (tmp_path / CARD_FILE).write_text(kept.read_text())
    return tmp_path
