"""Issue 21: the bundle's calibration records each label's threshold for the false-positive budget, its
validation and held-out figures with the studies counted, in the card's metrics and operating points."""

from __future__ import annotations

import math

import pytest
import torch

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.prediction import ThresholdRule
from ortho_node.training.bundle import _readout_figures


def test_readout_figures_choose_thresholds_for_the_budget_and_measure_them_held_out():
    labels = DIAGNOSIS_LABELS[Joint.ANKLE]
    generator = torch.Generator().manual_seed(0)
    truth = (torch.rand(40, len(labels), generator=generator) < 0.4).float()
    truth[:, 3] = 0  # no positive validation study: the fallback
    scores = (0.5 * truth + 0.5 * torch.rand(truth.shape, generator=generator)).clamp(0, 1)
    chosen: dict = {}
    val = _readout_figures(Joint.ANKLE, "val", scores, None, truth, chosen, 0.3)
    assert val["ankle-dx/val/target_specificity"] == pytest.approx(1 - 0.3 / 4)
    assert chosen[labels[3]].point.rule is ThresholdRule.FALLBACK
    for label in labels[:3]:
        point = chosen[label].point
        assert point.rule is ThresholdRule.TARGET_SPECIFICITY and point.fp_budget == 0.3
        assert val[f"ankle-dx/val/threshold/{label}"] == chosen[label].threshold
        assert val[f"ankle-dx/val/specificity/{label}"] >= 0.925
        assert val[f"ankle-dx/val/positives/{label}"] + val[f"ankle-dx/val/negatives/{label}"] == 40
    assert "ankle-dx/val/auc/ATFL" not in val  # no readout: the head's AUC stays the joint phase's
    assert val["ankle-dx/val/false_positives_per_normal_study"] <= 0.3

    test = _readout_figures(Joint.ANKLE, "test", scores[:10], torch.logit(scores[:10]), truth[:10], chosen, 0.3)
    assert chosen[labels[0]].point.test.positives == int(truth[:10, 0].sum())
    assert math.isnan(test[f"ankle-dx/test/sensitivity/{labels[3]}"]) or truth[:10, 3].any()
    assert "ankle-dx/test/auc/ATFL" in test and "ankle-dx/test/threshold/ATFL" not in test
