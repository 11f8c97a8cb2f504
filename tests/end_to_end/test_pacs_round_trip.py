"""Issue 8: studies pushed by a real PACS (Orthanc, ``POST /modalities/{id}/store``) to ``ortho-node serve``
with the bundled model come back to the PACS as SEG, SR and summary in the same study, with the study's
timeline and the model card version recorded by the node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from pydicom import Dataset

from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint
from reports import codes

pytestmark = pytest.mark.slow

SEG, SR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
#: What every processed study's timeline shows, in this order (deliveries may interleave with job_succeeded).
STEPS = ["first_received", "last_received", "ready", "job_started", "assembled", "inference_started",
         "inference_finished", "objects_built", "delivery_queued"]


def content_items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def sr_findings(sr: Dataset) -> dict[str, str]:
    """Finding meaning -> "present" / "absent", from the tracking identifiers of the TID 1501 groups."""
    meanings = {codes.finding(label).code.meaning for labels in DIAGNOSIS_LABELS.values() for label in labels}
    found = {}
    for item in content_items(sr):
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier":
            name, _, presence = str(item.TextValue).rpartition(": ")
            if name in meanings:
                found[name] = presence
    return found


def expected_findings(result: dict) -> dict[str, str]:
    return {codes.finding(f["label"]).code.meaning: "present" if f["present"] else "absent"
            for f in result["findings"]}


def by_kind(result: dict, objects: dict[str, Dataset]) -> dict[str, list[Dataset]]:
    kinds: dict[str, list[Dataset]] = {}
    for obj in result["objects"]:
        kinds.setdefault(obj["kind"], []).append(objects[obj["sop_instance_uid"]])
    return kinds


def test_knee_study_comes_back_to_the_pacs_as_seg_sr_and_summary(round_trip, pushed):
    study = pushed.synthetic["knee"]
    result = round_trip.wait_until_delivered(study.study_uid)
    objects = round_trip.pacs_objects(study.study_uid)  # read back from Orthanc
    kinds = by_kind(result, objects)
    assert len(kinds["sr"]) == 1 and kinds["summary"] and 1 <= len(kinds["seg"]) <= 3
    sources = {series.uid: series.plane.value for series in study.series}
    referenced = []
    for seg in kinds["seg"]:
        assert seg.SOPClassUID == SEG and seg.StudyInstanceUID == study.study_uid
        [series] = seg.ReferencedSeriesSequence
        referenced.append(series.SeriesInstanceUID)
        assert sources[series.SeriesInstanceUID] in seg.SeriesDescription  # "AI segmentation sagittal ..."
        labels = [segment.SegmentLabel for segment in seg.SegmentSequence]
        assert labels and set(labels) <= set(KNEE_STRUCTURES[1:]) and len(set(labels)) == len(labels)
        # Every frame lies on a source image the PACS holds in the same study.
        frames = {ref.ReferencedSOPInstanceUID for frame in seg.PerFrameFunctionalGroupsSequence
                  for ref in frame.DerivationImageSequence[0].SourceImageSequence}
        assert frames and frames <= set(objects)
    assert len(set(referenced)) == len(referenced)
    [sr] = kinds["sr"]
    assert sr.SOPClassUID == SR and sr.VerificationFlag == "UNVERIFIED"
    assert [f["label"] for f in result["findings"]] == list(DIAGNOSIS_LABELS[Joint.KNEE])
    assert sr_findings(sr) == expected_findings(result)
    assert {obj.StudyInstanceUID for obj in objects.values()} == {study.study_uid}


def test_knee_timeline_has_every_step_and_the_model_card_version(round_trip, pushed):
    study = pushed.synthetic["knee"]
    result = round_trip.wait_until_delivered(study.study_uid)
    timeline = round_trip.timeline(study.study_uid)
    steps = [entry["step"] for entry in timeline]
    assert [s for s in steps if s in STEPS] == STEPS
    assert "job_succeeded" in steps
    assert steps.count("delivered") == len(result["objects"])  # each object acknowledged once
    at = {entry["step"]: entry["at"] for entry in timeline}
    assert at["last_received"] <= at["ready"] <= at["inference_started"] <= at["inference_finished"] \
        <= at["objects_built"]
    ready = next(entry for entry in timeline if entry["step"] == "ready")
    assert "planes sagittal, coronal, axial present" in ready["data"]["reason"]
    assert (result["model_name"], result["model_version"]) == (pushed.model_name, pushed.model_version)
    assert result["model_card"]["version"] == pushed.model_version
    finished = next(entry for entry in timeline if entry["step"] == "inference_finished")
    built = next(entry for entry in timeline if entry["step"] == "objects_built")
    assert finished["data"]["model_version"] == built["data"]["model_version"] == pushed.model_version


def test_real_ge_series_gets_results_for_its_one_plane_and_its_missing_planes_recorded(round_trip, pushed):
    uid = pushed.ge_study_uid
    result = round_trip.wait_until_delivered(uid)
    kinds = by_kind(result, round_trip.pacs_objects(uid))
    timeline = round_trip.timeline(uid)
    assembled = next(entry for entry in timeline if entry["step"] == "assembled")
    assert list(assembled["data"]["planes"]) == ["sagittal"]
    assert assembled["data"]["missing_planes"] == ["coronal", "axial"]
    assert "missing coronal, axial" in assembled["detail"]
    ready = next(entry for entry in timeline if entry["step"] == "ready")
    assert ready["data"]["reason"].endswith("coronal, axial missing")
    sagittal = assembled["data"]["planes"]["sagittal"]
    for seg in kinds.get("seg", []):  # the model's masks on the one analysed series
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sagittal
    [sr] = kinds["sr"]
    assert sr_findings(sr) == expected_findings(result)
    for finding in result["findings"]:  # fused over the one plane the study has
        assert finding["plane_weights"] is None or set(finding["plane_weights"]) == {"sagittal"}
    assert result["joint"] == "knee" and result["model_version"] == pushed.model_version


@pytest.mark.parametrize("joint", ["ankle", "shoulder"])
def test_ankle_and_shoulder_get_an_sr_with_their_joints_findings(round_trip, pushed, joint):
    study = pushed.synthetic[joint]
    result = round_trip.wait_until_delivered(study.study_uid)
    kinds = by_kind(result, round_trip.pacs_objects(study.study_uid))
    assert "seg" not in kinds  # the model segments knees only
    [sr] = kinds["sr"]
    assert kinds["summary"]
    assert result["joint"] == joint and result["laterality"] == study.laterality
    assert [f["label"] for f in result["findings"]] == list(DIAGNOSIS_LABELS[Joint(joint)])
    assert sr_findings(sr) == expected_findings(result)
    assert set(sr_findings(sr)) == {codes.finding(label).code.meaning for label in DIAGNOSIS_LABELS[Joint(joint)]}


def test_model_loaded_once_and_nothing_lost_or_delivered_twice(round_trip, pushed):
    uids = [pushed.ge_study_uid, *(study.study_uid for study in pushed.synthetic.values())]
    for uid in uids:
        round_trip.wait_until_delivered(uid)
    assert round_trip.node.log().count("loaded from") == 1
    for uid in uids:
        [result] = round_trip.results(uid)  # one result set per study: one job, not superseded
        items = round_trip.deliveries(uid)
        assert {item.sop_instance_uid for item in items} == {o["sop_instance_uid"] for o in result["objects"]}
        assert all(item.state == "delivered" and item.attempts == 1 for item in items)
        delivered = Counter(entry["data"]["sop_instance_uid"] for entry in round_trip.timeline(uid)
                            if entry["step"] == "delivered")
        assert set(delivered.values()) == {1}
