"""2D multi-slice acquisition geometry and the resampling of the 3D scene onto a series' own grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ortho_node.labels import Plane
from ortho_node.synthetic.domain import DomainRandomization
from ortho_node.synthetic.scene import Scene
from ortho_node.synthetic.shapes import rotation

#: In-plane directions (DICOM row direction, column direction) in the limb's LPS frame, as a radiographer
#: would prescribe them before any obliquity.
BASE_ORIENTATION: dict[Plane, tuple[tuple[float, ...], tuple[float, ...]]] = {
    Plane.SAGITTAL: ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    Plane.CORONAL: ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    Plane.AXIAL: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}
#: Number of samples through the slice profile (partial volume along the slice direction).
THROUGH_SLICE_SAMPLES = 3


@dataclasses.dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' voxels are in the patient (LPS mm). Arrays are indexed [slice, row, col]."""

    plane: Plane
    origin: np.ndarray  # centre of pixel (row 0, col 0) of slice 0
    row_dir: np.ndarray  # direction of increasing column index (first triplet of ImageOrientationPatient)
    col_dir: np.ndarray  # direction of increasing row index
    pixel_spacing: float  # square pixels, mm
    slice_spacing: float
    slice_thickness: float
    rows: int
    cols: int
    n_slices: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_slices, self.rows, self.cols

    def slice_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k``."""
        return self.origin + k * self.slice_spacing * self.normal

    def index_to_world(self) -> np.ndarray:
        """4x4 affine from (col, row, slice) indices to LPS mm (NIfTI voxel order i, j, k)."""
        affine = np.eye(4)
        affine[:3, 0] = self.row_dir * self.pixel_spacing
        affine[:3, 1] = self.col_dir * self.pixel_spacing
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.origin
        return affine

    def world_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates of every voxel centre, each of shape [slices, rows, cols] (float32)."""
        k, j, i = (np.arange(n, dtype=np.float32) for n in self.shape)
        a = self.index_to_world().astype(np.float32)
        return tuple(  # type: ignore[return-value]
            a[d, 3] + a[d, 2] * k[:, None, None] + a[d, 1] * j[None, :, None] + a[d, 0] * i[None, None, :]
            for d in range(3)
        )


def plan_series(plane: Plane, centre: np.ndarray, limb_rotation: np.ndarray, coverage: float,
                rng: np.random.Generator, dr: DomainRandomization) -> SeriesGeometry:
    """Prescribe one series: FOV, matrix, slices covering ``coverage`` mm, centred near ``centre``."""
    fov = rng.uniform(*dr.fov_mm)
    fitting = [m for m in dr.matrices if dr.pixel_mm[0] <= fov / m <= dr.pixel_mm[1]] or list(dr.matrices)
    matrix = int(fitting[rng.integers(len(fitting))])
    thickness = float(round(rng.uniform(*dr.slice_thickness_mm), 1))
    spacing = float(round(thickness * (1.0 + rng.uniform(*dr.slice_gap)), 1))
    tilt = np.eye(3)
    for axis in np.eye(3):
        tilt = tilt @ rotation(axis, rng.uniform(-dr.obliquity_deg, dr.obliquity_deg))
    turn = limb_rotation @ tilt
    row_dir, col_dir = (turn @ np.array(v) for v in BASE_ORIENTATION[plane])
    normal = np.cross(row_dir, col_dir)
    n_slices = max(int(np.ceil(coverage / spacing)), 8)
    pixel = fov / matrix
    centre = centre + rng.uniform(-5.0, 5.0, 3)
    origin = (centre - (matrix - 1) / 2 * pixel * (row_dir + col_dir) - (n_slices - 1) / 2 * spacing * normal)
    return SeriesGeometry(plane, origin, row_dir, col_dir, pixel, spacing, thickness, matrix, matrix, n_slices)


def _scene_grid(scene: Scene, geometry: SeriesGeometry, offset: float) -> torch.Tensor:
    """grid_sample coordinates [1, slices, rows, cols, 3] of the series voxels shifted ``offset`` mm along
    the slice normal, in the scene's normalised (k, j, i) order."""
    to_index = np.linalg.inv(scene.index_to_world()) @ geometry.index_to_world()
    to_index[:3, 3] += to_index[:3, 2] * (offset / geometry.slice_spacing)
    sizes = np.array(scene.grid.shape, dtype=np.float64)
    # align_corners=True: index 0 -> -1, index n-1 -> +1.
    norm = np.diag(np.append(2.0 / (sizes - 1.0), 1.0)) @ to_index
    norm[:3, 3] -= 1.0
    k, j, i = (torch.arange(n, dtype=torch.float32) for n in geometry.shape)
    a = torch.from_numpy(norm.astype(np.float32))
    axes = [a[d, 3] + a[d, 2] * k[:, None, None] + a[d, 1] * j[None, :, None] + a[d, 0] * i[None, None, :]
            for d in (2, 1, 0)]  # grid_sample wants (x=W=scene k, y=H=scene j, z=D=scene i)
    return torch.stack(axes, dim=-1)[None]


def sample_intensity(scene: Scene, intensity: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """Trilinear samples of a scene-grid ``intensity`` volume averaged through the slice profile."""
    volume = torch.from_numpy(intensity)[None, None]
    offsets = np.linspace(-1.0, 1.0, THROUGH_SLICE_SAMPLES) * geometry.slice_thickness / 3.0
    total = None
    with torch.inference_mode():
        for offset in offsets:
            part = torch.nn.functional.grid_sample(volume, _scene_grid(scene, geometry, float(offset)),
                                                   mode="bilinear", padding_mode="zeros", align_corners=True)
            total = part if total is None else total + part
    assert total is not None
    return (total[0, 0] / len(offsets)).numpy()


def sample_nearest(scene: Scene, volumes: tuple[np.ndarray, ...], geometry: SeriesGeometry) -> list[np.ndarray]:
    """Nearest-neighbour samples of scene-grid uint8 ``volumes`` at the slice centres (0 outside the scene)."""
    to_index = np.linalg.inv(scene.index_to_world()) @ geometry.index_to_world()
    k, j, i = (np.arange(n, dtype=np.float32) for n in geometry.shape)
    a = to_index.astype(np.float32)
    idx = [np.rint(a[d, 3] + a[d, 2] * k[:, None, None] + a[d, 1] * j[None, :, None] + a[d, 0] * i[None, None, :])
           .astype(np.int32) for d in range(3)]
    inside = np.ones(geometry.shape, dtype=bool)
    for d, n in enumerate(scene.grid.shape):
        inside &= (idx[d] >= 0) & (idx[d] < n)
        np.clip(idx[d], 0, n - 1, out=idx[d])
    flat = np.ravel_multi_index(idx, scene.grid.shape)
    return [np.where(inside, volume.ravel()[flat], 0).astype(np.uint8) for volume in volumes]
