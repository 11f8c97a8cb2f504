"""Domain-randomisation ranges: how far contrast, noise, bias, resolution and geometry vary per study."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DomainRandomization:
    """Ranges sampled per study / series. ``DomainRandomization()`` is the training default;
    ``DomainRandomization.fixed()`` removes the variation (mid-range values) for debugging and demos.

    Attributes:
        contrast_jitter: log-normal sigma applied to each tissue's signal, and to TE/TR within protocol ranges.
        snr: (min, max) signal-to-noise ratio of the brightest tissue at 1.5 T (3 T gets 1.6x).
        bias_strength: peak relative amplitude of the smooth multiplicative bias field.
        blur_px: (min, max) in-plane Gaussian blur sigma in pixels (finite k-space sampling).
        fov_mm: (min, max) square in-plane field of view.
        pixel_mm: allowed pixel size range; the matrix is drawn from ``matrices`` so the pixel falls in it.
        matrices: acquisition/reconstruction matrix sizes.
        slice_thickness_mm: (min, max) slice thickness.
        slice_gap: (min, max) gap as a fraction of the thickness.
        obliquity_deg: maximum random tilt of each series about each axis.
        field_strengths: scanner field strengths (T) to choose from.
        texture: relative amplitude of tissue texture (trabecular bone, muscle fibres).
    """

    contrast_jitter: float = 0.12
    snr: tuple[float, float] = (14.0, 35.0)
    bias_strength: float = 0.3
    blur_px: tuple[float, float] = (0.4, 1.0)
    fov_mm: tuple[float, float] = (140.0, 170.0)
    pixel_mm: tuple[float, float] = (0.3, 0.6)
    matrices: tuple[int, ...] = (256, 320, 384, 448, 512)
    slice_thickness_mm: tuple[float, float] = (3.0, 4.0)
    slice_gap: tuple[float, float] = (0.1, 0.3)
    obliquity_deg: float = 5.0
    field_strengths: tuple[float, ...] = (1.5, 3.0)
    texture: float = 0.25

    @classmethod
    def fixed(cls) -> DomainRandomization:
        """No variation: mid-range contrast, 3 T, no obliquity, 320 matrix at 150 mm, 3.5 mm slices."""
        return cls(contrast_jitter=0.0, snr=(30.0, 30.0), bias_strength=0.0, blur_px=(0.6, 0.6),
                   fov_mm=(150.0, 150.0), matrices=(320,), slice_thickness_mm=(3.5, 3.5), slice_gap=(0.15, 0.15),
                   obliquity_deg=0.0, field_strengths=(3.0,), texture=0.15)
