"""Small test volumes, apart from the fixtures so that bench/cuda_checks.py can use them without a database."""

from __future__ import annotations

import numpy as np


def blob_volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A blob on a gentle gradient with intensities like an MR magnitude image (>= 0): float32 (slices, rows, cols)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    centre = rng.uniform(-0.3, 0.3, size=3)
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return (1000 * np.exp(-r2 / 0.2) + 200 * (grids[1] + 1)).astype(np.float32)
