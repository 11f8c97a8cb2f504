"""NIfTI volumes of a synthetic series and its ground-truth label map, on the series' own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ortho_node.synthetic.generator import SyntheticSeries

#: LPS (DICOM) -> RAS (NIfTI) flips the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def series_affine(series: SyntheticSeries) -> np.ndarray:
    """RAS affine of voxel (col, row, slice)."""
    return LPS_TO_RAS @ series.geometry.index_to_world()


def _volume(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    # [slice, row, col] -> NIfTI (i=col, j=row, k=slice)
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(array, (2, 1, 0))), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)  # scanner coordinates
    image.set_sform(affine, code=1)
    return image


def write_series(series: SyntheticSeries, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.nii.gz`` (image) and ``stem_labels.nii.gz`` (ground truth); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    affine = series_affine(series)
    image_path, label_path = directory / f"{stem}.nii.gz", directory / f"{stem}_labels.nii.gz"
    # gzip stores a timestamp unless told otherwise; nibabel writes mtime 0, keeping output byte-identical.
    nib.save(_volume(series.pixels, affine), image_path)
    nib.save(_volume(series.labels, affine), label_path)
    return image_path, label_path
