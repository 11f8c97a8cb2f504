"""Issue 21, preprocessing as card fields: percentile intensity normalisation, the joint-centred crop at a
physical size and its inverse onto every source pixel, their validation, and old cards keeping the official
preprocessing bit for bit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ortho_node.labels import Plane
from ortho_node.model.card import CheckpointError
from ortho_node.model.checkpoint import ModelCard, preprocess_spec_for
from ortho_node.model.preprocessing import (
    CropBox,
    GridMapping,
    Normalisation,
    PreprocessSpec,
    crop_box,
    foreground_centre,
    label_slices_to_model_grid,
    labels_to_model_grid,
    plan_crop,
    preprocess_volume,
    restore_argmax,
    restore_labels,
    slices_to_model_grid,
)
from ortho_node.model.system import SystemCard

# A system card written before the robust preprocessing fields existed (the model shipped until issue 21's
# retrain): old cards must keep reading as the official min-max preprocessing.
OLD_CARD = json.loads((Path(__file__).parents[1] / "data" / "model_card_minmax_2026.json").read_text())


def _official_reference(volume: np.ndarray, depth: int, size: int) -> torch.Tensor:
    """The official transform written out independently: centre window zero-padded after, rot90 k=3, bilinear,
    min-max."""
    start = max(0, volume.shape[0] // 2 - depth // 2)
    window = torch.zeros((depth, *volume.shape[1:]), dtype=torch.float64)
    used = volume[start : start + depth]
    window[: len(used)] = torch.from_numpy(used.astype(np.float64))
    turned = torch.rot90(window, 3, dims=(-2, -1))
    resized = F.interpolate(turned[:, None], size=(size, size), mode="bilinear", align_corners=False,
                            antialias=False)[:, 0].to(torch.float32)
    low, high = resized.min(), resized.max()
    return ((resized - low) / (high - low + 1e-8) * 2 - 1)[None]


def _tissue_volume(seed: int = 0) -> np.ndarray:
    """Two tissues (about 200 and 600) over a dark background, 16 x 96 x 96."""
    rng = np.random.default_rng(seed)
    volume = np.full((16, 96, 96), 20.0)
    volume[:, 20:76, 20:76] = 200.0
    volume[:, 40:56, 30:66] = 600.0
    return (volume + rng.normal(0, 5, volume.shape)).astype(np.float32)


def _disk_phantom(fov_mm: float, matrix: int, centre_mm: tuple[float, float] = (12.0, -8.0)) -> np.ndarray:
    """The same anatomy (a 25 mm radius disk, 600, in a 45 mm radius limb, 200) imaged with a ``fov_mm``
    field of view on a ``matrix`` x ``matrix`` grid: 16 slices, pixel spacing fov / matrix."""
    pixel = fov_mm / matrix
    r, c = (np.mgrid[0:matrix, 0:matrix] - (matrix - 1) / 2) * pixel
    r, c = r - centre_mm[0], c - centre_mm[1]
    image = np.where(r**2 + c**2 < 45.0**2, 200.0, 5.0)
    image[r**2 + c**2 < 25.0**2] = 600.0
    return np.repeat(image[None], 16, axis=0).astype(np.float32)


def test_old_cards_and_the_official_spec_keep_the_official_preprocessing_bit_for_bit(smooth_volume):
    old = PreprocessSpec.from_dict(OLD_CARD["preprocessing"])  # written before the new fields existed
    assert old == PreprocessSpec(depth=16, size=64, rot90_k=3)
    assert old.normalisation is Normalisation.MINMAX and old.crop_mm is None
    assert PreprocessSpec() == dataclasses.replace(PreprocessSpec(), normalisation="minmax", crop_mm=None)
    for shape in ((20, 100, 120), (9, 96, 80)):
        volume = smooth_volume(shape, seed=3) * 1000
        x, mapping = preprocess_volume(volume, old)
        assert torch.equal(x, _official_reference(volume, 16, 64)) and mapping.crop is None
    assert SystemCard.from_json(json.dumps(OLD_CARD)).preprocessing == old


def test_a_bright_artefact_voxel_crushes_min_max_but_not_percentile_scaling():
    volume = _tissue_volume()
    volume[8, 48, 48] = 100 * volume.max()  # one artefact voxel, 100x the brightest tissue
    spec = PreprocessSpec(depth=16, size=96)
    robust = dataclasses.replace(spec, normalisation=Normalisation.PERCENTILE, percentiles=(0.5, 99.5))
    crushed, _ = preprocess_volume(volume, spec)
    kept, _ = preprocess_volume(volume, robust)
    # Same size, so the model grid is the source turned by rot90 k=3, pixel for pixel.
    grid = torch.rot90(torch.from_numpy(volume), 3, dims=(-2, -1))
    soft, bright = (grid > 150) & (grid < 400), (grid > 500) & (grid < 800)

    def contrast(x: torch.Tensor) -> float:
        return float(x[0][bright].mean() - x[0][soft].mean())

    assert contrast(crushed) < 0.02  # every tissue squeezed near -1
    assert contrast(kept) > 1.0  # the tissues still span most of [-1, 1]
    assert kept.min() >= -1.0 and kept.max() <= 1.0 and kept.max() == 1.0
    assert kept.dtype == torch.float32 and kept.shape == (1, 16, 96, 96)


def test_percentile_scaling_of_a_mostly_padded_window_falls_back_to_min_max():
    volume = np.zeros((1, 32, 32), np.float32)
    volume[0, 10, 10] = 7.0  # one bright pixel in one slice of 16: both percentiles are 0
    spec = PreprocessSpec(depth=16, size=32, rot90_k=0, normalisation=Normalisation.PERCENTILE)
    x, _ = preprocess_volume(volume, spec)
    assert x.max().item() == pytest.approx(1.0) and x.min().item() == -1.0


def test_the_crop_is_centred_on_the_foreground_at_its_physical_size():
    volume = _disk_phantom(200.0, 200)  # 1 mm pixels, the limb centred 12 mm down and 8 mm left
    row, col = foreground_centre(volume)
    assert row == pytest.approx(99.5 + 12, abs=0.6) and col == pytest.approx(99.5 - 8, abs=0.6)
    spec = PreprocessSpec(depth=16, size=64, crop_mm=100.0)
    box = plan_crop(volume, spec, (1.0, 1.0))
    assert (box.rows, box.cols) == (100, 100)
    assert box.row0 + (box.rows - 1) / 2 == pytest.approx(row, abs=0.5)
    assert crop_box((1, 50, 50), (0.5, 0.25), 10.0, (0.0, 49.0)) == CropBox(-9, 30, 20, 40)  # beyond the edges
    assert plan_crop(volume, PreprocessSpec(), (1.0, 1.0)) is None


def test_a_120_and_a_200_mm_field_of_view_give_the_anatomy_one_scale_on_the_model_grid():
    def disk_area(volume: np.ndarray, spacing: float, spec: PreprocessSpec) -> float:
        x, _ = preprocess_volume(volume, spec, crop=plan_crop(volume, spec, (spacing, spacing)))
        return float((x[0, 8] > 0.5).sum())  # the 600 disk

    small, wide = _disk_phantom(120.0, 240), _disk_phantom(200.0, 256)
    cropped = PreprocessSpec(depth=16, size=64, crop_mm=100.0)
    a_small, a_wide = disk_area(small, 0.5, cropped), disk_area(wide, 200 / 256, cropped)
    expected = np.pi * (25.0 * 64 / 100) ** 2
    assert a_small == pytest.approx(expected, rel=0.05) and a_wide == pytest.approx(expected, rel=0.05)
    whole = PreprocessSpec(depth=16, size=64)  # the official whole field of view: the scale follows the FOV
    assert disk_area(small, 0.5, whole) / disk_area(wide, 200 / 256, whole) == pytest.approx((200 / 120) ** 2,
                                                                                                rel=0.08)


@pytest.mark.parametrize("centre", [(60.0, 70.0), (8.0, 110.0)])  # inside, and reaching beyond two edges
def test_crop_and_inverse_put_masks_on_every_source_pixel_background_outside(centre):
    shape, spacing = (20, 120, 128), (0.8, 0.6)
    s, r, c = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    labels = np.zeros(shape, np.int64)
    labels[(r - centre[0]) ** 2 / 15**2 + (c - centre[1]) ** 2 / 20**2 < 1] = 1  # inside the crop
    labels[(np.abs(r - centre[0]) < 3) & (np.abs(c - centre[1] - 5) < 12)] = 2
    labels[:, :, :3] = 3  # a strip far outside the crop
    labels[s % 6 == 5] = 0
    spec = PreprocessSpec(depth=16, size=64, crop_mm=40.0)
    box = crop_box(shape, spacing, spec.crop_mm, centre)
    assert (box.rows, box.cols) == (50, 67)
    grid = labels_to_model_grid(labels, spec, crop=box)
    assert grid.shape == (16, 64, 64)
    mapping = GridMapping(shape, spec, box)
    back = restore_labels(grid, mapping)
    assert back.shape == shape and back.dtype == np.int64
    window = slice(mapping.start, mapping.start + mapping.count)
    inside = np.zeros(shape[1:], bool)
    inside[max(box.row0, 0) : box.row0 + box.rows, max(box.col0, 0) : box.col0 + box.cols] = True
    assert not back[:, ~inside].any()  # outside the crop: background (the strip of 3 is gone)
    outside_window = np.ones(shape[0], bool)
    outside_window[window] = False
    assert not back[outside_window].any()
    for structure in (1, 2):
        truth, found = labels[window][:, inside] == structure, back[window][:, inside] == structure
        assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.93, structure
    # Class maps restore the same way; every series slice resized once gives the same grid as the window.
    maps = F.one_hot(grid, 4).permute(3, 0, 1, 2).float()
    assert np.array_equal(restore_argmax(maps, mapping), back.astype(np.uint8))
    every = label_slices_to_model_grid(labels, spec, crop=box)
    assert torch.equal(every[window], grid[: mapping.count])


def test_a_cropping_spec_refuses_to_run_without_its_crop(smooth_volume):
    volume = smooth_volume((16, 40, 40), seed=2)
    spec = PreprocessSpec(depth=16, size=32, crop_mm=30.0)
    for call in (lambda: preprocess_volume(volume, spec), lambda: slices_to_model_grid(volume, spec),
                 lambda: labels_to_model_grid(volume.astype(np.int64), spec)):
        with pytest.raises(ValueError, match="crop=plan_crop"):
            call()


def _system_json(**preprocessing) -> str:
    values = json.loads(json.dumps(OLD_CARD))
    values["preprocessing"].update(preprocessing)
    return json.dumps(values)


def test_new_preprocessing_fields_round_trip_through_both_kinds_of_card(tiny_model):
    card = SystemCard.from_json(_system_json(normalisation="percentile", percentiles=[1, 99], crop_mm=140))
    assert card.preprocessing == PreprocessSpec(16, 64, 3, Normalisation.PERCENTILE, (1.0, 99.0), 140.0)
    written = json.loads(card.to_json())["preprocessing"]
    assert (written["normalisation"], written["percentiles"], written["crop_mm"]) == ("percentile", [1.0, 99.0], 140.0)
    assert "percentiles 1 and 99" in written["intensity"] and "140 mm" in written["crop"]
    assert SystemCard.from_json(card.to_json()) == card
    unet = tiny_model.denoise_fn.config
    spec = dataclasses.replace(preprocess_spec_for(unet), normalisation=Normalisation.PERCENTILE, crop_mm=90.5)
    backbone = ModelCard(plane=Plane.SAGITTAL, unet=unet, diffusion=tiny_model.config, preprocessing=spec,
                         version="t", source="test", training_data="-", step=1)
    assert ModelCard.from_json(backbone.to_json()).preprocessing == spec
    official = json.loads(SystemCard.from_json(json.dumps(OLD_CARD)).to_json())["preprocessing"]
    assert official["intensity"] == OLD_CARD["preprocessing"]["intensity"]  # the official note, word for word
    assert (official["normalisation"], official["crop_mm"]) == ("minmax", None)


@pytest.mark.parametrize(("fields", "message"), [
    ({"normalisation": "zscore"}, "unknown intensity normalisation 'zscore'"),
    ({"normalisation": "percentile", "percentiles": [99.5, 0.5]}, "0 <= low < high <= 100"),
    ({"percentiles": [-1, 50]}, "0 <= low < high <= 100"),
    ({"percentiles": [1, 2, 3]}, "a pair"),
    ({"crop_mm": 0}, "crop_mm must be a positive"),
    ({"crop_mm": -120.0}, "crop_mm must be a positive"),
    ({"crop_mm": "wide"}, "invalid task-model card"),
])
def test_bad_preprocessing_fields_are_refused_with_a_clear_card_error(fields, message):
    with pytest.raises(CheckpointError, match=message):
        SystemCard.from_json(_system_json(**fields))
