"""The small pretraining reader: NIfTI and DICOM volumes, slice order and plane."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ortho_node.labels import Plane
from ortho_node.training.unlabelled import SourceKind, find_volumes, plane_of_normal, read_volume
from ortho_node.model.preprocessing import PreprocessSpec, preprocess_volume
from tests.conftest import GE_SERIES


def test_nifti_volume_round_trips_to_the_official_model_orientation(tmp_path):
    data = np.random.default_rng(0).random((40, 30, 12)).astype(np.float32)  # (i, j, k) as nibabel reads it
    affine = np.diag([0.5, 0.5, 3.0, 1.0])  # slices along z: axial
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii.gz")
    (source,) = find_volumes(tmp_path)
    assert source.kind is SourceKind.NIFTI and source.plane is Plane.AXIAL
    volume = read_volume(source)
    assert volume.shape == (12, 30, 40)
    # preprocessing turns it back: the model sees the NIfTI (i, j) slices, as the official loader did
    x, _ = preprocess_volume(volume, PreprocessSpec(depth=12, size=40))
    official = torch.from_numpy(data).permute(2, 0, 1)[:, :, :]  # (k, i, j), then resized i,j -> 40 x 40
    official = torch.nn.functional.interpolate(official[:, None], size=(40, 40), mode="bilinear")[:, 0]
    official = (official - official.min()) / (official.max() - official.min() + 1e-8) * 2 - 1
    assert torch.allclose(x[0], official, atol=1e-5)


@pytest.mark.parametrize("normal, plane", [((1, 0.1, 0), Plane.SAGITTAL), ((0, -0.9, 0.3), Plane.CORONAL),
                                           ((0.2, 0.1, -1), Plane.AXIAL)])  # fmt: skip
def test_plane_of_slice_normal(normal, plane):
    assert plane_of_normal(normal) is plane


def test_real_multi_echo_dicom_series_is_read_in_slice_order():
    (source,) = find_volumes(GE_SERIES)
    assert source.kind is SourceKind.DICOM and source.plane is Plane.SAGITTAL and len(source.files) == 192
    volume = read_volume(source)
    assert volume.shape == (24, 256, 256) and volume.dtype == np.float32  # 8 echoes x 24 positions -> first echo
    assert volume.max() > 0 and all(volume[i].std() > 0 for i in range(24))
