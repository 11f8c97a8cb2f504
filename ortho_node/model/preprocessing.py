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
* Intensity (official, ``Normalisation.MINMAX``): ``2 * (v - min) / (max - min + 1e-8) - 1`` over the whole
  windowed, resized volume. A constant volume (e.g. all zero) carries no image and raises
  :class:`ConstantVolumeError` rather than silently becoming all -1 as in the official code.
  ``Normalisation.PERCENTILE`` (a card field) puts the window's ``percentiles`` (e.g. 0.5 and 99.5) at -1 and
  1 and clips, so one bright artefact voxel does not crush the tissue contrast.
* Joint-centred crop (a card field, ``crop_mm``; None = the official whole field of view): per series, a
  ``crop_mm`` x ``crop_mm`` in-plane window (:class:`CropBox`, whole source pixels, zero outside the image)
  around :func:`foreground_centre` is what is turned and resized onto the model grid, so every field of view
  gives the anatomy one scale. One box per series: every window of the series sees the same crop.
* Inverse: a prediction on the model grid is resized back to the (rotated) slice or crop size, turned back,
  and put at its source slices and pixels; source slices outside the window and pixels outside the crop get
  label 0 / probability 0 ("not analysed": background).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Guards the min-max division exactly as the official transform does.
MINMAX_EPS = 1e-8
#: torch.quantile's input limit; larger windows are subsampled (evenly strided) for their percentiles.
_QUANTILE_MAX = 1 << 24


class ConstantVolumeError(ValueError):
    """The volume has a single intensity (typically all zero): there is nothing to analyse."""


class Orientation(str, enum.Enum):
    """How a series' stored array is laid out before it goes on the model grid."""

    STORED = "stored"  # official: as the scanner stored it
    CANONICAL = "canonical"  # one patient-aligned layout per plane, a left joint mirrored (inference.orientation)


class Normalisation(str, enum.Enum):
    """How a window's intensities become [-1, 1]."""

    MINMAX = "minmax"  # official: the window's minimum and maximum
    PERCENTILE = "percentile"  # the window's low and high percentiles, values beyond them clipped


