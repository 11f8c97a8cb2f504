"""The assembled study: what the model predictor consumes (one volume per plane, joint, laterality, clinical
facts) and what the node records about how it was put together.

Conventions, fixed for every consumer:

* ``PlaneVolume.pixels`` is ``float32`` of shape ``(slices, rows, columns)``: slice ``k`` is the image of
  ``geometry.sop_instance_uids[k]`` (frame ``geometry.frame_numbers[k]`` of it when multi-frame), with
  RescaleSlope/RescaleIntercept applied. Slices run in increasing position along the slice normal
  ``row x column`` of ``geometry.image_orientation_patient``; ``rows``/``columns`` are the stored image's.
* Positions are ImagePositionPatient (mm, patient LPS) of each slice's first pixel; ``pixel_spacing`` is
  (row spacing, column spacing) = (between rows, between columns) as in PixelSpacing.
* ``geometry.affine`` maps (slice, row, column) voxel indices to patient LPS mm, so masks computed on the
  volume go back to the source series' own pixel grid by index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ortho_node.assembly.anatomy import Laterality
from ortho_node.assembly.contrast import Contrast
from ortho_node.labels import MODEL_PLANES, Joint, Plane


class AssemblyError(ValueError):
    """An assembled object would be inconsistent (shapes, counts, planes)."""


@dataclass(frozen=True)
class VolumeGeometry:
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int | None, ...]  # 1-based frame in a multi-frame instance, None for single-frame
    image_orientation_patient: tuple[float, float, float, float, float, float]
    image_positions: tuple[tuple[float, float, float], ...]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float | None
    frame_of_reference_uid: str | None

    def __post_init__(self) -> None:
        count = len(self.sop_instance_uids)
        if count == 0 or len(self.frame_numbers) != count or len(self.image_positions) != count:
            raise AssemblyError("one SOP instance UID, frame number and position per slice required")
        if len(self.image_orientation_patient) != 6 or len(self.pixel_spacing) != 2:
            raise AssemblyError("ImageOrientationPatient needs 6 values and PixelSpacing 2")
        if not self.slice_spacing > 0 or min(self.pixel_spacing) <= 0:
            raise AssemblyError("spacings must be positive")

    @property
    def normal(self) -> np.ndarray:
        row, column = np.array(self.image_orientation_patient[:3]), np.array(self.image_orientation_patient[3:])
        return np.cross(row, column)

    @property
    def affine(self) -> np.ndarray:
        """4x4: (slice, row, column, 1) -> patient LPS mm; column index moves along the row cosines."""
        row_cosines = np.array(self.image_orientation_patient[:3])
        column_cosines = np.array(self.image_orientation_patient[3:])
        first = np.array(self.image_positions[0])
        last = np.array(self.image_positions[-1])
        steps = len(self.image_positions) - 1
        slice_step = (last - first) / steps if steps else self.normal * self.slice_spacing
        affine = np.eye(4)
        affine[:3, 0] = slice_step
        affine[:3, 1] = column_cosines * self.pixel_spacing[0]
        affine[:3, 2] = row_cosines * self.pixel_spacing[1]
        affine[:3, 3] = first
        return affine


@dataclass(frozen=True)
class PlaneVolume:
    plane: Plane
    pixels: np.ndarray
    geometry: VolumeGeometry
    contrast: Contrast
    source: str  # human-readable name of the chosen stack, e.g. "series 8 echo 5, TE 31.6 ms"
    reason: str  # why this stack was chosen for the plane
    notes: tuple[str, ...] = ()  # duplicates dropped, gaps

    def __post_init__(self) -> None:
        if self.plane not in MODEL_PLANES:
            raise AssemblyError(f"{self.plane.value} is not a model plane")
        if self.pixels.dtype != np.float32 or self.pixels.ndim != 3:
            raise AssemblyError("pixels must be float32 (slices, rows, columns)")
        if self.pixels.shape[0] != len(self.geometry.sop_instance_uids):
            raise AssemblyError(f"{self.pixels.shape[0]} slices of pixels but "
                                f"{len(self.geometry.sop_instance_uids)} SOP instance UIDs")

    def summary(self) -> dict[str, Any]:
        g = self.geometry
        return {"series_instance_uid": g.series_instance_uid, "source": self.source, "reason": self.reason,
                "contrast": self.contrast.label, "shape": list(self.pixels.shape),
                "pixel_spacing": list(g.pixel_spacing), "slice_spacing": round(g.slice_spacing, 4),
                "notes": list(self.notes)}


_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class ClinicalFacts:
    """Clinical inputs of the clinical-data fusion (DESIGN.md section 4), from the header; None if absent."""

    patient_age: str | None = None  # AS, e.g. "054Y"
    patient_sex: str | None = None  # M, F, O
    patient_size: float | None = None  # metres
    patient_weight: float | None = None  # kilograms

    @property
    def age_years(self) -> float | None:
        match = _AGE.match(self.patient_age or "")
        return None if match is None else int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]


@dataclass(frozen=True)
class AssembledStudy:
    """One study ready for the predictor, or the recorded reason it is skipped (``skip_reason``)."""

    study_instance_uid: str
    joint: Joint
    joint_reason: str
    laterality: Laterality
    laterality_reason: str
    clinical: ClinicalFacts
    planes: Mapping[Plane, PlaneVolume]
    missing_planes: tuple[Plane, ...]
    completeness_reason: str
    conflicts: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()  # "<series UID>: <reason>" for series and stacks not considered
    skip_reason: str | None = None
    candidates: tuple[str, ...] = field(default=())  # usable stacks not chosen, with their plane

    def __post_init__(self) -> None:
        for plane, volume in self.planes.items():
            if plane is not volume.plane:
                raise AssemblyError(f"volume for {volume.plane.value} filed under {plane.value}")
        if set(self.missing_planes) & set(self.planes):
            raise AssemblyError("a plane cannot be both present and missing")
        if self.skip_reason is None and not self.planes:
            raise AssemblyError("a study to process needs at least one plane (or a skip reason)")

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the decision (persisted by the pipeline, shown by ``ortho-node studies``)."""
        return {
            "joint": self.joint.value, "joint_reason": self.joint_reason,
            "laterality": self.laterality.value, "laterality_reason": self.laterality_reason,
            "conflicts": list(self.conflicts),
            "planes": {plane.value: volume.summary() for plane, volume in self.planes.items()},
            "missing_planes": [plane.value for plane in self.missing_planes],
            "completeness_reason": self.completeness_reason, "skip_reason": self.skip_reason,
            "excluded": list(self.excluded), "candidates": list(self.candidates),
            "clinical": {"patient_age": self.clinical.patient_age, "patient_sex": self.clinical.patient_sex,
                         "patient_size": self.clinical.patient_size,
                         "patient_weight": self.clinical.patient_weight},
        }
