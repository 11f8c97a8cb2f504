"""Random smooth deformations (affine + non-linear) that move label maps and images identically."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ortho_node.synthetic.shapes import rotation

#: Spacing (mm) of the dense grid the smooth displacement is stored on; points between are trilinear.
_FIELD_STEP_MM = 8.0
#: Points evaluated per grid_sample call, so a large series never builds one huge coordinate tensor.
_CHUNK = 1 << 21


@dataclasses.dataclass(frozen=True)
class RandomDeformation:
    """Ranges of the random deformation drawn per study (SynthSeg's spatial augmentation).

    Attributes:
        rotation_deg: maximum rotation about each axis.
        scale: (min, max) scaling along each axis, drawn independently (size and proportions of the anatomy).
        shear: maximum magnitude of each off-diagonal shear term.
        displacement_mm: maximum standard deviation of the smooth displacement at its control points.
        control_spacing_mm: distance between control points (larger: smoother, broader bends).
        extent_mm: half-width of the cube (about the deformation's centre) the smooth field covers;
            beyond it the field is held at its border value.
    """

    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear: float = 0.05
    displacement_mm: float = 3.0
    control_spacing_mm: float = 40.0
    extent_mm: float = 160.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotation_deg <= 45.0:
            raise ValueError(f"rotation_deg must be in [0, 45], got {self.rotation_deg}")
        if not 0.5 <= self.scale[0] <= self.scale[1] <= 2.0:
            raise ValueError(f"scale must be an ordered range within [0.5, 2], got {self.scale}")
        if not 0.0 <= self.shear <= 0.3:
            raise ValueError(f"shear must be in [0, 0.3], got {self.shear}")
        if self.displacement_mm < 0.0 or self.displacement_mm > 0.3 * self.control_spacing_mm:
            # A displacement near the control spacing folds the field (labels would tear).
            raise ValueError(f"displacement_mm must be in [0, 0.3 * control_spacing_mm], got {self.displacement_mm}")
        if self.control_spacing_mm < 2 * _FIELD_STEP_MM or self.extent_mm < self.control_spacing_mm:
            raise ValueError("control_spacing_mm must be >= 16 mm and extent_mm >= control_spacing_mm")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def none(cls) -> RandomDeformation:
        """The identity: no affine, no displacement."""
        return cls(rotation_deg=0.0, scale=(1.0, 1.0), shear=0.0, displacement_mm=0.0)

    def sample(self, rng: np.random.Generator) -> Deformation:
        """One deformation drawn from these ranges."""
        turn = np.eye(3)
        for axis in np.eye(3):
            turn = turn @ rotation(axis, rng.uniform(-self.rotation_deg, self.rotation_deg))
        shear = np.eye(3) + (rng.uniform(-self.shear, self.shear, (3, 3)) * (1.0 - np.eye(3)))
        matrix = turn @ np.diag(rng.uniform(*self.scale, 3)) @ shear
        n = 2 * int(np.ceil(self.extent_mm / self.control_spacing_mm)) + 1
        sigma = rng.uniform(0.0, self.displacement_mm)
        control = (rng.standard_normal((3, n, n, n)) * sigma).astype(np.float32)
        dense = 2 * int(np.ceil(self.extent_mm / _FIELD_STEP_MM)) + 1
        # Cubic spline up-sampling of the control points gives a smooth (C2) displacement.
        field = np.stack([ndimage.zoom(c, dense / n, order=3, mode="nearest") for c in control])
        return Deformation(matrix.astype(np.float64), field.astype(np.float32), float(self.extent_mm))


@dataclasses.dataclass(frozen=True)
class Deformation:
    """A backward map in a local mm frame: the content shown at point x comes from ``matrix @ x + u(x)``.

    ``field`` [3, n, n, n] holds u (mm, components x, y, z) on a regular grid spanning [-extent, extent]^3
    along x, y, z.
    """

    matrix: np.ndarray
    field: np.ndarray
    extent_mm: float

    def source_points(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the content at local points (x, y, z) (same-shaped float arrays, mm) comes from."""
        shape = np.broadcast(x, y, z).shape
        points = [np.broadcast_to(c, shape).astype(np.float32) for c in (x, y, z)]
        u = self._displacement(np.stack([p.reshape(-1) for p in points], axis=1))
        m = self.matrix.astype(np.float32)
        return tuple(  # type: ignore[return-value]
            m[d, 0] * points[0] + m[d, 1] * points[1] + m[d, 2] * points[2] + u[:, d].reshape(shape) for d in range(3))

    def _displacement(self, points: np.ndarray) -> np.ndarray:
        """u at [N, 3] points (trilinear on the dense field; border values outside it)."""
        volume = torch.from_numpy(self.field)[None]  # [1, 3, D=x, H=y, W=z]
        out = np.empty_like(points)
        with torch.inference_mode():
            for start in range(0, len(points), _CHUNK):
                part = torch.from_numpy(points[start : start + _CHUNK] / np.float32(self.extent_mm))
                grid = part[:, [2, 1, 0]].reshape(1, 1, 1, -1, 3)  # grid_sample wants (W, H, D) = (z, y, x)
                sampled = torch.nn.functional.grid_sample(volume, grid, mode="bilinear", padding_mode="border",
                                                          align_corners=True)
                out[start : start + _CHUNK] = sampled[0, :, 0, 0].T.numpy()
        return out


def _source_indices(shape: tuple[int, ...], spacing: tuple[float, float, float],
                    deformation: Deformation) -> list[np.ndarray]:
    """Fractional source indices of every voxel of a [a, b, c] grid, the grid's centre as the local origin."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s) for n, s in zip(shape, spacing)]
    source = deformation.source_points(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    return [c / np.float32(s) + np.float32((n - 1) / 2.0) for c, s, n in zip(source, spacing, shape)]


def warp_labels(labels: np.ndarray, spacing: tuple[float, float, float], deformation: Deformation) -> np.ndarray:
    """Nearest-neighbour warp of a label volume (0 where the source lies outside it)."""
    idx = [np.rint(c).astype(np.int64) for c in _source_indices(labels.shape, spacing, deformation)]
    inside = np.ones(labels.shape, dtype=bool)
    for d, n in enumerate(labels.shape):
        inside &= (idx[d] >= 0) & (idx[d] < n)
        np.clip(idx[d], 0, n - 1, out=idx[d])
    return np.where(inside, labels[tuple(idx)], 0).astype(labels.dtype)


def warp_image(image: np.ndarray, spacing: tuple[float, float, float], deformation: Deformation) -> np.ndarray:
    """Trilinear warp of an image volume at exactly the labels' source points (0 outside it)."""
    coords = np.stack(_source_indices(image.shape, spacing, deformation))
    return ndimage.map_coordinates(image.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
