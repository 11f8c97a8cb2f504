"""Unlabelled training volumes: find NIfTI files and DICOM series under a folder, read them, tell their plane.

A deliberately small reader for pretraining; the node's full series assembly (echo split, localizers,
completeness) lives elsewhere. Volumes come back as float32 (slices, rows, cols), slices sorted by position
along the slice normal, ascending.
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

from ortho_node.labels import Plane

logger = logging.getLogger(__name__)

_HEADER_TAGS = ["SeriesInstanceUID", "ImageOrientationPatient", "ImagePositionPatient", "EchoNumbers", "InstanceNumber"]
#: Patient axis of a slice normal -> plane (x: left-right, y: anterior-posterior, z: head-foot; same in LPS/RAS).
_PLANE_OF_AXIS = (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)


class SourceKind(str, enum.Enum):
    NIFTI = "nifti"
    DICOM = "dicom"


@dataclass(frozen=True)
class VolumeSource:
    """One volume on disk: a NIfTI file, or the files of one DICOM series."""

    kind: SourceKind
    path: Path
    plane: Plane
    files: tuple[Path, ...] = ()


def plane_of_normal(normal: Iterable[float]) -> Plane:
    """The plane whose slices have this normal: the patient axis it points along most."""
    return _PLANE_OF_AXIS[int(np.argmax(np.abs(np.asarray(list(normal), dtype=float))))]


def _slice_normal(orientation: Iterable[float]) -> np.ndarray:
    """ImageOrientationPatient (row direction, column direction) -> unit normal."""
    iop = np.asarray([float(v) for v in orientation])
    return np.cross(iop[:3], iop[3:])


def find_volumes(root: Path) -> list[VolumeSource]:
    """Every ``*.nii``/``*.nii.gz`` file and every DICOM series (``*.dcm``, grouped per folder) under root."""
    sources = [_nifti_source(p) for p in sorted({*root.rglob("*.nii"), *root.rglob("*.nii.gz")})]
    folders: dict[Path, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.dcm")):
        folders[path.parent].append(path)
    for files in folders.values():
        sources.extend(_dicom_sources(files))
    return sources


def _nifti_source(path: Path) -> VolumeSource:
    # The third voxel axis is the slice axis; its direction in patient space gives the plane.
    affine = nib.load(path).affine
    return VolumeSource(SourceKind.NIFTI, path, plane_of_normal(affine[:3, 2]))


def _dicom_sources(files: list[Path]) -> list[VolumeSource]:
    series: dict[str, list[Path]] = defaultdict(list)
    orientation: dict[str, np.ndarray] = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        uid, iop = header.get("SeriesInstanceUID"), header.get("ImageOrientationPatient")
        if uid is None or iop is None:
            logger.warning("skipping %s: no SeriesInstanceUID or ImageOrientationPatient", path)
            continue
        series[str(uid)].append(path)
        orientation.setdefault(str(uid), _slice_normal(iop))
    return [
        VolumeSource(SourceKind.DICOM, paths[0].parent, plane_of_normal(orientation[uid]), tuple(paths))
        for uid, paths in series.items()
    ]


def read_volume(source: VolumeSource) -> np.ndarray:
    """The volume as float32 (slices, rows, cols)."""
    if source.kind is SourceKind.NIFTI:
        return read_nifti(source.path)
    return read_dicom_series(source.files)


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


def read_dicom_series(files: Iterable[Path]) -> np.ndarray:
    """Files of one series -> (slices, rows, cols), sorted by position along the slice normal.

    Where several images share a position (multi-echo series), the lowest echo number is kept.
    """
    by_position: dict[float, pydicom.Dataset] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        position = float(np.dot([float(v) for v in ds.ImagePositionPatient], _slice_normal(ds.ImageOrientationPatient)))
        key = round(position, 3)
        kept = by_position.get(key)
        if kept is None or int(ds.get("EchoNumbers", 1) or 1) < int(kept.get("EchoNumbers", 1) or 1):
            by_position[key] = ds
    if not by_position:
        raise ValueError("no DICOM images to read")
    slices = [by_position[k] for k in sorted(by_position)]
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(shapes) != 1:
        raise ValueError(f"series mixes image sizes {sorted(shapes)}")
    return np.stack([_pixels(ds) for ds in slices]).astype(np.float32)


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> modality values (RescaleSlope/Intercept)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float32) * slope + intercept
