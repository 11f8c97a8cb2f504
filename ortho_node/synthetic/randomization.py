"""SynthSeg-style randomised rendering: any contrast and resolution from a label map on a series grid.

Billot et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution without retraining"
(Medical Image Analysis 2023): each class's intensities come from a Gaussian whose mean and standard deviation
are themselves random, so a model trained on them must use shape, not contrast. The steps, in order, are
:func:`render_randomized`'s; field of view, in-plane rotation and flips change the series geometry instead
(``randomized_study.randomize_geometry``), so labels, image and DICOM header stay consistent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ortho_node.synthetic.deformation import RandomDeformation

#: FWHM of a Gaussian = this many sigmas; a slice of thickness t averages about a FWHM of t.
_FWHM = 2.3548
#: Blur sigmas (voxels) below this change nothing measurable and are skipped.
_MIN_SIGMA = 0.2
#: Coarse control grid of the bias field per axis (a coil's sensitivity varies over ~10 cm).
_BIAS_GRID = (3, 4, 4)


def _ordered(name: str, pair: tuple[float, float], lo: float, hi: float) -> None:
    if not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(f"{name} must be an ordered (min, max) within [{lo}, {hi}], got {pair}")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


@dataclasses.dataclass(frozen=True)
class RandomizedAppearance:
    """Ranges of the randomised rendering, drawn per series (all uniform unless stated).

    Attributes:
        mean: range of each class's mean intensity (arbitrary units, SynthSeg's 0-255).
        std: range of each class's intensity standard deviation (same units).
        texture_amplitude: maximum of each class's smooth texture (trabeculae, muscle striation, fat lobules),
            relative to its mean; each class draws its own amplitude in [0, this].
        texture_mm: range of the texture's feature size (one size per series, shared by the classes).
        shared_muscle_probability: chance that all muscle compartments share one class (as muscles look alike
            on real images) instead of one each (so no contrast between muscles can be relied on either).
        inversion_probability: chance the normalised image is inverted (1 - x).
        bias_std: maximum standard deviation of the log bias field at its coarse control points.
        slice_thickness_mm: slice thickness simulated along the slice axis (partial-volume blur and
            down-sampling to that spacing, then back to the label grid).
        pixel_mm: in-plane pixel size simulated the same way (no effect below the grid's own pixel).
        gamma_std: standard deviation of log(gamma).
        noise_std: range of the noise standard deviation relative to the normalised image's maximum.
        rician_probability: chance the noise is Rician (magnitude of complex Gaussian); else Gaussian.
        ghost_probability: chance of motion ghosts: faint copies shifted along the phase direction.
        ghost_amplitude: range of the ghosts' total amplitude relative to the image.
        fov_mm: square in-plane field of view (small-FOV coil to wide); the matrix stays, the pixel changes.
        centre_shift_mm: maximum in-plane shift of the field-of-view centre along each in-plane axis.
        rotation_deg: maximum in-plane rotation of sagittal and coronal series (superior stays up).
        axial_rotation_deg: maximum in-plane rotation of axial series (the limb may lie turned).
        flip_probability: chance the row direction is reversed (mirror image left-right on screen; never
            upside down, which no protocol prescribes).
        deformation: ranges of the affine and smooth non-linear deformation of the anatomy, per study.
    """

    mean: tuple[float, float] = (0.0, 255.0)
    std: tuple[float, float] = (0.0, 35.0)
    texture_amplitude: float = 0.35
    texture_mm: tuple[float, float] = (1.5, 12.0)
    shared_muscle_probability: float = 0.5
    inversion_probability: float = 0.25
    bias_std: float = 0.4
    slice_thickness_mm: tuple[float, float] = (0.5, 6.0)
    pixel_mm: tuple[float, float] = (0.3, 1.2)
    gamma_std: float = 0.4
    noise_std: tuple[float, float] = (0.0, 0.06)
    rician_probability: float = 0.5
    ghost_probability: float = 0.3
    ghost_amplitude: tuple[float, float] = (0.03, 0.2)
    fov_mm: tuple[float, float] = (100.0, 200.0)
    centre_shift_mm: float = 15.0
    rotation_deg: float = 15.0
    axial_rotation_deg: float = 30.0
    flip_probability: float = 0.5
    deformation: RandomDeformation = dataclasses.field(default_factory=RandomDeformation)

    def __post_init__(self) -> None:
        _ordered("mean", self.mean, 0.0, 1e4)
        _ordered("std", self.std, 0.0, 1e4)
        _ordered("texture_mm", self.texture_mm, 0.1, 100.0)
        _ordered("slice_thickness_mm", self.slice_thickness_mm, 0.1, 20.0)
        _ordered("pixel_mm", self.pixel_mm, 0.05, 5.0)
        _ordered("noise_std", self.noise_std, 0.0, 1.0)
        _ordered("ghost_amplitude", self.ghost_amplitude, 0.0, 1.0)
        _ordered("fov_mm", self.fov_mm, 20.0, 600.0)
        for name in ("inversion_probability", "rician_probability", "ghost_probability", "flip_probability",
                     "shared_muscle_probability"):
            _probability(name, getattr(self, name))
        for name, hi in (("texture_amplitude", 1.0), ("bias_std", 2.0), ("gamma_std", 1.0), ("centre_shift_mm", 100.0), ("rotation_deg", 90.0),
                         ("axial_rotation_deg", 180.0)):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ValueError(f"{name} must be in [0, {hi}], got {getattr(self, name)}")
        if self.mean[1] <= 0.0:
            raise ValueError("mean's maximum must be positive: an all-zero image has no contrast")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ranges (for a model card's recipe)."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        values["deformation"] = self.deformation.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RandomizedAppearance:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown randomised-appearance fields {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k != "deformation"}
        if "deformation" in values:
            kwargs["deformation"] = RandomDeformation(**{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in values["deformation"].items()})
        return cls(**kwargs)


def class_intensities(n_classes: int, rng: np.random.Generator, appearance: RandomizedAppearance
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(means, stds) of each class's Gaussian, float32 [n_classes] each."""
    means = rng.uniform(*appearance.mean, n_classes).astype(np.float32)
    stds = rng.uniform(*appearance.std, n_classes).astype(np.float32)
    return means, stds


def _compact(classes: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of distinct values, each voxel's rank among them in ascending order)."""
    if classes.min() >= 0 and classes.max() < 1 << 16:
        # A presence table is much faster than np.unique's sort on the tens of millions of voxels of a slab.
        present = np.bincount(classes.ravel(), minlength=1 << 16) > 0
        rank = np.cumsum(present) - 1
        return int(present.sum()), rank.astype(np.int32)[classes]
    values, index = np.unique(classes, return_inverse=True)
    return len(values), index.reshape(classes.shape)


def texture_field(shape: tuple[int, ...], spacing: tuple[float, float, float], rng: np.random.Generator,
                  appearance: RandomizedAppearance) -> np.ndarray:
    """A smooth zero-mean field of unit standard deviation whose features are about a random size (mm):
    a Gaussian grid of that spacing, interpolated trilinearly."""
    size = rng.uniform(*appearance.texture_mm)
    coarse = tuple(max(2, round(n * s / size) + 1) for n, s in zip(shape, spacing))
    field = _resample(rng.standard_normal(coarse).astype(np.float32), shape)
    field -= np.float32(field.mean())
    return field / np.float32(max(float(field.std()), 1e-6))


def _mixture_image(classes: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                   appearance: RandomizedAppearance) -> np.ndarray:
    """Each voxel drawn from its class's Gaussian, modulated by the class's share of one smooth texture (real
    tissue is not uniform: a model must not take a uniform region for bone); classes are numbered in
    ascending label order."""
    n_classes, index = _compact(classes)
    means, stds = class_intensities(n_classes, rng, appearance)
    amplitudes = (means * rng.uniform(0.0, appearance.texture_amplitude, n_classes)).astype(np.float32)
    image = means[index] + amplitudes[index] * texture_field(classes.shape, spacing, rng, appearance)
    image += stds[index] * rng.standard_normal(classes.shape, dtype=np.float32)
    return np.maximum(image, 0.0, out=image)  # a magnitude image has no negative values


def _resample(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=shape, mode="trilinear",
                                              align_corners=True)
    return out[0, 0].numpy()


def _resolution(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                appearance: RandomizedAppearance) -> np.ndarray:
    """Blur to a random slice thickness and in-plane pixel (partial volume), sample at that resolution, and
    interpolate back to the grid: the label grid is kept, the detail is not."""
    thickness = rng.uniform(*appearance.slice_thickness_mm)
    pixel = rng.uniform(*appearance.pixel_mm)
    target = (thickness, pixel, pixel)
    sigma = [max(t * t - s * s, 0.0) ** 0.5 / _FWHM / s for t, s in zip(target, spacing)]  # on top of the grid's own
    sigma = [s if s >= _MIN_SIGMA else 0.0 for s in sigma]
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    low = tuple(max(2, round(n * s / max(t, s))) for n, s, t in zip(image.shape, spacing, target))
    if low != image.shape:
        image = _resample(_resample(image, low), image.shape)
    return image


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, appearance: RandomizedAppearance) -> np.ndarray:
    """A smooth multiplicative field (exp of a trilinearly up-sampled coarse Gaussian grid)."""
    coarse = rng.standard_normal(_BIAS_GRID).astype(np.float32) * np.float32(rng.uniform(0.0, appearance.bias_std))
    return np.exp(_resample(coarse, shape))


def _normalise(image: np.ndarray) -> np.ndarray:
    top = float(image.max())
    return image / np.float32(top) if top > 0 else image


def _ghosts(image: np.ndarray, rng: np.random.Generator, appearance: RandomizedAppearance) -> np.ndarray:
    """Motion-like ghosts: one or two faint copies of each slice shifted along the phase-encoding axis."""
    if rng.random() >= appearance.ghost_probability:
        return image
    axis = int(rng.integers(1, 3))  # rows or columns: the phase direction is either in-plane axis
    copies = int(rng.integers(1, 3))
    amplitude = rng.uniform(*appearance.ghost_amplitude) / copies
    n = image.shape[axis]
    shifts = rng.integers(max(1, n // 8), max(2, n // 2), copies) * rng.choice([-1, 1], copies)
    ghosted = image.copy()
    for shift in shifts:
        ghosted += np.float32(amplitude) * np.roll(image, int(shift), axis=axis)
    return _normalise(ghosted)


def _noise(image: np.ndarray, rng: np.random.Generator, appearance: RandomizedAppearance) -> np.ndarray:
    sigma = np.float32(rng.uniform(*appearance.noise_std))
    rician = rng.random() < appearance.rician_probability
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    if not rician:
        return np.maximum(real, 0.0, out=real)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def render_randomized(classes: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                      appearance: RandomizedAppearance | None = None, *, keep_slices: slice | None = None
                      ) -> np.ndarray:
    """A randomised image of a class map: float32, same grid, about [0, 1].

    Args:
        classes: integer class map [slices, rows, cols]; each distinct value gets its own random Gaussian
            (the study layer gives every (structure, appearance) pair of the scene its own value).
        spacing: (slice spacing, row spacing, column spacing) in mm.
        rng: every random choice comes from it (same state -> same image).
        appearance: the ranges; default ``RandomizedAppearance()``.
        keep_slices: return only these slices (after the resolution step, so a finely sampled slab can be
            blurred through and the label grid's slices kept; later steps then cost less).
    """
    if classes.ndim != 3 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be a 3D integer array, got {classes.dtype} {classes.shape}")
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    appearance = appearance or RandomizedAppearance()
    image = _mixture_image(classes, spacing, rng, appearance)
    image = _resolution(image, spacing, rng, appearance)
    if keep_slices is not None:
        image = np.ascontiguousarray(image[keep_slices])
    image = _normalise(image * bias_field(image.shape, rng, appearance))
    if rng.random() < appearance.inversion_probability:
        image = 1.0 - image
    image = np.power(image, np.float32(np.exp(rng.normal(0.0, appearance.gamma_std))))
    image = _ghosts(image, rng, appearance)
    return _noise(image, rng, appearance).astype(np.float32, copy=False)
