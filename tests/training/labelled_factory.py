"""Synthetic studies exported as a department keeps them: plain DICOM files, a findings CSV, DICOM-SEG masks
built with highdicom from the synthetic ground truth (not the ``ortho-node synth`` folder format)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint
from ortho_node.synthetic import DomainRandomization, SyntheticStudy, generate_study
from ortho_node.synthetic.dicom_writer import instances

#: 1 mm scene and 256 matrices (as tests/synthetic): every code path at a fraction of the cost.
FAST = {"scene_spacing": 1.0, "domain": DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))}


def knee(seed: int) -> SyntheticStudy:
    return generate_study("knee", seed, findings="random", **FAST)


def export_study(study: SyntheticStudy, folder: Path, *, patient_id: str) -> dict[str, list]:
    """Write every series as DICOM files under ``folder/<study>/<series>/``; returns plane -> datasets."""
    written = {}
    for series in study.series:
        datasets = instances(study, series)
        target = folder / study.study_uid / series.uid
        target.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            ds.PatientID = patient_id
            ds.save_as(target / f"{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
        written[series.plane.value] = datasets
    return written


def seg_of(datasets: Sequence, labels: np.ndarray, *, slices: Sequence[int] | None = None,
           names: Sequence[str] | None = None):
    """A BINARY DICOM-SEG of ``labels`` (structure indices, [slices, rows, cols]) on ``datasets``; ``slices``:
    only those source images (sparse labels)."""
    keep = list(range(len(datasets))) if slices is None else list(slices)
    present = sorted(int(v) for v in np.unique(labels[keep]) if v)
    names = names or [KNEE_STRUCTURES[v] for v in present]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in enumerate(names)]
    pixel = np.zeros((len(keep), *labels.shape[1:]), np.uint8)
    for n, value in enumerate(present):
        pixel[labels[keep] == value] = n + 1
    return hd.seg.Segmentation(
        source_images=[datasets[k] for k in keep], pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="labelled factory", software_versions="1",
        device_serial_number="1")


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or ["StudyInstanceUID", *DIAGNOSIS_LABELS[Joint.KNEE]])
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def findings_row(study: SyntheticStudy, *, blank: Sequence[str] = ()) -> dict:
    row = {"StudyInstanceUID": study.study_uid}
    row.update({label: "" if label in blank else str(int(study.diagnosis.get(label, 0)))
                for label in DIAGNOSIS_LABELS[Joint.KNEE]})
    return row
