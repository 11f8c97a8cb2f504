"""The model's input grid: source volume -> [1, D, S, S] in [-1, 1], and predictions back onto the source grid.

Conventions (one place, so that forward and inverse can never disagree):

* A source volume is a numpy array ``(slices, rows, cols)`` in the series' own slice order.
* Slice window (official): ``start = max(0, n // 2 - depth // 2)``; the ``depth`` slices from ``start`` are
  used; a series with fewer slices is zero-padded *after* its last slice (the official segmentation loader
  does this; its pretraining loader skips such series). A one-slice series becomes slice 0 of the model grid.
* In-plane orientation: each slice is turned by ``np.rot90(slice, k=rot90_k)`` before resizing. The official
  models were trained on NIfTI files written by dcm2niix (rows flipped) and read with nibabel as (i, j):
  that is ``model[h, w] = source[rows - 1 - w, h]``, i.e. ``rot90_k = 3``.
* Resampling uses pixel centres (half-pixel convention, ``align_corners=False``): output pixel ``j``
  samples input coordinate ``(j + 0.5) * n_in / n_out - 0.5``. Images: bilinear without antialiasing (as
  OpenCV's INTER_LINEAR in the official loader). Labels: nearest pixel centre (``nearest-exact``); OpenCV's
  INTER_NEAREST instead takes ``floor(j * n_in / n_out)``, which shifts masks by up to half a pixel against
  the image, so we deliberately use the centre-consistent rule in both directions.
* Intensity (official): ``2 * (v - min) / (max - min + 1e-8) - 1`` over the whole windowed, resized volume.
  A constant volume (e.g. all zero) carries no image and raises :class:`ConstantVolumeError` rather than
  silently becoming all -1 as in the official code.
* Inverse: a prediction on the model grid is resized back to the (rotated) slice size, turned back, and put
  at its source slices; source slices outside the window get label 0 / probability 0 ("not analysed").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Guards the min-max division exactly as the official transform does.
MINMAX_EPS = 1e-8


class ConstantVolumeError(ValueError):
    """The volume has a single intensity (typically all zero): there is nothing to analyse."""


@dataclass(frozen=True)
class PreprocessSpec:
    """The model input: ``depth`` slices of ``size`` x ``size`` pixels, slices turned by ``rot90_k``."""

    depth: int = 16
    size: int = 256
    rot90_k: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "slice_window": "centre, start = max(0, n//2 - depth//2), zero-pad after",
            "image_interpolation": "bilinear, align_corners=False, no antialias",
            "label_interpolation": "nearest-exact (pixel centres)",
            "intensity": "per-volume min-max to [-1, 1], eps 1e-8",
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class GridMapping:
    """Where a source volume of ``source_shape`` (slices, rows, cols) sits on the model grid."""

    source_shape: tuple[int, int, int]
    spec: PreprocessSpec

    @property
    def start(self) -> int:
        """First source slice used (it lands on model slice 0)."""
        return max(0, self.source_shape[0] // 2 - self.spec.depth // 2)

    @property
    def count(self) -> int:
        """Number of source slices on the model grid (the rest of the grid is padding)."""
        return min(self.spec.depth, self.source_shape[0])


def _validated(volume: np.ndarray, name: str) -> tuple[int, int, int]:
    if volume.ndim != 3 or 0 in volume.shape:
        raise ValueError(f"{name} must be a non-empty (slices, rows, cols) array, got shape {volume.shape}")
    return (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2]))


def _to_model_grid(x: torch.Tensor, mapping: GridMapping, mode: str) -> torch.Tensor:
    """[S, R, C] source tensor -> [D, size, size]: window, pad after, rotate, resize."""
    window = x[mapping.start : mapping.start + mapping.count]
    padding = mapping.spec.depth - mapping.count
    if padding:
        window = torch.cat([window, window.new_zeros((padding, *window.shape[1:]))])
    return _slices_to_model_grid(window, mapping.spec, mode)


def _slices_to_model_grid(x: torch.Tensor, spec: PreprocessSpec, mode: str) -> torch.Tensor:
    """[n, R, C] source slices -> [n, size, size]: rotate, resize (each slice on its own)."""
    oriented = torch.rot90(x, spec.rot90_k, dims=(-2, -1))
    return _resize(oriented, (spec.size, spec.size), mode)


def _to_source_grid(x: torch.Tensor, mapping: GridMapping, mode: str) -> torch.Tensor:
    """[N, D, size, size] model-grid tensor -> [N, S, R, C] on x's device; slices outside the window are 0."""
    n = x.shape[0]
    used = x[:, : mapping.count].reshape(n * mapping.count, *x.shape[-2:])
    # Turned back on the small grid, then resized: pixel-centre resampling is mirror-symmetric, so this equals
    # resizing first, and the quarter turn copies size**2 pixels instead of rows * cols.
    unturned = torch.rot90(used, -mapping.spec.rot90_k, dims=(-2, -1))
    restored = _resize(unturned, mapping.source_shape[1:], mode).reshape(n, mapping.count, *mapping.source_shape[1:])
    if mapping.count == mapping.source_shape[0]:
        return restored
    out = x.new_zeros((n, *mapping.source_shape))
    out[:, mapping.start : mapping.start + mapping.count] = restored
    return out


