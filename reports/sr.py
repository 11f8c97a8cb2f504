"""One Comprehensive 3D SR per study: TID 1500 Measurement Report of the model's structures and findings.

Content (PS3.16): TID 1001 observation context with the device observer (TID 1004); the Image Library (TID
1600) of the images the groups are drawn on; per segment a TID 1411 volumetric group (Volume in cm3,
referencing its DICOM-SEG segment and source series); per diagnosis label a TID 1501 group (Presence of property: Present/Absent,
Certainty of Finding in %, the operating Threshold Value in %, plane weights where the model gives them, and
where the model card records it the threshold's operating point: how it was chosen, as a coded ``99ORTHOD``
evaluation, with the card's validation sensitivity and specificity in %, their study counts, the target
specificity and the false-positive budget per normal study).

Viewers such as OHIF draw only groups with image coordinates and merge groups that share a Tracking
Unique Identifier. Every structure and finding therefore also gets a TID 1410 planar group with the same
tracking UID: a closed polyline around the structure on its key slice. Verification Flag is UNVERIFIED.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceImageForRegion,
    SourceSeriesForSegmentation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import generate_uid

from ortho_node.config import ResultsSettings
from ortho_node.prediction import Finding, OperatingPoint, StudyPrediction
from reports import codes
from reports.seg import SegmentRef, SeriesSegmentationResult, software_versions
from reports.sources import SourceSeries, bounding_polyline, evidence, result_uid

_ROIGroup = (PlanarROIMeasurementsAndQualitativeEvaluations | VolumetricROIMeasurementsAndQualitativeEvaluations
             | MeasurementsAndQualitativeEvaluations)


def device_uid(settings: ResultsSettings) -> str:
    """Device Observer UID of this node: stable per configured serial number."""
    return str(generate_uid(entropy_srcs=["ortho-node device", settings.device_serial_number]))


def observation_context(prediction: StudyPrediction, settings: ResultsSettings) -> ObservationContext:
    """TID 1001 with a TID 1004 device observer: the model running on this node made every observation."""
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid(settings), name=prediction.model.name, manufacturer_name=settings.manufacturer,
        model_name=f"{prediction.model.name} {prediction.model.version}", serial_number=settings.device_serial_number)
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=dicom_codes.DCM.Device, observer_identifying_attributes=device))


def build_report(prediction: StudyPrediction, sources: Sequence[SourceSeries],
                 segmentations: Sequence[SeriesSegmentationResult], settings: ResultsSettings) -> Comprehensive3DSR:
    """The study's TID 1500 Measurement Report as a Comprehensive 3D SR (PS3.3 A.35.13)."""
    if not sources:
        raise ValueError(f"study {prediction.study_instance_uid}: no analysed series to report on")
    algorithm = AlgorithmIdentification(name=prediction.model.name, version=prediction.model.version)
    groups: list[_ROIGroup] = []
    for seg in segmentations:
        for segment in seg.segments:
            groups.extend(_structure_groups(prediction, seg, segment, algorithm))
    for finding in prediction.findings:
        groups.extend(_finding_groups(prediction, finding, sources, segmentations, algorithm))
    # Image Library and evidence: the images the located groups sit on (key slices) and the SEGs, which in
    # turn reference every source image; listing all source images here would triple the build time.
    referenced = _referenced_images(groups, evidence(sources))
    report = MeasurementReport(
        observation_context=observation_context(prediction, settings),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
        referenced_images=referenced,
    )
    evidence_datasets = [*referenced, *(seg.dataset for seg in segmentations)]
    root = report[0]
    _check_evidence(root, evidence_datasets)
    # highdicom's document constructor deep-copies, re-parses and searches the whole content tree (about two
    # thirds of the SR's build time, which is most of a study's result building); the tree is already built
    # and checked by highdicom's template classes, so the document is made around the root container alone
    # and the tree attached to it. Its ``content`` therefore holds the root only: read the document back with
    # ``highdicom.sr.srread`` for the parsed tree.
    document = Comprehensive3DSR(
        evidence=evidence_datasets,
        content=_without_children(root),
        series_instance_uid=result_uid(prediction, "sr-series"),
        series_number=settings.sr_series_number,
        sop_instance_uid=result_uid(prediction, "sr"),
        instance_number=1,
        manufacturer=settings.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=settings.institution_name or None,
        series_description=settings.sr_series_description.format(plane=""),
        coding_schemes=[codes.coding_scheme()],
        manufacturer_model_name=prediction.model.name[:64],
        software_versions=software_versions(prediction.model),
        device_serial_number=settings.device_serial_number,
    )
    document.ContentSequence = root.ContentSequence
    return document


