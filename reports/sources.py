"""The analysed source images behind a prediction: their headers, geometry and deterministic result UIDs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from ortho_node.prediction import SeriesSegmentation, StudyPrediction

#: Patient and study attributes the result objects copy from their sources (Type 2 there).
_TYPE_2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


def result_uid(prediction: StudyPrediction, *parts: str) -> str:
    """A UID derived from the study, the model and ``parts``: rebuilding the same results gives the same
    UIDs, so a rebuilt object is the same instance to the delivery queue and the PACS."""
    return str(generate_uid(entropy_srcs=[prediction.study_instance_uid, prediction.model.name,
                                          prediction.model.version, *parts]))


@dataclass(frozen=True)
class SourceSeries:
    """One analysed series: the mask and the headers (no pixel data) of the images it lies on.

    ``datasets`` has one entry per source image: one per mask slice for single-frame images, or a single
    multi-frame image whose frames are the mask slices in order.
    """

    segmentation: SeriesSegmentation
    datasets: tuple[Dataset, ...]

    @classmethod
    def read(cls, segmentation: SeriesSegmentation) -> SourceSeries:
        refs = segmentation.slices
        frames = [ref.frame_number for ref in refs]
        if all(frame is None for frame in frames):
            datasets = tuple(dcmread(ref.path, stop_before_pixels=True) for ref in refs)
        elif len({ref.path for ref in refs}) == 1 and frames == list(range(1, len(refs) + 1)):
            datasets = (dcmread(refs[0].path, stop_before_pixels=True),)
        else:
            raise ValueError(f"series {segmentation.series_instance_uid}: mask slices must be single-frame "
                             "images or all frames of one multi-frame image, in order")
        for ref, ds in zip(refs, datasets):
            if ds.SOPInstanceUID != ref.sop_instance_uid:
                raise ValueError(f"{ref.path} holds {ds.SOPInstanceUID}, not {ref.sop_instance_uid}")
            for keyword in _TYPE_2_COPIED:
                if keyword not in ds:
                    # Type 2 in every result IOD: highdicom copies it, so an absent one travels as empty.
                    setattr(ds, keyword, None)
        return cls(segmentation, datasets)

    @property
    def uid(self) -> str:
        return self.segmentation.series_instance_uid

    @property
    def plane(self) -> str:
        return self.segmentation.plane.value

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    def slice_dataset(self, index: int) -> Dataset:
        """The image holding mask slice ``index``."""
        return self.datasets[0] if len(self.datasets) == 1 else self.datasets[index]

    def frame_number(self, index: int) -> int | None:
        return self.segmentation.slices[index].frame_number

    def structure_mask(self, segment) -> np.ndarray:
        """Boolean mask of ``segment`` (a ``reports.seg.SegmentRef``) on its key slice."""
        value = self.segmentation.structures.index(segment.structure)
        return self.segmentation.mask[segment.key_slice] == value

    @cached_property
    def voxel_volume_mm3(self) -> float:
        rows_mm, cols_mm = (float(v) for v in _attribute(self.first, "PixelSpacing"))
        return rows_mm * cols_mm * self._slice_spacing()

    def _slice_spacing(self) -> float:
        positions = [ds.get("ImagePositionPatient") for ds in self.datasets]
        if len(self.datasets) > 1 and all(p is not None for p in positions):
            steps = np.linalg.norm(np.diff(np.asarray(positions, dtype=float), axis=0), axis=1)
            if steps.size and float(np.median(steps)) > 0:
                return float(np.median(steps))
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _attribute(self.first, keyword, required=False)
            if value:
                return float(value)
        raise ValueError(f"series {self.uid}: slice spacing unknown (no positions, spacing or thickness)")


def _attribute(ds: Dataset, keyword: str, *, required: bool = True):
    """``keyword`` from the top level or, for enhanced multi-frame images, the shared functional groups."""
    if keyword in ds:
        return ds[keyword].value
    for group in ds.get("SharedFunctionalGroupsSequence", []):
        for measures in group.get("PixelMeasuresSequence", []):
            if keyword in measures:
                return measures[keyword].value
    if required:
        raise ValueError(f"source image {ds.get('SOPInstanceUID')} has no {keyword}")
    return None


def key_slice(mask: np.ndarray) -> int:
    """Index of the slice where a boolean (slices, rows, columns) mask covers most pixels."""
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def bounding_polyline(mask2d: np.ndarray, *, margin: int = 2) -> np.ndarray:
    """Closed rectangle (column, row) around a 2D mask, in image pixel coordinates (PS3.3 C.18.6.1.1),
    ``margin`` pixels wider and clipped to the image; the whole image centre quarter when the mask is empty."""
    rows, columns = mask2d.shape
    hit_rows, hit_cols = np.nonzero(mask2d)
    if hit_rows.size:
        top, bottom = max(hit_rows.min() - margin, 0), min(hit_rows.max() + 1 + margin, rows)
        left, right = max(hit_cols.min() - margin, 0), min(hit_cols.max() + 1 + margin, columns)
    else:
        top, bottom, left, right = rows / 4, 3 * rows / 4, columns / 4, 3 * columns / 4
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    return np.asarray(corners, dtype=float)


def read_all(prediction: StudyPrediction) -> list[SourceSeries]:
    return [SourceSeries.read(seg) for seg in prediction.segmentations]


def evidence(sources: Iterable[SourceSeries]) -> list[Dataset]:
    return [ds for source in sources for ds in source.datasets]