@dataclass(frozen=True)
class PreprocessSpec:
    """The model input: ``depth`` slices of ``size`` x ``size`` pixels, slices turned by ``rot90_k``;
    intensities by ``normalisation`` (``percentiles`` for ``PERCENTILE``); ``crop_mm``: the in-plane extent
    around the joint the grid covers (None: the whole field of view); ``orientation``: the series as stored or
    in the canonical layout. Defaults: the official preprocessing, which cards written before these fields
    existed keep."""

    depth: int = 16
    size: int = 256
    rot90_k: int = 3
    normalisation: Normalisation = Normalisation.MINMAX
    percentiles: tuple[float, float] = (0.5, 99.5)
    crop_mm: float | None = None
    orientation: Orientation = Orientation.STORED

    def __post_init__(self) -> None:
        if self.depth < 1 or self.size < 1:
            raise ValueError(f"preprocessing depth and size must be positive, got {self.depth} and {self.size}")
        try:
            object.__setattr__(self, "orientation", Orientation(self.orientation))
        except ValueError:
            known = ", ".join(repr(o.value) for o in Orientation)
            raise ValueError(f"unknown orientation {self.orientation!r} (known: {known})") from None
        try:
            object.__setattr__(self, "normalisation", Normalisation(self.normalisation))
        except ValueError:
            known = ", ".join(repr(n.value) for n in Normalisation)
            raise ValueError(f"unknown intensity normalisation {self.normalisation!r} (known: {known})") from None
        low, high = (float(p) for p in self.percentiles)  # exactly two
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 100.0):
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (low, high))
        if self.crop_mm is not None:
            if isinstance(self.crop_mm, bool) or not (math.isfinite(self.crop_mm) and self.crop_mm > 0):
                raise ValueError(f"crop_mm must be a positive number of millimetres or None, got {self.crop_mm!r}")
            object.__setattr__(self, "crop_mm", float(self.crop_mm))

    def _intensity_note(self) -> str:
        if self.normalisation is Normalisation.MINMAX:
            return "per-volume min-max to [-1, 1], eps 1e-8"
        low, high = self.percentiles
        return f"per-volume percentiles {low:g} and {high:g} to [-1, 1], clipped (min-max if they coincide)"

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "normalisation": self.normalisation.value,
            "percentiles": list(self.percentiles),
            "orientation": self.orientation.value,
            "slice_window": "centre, start = max(0, n//2 - depth//2), zero-pad after",
            "image_interpolation": "bilinear, align_corners=False, no antialias",
            "label_interpolation": "nearest-exact (pixel centres)",
            "intensity": self._intensity_note(),
            "crop": ("whole field of view" if self.crop_mm is None else
                     f"{self.crop_mm:g} mm square in-plane window around the foreground centroid of the series"),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessSpec:
        """The spec of a card's ``preprocessing`` (descriptive keys ignored; absent fields: the official).

        Raises:
            ValueError: an unknown normalisation, bad percentiles or a non-positive crop.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "percentiles" in kwargs:
            percentiles = kwargs["percentiles"]
            if not isinstance(percentiles, (list, tuple)) or len(percentiles) != 2:
                raise ValueError(f"percentiles must be a pair (low, high), got {percentiles!r}")
            kwargs["percentiles"] = tuple(percentiles)
        return cls(**kwargs)


@dataclass(frozen=True)
class CropBox:
    """An in-plane window of a source series, in whole source pixels: rows ``[row0, row0 + rows)`` and columns
    ``[col0, col0 + cols)``; it may reach beyond the image (read as zero there)."""

    row0: int
    col0: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"a crop box needs at least one row and column, got {self.rows} x {self.cols}")


def foreground_centre(volume: np.ndarray) -> tuple[float, float]:
    """(row, col) centroid of a series' foreground: the pixels above the series' mean intensity, over all its
    slices (the limb, not the air around it; one voxel of artefact moves it by a hair). The image centre when
    no pixel is above the mean (a constant series)."""
    _validated(volume, "volume")
    values = np.asarray(volume, dtype=np.float64)
    foreground = (values > values.mean()).sum(axis=0)
    total = float(foreground.sum())
    if total == 0.0:
        return ((volume.shape[1] - 1) / 2, (volume.shape[2] - 1) / 2)
    rows, cols = np.arange(volume.shape[1]), np.arange(volume.shape[2])
    return (float(foreground.sum(axis=1) @ rows) / total, float(foreground.sum(axis=0) @ cols) / total)


def crop_box(source_shape: tuple[int, int, int], pixel_spacing: tuple[float, float], crop_mm: float,
             centre: tuple[float, float]) -> CropBox:
    """The ``crop_mm`` x ``crop_mm`` window (whole pixels) centred as near ``centre`` (row, col) as the pixel
    lattice allows; ``pixel_spacing`` is DICOM's (between rows, between columns) in mm."""
    if not all(math.isfinite(s) and s > 0 for s in pixel_spacing):
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing}")
    rows = max(1, round(crop_mm / pixel_spacing[0]))
    cols = max(1, round(crop_mm / pixel_spacing[1]))
    # The box's centre ((row0 + (rows - 1) / 2) in pixel units) nearest the requested one.
    return CropBox(math.floor(centre[0] - (rows - 1) / 2 + 0.5), math.floor(centre[1] - (cols - 1) / 2 + 0.5),
                   rows, cols)


def plan_crop(volume: np.ndarray, spec: PreprocessSpec, pixel_spacing: tuple[float, float]) -> CropBox | None:
    """The crop ``spec`` asks for on this series (None: the whole field of view, the official)."""
    if spec.crop_mm is None:
        return None
    return crop_box(_validated(volume, "volume"), pixel_spacing, spec.crop_mm, foreground_centre(volume))


@dataclass(frozen=True)
class GridMapping:
    """Where a source volume of ``source_shape`` (slices, rows, cols) sits on the model grid; ``crop``: the
    in-plane window the grid covers (None: every pixel)."""

    source_shape: tuple[int, int, int]
    spec: PreprocessSpec
    crop: CropBox | None = None

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


