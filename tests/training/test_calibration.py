"""Issue 21: each label's threshold for a false-positive budget per normal study, its sensitivity and
specificity on validation and held-out studies with the studies counted, and the degenerate splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.prediction import ThresholdRule
from ortho_node.training.calibration import (
    DEFAULT_FP_BUDGET,
    FALLBACK_THRESHOLD,
    calibrate_labels,
    choose_for_specificity,
    choose_threshold,
    sensitivity_specificity,
    target_specificity,
    with_test,
)


def test_the_budget_gives_each_label_its_specificity():
    assert target_specificity(DEFAULT_FP_BUDGET, len(DIAGNOSIS_LABELS[Joint.KNEE])) == pytest.approx(0.9625)
    assert target_specificity(0.3, len(DIAGNOSIS_LABELS[Joint.ANKLE])) == pytest.approx(0.925)
    assert target_specificity(0.8, 8) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        target_specificity(-0.1, 8)


def _scores(rng, negatives=400, positives=100):
    """Overlapping classes: negatives ~ U(0, 0.7), positives ~ U(0.3, 1)."""
    scores = np.concatenate([rng.uniform(0, 0.7, negatives), rng.uniform(0.3, 1.0, positives)])
    return scores, np.concatenate([np.zeros(negatives), np.ones(positives)])


def test_the_lowest_threshold_that_meets_the_specificity_is_chosen():
    scores, labels = _scores(np.random.default_rng(0))
    chosen = choose_for_specificity(scores, labels, 0.9625, fp_budget=0.3)
    point = chosen.point
    assert point.rule is ThresholdRule.TARGET_SPECIFICITY and point.target_met
    assert (point.target_specificity, point.fp_budget) == (0.9625, 0.3)
    assert point.validation.specificity >= 0.9625 and (point.validation.positives, point.validation.negatives) == (100, 400)
    assert (chosen.sensitivity, chosen.specificity) == sensitivity_specificity(scores, labels, chosen.threshold)
    # Any lower threshold (the next score below) calls one more negative and misses the target.
    below = scores[scores < chosen.threshold].max() - 1e-9
    assert sensitivity_specificity(scores, labels, below)[1] < 0.9625
    # Youden's J keeps more sensitivity at a lower specificity on the same scores.
    youden = choose_threshold(scores, labels)
    assert youden.threshold < chosen.threshold and youden.specificity < 0.9625 <= chosen.specificity
    assert youden.point.rule is ThresholdRule.YOUDEN


def test_few_negatives_allow_no_false_positive_and_the_threshold_sits_between_the_classes():
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.6, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 0, 1, 1])
    chosen = choose_for_specificity(scores, labels, 0.9625)  # 5 negatives: 0.8 < 0.9625 < 1
    assert chosen.threshold == pytest.approx(0.7) and chosen.specificity == 1.0
    assert chosen.sensitivity == pytest.approx(2 / 3)


def test_an_unreachable_target_takes_the_most_specific_threshold_and_says_so():
    scores = np.array([0.1, 0.995, 0.999, 0.2])
    labels = np.array([1, 0, 1, 0])
    chosen = choose_for_specificity(scores, labels, 0.9625)
    assert chosen.threshold == 0.99 and not chosen.point.target_met
    assert chosen.point.validation.specificity == 0.5


@pytest.mark.parametrize("labels, missing", [(np.zeros(6), "positive"), (np.ones(6), "negative")])
def test_a_split_without_positives_or_negatives_keeps_the_fallback_flagged(labels, missing):
    scores = np.linspace(0.1, 0.9, 6)
    for chosen in (choose_for_specificity(scores, labels, 0.9625, fp_budget=0.3), choose_threshold(scores, labels)):
        assert chosen.threshold == FALLBACK_THRESHOLD
        assert chosen.point.rule is ThresholdRule.FALLBACK and not chosen.point.target_met
        assert missing in chosen.point.note
    figures = chosen.point.validation
    assert (figures.positives, figures.negatives) == (int(labels.sum()), int(6 - labels.sum()))
    unmeasured = figures.sensitivity if missing == "positive" else figures.specificity
    assert unmeasured is None and math.isnan(chosen.sensitivity if missing == "positive" else chosen.specificity)


def test_a_joint_is_calibrated_label_by_label_and_measured_on_held_out_studies():
    rng = np.random.default_rng(1)
    labels = DIAGNOSIS_LABELS[Joint.ANKLE]
    truth = rng.integers(0, 2, (60, len(labels)))
    truth[:, 3] = 0  # a label without positives in this split
    scores = np.clip(truth * 0.5 + rng.uniform(0, 0.5, truth.shape), 0, 1)
    chosen = calibrate_labels(scores, truth, labels, fp_budget=0.3)
    assert list(chosen) == list(labels)
    assert all(c.point.target_specificity == pytest.approx(0.925) for c in chosen.values())
    assert chosen[labels[3]].point.rule is ThresholdRule.FALLBACK
    assert all(chosen[label].specificity >= 0.925 for label in labels[:3])
    tested = with_test(chosen[labels[0]], scores[:20, 0], truth[:20, 0])
    assert tested.threshold == chosen[labels[0]].threshold and tested.point.validation == chosen[labels[0]].point.validation
    assert tested.point.test.positives + tested.point.test.negatives == 20
    with pytest.raises(ValueError):
        calibrate_labels(scores[:, :2], truth, labels)
