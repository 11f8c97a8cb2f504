"""``write_study``: a synthetic study on disk as DICOM and/or NIfTI, and the study-level labels CSV."""

from __future__ import annotations

import csv
import enum
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.synthetic import dicom_writer, nifti_writer
from ortho_node.synthetic.generator import SyntheticStudy

logger = logging.getLogger(__name__)


class OutputFormat(str, enum.Enum):
    DICOM = "dicom"
    NIFTI = "nifti"
    BOTH = "both"


def study_dirname(study: SyntheticStudy) -> str:
    return f"{study.joint.value}_{study.seed:06d}"


def write_study(study: SyntheticStudy, out_dir: Path | str, format: OutputFormat | str = OutputFormat.BOTH) -> Path:
    """Write ``study`` under ``out_dir/<joint>_<seed>/``; returns that directory.

    DICOM goes to ``dicom/<series number>_<plane>/IM####.dcm``; NIfTI to ``nifti/<plane>.nii.gz`` with
    ``<plane>_labels.nii.gz``; ``findings.json`` records each finding's description and canonical region.
    """
    fmt = OutputFormat(format)
    root = Path(out_dir) / study_dirname(study)
    for series in study.series:
        name = f"{series.number:02d}_{series.plane.value}"
        if fmt in (OutputFormat.DICOM, OutputFormat.BOTH):
            dicom_writer.write_series(study, series, root / "dicom" / name)
        if fmt in (OutputFormat.NIFTI, OutputFormat.BOTH):
            nifti_writer.write_series(series, root / "nifti", series.plane.value)
    summary = {
        "joint": study.joint.value, "seed": study.seed, "laterality": study.laterality,
        "study_instance_uid": study.study_uid, "labels": study.diagnosis,
        "findings": [{"label": f.label, "description": f.description,
                      "region_canonical_mm": [list(map(float, f.region[0])), list(map(float, f.region[1]))],
                      } for f in study.findings],
        "canonical_to_patient_lps": study.to_world.tolist(),
    }
    (root / "findings.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info("wrote synthetic study %s to %s", study.study_uid, root)
    return root


def label_columns(joint: Joint) -> list[str]:
    return ["study", "study_instance_uid", "joint", "laterality", "seed", *DIAGNOSIS_LABELS[Joint(joint)]]


def label_row(study: SyntheticStudy) -> dict[str, str | int]:
    """One CSV row: identifiers, then 0/1 per diagnosis label."""
    return {"study": study_dirname(study), "study_instance_uid": study.study_uid, "joint": study.joint.value,
            "laterality": study.laterality, "seed": study.seed, **study.diagnosis}


def write_labels_csv(rows: Iterable[dict[str, str | int]], joint: Joint, path: Path | str) -> Path:
    """Write study-level labels, one row per study and one column per diagnosis label of ``joint``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=label_columns(joint), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path