def _overlap(start: int, length: int, size: int) -> tuple[int, int]:
    """The part [a, b) of the box range [start, start + length) that lies within [0, size)."""
    return min(max(start, 0), size), max(min(start + length, size), 0)


def _crop(x: torch.Tensor, crop: CropBox | None) -> torch.Tensor:
    """[n, R, C] -> [n, crop.rows, crop.cols]: the box's pixels, zero where it reaches beyond the image."""
    if crop is None:
        return x
    (r0, r1), (c0, c1) = _overlap(crop.row0, crop.rows, x.shape[-2]), _overlap(crop.col0, crop.cols, x.shape[-1])
    if (r0, r1, c0, c1) == (crop.row0, crop.row0 + crop.rows, crop.col0, crop.col0 + crop.cols):
        return x[..., r0:r1, c0:c1]
    out = x.new_zeros((*x.shape[:-2], crop.rows, crop.cols))
    if r1 > r0 and c1 > c0:
        out[..., r0 - crop.row0 : r1 - crop.row0, c0 - crop.col0 : c1 - crop.col0] = x[..., r0:r1, c0:c1]
    return out


def _uncrop(x: torch.Tensor, crop: CropBox | None, shape: tuple[int, int]) -> torch.Tensor:
    """[..., crop.rows, crop.cols] -> [..., *shape]: the box put back at its pixels, zero elsewhere."""
    if crop is None:
        return x
    out = x.new_zeros((*x.shape[:-2], *shape))
    (r0, r1), (c0, c1) = _overlap(crop.row0, crop.rows, shape[0]), _overlap(crop.col0, crop.cols, shape[1])
    if r1 > r0 and c1 > c0:
        out[..., r0:r1, c0:c1] = x[..., r0 - crop.row0 : r1 - crop.row0, c0 - crop.col0 : c1 - crop.col0]
    return out


def _check_crop(spec: PreprocessSpec, crop: CropBox | None) -> None:
    if spec.crop_mm is not None and crop is None:
        raise ValueError(f"this preprocessing crops {spec.crop_mm:g} mm around the joint: pass the series' "
                         "crop=plan_crop(volume, spec, pixel_spacing)")


def _to_model_grid(x: torch.Tensor, mapping: GridMapping, mode: str) -> torch.Tensor:
    """[S, R, C] source tensor -> [D, size, size]: window, pad after, crop, rotate, resize."""
    window = x[mapping.start : mapping.start + mapping.count]
    padding = mapping.spec.depth - mapping.count
    if padding:
        window = torch.cat([window, window.new_zeros((padding, *window.shape[1:]))])
    return _slices_to_model_grid(window, mapping.spec, mode, mapping.crop)


def _slices_to_model_grid(x: torch.Tensor, spec: PreprocessSpec, mode: str, crop: CropBox | None = None
                          ) -> torch.Tensor:
    """[n, R, C] source slices -> [n, size, size]: crop, rotate, resize (each slice on its own)."""
    oriented = torch.rot90(_crop(x, crop), spec.rot90_k, dims=(-2, -1))
    return _resize(oriented, (spec.size, spec.size), mode)


def _to_source_grid(x: torch.Tensor, mapping: GridMapping, mode: str) -> torch.Tensor:
    """[N, D, size, size] model-grid tensor -> [N, S, R, C] on x's device; slices outside the window and
    pixels outside the crop are 0."""
    n = x.shape[0]
    used = x[:, : mapping.count].reshape(n * mapping.count, *x.shape[-2:])
    rows_cols = mapping.source_shape[1:]
    covered = rows_cols if mapping.crop is None else (mapping.crop.rows, mapping.crop.cols)
    # Turned back on the small grid, then resized: pixel-centre resampling is mirror-symmetric, so this equals
    # resizing first, and the quarter turn copies size**2 pixels instead of rows * cols.
    unturned = torch.rot90(used, -mapping.spec.rot90_k, dims=(-2, -1))
    restored = _uncrop(_resize(unturned, covered, mode), mapping.crop, rows_cols)
    restored = restored.reshape(n, mapping.count, *rows_cols)
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