def _without_children(item: Dataset) -> Dataset:
    shallow = Dataset()
    for element in item:
        if element.keyword != "ContentSequence":
            shallow.add(element)
    shallow.ContentSequence = []
    return shallow


def _check_evidence(root: Dataset, evidence_datasets: Sequence[Dataset]) -> None:
    """Every image or object the content references is listed as evidence (the check highdicom makes)."""
    pending, referenced = list(root.ContentSequence), set()
    while pending:
        item = pending.pop()
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            referenced.add(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        pending.extend(item.get("ContentSequence", []))
    missing = referenced - {ds.SOPInstanceUID for ds in evidence_datasets}
    if missing:
        raise ValueError(f"SR content references instances not listed as evidence: {sorted(missing)}")


def _referenced_images(groups: Sequence[_ROIGroup], images: Sequence[Dataset]) -> list[Dataset]:
    wanted = {group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for group in groups
              if isinstance(group, PlanarROIMeasurementsAndQualitativeEvaluations)}
    return [ds for ds in images if ds.SOPInstanceUID in wanted]


def _sites(prediction: StudyPrediction, site, modifier=None) -> list[FindingSite]:
    return [FindingSite(anatomic_location=site, laterality=codes.laterality_code(prediction.laterality),
                        topographical_modifier=modifier)]


def _structure_groups(prediction: StudyPrediction, seg: SeriesSegmentationResult, segment: SegmentRef,
                      algorithm: AlgorithmIdentification) -> list[_ROIGroup]:
    concept = codes.structure(segment.structure)
    tracking = TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id)
    common = dict(finding_type=concept.type, finding_category=concept.category, algorithm_id=algorithm,
                  finding_sites=_sites(prediction, concept.region or concept.type, concept.modifier))
    volume = VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        # Referencing the source series rather than each source image keeps the SR small and quick to build.
        referenced_segment=ReferencedSegment(
            sop_class_uid=seg.dataset.SOPClassUID, sop_instance_uid=seg.dataset.SOPInstanceUID,
            segment_number=segment.segment_number, source_series=SourceSeriesForSegmentation(seg.source.uid)),
        measurements=[Measurement(name=codes.VOLUME, value=round(segment.volume_cm3, 4),
                                  unit=codes.CUBIC_CENTIMETER, algorithm_id=algorithm)],
        **common)
    located = _located_group(seg.source, segment.key_slice, seg.source.structure_mask(segment),
                             TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id), common)
    return [volume, located]


