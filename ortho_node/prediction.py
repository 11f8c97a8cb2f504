"""What the model says about one study: the contract between inference and the result objects.

The predictor produces a :class:`StudyPrediction`; ``reports`` turns it into DICOM-SEG, SR and summary
objects. Masks are already on each source series' own pixel grid: axis 0 follows ``slices``, which names
the source image (and frame, for multi-frame images) each mask slice belongs to.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
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


class ThresholdRule(str, enum.Enum):
    """How a label's operating threshold was chosen on the validation studies."""

    #: The lowest threshold whose specificity meets the target (1 - false-positive budget / labels).
    TARGET_SPECIFICITY = "target_specificity"
    #: The threshold maximising sensitivity + specificity (Youden's J): cards written before operating points.
    YOUDEN = "youden"
    #: A fixed threshold: the validation studies held no positive or no negative case of the label.
    FALLBACK = "fallback"


def _fraction(value: float | None, name: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} outside [0, 1]: {value}")


@dataclass(frozen=True)
class SplitFigures:
    """Sensitivity and specificity of one label at its threshold on one set of studies, with the positive and
    negative studies counted (None where unknown); a figure is None where the set has no study to measure it."""

    sensitivity: float | None
    specificity: float | None
    positives: int | None = None
    negatives: int | None = None

    def __post_init__(self) -> None:
        _fraction(self.sensitivity, "sensitivity")
        _fraction(self.specificity, "specificity")
        if any(n is not None and n < 0 for n in (self.positives, self.negatives)):
            raise ValueError(f"negative study counts: {self.positives}, {self.negatives}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SplitFigures:
        return cls(values.get("sensitivity"), values.get("specificity"), values.get("positives"),
                   values.get("negatives"))


@dataclass(frozen=True)
class OperatingPoint:
    """How one label's threshold was chosen and what it does: the model card's record, carried by each finding.

    ``fp_budget`` is the false positives one normal study may collect over all the joint's labels, and
    ``target_specificity`` (1 - budget / labels) what each label must reach on the validation studies;
    ``target_met`` is False where no threshold did (or a fallback was taken, ``note`` says why)."""

    rule: ThresholdRule
    validation: SplitFigures
    target_specificity: float | None = None
    fp_budget: float | None = None
    test: SplitFigures | None = None
    target_met: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        _fraction(self.target_specificity, "target specificity")
        if self.fp_budget is not None and not (self.fp_budget >= 0 and math.isfinite(self.fp_budget)):
            raise ValueError(f"false-positive budget must be a finite number >= 0, got {self.fp_budget}")

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"rule": self.rule.value, "validation": self.validation.to_dict(),
                                  "target_met": self.target_met}
        for name in ("target_specificity", "fp_budget", "note"):
            if getattr(self, name):
                values[name] = getattr(self, name)
        if self.test is not None:
            values["test"] = self.test.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OperatingPoint:
        test = values.get("test")
        return cls(ThresholdRule(values["rule"]), SplitFigures.from_dict(values["validation"]),
                   values.get("target_specificity"), values.get("fp_budget"),
                   None if test is None else SplitFigures.from_dict(test), bool(values.get("target_met", True)),
                   values.get("note", ""))


@dataclass(frozen=True)
class Finding:
    """One diagnosis label: probability, the decision at the model's operating threshold, plane weights, and
    the card's record of that threshold (None for cards that have none)."""

    label: str
    probability: float
    threshold: float
    plane_weights: dict[Plane, float] | None = None
    operating_point: OperatingPoint | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability of {self.label} outside [0, 1]: {self.probability}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold of {self.label} outside (0, 1): {self.threshold}")

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold

    @property
    def sensitivity(self) -> float | None:
        """The card's validation sensitivity at this threshold (None where unknown)."""
        return None if self.operating_point is None else self.operating_point.validation.sensitivity

    @property
    def specificity(self) -> float | None:
        """The card's validation specificity at this threshold (None where unknown)."""
        return None if self.operating_point is None else self.operating_point.validation.specificity

    def figures(self) -> dict[str, Any]:
        """The finding as the findings JSON writes it (probability and weights rounded to 6 places)."""
        return {"label": self.label, "probability": round(self.probability, 6), "threshold": self.threshold,
                "present": self.present,
                "plane_weights": None if self.plane_weights is None else
                {p.value: round(w, 6) for p, w in self.plane_weights.items()},
                "sensitivity": self.sensitivity, "specificity": self.specificity,
                "operating_point": None if self.operating_point is None else self.operating_point.to_dict()}


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
