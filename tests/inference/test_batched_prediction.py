"""Issue 27: studies analysed together (their windows pooled through each backbone) get the result each gets
alone, whatever else is in the batch (up to the float rounding of kernels that differ between batch sizes);
a study that cannot be analysed fails alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.inference.predictor import PredictionError, PredictionOutcome, Predictor
from ortho_node.labels import Joint, Plane
from tests.inference.conftest import assert_same_outcome, locate, with_planes


@pytest.fixture(scope="module")
def studies(knee_study):
    """Four studies of different shapes: a full knee, a knee with a short sagittal series and no axial one, an
    ankle (diagnosis only) and a knee whose every pixel is zero (not analysable)."""
    planes = knee_study.planes
    short = with_planes(knee_study, {Plane.SAGITTAL: planes[Plane.SAGITTAL].pixels[:11],
                                     Plane.CORONAL: planes[Plane.CORONAL].pixels[::-1].copy()})
    ankle = dataclasses.replace(knee_study, joint=Joint.ANKLE)
    blank = with_planes(knee_study, {p: np.zeros_like(v.pixels) for p, v in planes.items()})
    return [knee_study, short, ankle, blank]


def test_a_batch_of_studies_gives_each_the_result_it_gets_alone(model_dir, studies):
    alone = Predictor.from_checkpoint(model_dir, "cpu", locate=locate, window_batch=1)
    pooled = Predictor.from_checkpoint(model_dir, "cpu", locate=locate, window_batch=7)
    outcomes = pooled.analyse_batch(studies)
    assert len(outcomes) == len(studies)
    for study, outcome in zip(studies[:3], outcomes[:3]):
        assert isinstance(outcome, PredictionOutcome)
        assert outcome.prediction.study_instance_uid == study.study_instance_uid
        assert_same_outcome(outcome, alone.analyse(study), alone, study)
    assert outcomes[0].prediction.segmentations and not outcomes[2].prediction.segmentations[0].mask.any()
    assert isinstance(outcomes[3], PredictionError) and "no analysable plane" in str(outcomes[3])
    # The order of the batch does not matter either.
    reversed_outcomes = pooled.analyse_batch(studies[2::-1])
    assert_same_outcome(reversed_outcomes[2], outcomes[0], alone, studies[0])


def test_the_window_batch_size_changes_class_maps_only_at_float_rounding(model_dir, knee_study):
    # CPU kernels differ between batch sizes (about 4e-6 here): far inside the 1e-4 the results are held to.
    runs = [Predictor.from_checkpoint(model_dir, "cpu", window_batch=size).run(
        [Predictor.from_checkpoint(model_dir, "cpu").prepare(knee_study)])[0] for size in (1, 16)]
    for plane, single in runs[0].items():
        assert torch.allclose(single.class_maps, runs[1][plane].class_maps, atol=1e-4, rtol=0)
        assert torch.allclose(single.features, runs[1][plane].features, atol=1e-4, rtol=0)


def test_window_batch_must_be_positive(model_dir):
    with pytest.raises(ValueError, match="window_batch"):
        Predictor.from_checkpoint(model_dir, "cpu", window_batch=0)
