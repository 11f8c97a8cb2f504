"""SEG, SR and summary objects: valid (dciodvfy), readable by highdicom, faithful to the prediction."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from tests.reports.conftest import dciodvfy_errors
from tests.reports.study_factory import MODEL


def _by_class(files, sop_class):
    return [path for path in files if dcmread(path, stop_before_pixels=True).SOPClassUID == sop_class]


def test_one_seg_per_series_one_sr_and_a_summary(result_files, knee):
    assert len(_by_class(result_files, SegmentationStorage)) == len(knee.prediction.segmentations)
    assert len(_by_class(result_files, Comprehensive3DSRStorage)) == 1
    assert len(_by_class(result_files, SecondaryCaptureImageStorage)) == len(knee.prediction.segmentations) + 1


def test_every_object_passes_dciodvfy(result_files):
    for path in result_files:
        assert dciodvfy_errors(path) == [], path.name


def test_seg_decodes_to_the_ground_truth_on_the_source_grid(result_files, knee):
    segmentations = {seg.series_instance_uid: seg for seg in knee.prediction.segmentations}
    for path in _by_class(result_files, SegmentationStorage):
        seg = hd.seg.segread(path)
        source_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        truth = segmentations[source_uid]
        assert len(seg.ReferencedSeriesSequence) == 1
        assert seg.SegmentationType == "BINARY" and seg.ContentQualification == "RESEARCH"
        numbers = seg.segment_numbers
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ref.sop_instance_uid for ref in truth.slices],
            segment_numbers=numbers, combine_segments=True, relabel=False)
        by_label = {s.segment_label: s.segment_number for s in seg.SegmentSequence
                    for s in [seg.get_segment_description(s.SegmentNumber)]}
        expected = np.zeros_like(truth.mask)
        for value, name in enumerate(truth.structures):
            if value:
                expected[truth.mask == value] = by_label[name]
        np.testing.assert_array_equal(labels, expected)


def test_segments_are_fully_described(result_files, knee):
    seg = hd.seg.segread(_by_class(result_files, SegmentationStorage)[0])
    assert seg.SeriesDescription == "AI segmentation sagittal - not for diagnostic use"
    assert seg.SeriesNumber == 1003
    for item in seg.SegmentSequence:
        description = seg.get_segment_description(item.SegmentNumber)
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MODEL.name and algorithm.AlgorithmVersion == MODEL.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert description.tracking_uid and "RecommendedDisplayCIELabValue" in item
        modifiers = item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
        assert "Right" in [m.CodeMeaning for m in modifiers]  # laterality of the knee


def test_sr_is_a_tid_1500_report_with_located_groups(result_files, knee):
    sr = hd.sr.srread(_by_class(result_files, Comprehensive3DSRStorage)[0])
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    groups = sr.content.get_planar_roi_measurement_groups() + sr.content.get_volumetric_roi_measurement_groups()
    groups += sr.content.get_image_measurement_groups()
    segments = sum(len(np.unique(seg.mask)) - 1 for seg in knee.prediction.segmentations)
    findings = len(knee.prediction.findings)
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == segments
    assert len(sr.content.get_image_measurement_groups()) == findings
    planar = {g.tracking_uid for g in sr.content.get_planar_roi_measurement_groups()}
    assert len(planar) == segments + findings  # every structure and finding has a located group
    assert {g.tracking_uid for g in groups} == planar
    volumes = [g.get_measurements()[0] for g in sr.content.get_volumetric_roi_measurement_groups()]
    assert all(m.unit.value == "cm3" and m.value > 0 for m in volumes)


def _referenced_in_content(item) -> set[str]:
    found = set()
    for child in item.get("ContentSequence", []):
        if child.ValueType in ("IMAGE", "COMPOSITE"):
            found.add(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        found |= _referenced_in_content(child)
    return found


def test_sr_lists_every_instance_its_content_references_as_evidence(result_files):
    sr = dcmread(_by_class(result_files, Comprehensive3DSRStorage)[0])
    listed = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
              for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    referenced = _referenced_in_content(sr)
    assert referenced and referenced <= listed


def test_sr_refuses_content_that_references_an_instance_not_listed_as_evidence(result_objects):
    from reports.sr import _check_evidence

    sr = next(ds for ds in result_objects if ds.SOPClassUID == Comprehensive3DSRStorage)
    referenced = _referenced_in_content(sr)
    evidence = [Dataset() for _ in referenced]
    for ds, uid in zip(evidence, sorted(referenced)):
        ds.SOPInstanceUID = uid
    _check_evidence(sr, evidence)
    with pytest.raises(ValueError, match="not listed as evidence"):
        _check_evidence(sr, evidence[1:])


def test_sr_findings_carry_presence_certainty_threshold_and_weights(result_files, knee):
    sr = hd.sr.srread(_by_class(result_files, Comprehensive3DSRStorage)[0])
    groups = sr.content.get_image_measurement_groups()
    for finding, group in zip(knee.prediction.findings, groups):
        presence = group.get_qualitative_evaluations()[0]
        assert presence.value.meaning == ("Present" if finding.present else "Absent")
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        assert measured["Certainty of Finding"] == pytest.approx(finding.probability * 100)
        assert measured["Threshold Value"] == pytest.approx(finding.threshold * 100)
        assert ("Sagittal plane weight" in measured) == (finding.plane_weights is not None)


def test_sr_findings_carry_the_cards_operating_point(result_files, knee):
    sr = hd.sr.srread(_by_class(result_files, Comprehensive3DSRStorage)[0])
    for finding, group in zip(knee.prediction.findings, sr.content.get_image_measurement_groups()):
        measured = {m.name.meaning: m.value for m in group.get_measurements()}
        evaluated = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
        point = finding.operating_point
        assert ("Operating point" in evaluated) == (point is not None)
        if point is None:
            assert not any("validation" in name for name in measured)
            continue
        assert evaluated["Operating point"].scheme_designator == "99ORTHOD"
        assert evaluated["Operating point"].value == {"target_specificity": "OP-TSPEC", "fallback": "OP-FIXED",
                                                      "youden": "OP-YOUDEN"}[point.rule.value]
        sensitivity = measured.get("Sensitivity at threshold on validation studies")
        assert sensitivity == (None if finding.sensitivity is None else pytest.approx(finding.sensitivity * 100))
        assert measured["Specificity at threshold on validation studies"] == pytest.approx(finding.specificity * 100)
        assert measured.get("Negative validation studies") == point.validation.negatives
        target = measured.get("Target specificity of the operating point")
        assert target == (None if point.target_specificity is None else pytest.approx(point.target_specificity * 100))
        assert measured.get("False positive budget per normal study") == point.fp_budget


def test_rebuilding_gives_the_same_uids(knee, result_objects, results_settings):
    from reports.results import build_results

    again = build_results(knee.prediction, results_settings).datasets
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in result_objects]


def test_summary_is_marked_ai_generated(result_files):
    for path in _by_class(result_files, SecondaryCaptureImageStorage):
        ds = dcmread(path)
        assert ds.SeriesDescription == "AI summary - not for diagnostic use"
        assert ds.ContentQualification == "RESEARCH" and ds.BurnedInAnnotation == "NO"
        assert ds.pixel_array.shape[2] == 3 and ds.pixel_array[:40].mean() > 20  # the red banner


def test_a_study_with_one_plane_gets_its_objects(knee, results_settings):
    """The fusion ran over the planes present: weights for the sagittal plane only (e.g. the real GE series)."""
    import dataclasses

    from ortho_node.labels import Plane
    from reports.results import build_results

    sagittal = [seg for seg in knee.prediction.segmentations if seg.plane is Plane.SAGITTAL]
    findings = tuple(dataclasses.replace(f, plane_weights={Plane.SAGITTAL: 1.0}) for f in knee.prediction.findings)
    prediction = dataclasses.replace(knee.prediction, segmentations=tuple(sagittal), findings=findings)
    modalities = [ds.Modality for ds in build_results(prediction, results_settings).datasets]
    assert modalities.count("SEG") == 1 and modalities.count("SR") == 1 and len(modalities) == 4
