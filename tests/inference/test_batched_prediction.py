"""Issue 27: studies analysed together (their windows pooled through each backbone) get exactly the result each
gets alone, whatever else is in the batch; a study that cannot be analysed fails alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ortho_node.inference.predictor import PredictionError, PredictionOutcome, Predictor
from ortho_node.labels import Joint, Plane
from tests.inference.conftest import locate, with_planes


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


def _assert_same(batched: PredictionOutcome, alone: PredictionOutcome) -> None:
    assert batched.analysed_planes == alone.analysed_planes and batched.windows == alone.windows
    assert batched.skipped_planes == alone.skipped_planes
    pairs = zip(batched.prediction.segmentations, alone.prediction.segmentations, strict=True)
    for b, a in pairs:
        assert b.series_instance_uid == a.series_instance_uid and np.array_equal(b.mask, a.mask)
    for b, a in zip(batched.prediction.findings, alone.prediction.findings, strict=True):
        assert b.label == a.label and b.probability == pytest.approx(a.probability, abs=1e-4)
        assert b.present == a.present


def test_a_batch_of_studies_gives_each_the_result_it_gets_alone(model_dir, studies):
    # Same window batch size, different company: each study's windows share passes with other studies' here.
    alone = Predictor.from_checkpoint(model_dir, "cpu", locate=locate, window_batch=7)
    pooled = Predictor.from_checkpoint(model_dir, "cpu", locate=locate, window_batch=7)
    outcomes = pooled.analyse_batch(studies)
    assert len(outcomes) == len(studies)
    for study, outcome in zip(studies[:3], outcomes[:3]):
        assert isinstance(outcome, PredictionOutcome)
        assert outcome.prediction.study_instance_uid == study.study_instance_uid
        _assert_same(outcome, alone.analyse(study))
    assert outcomes[0].prediction.segmentations and not outcomes[2].prediction.segmentations[0].mask.any()
    assert isinstance(outcomes[3], PredictionError) and "no analysable plane" in str(outcomes[3])
    # The order of the batch does not matter either.
    reversed_outcomes = pooled.analyse_batch(studies[2::-1])
    _assert_same(reversed_outcomes[2], outcomes[0])


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
