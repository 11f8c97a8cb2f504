"""Slice geometry: ImageOrientationPatient checked and classified into an imaging plane.

The slice normal is the cross product of the row and column direction cosines (PS3.3 C.7.6.2.1.1); its
dominant patient axis names the plane (x: sagittal, y: coronal, z: axial). A normal further than the
configured angle from that axis is oblique.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ortho_node.labels import Plane

#: Direction cosines are stored as decimal strings with few digits; this much slack is rounding, not error.
UNIT_TOLERANCE = 1e-2
ORTHOGONALITY_TOLERANCE = 1e-2
#: Two orientations closer than this (per cosine) belong to the same stack.
SAME_ORIENTATION = 1e-2
_AXIS_PLANES = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)


class OrientationError(ValueError):
    """ImageOrientationPatient is missing, not unit length or not orthogonal."""


@dataclass(frozen=True)
class Orientation:
    """Row and column direction cosines of a slice (ImageOrientationPatient), validated."""

    row: tuple[float, float, float]
    column: tuple[float, float, float]

    @classmethod
    def from_values(cls, values: tuple[float, ...] | list[float] | None) -> Orientation:
        if values is None or len(values) != 6:
            raise OrientationError("ImageOrientationPatient missing or not 6 values")
        row, column = np.asarray(values[:3], float), np.asarray(values[3:], float)
        for name, vector in (("row", row), ("column", column)):
            if abs(np.linalg.norm(vector) - 1.0) > UNIT_TOLERANCE:
                raise OrientationError(f"ImageOrientationPatient {name} cosines are not unit length "
                                       f"(norm {np.linalg.norm(vector):.3f})")
        if abs(float(row @ column)) > ORTHOGONALITY_TOLERANCE:
            raise OrientationError(f"ImageOrientationPatient row and column are not orthogonal "
                                   f"(dot {float(row @ column):.3f})")
        return cls(tuple(float(v) for v in row), tuple(float(v) for v in column))  # type: ignore[arg-type]

    @property
    def values(self) -> tuple[float, ...]:
        return (*self.row, *self.column)

    @property
    def normal(self) -> np.ndarray:
        normal = np.cross(self.row, self.column)
        return normal / np.linalg.norm(normal)

    def same_as(self, other: Orientation) -> bool:
        return bool(np.all(np.abs(np.subtract(self.values, other.values)) < SAME_ORIENTATION))

    def obliquity(self) -> float:
        """Degrees between the slice normal and its nearest patient axis."""
        return math.degrees(math.acos(min(1.0, float(np.max(np.abs(self.normal))))))

    def plane(self, oblique_angle: float) -> Plane:
        if self.obliquity() > oblique_angle:
            return Plane.OBLIQUE
        return _AXIS_PLANES[int(np.argmax(np.abs(self.normal)))]


def parse_numbers(text: str | None, count: int) -> tuple[float, ...] | None:
    """A backslash-separated header fact (as stored in the instance rows) as numbers."""
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == count else None
