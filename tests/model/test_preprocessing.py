"""The model input grid and its inverse: windows, orientation, intensities, and faithful round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ortho_node.model.preprocessing import (
    ConstantVolumeError,
    GridMapping,
    PreprocessSpec,
    labels_to_model_grid,
    preprocess_volume,
    restore_argmax,
    restore_labels,
    restore_probabilities,
)

SPEC = PreprocessSpec()


def _phantom_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Three structures: an ellipsoid (1), a box (2), a thin plate 4 voxels thick (3)."""
    s, r, c = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    S, R, C = shape
    labels = np.zeros(shape, np.int64)
    labels[((r - R * 0.55) / (R * 0.25)) ** 2 + ((c - C * 0.45) / (C * 0.2)) ** 2 < 1] = 1
    labels[(r < R * 0.25) & (c > C * 0.6) & (c < C * 0.9)] = 2
    labels[(r >= R * 0.8) & (r < R * 0.8 + 4) & (c > C * 0.1) & (c < C * 0.7)] = 3
    labels[s % 5 == 4] = 0  # slice-specific content, so a slice shift would show
    return labels


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("shape", [(24, 200, 180), (40, 512, 448), (16, 256, 256), (9, 320, 288), (1, 96, 128)])
def test_labels_survive_the_round_trip_onto_the_source_grid(shape):
    labels = _phantom_labels(shape)
    grid = labels_to_model_grid(labels, SPEC)
    assert grid.shape == (16, 256, 256) and grid.dtype == torch.int64
    mapping = GridMapping(shape, SPEC)
    back = restore_labels(grid, mapping)
    assert back.shape == shape and back.dtype == np.int64
    window = slice(mapping.start, mapping.start + mapping.count)
    for structure in (1, 2, 3):
        assert _dice(labels[window] == structure, back[window] == structure) > 0.95, structure
    outside = np.ones(shape[0], bool)
    outside[window] = False
    assert not back[outside].any()  # slices the model never saw are background


def test_slice_window_is_the_official_centre_and_pads_after():
    assert (GridMapping((24, 8, 8), SPEC).start, GridMapping((24, 8, 8), SPEC).count) == (4, 16)
    assert (GridMapping((25, 8, 8), SPEC).start, GridMapping((25, 8, 8), SPEC).count) == (4, 16)
    assert (GridMapping((9, 8, 8), SPEC).start, GridMapping((9, 8, 8), SPEC).count) == (0, 9)
    volume = np.stack([np.full((8, 8), i + 1.0) for i in range(25)])
    x, _ = preprocess_volume(volume, SPEC)
    levels = x[0, :, 0, 0]
    assert torch.allclose(levels, torch.linspace(-1, 1, 16), atol=1e-6)  # source slices 4..19 in order
    short, _ = preprocess_volume(volume[:9], SPEC)
    assert (short[0, 9:] == -1).all() and short[0, 8].min() == 1  # zero padding after the last slice


def test_in_plane_orientation_matches_the_official_nifti_reading():
    volume = np.zeros((16, 256, 256), np.float32)
    volume[:, 10, 200] = 1.0  # one bright pixel at row 10, column 200
    x, _ = preprocess_volume(volume, SPEC)
    h, w = np.unravel_index(int(x[0, 0].argmax()), (256, 256))
    assert (h, w) == (200, 256 - 1 - 10)  # model[h, w] = source[rows - 1 - w, h]


def test_intensities_are_min_max_scaled_per_volume(smooth_volume):
    volume = smooth_volume((20, 100, 120), seed=1)
    x, mapping = preprocess_volume(volume, SPEC)
    assert x.shape == (1, 16, 256, 256) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == pytest.approx(1.0, abs=1e-6)
    assert mapping.source_shape == (20, 100, 120)
    scaled, _ = preprocess_volume(volume * 7 + 100, SPEC)
    assert torch.allclose(x, scaled, atol=1e-5)


def test_one_slice_volume_is_padded_to_the_model_depth(smooth_volume):
    x, mapping = preprocess_volume(smooth_volume((1, 80, 80), seed=2), SPEC)
    assert (mapping.start, mapping.count) == (0, 1)
    assert x[0, 0].std() > 0 and (x[0, 1:] == -1).all()


def test_constant_and_malformed_volumes_are_rejected():
    with pytest.raises(ConstantVolumeError):
        preprocess_volume(np.zeros((20, 64, 64)), SPEC)
    with pytest.raises(ValueError, match="NaN"):
        preprocess_volume(np.full((20, 64, 64), np.nan), SPEC)
    with pytest.raises(ValueError, match="slices, rows, cols"):
        preprocess_volume(np.ones((64, 64)), SPEC)


def test_probabilities_return_to_the_source_grid():
    shape = (30, 300, 200)
    labels = _phantom_labels(shape)
    grid = labels_to_model_grid(labels, SPEC)
    one_hot = torch.nn.functional.one_hot(grid, 4).permute(3, 0, 1, 2).float()  # [K, D, H, W]
    mapping = GridMapping(shape, SPEC)
    probabilities = restore_probabilities(one_hot, mapping)
    assert probabilities.shape == (4, *shape) and probabilities.dtype == np.float32
    window = slice(mapping.start, mapping.start + mapping.count)
    assert np.allclose(probabilities[:, window].sum(axis=0), 1.0, atol=1e-5)
    assert not probabilities[:, : mapping.start].any()
    recovered = probabilities.argmax(axis=0)
    assert _dice(labels[window] == 1, recovered[window] == 1) > 0.95


def test_restored_label_map_is_the_argmax_of_the_restored_probabilities():
    """restore_argmax (the predictor's path, run where the maps are) equals argmax(restore_probabilities);
    slices outside the window are background."""
    shape = (30, 300, 200)
    generator = torch.Generator().manual_seed(3)
    maps = torch.softmax(torch.randn(4, SPEC.depth, SPEC.size, SPEC.size, generator=generator) * 3, dim=0)
    mapping = GridMapping(shape, SPEC)
    labels = restore_argmax(maps, mapping)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert np.array_equal(labels, restore_probabilities(maps, mapping).argmax(axis=0))
    assert not labels[: mapping.start].any() and not labels[mapping.start + mapping.count :].any()
    with pytest.raises(ValueError, match="K, depth, size, size"):
        restore_argmax(maps[0], mapping)
