"""Issue 21: a card whose preprocessing crops around the joint (and scales by percentiles) predicts masks on
every source pixel of every series, background outside the crop; a card without the fields predicts exactly as
before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.inference.predictor import Predictor
from ortho_node.model.preprocessing import Normalisation, plan_crop
from ortho_node.model.system import load_system, save_system
from tests.inference.conftest import locate


@pytest.fixture(scope="module")
def cropping_model_dir(model_dir, tmp_path_factory):
    """The shared test model's weights under a card that crops 60 mm around the joint, percentile-scaled."""
    model = load_system(model_dir)
    spec = dataclasses.replace(model.card.preprocessing, crop_mm=60.0, normalisation=Normalisation.PERCENTILE)
    model.card = dataclasses.replace(model.card, preprocessing=spec)
    directory = tmp_path_factory.mktemp("cropping")
    save_system(directory, model)
    return directory


def test_masks_of_a_cropping_card_cover_every_source_pixel_and_are_background_outside_the_crop(
        cropping_model_dir, knee_study):
    predictor = Predictor.from_checkpoint(cropping_model_dir, "cpu", locate=locate)
    spec = predictor.card.preprocessing
    prediction = predictor.predict(knee_study)
    assert {s.plane for s in prediction.segmentations} == set(knee_study.planes)
    for segmentation in prediction.segmentations:
        volume = knee_study.planes[segmentation.plane]
        assert segmentation.mask.shape == volume.pixels.shape
        box = plan_crop(volume.pixels, spec, volume.geometry.pixel_spacing)
        rows, cols = volume.pixels.shape[1:]
        assert box.rows < rows or box.cols < cols  # the crop is smaller than the field of view here
        inside = np.zeros((rows, cols), bool)
        inside[max(box.row0, 0) : box.row0 + box.rows, max(box.col0, 0) : box.col0 + box.cols] = True
        assert not segmentation.mask[:, ~inside].any(), segmentation.plane
        assert segmentation.mask[:, inside].any(), segmentation.plane  # the seeded model marks something inside
    assert len(prediction.findings) == len(predictor.card.diagnosis[knee_study.joint].labels)


def test_the_cards_fields_reach_the_predictor_and_a_card_without_them_keeps_the_official(model_dir, cropping_model_dir, knee_study):
    plain = Predictor.from_checkpoint(model_dir, "cpu", locate=locate)
    assert plain.card.preprocessing.crop_mm is None
    assert plain.card.preprocessing.normalisation is Normalisation.MINMAX
    cropped = Predictor.from_checkpoint(cropping_model_dir, "cpu", locate=locate)
    with torch.inference_mode():
        a, b = plain.predict(knee_study), cropped.predict(knee_study)
    # Same weights, other preprocessing: the masks differ, so the card's fields really reach the predictor.
    assert any(not np.array_equal(x.mask, y.mask) for x, y in zip(a.segmentations, b.segmentations))
