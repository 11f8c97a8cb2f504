"""Pixel data of a chosen volume, read from the stored files into one float32 array.

Only the chosen volumes are read, each file once (a multi-frame object gives all its frames in one read),
straight into a preallocated (slices, rows, columns) array, so a study costs about its float32 size in memory.
Compressed transfer syntaxes are decoded by pydicom's pixel backends (pylibjpeg, openjpeg, RLE plugins).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread

from ortho_node.assembly.slices import SliceRef


class PixelDataError(ValueError):
    """A stored image cannot be decoded or does not have the expected size."""


def read_volume(slices: Sequence[SliceRef], resolve: Callable[[str], Path]) -> np.ndarray:
    rows, columns = slices[0].rows, slices[0].columns
    volume = np.empty((len(slices), rows, columns), dtype=np.float32)
    by_file: dict[str, list[tuple[int, SliceRef]]] = defaultdict(list)
    for index, ref in enumerate(slices):
        by_file[ref.file_path].append((index, ref))
    for file_path, members in by_file.items():
        _read_file(resolve(file_path), members, volume)
    return volume


def _read_file(path: Path, members: list[tuple[int, SliceRef]], volume: np.ndarray) -> None:
    try:
        ds = dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; each becomes one clear error
        raise PixelDataError(f"{path.name}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    slope, intercept = _rescale(ds)
    for index, ref in members:
        frame = ref.frame or 0
        if frame >= pixels.shape[0] or pixels.shape[1:] != volume.shape[1:]:
            raise PixelDataError(f"{path.name}: frame {frame + 1} of shape {pixels.shape[1:]} does not fit "
                                 f"{volume.shape[1:]}")
        target = volume[index]
        np.copyto(target, pixels[frame], casting="unsafe")
        if slope != 1.0 or intercept != 0.0:
            target *= slope
            target += intercept


def _rescale(ds: Dataset) -> tuple[float, float]:
    """RescaleSlope/Intercept, or for Enhanced MR the shared Pixel Value Transformation."""
    source: Dataset = ds
    shared = ds.get("SharedFunctionalGroupsSequence")
    if "RescaleSlope" not in ds and shared and "PixelValueTransformationSequence" in shared[0]:
        source = shared[0].PixelValueTransformationSequence[0]
    try:
        return float(source.get("RescaleSlope", 1.0) or 1.0), float(source.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 1.0, 0.0
