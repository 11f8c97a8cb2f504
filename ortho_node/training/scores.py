"""Validation metrics of the task heads: Dice per structure, AUC per label, and the structure scales chosen on
validation masks (mean Dice per structure). The labels' thresholds, sensitivity and specificity are
:mod:`ortho_node.training.calibration`'s."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch



def dice_per_structure(prediction: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """Dice of each class 1..classes-1 between two label maps; NaN where both are empty. Returns [classes-1]."""
    scores = np.full(classes - 1, np.nan)
    for k in range(1, classes):
        p, t = prediction == k, target == k
        total = int(p.sum()) + int(t.sum())
        if total:
            scores[k - 1] = 2.0 * int((p & t).sum()) / total
    return scores


def mean_dice(volumes: Sequence[tuple[np.ndarray, np.ndarray]], classes: int) -> np.ndarray:
    """Per class, the mean over volumes whose ground truth holds the class ([classes-1], NaN if none does)."""
    rows = []
    for prediction, target in volumes:
        scores = dice_per_structure(prediction, target, classes)
        present = np.array([(target == k).any() for k in range(1, classes)])
        rows.append(np.where(present, scores, np.nan))
    if not rows:
        return np.full(classes - 1, np.nan)
    stacked = np.array(rows)
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(stacked), axis=0)
        sums = np.nansum(stacked, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def scaled_overlaps(probabilities: torch.Tensor, target: torch.Tensor, scales: Sequence[float]) -> np.ndarray:
    """Per class and candidate scale, the (intersection, predicted, true) voxel counts of the class's mask when
    its map alone is multiplied by the scale before the arg-max. ``probabilities`` [K, ...], ``target`` [...]
    labels; returns [K, len(scales), 3]."""
    top = probabilities.topk(2, dim=0)
    counts = np.zeros((len(probabilities), len(scales), 3))
    for k, own in enumerate(probabilities):
        rival = torch.where(top.indices[0] == k, top.values[1], top.values[0])
        truth = target == k
        for i, scale in enumerate(scales):
            predicted = own * scale > rival
            counts[k, i] = int((predicted & truth).sum()), int(predicted.sum()), int(truth.sum())
    return counts


def choose_scales(overlaps: Sequence[np.ndarray], scales: Sequence[float]) -> tuple[tuple[float, ...], np.ndarray]:
    """Each class's scale maximising its mean Dice over the volumes holding it (1 on a tie, and for the
    background and classes no volume holds), from :func:`scaled_overlaps` of each volume. Returns the scales
    and the mean Dice of classes 1.. [K-1, len(scales)]."""
    counts = np.array(overlaps)  # [volumes, K, scales, 3]
    intersection, predicted, true = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class no volume holds: NaN mean
        mean = np.nanmean(np.where(true > 0, 2 * intersection / (predicted + true), np.nan), axis=0)[1:]
    unit = list(scales).index(1.0)
    chosen = [1.0]
    for row in mean:
        best = int(np.nanargmax(row)) if np.isfinite(row).any() else unit
        chosen.append(float(scales[best]) if row[best] > row[unit] else 1.0)
    return tuple(chosen), mean


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN without both classes."""
    labels = labels.astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return math.nan
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def nanmean(values) -> float:
    array = np.asarray(list(values), dtype=float)
    return float(np.nanmean(array)) if np.isfinite(array).any() else math.nan
