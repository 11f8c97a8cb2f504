"""The slices a series offers, one :class:`SliceRef` per 2D image: from the instance rows' header facts for
single-frame images, from the per-frame functional groups for Enhanced MR multi-frame images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from ortho_node.assembly.geometry import parse_numbers
from ortho_node.db.models import Instance, Series

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesFacts:
    """Series-level header facts used for classification (from the series row)."""

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    protocol_name: str | None
    body_part_examined: str | None
    laterality: str | None
    receive_coil_name: str | None
    frame_of_reference_uid: str | None

    @classmethod
    def from_row(cls, row: Series) -> SeriesFacts:
        return cls(row.series_instance_uid, row.series_number, row.modality, row.series_description,
                   row.protocol_name, row.body_part_examined, row.laterality, row.receive_coil_name,
                   row.frame_of_reference_uid)


@dataclass(frozen=True)
class SliceRef:
    """One 2D image: where its pixels are (file, frame) and the facts that place and characterize it."""

    sop_instance_uid: str
    file_path: str  # relative to the data folder
    frame: int | None  # 0-based frame index in a multi-frame instance; None for single-frame
    received_order: int  # instance row id: later rows win ties between duplicates
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    acquisition_number: int | None
    instance_number: int | None
    image_type: str
    echo_number: int | None
    echo_time: float | None
    repetition_time: float | None
    inversion_time: float | None
    flip_angle: float | None
    scanning_sequence: str | None
    scan_options: str | None
    image_laterality: str | None
    acquisition_contrast: str | None = None

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper().split("\\")

    @property
    def is_derived(self) -> bool:
        return self.image_type.upper().startswith("DERIVED")


def single_frame(row: Instance) -> SliceRef:
    return SliceRef(
        sop_instance_uid=row.sop_instance_uid, file_path=row.file_path, frame=None, received_order=row.id,
        orientation=parse_numbers(row.image_orientation_patient, 6),
        position=parse_numbers(row.image_position_patient, 3), rows=row.rows or 0, columns=row.columns or 0,
        pixel_spacing=parse_numbers(row.pixel_spacing, 2), slice_thickness=row.slice_thickness,
        spacing_between_slices=row.spacing_between_slices, acquisition_number=row.acquisition_number,
        instance_number=row.instance_number, image_type=row.image_type or "", echo_number=row.echo_number,
        echo_time=row.echo_time, repetition_time=row.repetition_time, inversion_time=row.inversion_time,
        flip_angle=row.flip_angle, scanning_sequence=row.scanning_sequence, scan_options=row.scan_options,
        image_laterality=row.image_laterality,
    )


def _item(groups: Dataset | None, sequence: str) -> Dataset | None:
    if groups is None or sequence not in groups or not groups[sequence].value:
        return None
    return groups[sequence].value[0]


def _lookup(per_frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str):
    """A functional-group attribute: the per-frame group overrides the shared one (PS3.3 C.7.6.16)."""
    for groups in (per_frame, shared):
        item = _item(groups, sequence)
        if item is not None and keyword in item and item[keyword].value not in (None, ""):
            return item[keyword].value
    return None


def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _float(value) -> float | None:
    if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None  # multi-valued, e.g. InversionTimes
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def multi_frame(row: Instance, path: Path) -> list[SliceRef]:
    """One SliceRef per frame of an Enhanced MR image, read from its functional groups (no pixel data)."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        log.error("multi-frame instance %s cannot be read (%s)", row.sop_instance_uid, type(exc).__name__)
        return []
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    image_type = "\\".join(str(v) for v in ds.get("ImageType", []))
    refs = []
    for index in range(frames):
        frame = per_frame[index] if index < len(per_frame) else None

        def get(sequence: str, keyword: str, frame=frame):
            return _lookup(frame, shared, sequence, keyword)

        echo_time = _float(get("MREchoSequence", "EffectiveEchoTime"))
        refs.append(SliceRef(
            sop_instance_uid=row.sop_instance_uid, file_path=row.file_path, frame=index, received_order=row.id,
            orientation=_floats(get("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            position=_floats(get("PlanePositionSequence", "ImagePositionPatient"), 3),
            rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
            pixel_spacing=_floats(get("PixelMeasuresSequence", "PixelSpacing"), 2),
            slice_thickness=_float(get("PixelMeasuresSequence", "SliceThickness")),
            spacing_between_slices=_float(get("PixelMeasuresSequence", "SpacingBetweenSlices")),
            acquisition_number=row.acquisition_number, instance_number=row.instance_number, image_type=image_type,
            echo_number=None, echo_time=echo_time,
            repetition_time=_float(get("MRTimingAndRelatedParametersSequence", "RepetitionTime")),
            inversion_time=_float(get("MRModifierSequence", "InversionTimes")),
            flip_angle=_float(get("MRTimingAndRelatedParametersSequence", "FlipAngle")),
            scanning_sequence=None, scan_options=None,
            image_laterality=str(get("FrameAnatomySequence", "FrameLaterality") or "") or None,
            acquisition_contrast=str(ds.get("AcquisitionContrast", "") or "") or None,
        ))
    return refs