def _finding_groups(prediction: StudyPrediction, finding: Finding, sources: Sequence[SourceSeries],
                    segmentations: Sequence[SeriesSegmentationResult],
                    algorithm: AlgorithmIdentification) -> list[_ROIGroup]:
    """TID 1501 for one diagnosis label plus its located TID 1410 group (same tracking UID)."""
    concept = codes.finding(finding.label)
    uid = result_uid(prediction, "finding", finding.label)
    identifier = f"{concept.code.meaning}: {'present' if finding.present else 'absent'}"
    measurements = [
        Measurement(name=codes.CERTAINTY_OF_FINDING, value=round(finding.probability * 100, 2),
                    unit=codes.PERCENT, algorithm_id=algorithm),
        Measurement(name=codes.THRESHOLD_VALUE, value=round(finding.threshold * 100, 2), unit=codes.PERCENT,
                    algorithm_id=algorithm),
    ]
    for plane, weight in sorted((finding.plane_weights or {}).items(), key=lambda item: item[0].value):
        measurements.append(Measurement(name=codes.PLANE_WEIGHT[plane], value=round(weight, 4),
                                        unit=codes.NO_UNITS, algorithm_id=algorithm))
    evaluations = [QualitativeEvaluation(name=codes.PRESENCE, value=codes.PRESENT if finding.present else codes.ABSENT)]
    if finding.operating_point is not None:
        measurements += _operating_figures(finding.operating_point, algorithm)
        evaluations.append(QualitativeEvaluation(name=codes.OPERATING_POINT,
                                                 value=codes.operating_rule(finding.operating_point)))
    sites = _sites(prediction, concept.site, concept.site_modifier)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=identifier),
        finding_type=concept.code, finding_sites=sites, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations)
    source, slice_index, mask = _finding_anchor(finding, concept.key_structure, sources, segmentations)
    located = _located_group(source, slice_index, mask, TrackingIdentifier(uid=uid, identifier=identifier),
                             dict(finding_type=concept.code, finding_sites=sites, algorithm_id=algorithm))
    return [group, located]


def _operating_figures(point: OperatingPoint, algorithm: AlgorithmIdentification) -> list[Measurement]:
    """The model card's figures at a finding's threshold: validation sensitivity and specificity (%) with their
    study counts, and the target specificity (%) and false-positive budget that chose it, each where known."""
    validation = point.validation
    figures = [(codes.SENSITIVITY, validation.sensitivity, 100), (codes.SPECIFICITY, validation.specificity, 100),
               (codes.VALIDATION_POSITIVES, validation.positives, None),
               (codes.VALIDATION_NEGATIVES, validation.negatives, None),
               (codes.TARGET_SPECIFICITY, point.target_specificity, 100),
               (codes.FALSE_POSITIVE_BUDGET, point.fp_budget, None)]
    return [Measurement(name=name, value=round(value * 100, 2) if percent else value,
                        unit=codes.PERCENT if percent else codes.NO_UNITS, algorithm_id=algorithm)
            for name, value, percent in figures if value is not None]


def _finding_anchor(finding: Finding, structure: str | None, sources: Sequence[SourceSeries],
                    segmentations: Sequence[SeriesSegmentationResult]) -> tuple[SourceSeries, int, np.ndarray]:
    """Where a finding's located group sits: its key structure on the key slice of the series whose plane
    weighs most (else the first series showing it); otherwise the middle slice of the heaviest plane."""
    weights = finding.plane_weights or {}
    ranked = sorted(segmentations, key=lambda seg: -weights.get(seg.source.segmentation.plane, 0.0))
    for seg in ranked:
        for segment in seg.segments:
            if segment.structure == structure:
                return seg.source, segment.key_slice, seg.source.structure_mask(segment)
    source = max(sources, key=lambda s: weights.get(s.segmentation.plane, 0.0))
    middle = len(source.segmentation.slices) // 2
    return source, middle, np.zeros(source.segmentation.mask.shape[1:], dtype=bool)


def _located_group(source: SourceSeries, slice_index: int, mask: np.ndarray, tracking: TrackingIdentifier,
                   common: dict) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group: a closed polyline (SCOORD, image pixel coordinates) on one source slice."""
    frame = source.frame_number(slice_index)
    image = SourceImageForRegion.from_source_image(
        source.slice_dataset(slice_index), referenced_frame_numbers=[frame] if frame else None)
    region = ImageRegion(graphic_type=GraphicTypeValues.POLYLINE, graphic_data=bounding_polyline(mask),
                         source_image=image)
    return PlanarROIMeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, referenced_region=region,
                                                          **common)

