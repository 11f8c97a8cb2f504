"""Issue 21: the training data mixes realistic and SynthSeg-style randomised renders (per seed, picklable through
the rendering pool, a ratio of 0 changing nothing), and the bundle's profile and card carry the recipe."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ortho_node.labels import MODEL_PLANES, Joint
from ortho_node.model.preprocessing import Normalisation
from ortho_node.model.system import new_card
from ortho_node.model.unet import UNetConfig
from ortho_node.synthetic import RandomizedAppearance, RandomDeformation, choose_randomized
from ortho_node.training.bundle import PROFILES, new_bundle_model
from ortho_node.training.taskdata import generate_task_data, synthetic_training_study

#: choose_randomized(4, 0.5) picks the randomised render, (3, 0.5) the realistic one.
RANDOMISED, REALISTIC = 4, 3
#: Narrow ranges keep the randomised render cheap and the test about the mix, not the rendering.
APPEARANCE = RandomizedAppearance(slice_thickness_mm=(1.0, 2.0), deformation=RandomDeformation.none())


def test_the_mix_picks_per_seed_and_a_ratio_of_zero_is_todays_data_bit_for_bit():
    assert choose_randomized(RANDOMISED, 0.5) and not choose_randomized(REALISTIC, 0.5)
    spec = new_card(UNetConfig.reduced()).preprocessing
    seeds = [RANDOMISED, REALISTIC]
    today = generate_task_data(Joint.KNEE, seeds, spec)
    mixed = generate_task_data(Joint.KNEE, seeds, spec, randomized_ratio=0.5, appearance=APPEARANCE)
    pooled = generate_task_data(Joint.KNEE, seeds, spec, randomized_ratio=0.5, appearance=APPEARANCE, workers=2)
    assert pooled.study_uids == mixed.study_uids  # the appearance travels to the worker processes
    for name in ("images", "present", "segmentation", "diagnosis", "clinical"):
        assert torch.equal(getattr(pooled, name), getattr(mixed, name)), name
    # The realistic seed is today's example exactly; the randomised one is a new render of the same patient.
    assert mixed.study_uids[1] == today.study_uids[1] and torch.equal(mixed.images[1], today.images[1])
    assert torch.equal(mixed.stacks.images[1], today.stacks.images[1])
    assert mixed.study_uids[0] != today.study_uids[0] and not torch.equal(mixed.images[0], today.images[0])
    assert torch.equal(mixed.diagnosis, today.diagnosis) and torch.equal(mixed.clinical, today.clinical)
    randomised = synthetic_training_study(Joint.KNEE, RANDOMISED, randomized_ratio=0.5, appearance=APPEARANCE)
    assert randomised.study_uid == mixed.study_uids[0]
    assert all(s.description.endswith("RANDOMIZED") for s in randomised.series)
    assert mixed.segmentation[0].any()  # the randomised render keeps its labels on the model grid


def test_a_ratio_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="randomized_ratio"):
        generate_task_data(Joint.ANKLE, [1], new_card(UNetConfig.reduced()).preprocessing, randomized_ratio=1.5)


def test_profiles_carry_the_mix_and_the_preprocessing_the_card_will_record():
    assert PROFILES["full"].randomized_ratio == 0.5  # the recipe of the next retrain
    assert PROFILES["quick"].randomized_ratio == 0.0  # the pipeline proof stays fast
    sizes = PROFILES["full"].sizes()
    assert "appearance" not in sizes and sizes["randomized_ratio"] == 0.5
    json.dumps(sizes)  # plain JSON values for the card
    recorded = PROFILES["full"].appearance.to_dict()
    assert RandomizedAppearance.from_dict(json.loads(json.dumps(recorded))) == PROFILES["full"].appearance
    assert "deformation" in recorded and "scale" in recorded["deformation"]
    full, quick = (new_bundle_model(PROFILES[name]).card.preprocessing for name in ("full", "quick"))
    assert (full.normalisation, full.crop_mm) == (Normalisation.PERCENTILE, 160.0)  # the retrain's recipe
    assert quick.normalisation is Normalisation.MINMAX and quick.crop_mm is None  # the pipeline proof as before
    cropped = dataclasses.replace(PROFILES["quick"], normalisation=Normalisation.PERCENTILE, crop_mm=150.0)
    spec = new_bundle_model(cropped).card.preprocessing
    assert (spec.normalisation, spec.crop_mm, spec.size) == (Normalisation.PERCENTILE, 150.0, 64)


def test_the_cards_crop_and_normalisation_reach_the_training_data_as_the_predictor_applies_them():
    from ortho_node.model.preprocessing import labels_to_model_grid, plan_crop, preprocess_volume
    from ortho_node.synthetic import generate_study
    from ortho_node.training.taskdata import assembled_from_synthetic

    spec = dataclasses.replace(new_card(UNetConfig.reduced()).preprocessing, crop_mm=120.0,
                               normalisation=Normalisation.PERCENTILE)
    data = generate_task_data(Joint.KNEE, [REALISTIC], spec)
    study = generate_study(Joint.KNEE, REALISTIC, findings="random", scene_spacing=1.0)
    series = next(s for s in study.series if s.plane is MODEL_PLANES[0])
    volume = assembled_from_synthetic(study).planes[series.plane]
    crop = plan_crop(volume.pixels, spec, volume.geometry.pixel_spacing)
    x, _ = preprocess_volume(volume.pixels, spec, crop=crop)
    assert torch.equal(data.images[0, 0], x)
    assert torch.equal(data.segmentation[0, 0], labels_to_model_grid(series.labels, spec, crop=crop).to(torch.uint8))
    images, _ = data.segmentation_batch(torch.tensor([0]), torch.Generator().manual_seed(0), spec)
    assert images.min() >= -1.0 and images.max() <= 1.0
