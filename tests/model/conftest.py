"""Shared fixtures for the backbone tests: the reference files and small, deterministic inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from ortho_node.model.checkpoint import build_model
from ortho_node.model.diffusion import GaussianDiffusion
from ortho_node.model.unet import UNetConfig
from tests.conftest import SHARED

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


def _smooth_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A blob on a gentle gradient with intensities like an MR magnitude image (>= 0)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    centre = rng.uniform(-0.3, 0.3, size=3)
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return (1000 * np.exp(-r2 / 0.2) + 200 * (grids[1] + 1)).astype(np.float32)


@pytest.fixture(scope="session")
def smooth_volume() -> Callable[[tuple[int, int, int], int], np.ndarray]:
    """Factory: ``smooth_volume(shape, seed)`` -> float32 (slices, rows, cols)."""
    return _smooth_volume
