"""Synthetic studies through the node: planes, localizers, duplicates, oblique, multi-frame, JPEG 2000."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from ortho_node.labels import Plane
from tests.assembly.factory import (ORIENTATIONS, advance, assemblies, audit_kinds, enhanced_series, jobs, send,
                                    series, study)


def _assembled(node, study_uid):
    [job] = [j for j in jobs(node) if j.state == "succeeded"]
    return node.assembler.assemble(study_uid, job.reason)


def _slice_values(volume) -> list[int]:
    return [int(v) for v in volume.pixels[:, 0, 0]]


def test_three_planes_interleaved_out_of_order_with_scout_and_duplicates(manual_node):
    node = manual_node()
    study_uid, planes = study()
    scout = [series(study_uid, plane, number=9, slices=1)[0] for plane in ORIENTATIONS]  # three-plane scout
    for ds in scout:
        ds.SeriesInstanceUID = scout[0].SeriesInstanceUID
    sagittal = planes[0]
    repeats = series(study_uid, "sagittal", number=1, base=500)[2:4]  # re-acquired positions 2 and 3
    for ds in repeats:
        ds.SeriesInstanceUID, ds.AcquisitionNumber = sagittal[0].SeriesInstanceUID, 2
    everything = [ds for group in planes for ds in group] + scout + repeats
    random.Random(7).shuffle(everything)
    send(node, everything)
    advance(node, 2)  # complete by the sender's signals: settle time only
    [job] = jobs(node)
    assert job.state == "succeeded" and job.reason.startswith("complete by sender signals")
    assembled = _assembled(node, study_uid)
    assert set(assembled.planes) == {Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL}
    assert assembled.missing_planes == ()
    assert _slice_values(assembled.planes[Plane.SAGITTAL]) == [100, 101, 502, 503, 104, 105, 106, 107]
    assert _slice_values(assembled.planes[Plane.CORONAL]) == list(range(200, 208))
    assert _slice_values(assembled.planes[Plane.AXIAL]) == list(range(300, 308))
    notes = assembled.planes[Plane.SAGITTAL].notes
    assert len(notes) == 2 and all("higher AcquisitionNumber" in n for n in notes)
    assert any(scout[0].SeriesInstanceUID in e and "mixed orientations" in e for e in assembled.excluded)
    assert assembled.laterality.value == "R" and assembled.joint.value == "knee"


def test_localizer_image_type_excluded(manual_node):
    node = manual_node()
    study_uid, planes = study()
    localizer = series(study_uid, "sagittal", number=7, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    send(node, [ds for group in planes for ds in group] + localizer)
    advance(node, 2)
    assembled = _assembled(node, study_uid)
    assert assembled.planes[Plane.SAGITTAL].geometry.series_instance_uid == planes[0][0].SeriesInstanceUID
    assert any("LOCALIZER" in e for e in assembled.excluded)


def test_missing_plane_waits_for_long_timeout(manual_node):
    node = manual_node()
    study_uid, planes = study(("sagittal", "coronal"))
    send(node, [ds for group in planes for ds in group])
    advance(node, 60)
    assert jobs(node) == []
    advance(node, 61)
    [job] = jobs(node)
    assert job.reason == "long quiet timeout (120 s) passed with sagittal, coronal present; axial missing"
    [record] = assemblies(node)
    assert record.summary["missing_planes"] == ["axial"]


def test_oblique_series_is_not_a_model_plane(manual_node):
    node = manual_node()  # default limit: 40 degrees
    study_uid, planes = study(("sagittal", "coronal"))
    tilt = np.radians(44)
    oblique = series(study_uid, "axial", number=3, iop=[1, 0, 0, 0, np.cos(tilt), np.sin(tilt)])
    send(node, [ds for group in planes for ds in group] + oblique)
    advance(node, 121)
    assembled = _assembled(node, study_uid)
    assert Plane.AXIAL not in assembled.planes and assembled.missing_planes == (Plane.AXIAL,)
    assert any("oblique: normal 44.0 degrees" in e for e in assembled.excluded)


def test_enhanced_mr_multiframe_sorted_by_per_frame_positions(manual_node):
    node = manual_node()
    study_uid, planes = study(("coronal", "axial"))
    multiframe = enhanced_series(study_uid, "sagittal", number=5, order=[3, 0, 7, 1, 6, 2, 5, 4])
    send(node, [multiframe] + [ds for group in planes for ds in group])
    advance(node, 2)
    assembled = _assembled(node, study_uid)
    volume = assembled.planes[Plane.SAGITTAL]
    assert _slice_values(volume) == list(range(500, 508))
    assert volume.geometry.frame_numbers == (2, 4, 6, 1, 8, 7, 5, 3)
    assert set(volume.geometry.sop_instance_uids) == {multiframe.SOPInstanceUID}


def test_jpeg2000_series_decoded(manual_node):
    node = manual_node()
    study_uid, planes = study()
    for ds in planes[1]:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    assembled = _assembled(node, study_uid)
    assert _slice_values(assembled.planes[Plane.CORONAL]) == list(range(200, 208))


def test_left_right_conflict_flagged(manual_node):
    node = manual_node()
    study_uid, planes = study()
    for ds in planes[2]:
        ds.Laterality = "L"
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    [record] = assemblies(node)
    assert record.laterality == "U"
    assert any("laterality conflict" in c for c in record.summary["conflicts"])
    assert "study_assembled" in audit_kinds(node)


@pytest.mark.parametrize("policy, outcome, joint", [("skip", "skipped", "unknown"), ("ankle", "assembled", "ankle")])
def test_unknown_joint_policy(manual_node, policy, outcome, joint):
    node = manual_node(**{"assembly.unknown_joint": policy})
    study_uid, planes = study(BodyPartExamined="EXTREMITY", SeriesDescription="PD FS")
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    [record] = assemblies(node)
    assert (record.outcome, record.joint) == (outcome, joint)
    if policy == "skip":
        assert "joint unknown" in record.skip_reason and "study_skipped" in audit_kinds(node)


def test_late_series_after_processing_supersedes_never_duplicates(manual_node):
    node = manual_node()
    study_uid, planes = study()
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    assert [j.state for j in jobs(node)] == ["succeeded"]
    send(node, planes[0][:2])  # a re-sent instance is not new material
    advance(node, 130)
    assert [j.state for j in jobs(node)] == ["succeeded"]
    late = series(study_uid, "sagittal", number=4, description="SAG T2 FS")
    send(node, late)
    advance(node, 11)
    first, second = jobs(node)
    assert (first.state, second.state, second.supersedes_job_id) == ("superseded", "succeeded", first.id)
    advance(node, 200)
    assert len(jobs(node)) == 2
    assert "job_superseded" in audit_kinds(node)
