"""A small three-plane knee study written with pydicom, with ground-truth masks and a StudyPrediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint, Plane
from ortho_node.prediction import (
    Finding,
    ModelIdentity,
    OperatingPoint,
    SeriesSegmentation,
    SliceRef,
    SplitFigures,
    StudyPrediction,
    ThresholdRule,
)
from tests.dicom_factory import mr_dataset, write

# Slice normal, row and column direction cosines per plane (patient LPS).
ORIENTATION = {
    Plane.SAGITTAL: ([0, 1, 0], [0, 0, -1]),
    Plane.CORONAL: ([1, 0, 0], [0, 0, -1]),
    Plane.AXIAL: ([1, 0, 0], [0, 1, 0]),
}
DESCRIPTION = {Plane.SAGITTAL: "SAG PD FS", Plane.CORONAL: "COR PD FS", Plane.AXIAL: "AX T2 FS"}
MODEL = ModelIdentity(name="OrthoDiffusion-knee", version="0.1.0-test")
#: The findings' operating points in turn: chosen for a budget, a fallback, an older card's, none.
OPERATING_POINTS = (
    OperatingPoint(ThresholdRule.TARGET_SPECIFICITY, SplitFigures(0.82, 0.97, 11, 21), 0.9625, 0.3),
    OperatingPoint(ThresholdRule.FALLBACK, SplitFigures(None, 0.9, 0, 32), 0.9625, 0.3, target_met=False,
                   note="no positive validation study: fixed threshold 0.5"),
    OperatingPoint(ThresholdRule.YOUDEN, SplitFigures(0.75, 0.8)),
    None,
)


@dataclass(frozen=True)
class SyntheticKnee:
    prediction: StudyPrediction
    folder: Path
    paths: dict[str, list[Path]]  # series UID -> source files in slice order


def label_volume(slices: int, rows: int, columns: int) -> np.ndarray:
    """Every knee structure as a block of its own on the central slices (label k = KNEE_STRUCTURES[k])."""
    labels = np.zeros((slices, rows, columns), dtype=np.uint8)
    cell_r, cell_c = rows // 4, columns // 3
    for value in range(1, len(KNEE_STRUCTURES)):
        r, c = divmod(value - 1, 3)
        first = 1 + value % 2
        labels[first:slices - 1, r * cell_r + 2:(r + 1) * cell_r - 2, c * cell_c + 2:(c + 1) * cell_c - 2] = value
    return labels


def make_knee_study(folder: Path, *, planes=(Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL), slices: int = 6,
                    rows: int = 48, columns: int = 48, laterality: str | None = "R",
                    study_uid: str | None = None) -> SyntheticKnee:
    study_uid = study_uid or generate_uid()
    frame_of_reference = generate_uid()
    segmentations, paths = [], {}
    for number, plane in enumerate(planes, start=3):
        series_uid = generate_uid()
        labels = label_volume(slices, rows, columns)
        row_dir, col_dir = ORIENTATION[plane]
        normal = np.cross(row_dir, col_dir)
        refs, files = [], []
        for k in range(slices):
            ds = mr_dataset(study_uid=study_uid, series_uid=series_uid, rows=rows, columns=columns,
                            instance_number=k + 1, seed=k)
            ds.FrameOfReferenceUID = frame_of_reference
            ds.SeriesNumber = number
            ds.SeriesDescription = DESCRIPTION[plane]
            ds.Laterality = laterality or ""
            ds.ImageOrientationPatient = [*row_dir, *col_dir]
            ds.ImagePositionPatient = [float(v) for v in (normal * 3.0 * k - 12.0)]
            ds.PixelSpacing = [0.5, 0.5]
            noise = np.random.default_rng(k).integers(0, 200, size=(rows, columns))
            ds.PixelData = (noise + 300 * (labels[k] > 0) + 40 * labels[k]).astype(np.uint16).tobytes()
            path = write(ds, folder / series_uid / f"IM{k + 1:04d}.dcm")
            refs.append(SliceRef(ds.SOPInstanceUID, path))
            files.append(path)
        segmentations.append(SeriesSegmentation(series_uid, plane, tuple(refs), labels, KNEE_STRUCTURES))
        paths[series_uid] = files
    findings = tuple(
        Finding(label, probability=round(0.1 + 0.11 * i, 3), threshold=0.5,
                plane_weights={Plane.SAGITTAL: 0.5, Plane.CORONAL: 0.3, Plane.AXIAL: 0.2} if i % 2 == 0 else None,
                operating_point=OPERATING_POINTS[i % len(OPERATING_POINTS)])
        for i, label in enumerate(DIAGNOSIS_LABELS[Joint.KNEE]))
    prediction = StudyPrediction(study_uid, Joint.KNEE, laterality, tuple(segmentations), findings, MODEL)
    return SyntheticKnee(prediction, folder, paths)
