"""Every instance is valid MR Image Storage (dciodvfy) with consistent headers."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from ortho_node.labels import Joint
from ortho_node.synthetic import generate_study, write_study

from .conftest import FAST


@pytest.mark.parametrize("joint", [Joint.KNEE, Joint.ANKLE, Joint.SHOULDER])
def test_every_instance_passes_dciodvfy(joint, tmp_path, dciodvfy):
    study = generate_study(joint, 21, findings="random", **FAST)
    root = write_study(study, tmp_path, "dicom")
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == sum(s.geometry.n_slices for s in study.series)
    for path in files:
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert not errors, f"{path.name}: {errors}"


def test_headers_are_complete_and_consistent(tmp_path):
    study = generate_study(Joint.KNEE, 22, findings=None, laterality="R", **FAST)
    root = write_study(study, tmp_path, "dicom")
    series_uids = set()
    for series in study.series:
        files = sorted((root / "dicom").glob(f"{series.number:02d}_*/*.dcm"))
        datasets = [pydicom.dcmread(p) for p in files]
        for k, ds in enumerate(datasets):
            assert ds.StudyInstanceUID == study.study_uid
            assert ds.FrameOfReferenceUID == study.frame_of_reference_uid
            assert ds.SeriesInstanceUID == series.uid
            assert ds.InstanceNumber == k + 1
            assert (ds.BodyPartExamined, ds.Laterality, ds.MRAcquisitionType) == ("KNEE", "R", "2D")
            assert ds.ScanOptions == "FS" and ds.SeriesDescription.endswith("PD FS")
            assert int(ds.ImagesInAcquisition) == len(datasets)
            assert ds.PatientAge.endswith("Y") and float(ds.PatientSize) > 1 and float(ds.PatientWeight) > 30
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        np.testing.assert_allclose(steps, float(datasets[0].SpacingBetweenSlices), atol=1e-3)
        assert float(datasets[0].SpacingBetweenSlices) > float(datasets[0].SliceThickness)  # a gap
        series_uids.add(series.uid)
    assert len(series_uids) == 3
