"""The header facts of one instance that the node records: parsed defensively, never trusted as paths.

A malformed value (an IS that is not an integer, a DS list of the wrong length) becomes ``None`` for that
fact instead of failing the whole instance: the image itself is still stored as received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import Dataset


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError, KeyError):
        return None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit] or None


def _number(ds: Dataset, keyword: str, kind: type) -> Any:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if type(value).__name__ == "MultiValue":
            value = value[0]
        return kind(float(value)) if kind is int else float(value)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return None


def _numbers(ds: Dataset, keyword: str, count: int) -> str | None:
    """A multi-valued DS as a backslash string, only if it has exactly ``count`` finite numbers."""
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        numbers = [float(v) for v in value]
    except (ValueError, TypeError, KeyError):
        return None
    if len(numbers) != count or any(n != n or abs(n) == float("inf") for n in numbers):
        return None
    return "\\".join(repr(n) for n in numbers)


@dataclass(frozen=True)
class InstanceHeader:
    sop_uid: str | None
    sop_class_uid: str | None
    study_uid: str | None
    series_uid: str | None
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceHeader:
        return cls(
            sop_uid=_text(ds, "SOPInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            study={
                "study_description": _text(ds, "StudyDescription"),
                "accession_number": _text(ds, "AccessionNumber", 16),
                "patient_age": _text(ds, "PatientAge", 4),
                "patient_sex": _text(ds, "PatientSex", 16),
                "patient_size": _number(ds, "PatientSize", float),
                "patient_weight": _number(ds, "PatientWeight", float),
            },
            series={
                "modality": _text(ds, "Modality", 16),
                "series_number": _number(ds, "SeriesNumber", int),
                "series_description": _text(ds, "SeriesDescription"),
                "protocol_name": _text(ds, "ProtocolName"),
                "body_part_examined": _text(ds, "BodyPartExamined", 32),
                "laterality": _text(ds, "Laterality", 4),
                "receive_coil_name": _text(ds, "ReceiveCoilName"),
                "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
            },
            instance={
                "modality": _text(ds, "Modality", 16),
                "instance_number": _number(ds, "InstanceNumber", int),
                "acquisition_number": _number(ds, "AcquisitionNumber", int),
                "image_type": _text(ds, "ImageType", 128),
                "rows": _number(ds, "Rows", int),
                "columns": _number(ds, "Columns", int),
                "number_of_frames": _number(ds, "NumberOfFrames", int),
                "image_orientation_patient": _numbers(ds, "ImageOrientationPatient", 6),
                "image_position_patient": _numbers(ds, "ImagePositionPatient", 3),
                "pixel_spacing": _numbers(ds, "PixelSpacing", 2),
                "slice_thickness": _number(ds, "SliceThickness", float),
                "spacing_between_slices": _number(ds, "SpacingBetweenSlices", float),
                "slice_location": _number(ds, "SliceLocation", float),
                "echo_number": _number(ds, "EchoNumbers", int),
                "echo_time": _number(ds, "EchoTime", float),
                "repetition_time": _number(ds, "RepetitionTime", float),
                "inversion_time": _number(ds, "InversionTime", float),
                "flip_angle": _number(ds, "FlipAngle", float),
                "scanning_sequence": _text(ds, "ScanningSequence"),
                "sequence_variant": _text(ds, "SequenceVariant"),
                "scan_options": _text(ds, "ScanOptions", 128),
                "mr_acquisition_type": _text(ds, "MRAcquisitionType", 4),
                "magnetic_field_strength": _number(ds, "MagneticFieldStrength", float),
                "images_in_acquisition": _number(ds, "ImagesInAcquisition", int),
                "image_laterality": _text(ds, "ImageLaterality", 4),
            },
        )

    def study_facts(self) -> dict[str, Any]:
        return dict(self.study)

    def series_facts(self) -> dict[str, Any]:
        return dict(self.series)

    def instance_facts(self) -> dict[str, Any]:
        return dict(self.instance)

