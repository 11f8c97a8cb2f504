"""From a :class:`StudyPrediction` to the study's result objects, and onto disk: what ``infer`` and the
pipeline call."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from pydicom import Dataset

from ortho_node.config import Settings
from ortho_node.prediction import StudyPrediction
from reports.seg import build_segmentation
from reports.sources import read_all
from reports.sr import build_report
from reports.summary import build_summary

log = logging.getLogger(__name__)


def build_result_objects(prediction: StudyPrediction, settings: Settings) -> list[Dataset]:
    """One DICOM-SEG per analysed series with structures, the TID 1500 SR and, when configured, the summary
    series. UIDs derive from the inputs, so building twice gives the same instances."""
    sources = read_all(prediction)
    segmentations = [seg for index, source in enumerate(sources)
                     if (seg := build_segmentation(source, prediction, settings.results, index=index))]
    objects: list[Dataset] = [seg.dataset for seg in segmentations]
    objects.append(build_report(prediction, sources, segmentations, settings.results))
    if settings.results.summary:
        objects.extend(build_summary(prediction, sources, settings.results))
    log.info("built %d result objects for study %s (%d SEG)", len(objects), prediction.study_instance_uid,
             len(segmentations))
    return objects


def write_result_objects(datasets: Iterable[Dataset], folder: Path, *, fsync: bool = True) -> list[Path]:
    """Write each object as ``<Modality>_<SOPInstanceUID>.dcm`` (temporary name, fsync, rename): a file
    that exists is complete, so a delivery queue may point at it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"  # generated UIDs: safe as file names
        partial = path.with_suffix(".partial")
        ds.save_as(partial, enforce_file_format=True)
        if fsync:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
        partial.replace(path)
        paths.append(path)
    if fsync:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return paths
