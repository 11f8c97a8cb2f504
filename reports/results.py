"""From a :class:`StudyPrediction` to the study's result objects, and onto disk: what ``infer`` and the
pipeline call."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset

from ortho_node.config import Settings
from ortho_node.prediction import StudyPrediction
from ortho_node.intake.storage import fsync_folder, write_file_durably
from reports.seg import build_segmentation
from reports.sources import read_all
from reports.sr import build_report
from reports.summary import build_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultObjects:
    """The objects built for one prediction, and the SEGs that could not be built (Series Instance UID of the
    source -> the reason): a radiologist still gets the findings when one series' mask cannot be encoded."""

    datasets: list[Dataset]
    seg_not_built: dict[str, str]


def build_results(prediction: StudyPrediction, settings: Settings) -> ResultObjects:
    """One DICOM-SEG per analysed series with structures, the TID 1500 SR and, when configured, the summary
    series. UIDs derive from the inputs, so building twice gives the same instances.

    A SEG that highdicom refuses for its source images (e.g. instances of one series in different frames of
    reference) is left out and reported; the SR and summary are built without it.
    """
    sources = read_all(prediction)
    segmentations, not_built = [], {}
    for index, source in enumerate(sources):
        try:
            seg = build_segmentation(source, prediction, settings.results, index=index)
        except ValueError as exc:
            not_built[source.uid] = str(exc)
            log.warning("study %s: no SEG for series %s: %s", prediction.study_instance_uid, source.uid, exc)
            continue
        if seg is not None:
            segmentations.append(seg)
    objects: list[Dataset] = [seg.dataset for seg in segmentations]
    objects.append(build_report(prediction, sources, segmentations, settings.results))
    if settings.results.summary:
        objects.extend(build_summary(prediction, sources, settings.results))
    log.info("built %d result objects for study %s (%d SEG)", len(objects), prediction.study_instance_uid,
             len(segmentations))
    return ResultObjects(objects, not_built)


def build_and_write(prediction: StudyPrediction, settings: Settings, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """:func:`build_results` then :func:`write_result_objects` into ``folder``: the written paths and the SEGs
    not built. One picklable call, so a process pool can run it (building is pure Python)."""
    built = build_results(prediction, settings)
    return write_result_objects(built.datasets, folder, fsync=settings.storage.fsync), built.seg_not_built


def write_result_objects(datasets: Iterable[Dataset], folder: Path, *, fsync: bool = True) -> list[Path]:
    """Write each object as ``<Modality>_<SOPInstanceUID>.dcm`` (temporary name, fsync, rename): a file
    that exists is complete, so a delivery queue may point at it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"  # generated UIDs: safe as file names
        encoded = BytesIO()
        ds.save_as(encoded, enforce_file_format=True)
        write_file_durably(path, encoded.getvalue(), fsync=fsync)
        paths.append(path)
    if fsync:
        fsync_folder(folder)
    return paths
