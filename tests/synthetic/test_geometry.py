"""The three planes' label maps describe the same anatomy at the same place in the patient."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ortho_node.labels import Joint
from ortho_node.synthetic import generate_study, structure_names, write_study
from ortho_node.synthetic.nifti_writer import LPS_TO_RAS

from .conftest import FAST


def _world_centroid(series, label: int) -> np.ndarray:
    k, j, i = np.nonzero(series.labels == label)
    assert k.size, f"label {label} absent from {series.description}"
    index = np.stack([i, j, k, np.ones_like(i)]).astype(float).mean(axis=1)
    return (series.geometry.index_to_world() @ index)[:3]


@pytest.mark.parametrize(("joint", "structure"), [
    (Joint.KNEE, "patella"), (Joint.KNEE, "medial meniscus"), (Joint.KNEE, "anterior cruciate ligament"),
    (Joint.ANKLE, "talus"), (Joint.SHOULDER, "humeral cartilage"),
])
def test_structure_centroid_agrees_across_planes_within_one_voxel(joint, structure):
    study = generate_study(joint, 11, findings=None, **FAST)
    label = structure_names(joint).index(structure)
    centroids = {s.plane: _world_centroid(s, label) for s in study.series}
    voxel = max(s.geometry.slice_spacing for s in study.series)
    for a in centroids.values():
        for b in centroids.values():
            assert np.linalg.norm(a - b) < voxel


def test_nifti_affine_and_dicom_positions_agree(tmp_path):
    study = generate_study(Joint.KNEE, 12, findings=None, **FAST)
    root = write_study(study, tmp_path, "both")
    for series in study.series:
        name = f"{series.number:02d}_{series.plane.value}"
        image = nib.load(root / "nifti" / f"{series.plane.value}.nii.gz")
        labels = nib.load(root / "nifti" / f"{series.plane.value}_labels.nii.gz")
        assert image.shape == (series.geometry.cols, series.geometry.rows, series.geometry.n_slices)
        np.testing.assert_array_equal(np.asarray(labels.dataobj)[:, :, 0].T, series.labels[0])
        last = pydicom.dcmread(root / "dicom" / name / f"IM{series.geometry.n_slices:04d}.dcm")
        corner_lps = np.linalg.inv(LPS_TO_RAS) @ image.affine @ [0, 0, series.geometry.n_slices - 1, 1]
        np.testing.assert_allclose(corner_lps[:3], [float(v) for v in last.ImagePositionPatient], atol=1e-3)
        np.testing.assert_array_equal(last.pixel_array, series.pixels[-1])