def _restore_maps(probabilities: torch.Tensor, mapping: GridMapping) -> torch.Tensor:
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be [K, depth, size, size], got {tuple(probabilities.shape)}")
    return _to_source_grid(probabilities.detach().to(torch.float32), mapping, "bilinear")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[N, h, w] floating tensor -> [N, *size] with the half-pixel convention."""
    if tuple(x.shape[-2:]) == size:
        return x
    align = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[:, None], size=size, mode=mode, antialias=False, **align)[:, 0]


def _finite_source(volume: np.ndarray) -> torch.Tensor:
    source = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))
    if not torch.isfinite(source).all():
        raise ValueError("volume contains NaN or infinite values")
    return source


def scale_intensity(image: torch.Tensor) -> torch.Tensor:
    """A resized window [D, size, size] (padding included) -> model input [1, D, size, size] float32 in [-1, 1].

    Raises:
        ConstantVolumeError: the window has a single intensity.
    """
    # Resized in float64, scaled in float32: the official order (cv2 on float64, then torch .float()).
    image = image.to(torch.float32)
    low, high = image.min(), image.max()
    if high == low:
        raise ConstantVolumeError(f"volume window of shape {tuple(image.shape)} has the single intensity {float(low)}")
    scaled = (image - low) / (high - low + MINMAX_EPS) * 2 - 1
    return scaled[None].contiguous()


def preprocess_volume(volume: np.ndarray, spec: PreprocessSpec | None = None) -> tuple[torch.Tensor, GridMapping]:
    """Source intensities (slices, rows, cols) -> model input [1, depth, size, size] float32 in [-1, 1].

    Raises:
        ValueError: wrong shape or non-finite values.
        ConstantVolumeError: the windowed volume has a single intensity.
    """
    spec = spec or PreprocessSpec()
    mapping = GridMapping(_validated(volume, "volume"), spec)
    return scale_intensity(_to_model_grid(_finite_source(volume), mapping, "bilinear")), mapping


def slices_to_model_grid(volume: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """Every source slice, rotated and resized to the model's size but not scaled: [slices, size, size] float32.

    A window of ``depth`` of these slices (zero-padded after the last) through :func:`scale_intensity` is what
    :func:`preprocess_volume` makes of that window.
    """
    _validated(volume, "volume")
    return _slices_to_model_grid(_finite_source(volume), spec, "bilinear").to(torch.float32)


def label_slices_to_model_grid(labels: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """Every slice of an integer label map on the model's size: [slices, size, size] int64."""
    _validated(labels, "labels")
    source = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.float32)  # exact for labels < 2**24
    return _slices_to_model_grid(source, spec, "nearest-exact").round().to(torch.int64)


def labels_to_model_grid(labels: np.ndarray, spec: PreprocessSpec | None = None) -> torch.Tensor:
    """Integer label map (slices, rows, cols) -> [depth, size, size] int64 on the model grid (padding 0)."""
    spec = spec or PreprocessSpec()
    mapping = GridMapping(_validated(labels, "labels"), spec)
    source = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.float32)  # exact for labels < 2**24
    return _to_model_grid(source, mapping, "nearest-exact").round().to(torch.int64)


def restore_labels(labels: torch.Tensor | np.ndarray, mapping: GridMapping) -> np.ndarray:
    """Label map on the model grid [depth, size, size] -> (slices, rows, cols) on the source grid.

    Returns: int64 array; source slices outside the window are 0 (background).
    """
    grid = torch.as_tensor(labels).detach().cpu().to(torch.float32)[None]
    return _to_source_grid(grid, mapping, "nearest-exact")[0].round().to(torch.int64).numpy()


def restore_probabilities(probabilities: torch.Tensor | np.ndarray, mapping: GridMapping) -> np.ndarray:
    """Per-class maps on the model grid [K, depth, size, size] -> float32 (K, slices, rows, cols), bilinear.

    Source slices outside the window are 0 for every class.
    """
    return _restore_maps(torch.as_tensor(probabilities), mapping).cpu().numpy()


def restore_argmax(probabilities: torch.Tensor, mapping: GridMapping) -> np.ndarray:
    """Per-class maps [K, depth, size, size] -> uint8 label map (slices, rows, cols): the most probable class
    of :func:`restore_probabilities`, computed on the maps' own device (a GPU keeps the K full-size maps off
    the CPU) so that only the labels travel back. Source slices outside the window are 0 (background)."""
    restored = _restore_maps(probabilities, mapping)
    # max(...).indices: the same first-maximum rule as argmax, several times faster over the leading axis on CPU.
    return restored.max(dim=0).indices.to(torch.uint8).cpu().numpy()
