"""Unlabelled training volumes: find NIfTI files and DICOM series under a folder, read them, tell their plane.

DICOM series are read by the node's own assembly code (header facts, orientation and plane, echo split, slice
order, duplicate positions, pixel rescale), so pretraining sees images exactly as inference does; of a series
split into several stacks (echoes, contrasts) the first is used (the lowest echo). Volumes come back as float32
(slices, rows, cols), slices sorted by position along the slice normal, ascending.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from ortho_node.assembly.pixels import read_volume as read_slices
from ortho_node.assembly.plan import AssemblyRules
from ortho_node.assembly.slices import SeriesFacts, SliceRef, multi_frame, single_frame
from ortho_node.assembly.volumes import GeometryRules, plan_series
from ortho_node.config import AssemblySettings
from ortho_node.db.models import Instance, Series
from ortho_node.intake.header import InstanceHeader
from ortho_node.labels import Plane

logger = logging.getLogger(__name__)

#: Patient axis of a slice normal -> plane (x: left-right, y: anterior-posterior, z: head-foot; same in LPS/RAS).
_PLANE_OF_AXIS = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)


class SourceKind(str, enum.Enum):
    NIFTI = "nifti"
    DICOM = "dicom"


@dataclass(frozen=True)
class VolumeSource:
    """One volume on disk: a NIfTI file, or one DICOM series (its files, and the slices assembly chose)."""

    kind: SourceKind
    path: Path
    plane: Plane
    files: tuple[Path, ...] = ()
    slices: tuple[SliceRef, ...] = ()


def plane_of_normal(normal: Iterable[float]) -> Plane:
    """The plane whose slices have this normal: the patient axis it points along most (NIfTI sources)."""
    return _PLANE_OF_AXIS[int(np.argmax(np.abs(np.asarray(list(normal), dtype=float))))]


def default_rules() -> GeometryRules:
    """The node's default geometry rules (oblique limit, minimum slices, spacing tolerance)."""
    return AssemblyRules.from_settings(AssemblySettings()).geometry


def find_volumes(root: Path, rules: GeometryRules | None = None) -> list[VolumeSource]:
    """Every ``*.nii``/``*.nii.gz`` file and every usable DICOM series (``*.dcm``, grouped per folder) under
    root; DICOM series that assembly would not use (localizers, oblique, too few slices) are left out."""
    sources = [_nifti_source(p) for p in sorted({*root.rglob("*.nii"), *root.rglob("*.nii.gz")})]
    folders: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.dcm")):
        folders[path.parent].append(path)
    for files in folders.values():
        sources.extend(_dicom_sources(files, rules or default_rules()))
    return sources


def _nifti_source(path: Path) -> VolumeSource:
    # The third voxel axis is the slice axis; its direction in patient space gives the plane.
    affine = nib.load(path).affine
    return VolumeSource(SourceKind.NIFTI, path, plane_of_normal(affine[:3, 2]))


def _series_slices(files: list[Path]) -> dict[str, tuple[SeriesFacts, list[SliceRef], list[Path]]]:
    """Per series UID: its facts, the slices its files offer (as assembly reads them from the catalog's rows)
    and its files."""
    series: dict[str, tuple[SeriesFacts, list[SliceRef], list[Path]]] = {}
    for order, path in enumerate(files):
        header = InstanceHeader.from_dataset(pydicom.dcmread(path, stop_before_pixels=True))
        if not (header.series_uid and header.sop_uid):
            logger.warning("skipping %s: no SeriesInstanceUID or SOPInstanceUID", path)
            continue
        # Unsaved catalog rows: assembly takes its slice facts from them exactly as from stored ones.
        row = Instance(id=order, sop_instance_uid=header.sop_uid, file_path=str(path), **header.instance)
        facts = SeriesFacts.from_row(Series(series_instance_uid=header.series_uid, **header.series))
        _, slices, paths = series.setdefault(header.series_uid, (facts, [], []))
        slices.extend(multi_frame(row, path) if (row.number_of_frames or 1) > 1 else [single_frame(row)])
        paths.append(path)
    return series


def _dicom_sources(files: list[Path], rules: GeometryRules) -> list[VolumeSource]:
    sources = []
    for uid, (facts, slices, paths) in _series_slices(files).items():
        candidates, excluded = plan_series(facts, slices, rules)
        usable = [volume for volume in candidates if volume.usable]
        if excluded is not None or not usable:
            reason = excluded.reason if excluded is not None else "; ".join(str(v.problem) for v in candidates)
            logger.warning("skipping series %s in %s: %s", uid, paths[0].parent, reason)
            continue
        chosen = usable[0]  # stacks come in echo order: the first echo, as the reader always took
        sources.append(VolumeSource(SourceKind.DICOM, paths[0].parent, chosen.plane, tuple(paths), chosen.slices))
    return sources


def read_volume(source: VolumeSource) -> np.ndarray:
    """The volume as float32 (slices, rows, cols)."""
    if source.kind is SourceKind.NIFTI:
        return read_nifti(source.path)
    return read_slices(source.slices, Path)


def read_nifti(path: Path) -> np.ndarray:
    """NIfTI (i, j, k) -> (k, rows, cols), undoing the official in-plane orientation.

    The official models read dcm2niix NIfTI files as (i, j) slices, which is the DICOM slice turned by
    ``np.rot90(.., k=3)``; turning back here makes NIfTI and DICOM sources share one convention, and
    ``PreprocessSpec.rot90_k = 3`` then reproduces the official input exactly.
    """
    data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    if data.ndim == 4:
        logger.warning("%s is 4D %s: using its first volume", path, data.shape)
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    return np.ascontiguousarray(np.moveaxis(np.rot90(data, k=1, axes=(0, 1)), 2, 0))
