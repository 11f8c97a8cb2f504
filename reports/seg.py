"""One BINARY DICOM-SEG per analysed source series (PS3.3 A.51), pixel-aligned with the source images.

Each present structure is one segment coded by ``reports.codes`` (CID 7150 category, CID 7151 type, CID 2
and CID 244 modifiers), with colour, tracking UID and the algorithm's identification (CID 7162 family
Artificial Intelligence). Content Qualification is RESEARCH: the objects are not for diagnostic use.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription, Segmentation, SegmentationTypeValues
from highdicom.sr import CodedConcept
from pydicom.sr.coding import Code

from ortho_node import __version__
from ortho_node.config import ResultsSettings
from ortho_node.prediction import ModelIdentity, StudyPrediction
from reports import codes
from reports.sources import SourceSeries, key_slice, result_uid


class StructureSegmentDescription(SegmentDescription):
    """A segment description that also carries Segmented Property Type Modifiers (PS3.3 C.8.20.2), which
    ``highdicom.seg.SegmentDescription`` does not take: the meniscus side and the laterality."""

    def __init__(self, *args, modifiers: list[Code], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if modifiers:
            # Nested in the property type item, as PS3.3 Table C.8.20-4 places it.
            self.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                CodedConcept(m.value, m.scheme_designator, m.meaning) for m in modifiers]


@dataclass(frozen=True)
class SegmentRef:
    """Where one structure of one source series ended up: the SR references it by these."""

    structure: str
    segment_number: int
    tracking_uid: str
    tracking_id: str
    voxels: int
    volume_cm3: float
    key_slice: int  # mask slice index with the largest cross-section


@dataclass(frozen=True)
class SeriesSegmentationResult:
    source: SourceSeries
    dataset: Segmentation
    segments: tuple[SegmentRef, ...]


def algorithm_identification(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name, family=codes.ARTIFICIAL_INTELLIGENCE, version=model.version, source="OrthoDiffusion")


def software_versions(model: ModelIdentity) -> list[str]:
    # A list, not a tuple: pydicom takes lists as multiple values of the LO element.
    return [f"ortho-node {__version__}", f"{model.name} {model.version}"[:64]]


def copy_body_part(dataset: hd.SOPClass, source: SourceSeries) -> None:
    """General Series Body Part Examined from the source. Laterality travels in each segment's property type
    modifiers instead: dciodvfy rejects General Series Laterality on a SEG (its Type 2C condition)."""
    body_part = source.first.get("BodyPartExamined")
    if body_part:
        dataset.BodyPartExamined = body_part


def build_segmentation(source: SourceSeries, prediction: StudyPrediction, settings: ResultsSettings,
                       *, index: int) -> SeriesSegmentationResult | None:
    """The SEG of one source series, or None when its mask holds no structure.

    ``index`` (the series' position in the prediction) numbers a SEG whose source has no Series Number.
    """
    seg = source.segmentation
    values = [int(v) for v in np.unique(seg.mask) if v != 0]
    if not values:
        return None
    # highdicom takes a label map whose values are segment numbers 1..n: renumber the present labels.
    lookup = np.zeros(len(seg.structures), dtype=np.uint8)
    lookup[values] = np.arange(1, len(values) + 1, dtype=np.uint8)
    label_map = lookup[seg.mask]
    algorithm = algorithm_identification(prediction.model)
    laterality = codes.laterality_code(prediction.laterality)
    descriptions, refs = [], []
    for number, value in enumerate(values, start=1):
        name = seg.structures[value]
        concept = codes.structure(name)
        in_segment = seg.mask == value
        voxels = int(in_segment.sum())
        ref = SegmentRef(
            structure=name, segment_number=number,
            tracking_uid=result_uid(prediction, "segment", source.uid, name),
            tracking_id=f"{name} ({source.plane})", voxels=voxels,
            volume_cm3=voxels * source.voxel_volume_mm3 / 1000.0, key_slice=key_slice(in_segment))
        modifiers = [m for m in (concept.modifier, laterality) if m is not None]
        descriptions.append(StructureSegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=concept.category, segmented_property_type=concept.type,
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=ref.tracking_uid, tracking_id=ref.tracking_id,
            anatomic_regions=[concept.region] if concept.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*concept.rgb), modifiers=modifiers))
        refs.append(ref)
    series_number = int(source.first.get("SeriesNumber") or index + 1) + settings.seg_series_number_offset
    dataset = Segmentation(
        source_images=list(source.datasets),
        pixel_array=label_map,
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=result_uid(prediction, "seg-series", source.uid),
        series_number=series_number,
        sop_instance_uid=result_uid(prediction, "seg", source.uid),
        instance_number=1,
        manufacturer=settings.manufacturer,
        manufacturer_model_name=prediction.model.name[:64],
        software_versions=software_versions(prediction.model),
        device_serial_number=settings.device_serial_number,
        content_label="AI_SEGMENTATION",
        content_description="AI segmentation - not for diagnostic use",
        content_creator_name="OrthoDiffusion^Node",
        series_description=settings.seg_series_description.format(plane=source.plane),
        institution_name=settings.institution_name or None,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[codes.coding_scheme()],
        omit_empty_frames=True,
    )
    copy_body_part(dataset, source)
    return SeriesSegmentationResult(source, dataset, tuple(refs))