def _percentiles(image: torch.Tensor, percentiles: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = image.reshape(-1)
    if flat.numel() > _QUANTILE_MAX:
        flat = flat[:: -(-flat.numel() // _QUANTILE_MAX)]
    q = torch.tensor([p / 100.0 for p in percentiles], dtype=flat.dtype, device=flat.device)
    low, high = torch.quantile(flat, q)
    return low, high


def scale_intensity(image: torch.Tensor, spec: PreprocessSpec | None = None) -> torch.Tensor:
    """A resized window [D, size, size] (padding included) -> model input [1, D, size, size] float32 in [-1, 1],
    by ``spec.normalisation`` (default: the official min-max).

    Raises:
        ConstantVolumeError: the window has a single intensity.
    """
    # Resized in float64, scaled in float32: the official order (cv2 on float64, then torch .float()).
    image = image.to(torch.float32)
    low, high = image.min(), image.max()
    if high == low:
        raise ConstantVolumeError(f"volume window of shape {tuple(image.shape)} has the single intensity {float(low)}")
    if spec is not None and spec.normalisation is Normalisation.PERCENTILE:
        p_low, p_high = _percentiles(image, spec.percentiles)
        if p_high > p_low:  # else (mostly padding or one value): the min-max below
            return ((image - p_low) / (p_high - p_low) * 2 - 1).clamp_(-1.0, 1.0)[None].contiguous()
    scaled = (image - low) / (high - low + MINMAX_EPS) * 2 - 1
    return scaled[None].contiguous()


def preprocess_volume(volume: np.ndarray, spec: PreprocessSpec | None = None, *,
                      crop: CropBox | None = None) -> tuple[torch.Tensor, GridMapping]:
    """Source intensities (slices, rows, cols) -> model input [1, depth, size, size] float32 in [-1, 1].

    ``crop``: the series' :func:`plan_crop` (required when ``spec.crop_mm`` is set).

    Raises:
        ValueError: wrong shape, non-finite values, or a cropping spec without its crop.
        ConstantVolumeError: the windowed volume has a single intensity.
    """
    spec = spec or PreprocessSpec()
    _check_crop(spec, crop)
    mapping = GridMapping(_validated(volume, "volume"), spec, crop)
    return scale_intensity(_to_model_grid(_finite_source(volume), mapping, "bilinear"), spec), mapping


def slices_to_model_grid(volume: np.ndarray, spec: PreprocessSpec, *, crop: CropBox | None = None) -> torch.Tensor:
    """Every source slice, cropped, rotated and resized to the model's size but not scaled: [slices, size, size]
    float32.

    A window of ``depth`` of these slices (zero-padded after the last) through :func:`scale_intensity` is what
    :func:`preprocess_volume` makes of that window.
    """
    _validated(volume, "volume")
    _check_crop(spec, crop)
    return _slices_to_model_grid(_finite_source(volume), spec, "bilinear", crop).to(torch.float32)


def label_slices_to_model_grid(labels: np.ndarray, spec: PreprocessSpec, *, crop: CropBox | None = None
                               ) -> torch.Tensor:
    """Every slice of an integer label map on the model's size: [slices, size, size] int64."""
    _validated(labels, "labels")
    _check_crop(spec, crop)
    source = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.float32)  # exact for labels < 2**24
    return _slices_to_model_grid(source, spec, "nearest-exact", crop).round().to(torch.int64)


def labels_to_model_grid(labels: np.ndarray, spec: PreprocessSpec | None = None, *,
                         crop: CropBox | None = None) -> torch.Tensor:
    """Integer label map (slices, rows, cols) -> [depth, size, size] int64 on the model grid (padding 0)."""
    spec = spec or PreprocessSpec()
    _check_crop(spec, crop)
    mapping = GridMapping(_validated(labels, "labels"), spec, crop)
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
