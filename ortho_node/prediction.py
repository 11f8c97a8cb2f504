"""What the model says about one study: the contract between inference and the result objects.

The predictor produces a :class:`StudyPrediction`; ``reports`` turns it into DICOM-SEG, SR and summary
objects. Masks are already on each source series' own pixel grid: axis 0 follows ``slices``, which names
the source image (and frame, for multi-frame images) each mask slice belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ortho_node.labels import DIAGNOSIS_LABELS, Joint, Plane


class StudyNotAnalysable(ValueError):
    """The study's content rules out analysis (a joint without a model, no usable plane): retrying the job
    cannot help, so the scheduler fails it at once instead of backing off ``max_attempts`` times."""


@dataclass(frozen=True)
class SliceRef:
    """One mask slice's source: a stored image and, for multi-frame images, its 1-based frame number."""

    sop_instance_uid: str
    path: Path
    frame_number: int | None = None


@dataclass(frozen=True)
class SeriesSegmentation:
    """A label map on one source series' grid; value k means ``structures[k]`` (0 is background)."""

    series_instance_uid: str
    plane: Plane
    slices: tuple[SliceRef, ...]
    mask: np.ndarray  # uint8, (len(slices), Rows, Columns)
    structures: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.mask.ndim != 3 or self.mask.shape[0] != len(self.slices):
            raise ValueError(f"mask shape {self.mask.shape} does not match {len(self.slices)} source slices")
        if self.mask.dtype != np.uint8:
            raise ValueError(f"mask must be uint8, got {self.mask.dtype}")
        if self.mask.size and int(self.mask.max()) >= len(self.structures):
            raise ValueError("mask holds a label value without a structure name")


@dataclass(frozen=True)
class Finding:
    """One diagnosis label: probability, the decision at the model's operating threshold, plane weights."""

    label: str
    probability: float
    threshold: float
    plane_weights: dict[Plane, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability of {self.label} outside [0, 1]: {self.probability}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold of {self.label} outside (0, 1): {self.threshold}")

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class ModelIdentity:
    """Algorithm identification carried into every result object."""

    name: str
    version: str
    card: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPrediction:
    """One study's results. ``segmentations`` has an entry per analysed series: the knee's label maps, and
    for diagnosis-only joints an empty map (structures ``("background",)``) that names the source images."""

    study_instance_uid: str
    joint: Joint
    laterality: str | None  # "R", "L" or None when unknown
    segmentations: tuple[SeriesSegmentation, ...]
    findings: tuple[Finding, ...]
    model: ModelIdentity

    def __post_init__(self) -> None:
        expected = DIAGNOSIS_LABELS.get(self.joint, ())
        labels = tuple(f.label for f in self.findings)
        if labels and labels != expected:
            raise ValueError(f"findings {labels} do not follow the {self.joint.value} label order {expected}")
        if self.laterality not in (None, "R", "L"):
            raise ValueError(f"laterality must be R, L or None, got {self.laterality!r}")
