"""The real GE multi-echo knee series (24 positions x 8 echoes, Explicit VR Big Endian, no BodyPartExamined)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from ortho_node.labels import Joint, Plane
from tests.assembly.factory import advance, assemblies, jobs, send
from tests.conftest import GE_SERIES


@pytest.fixture(scope="module")
def ge_datasets():
    return [dcmread(path) for path in sorted(GE_SERIES.glob("*.dcm"))]


def test_ge_series_one_sagittal_echo_knee_from_coil_long_timeout(manual_node, ge_datasets):
    node = manual_node()
    send(node, ge_datasets)
    advance(node, 15)  # complete by signals and quiet, but coronal and axial never came
    assert jobs(node) == []
    advance(node, 106)
    [job] = jobs(node)
    assert job.state == "succeeded"
    assert job.reason == "long quiet timeout (120 s) passed with sagittal present; coronal, axial missing"
    [record] = assemblies(node)
    assert (record.outcome, record.joint, record.laterality) == ("assembled", "knee", "U")
    assert record.summary["joint_reason"] == "ReceiveCoilName 'HD TR Knee PA'"
    assert record.summary["missing_planes"] == ["coronal", "axial"]
    assert list(record.summary["planes"]) == ["sagittal"]
    assert "echo 5" in record.summary["planes"]["sagittal"]["source"]

    assembled = node.assembler.assemble(ge_datasets[0].StudyInstanceUID, job.reason)
    assert assembled.joint is Joint.KNEE and list(assembled.planes) == [Plane.SAGITTAL]
    volume = assembled.planes[Plane.SAGITTAL]
    assert volume.pixels.shape == (24, 256, 256) and volume.pixels.dtype == np.float32
    assert volume.geometry.slice_spacing == pytest.approx(4.0, abs=1e-3)
    by_uid = {ds.SOPInstanceUID: ds for ds in ge_datasets}
    chosen = [by_uid[uid] for uid in volume.geometry.sop_instance_uids]
    assert {int(ds.EchoNumbers) for ds in chosen} == {5}  # one echo, TE closest to PD's 30 ms
    distances = [float(np.dot(ds.ImagePositionPatient, volume.geometry.normal)) for ds in chosen]
    assert distances == sorted(distances)
    for k in (0, 11, 23):
        assert np.array_equal(volume.pixels[k], chosen[k].pixel_array.astype(np.float32))
