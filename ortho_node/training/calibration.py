"""Operating thresholds of the diagnosis labels, for the bundle build and any later fine-tuning: each label's
threshold chosen on validation studies for a stated operating point, and its sensitivity and specificity
there (and on held-out studies), with the positive and negative studies counted.

The operating point is a false-positive budget per normal study: with L labels and at most ``fp_budget``
false positives expected on a study without findings, each label must reach the specificity
1 - fp_budget / L on the validation studies (8 knee labels, budget 0.3: 0.9625 each). The threshold is the
lowest one that does, so sensitivity is as high as that specificity allows. A validation split without a
positive or without a negative study of a label cannot place its threshold: the fixed
:data:`FALLBACK_THRESHOLD` is kept, and its record says so (rule ``fallback``, ``target_met`` False).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ortho_node.prediction import OperatingPoint, SplitFigures, ThresholdRule

#: False positives a normal study may collect over all of its joint's labels (issue 21: <= 0.3).
DEFAULT_FP_BUDGET = 0.3
FALLBACK_THRESHOLD = 0.5
#: Thresholds stay inside (0, 1), as ``prediction.Finding`` demands.
THRESHOLD_RANGE = (0.01, 0.99)
#: Slack on the specificity comparison (k / n against 1 - budget / L in floating point).
_EPSILON = 1e-9


@dataclass(frozen=True)
class Calibrated:
    """One label's chosen threshold and the card's record of it (:class:`~ortho_node.prediction.OperatingPoint`).

    ``sensitivity`` and ``specificity`` are the validation figures, NaN where unmeasurable (metric names)."""

    threshold: float
    point: OperatingPoint

    @property
    def sensitivity(self) -> float:
        value = self.point.validation.sensitivity
        return math.nan if value is None else value

    @property
    def specificity(self) -> float:
        value = self.point.validation.specificity
        return math.nan if value is None else value


def target_specificity(fp_budget: float, label_count: int) -> float:
    """The specificity each of ``label_count`` labels needs so that a normal study's expected false positives,
    the sum of (1 - specificity) over its labels, stay within ``fp_budget``."""
    if label_count < 1:
        raise ValueError(f"a joint has at least one label, got {label_count}")
    if not (0.0 <= fp_budget <= label_count):
        raise ValueError(f"false-positive budget must lie in [0, {label_count}], got {fp_budget}")
    return 1.0 - fp_budget / label_count


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Share of positives called (score >= threshold) and of negatives not called; NaN without any."""
    labels = labels.astype(bool)
    called = scores >= threshold
    sens = float(called[labels].mean()) if labels.any() else math.nan
    spec = float((~called[~labels]).mean()) if (~labels).any() else math.nan
    return sens, spec


def split_figures(scores: np.ndarray, labels: np.ndarray, threshold: float) -> SplitFigures:
    """:func:`sensitivity_specificity` with the studies counted (None for a figure without its studies)."""
    labels = labels.astype(bool)
    sens, spec = sensitivity_specificity(scores, labels, threshold)
    return SplitFigures(None if math.isnan(sens) else sens, None if math.isnan(spec) else spec,
                        int(labels.sum()), int((~labels).sum()))


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Ascending thresholds: below every score, midway between neighbouring scores, above every score."""
    unique = np.unique(scores)
    candidates = np.concatenate([[unique[0] - 1e-6], (unique[:-1] + unique[1:]) / 2, [unique[-1] + 1e-6]])
    return np.unique(np.clip(candidates, *THRESHOLD_RANGE))


def _degenerate(scores: np.ndarray, labels: np.ndarray, target: float | None, fp_budget: float | None
                ) -> Calibrated | None:
    """The fallback record where the validation studies lack positives or negatives of the label, else None."""
    labels = labels.astype(bool)
    if labels.any() and not labels.all():
        return None
    missing = "positive" if not labels.any() else "negative"
    note = f"no {missing} validation study: fixed threshold {FALLBACK_THRESHOLD}"
    point = OperatingPoint(ThresholdRule.FALLBACK, split_figures(scores, labels, FALLBACK_THRESHOLD), target,
                           fp_budget, target_met=False, note=note)
    return Calibrated(FALLBACK_THRESHOLD, point)


def choose_for_specificity(scores: np.ndarray, labels: np.ndarray, target: float, *,
                           fp_budget: float | None = None) -> Calibrated:
    """The lowest threshold whose validation specificity is at least ``target`` (the highest sensitivity at
    that specificity); where none in :data:`THRESHOLD_RANGE` reaches it, the most specific one, flagged."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    fallback = _degenerate(scores, labels, target, fp_budget)
    if fallback is not None:
        return fallback
    candidates = _candidates(scores)
    negatives = np.sort(scores[~labels])
    # Specificity at each candidate: the share of negatives scoring below it.
    specificity = np.searchsorted(negatives, candidates, side="left") / len(negatives)
    meets = np.flatnonzero(specificity >= target - _EPSILON)
    threshold = float(candidates[meets[0]] if len(meets) else candidates[-1])
    point = OperatingPoint(ThresholdRule.TARGET_SPECIFICITY, split_figures(scores, labels, threshold), target,
                           fp_budget, target_met=bool(len(meets)))
    return Calibrated(threshold, point)


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> Calibrated:
    """The threshold maximising sensitivity + specificity (Youden's J; nearest 0.5 on a tie); the fallback
    without both classes."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    fallback = _degenerate(scores, labels, None, None)
    if fallback is not None:
        return fallback
    best = max(_candidates(scores), key=lambda c: (sum(sensitivity_specificity(scores, labels, c)), -abs(c - 0.5)))
    return Calibrated(float(best), OperatingPoint(ThresholdRule.YOUDEN, split_figures(scores, labels, float(best))))


def calibrate_labels(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str],
                     fp_budget: float = DEFAULT_FP_BUDGET) -> dict[str, Calibrated]:
    """Each label's threshold for the joint's false-positive budget, from validation ``scores`` and
    ``targets`` [studies, labels] (probabilities and 0/1 truths, in ``labels`` order)."""
    scores, targets = np.asarray(scores, dtype=float), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} need [studies, {len(labels)}]")
    target = target_specificity(fp_budget, len(labels))
    known = ~np.isnan(targets.astype(float))  # unknown findings (NaN) take no part in a label's threshold
    return {label: choose_for_specificity(scores[known[:, k], k], targets[known[:, k], k], target, fp_budget=fp_budget)
            for k, label in enumerate(labels)}


def with_test(calibrated: Calibrated, scores: np.ndarray, labels: np.ndarray) -> Calibrated:
    """The same threshold and record, with its sensitivity and specificity on held-out studies added."""
    test = split_figures(np.asarray(scores, dtype=float), np.asarray(labels), calibrated.threshold)
    return dataclasses.replace(calibrated, point=dataclasses.replace(calibrated.point, test=test))

