"""``train evaluate``'s figures: a model run on every labelled study (the node's assembly, then the same
:class:`~ortho_node.inference.predictor.Predictor` serving uses), then Dice per structure, AUC per label with a
seeded 95% bootstrap interval, sensitivity and specificity at the card's thresholds beside its operating points
(:mod:`~ortho_node.training.calibration`), reliability bins, and the same figures per scanner and per field
strength (from the headers).

A study without a value for a finding (a blank in the CSV) takes no part in that finding's figures. Studies are
named by a hash of their UID only: the report can leave the hospital without identifying anyone.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ortho_node.inference.predictor import PredictionError, Predictor
from ortho_node.labels import DIAGNOSIS_LABELS, UNLABELLED, Joint
from ortho_node.model.system import SystemCard
from ortho_node.training import calibration
from ortho_node.training import scores as metrics
from ortho_node.training.labelled import Acquisition, LabelledStudy

logger = logging.getLogger(__name__)

BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0
RELIABILITY_BINS = 10
CONFIDENCE = 0.95


def study_key(study_instance_uid: str) -> str:
    """A study's name in the report: 16 hex digits of a sha256, never the UID (it could be traced back)."""
    return hashlib.sha256(f"ortho-node study:{study_instance_uid}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyRecord:
    """One study's truth and prediction: findings (0 / 1 / None unknown) and probabilities per label, and per
    masked plane the Dice of each structure its truth holds (None: not in the truth, left out of the mean)."""

    key: str
    acquisition: Acquisition
    truth: Mapping[str, int | None]
    probability: Mapping[str, float]
    dice: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"study": self.key, "manufacturer": self.acquisition.manufacturer, "scanner_model": self.acquisition.model,
                "field_strength": self.acquisition.field_strength, "truth": dict(self.truth),
                "probability": dict(self.probability), "dice": {p: dict(d) for p, d in self.dice.items()}}


def plane_dice(predicted: np.ndarray, truth: np.ndarray, structures: Sequence[str]) -> dict[str, float | None]:
    """Dice of each structure the truth holds on one series; voxels nobody labelled (:data:`UNLABELLED`) count
    for neither side."""
    predicted = np.where(truth == UNLABELLED, UNLABELLED, predicted)
    values = metrics.dice_per_structure(predicted, truth, len(structures))
    return {name: float(values[k - 1]) if (truth == k).any() else None
            for k, name in enumerate(structures) if k > 0}


def predict_studies(predictor: Predictor, studies: Sequence[LabelledStudy], joint: Joint
                    ) -> tuple[list[StudyRecord], list[dict]]:
    """Every study through ``predictor``: (records, studies not analysed with why)."""
    records, failed = [], []
    for n, item in enumerate(studies, start=1):
        key = study_key(item.uid)
        try:
            outcome = predictor.analyse(item.study, locate=item.sources.__getitem__)
        except PredictionError as error:
            logger.warning("study %s not analysed: %s", key, error)
            failed.append({"study": key, "reason": str(error)})
            continue
        prediction = outcome.prediction
        probability = {f.label: f.probability for f in prediction.findings}
        dice = {seg.plane.value: plane_dice(seg.mask, item.masks[seg.plane], seg.structures)
                for seg in prediction.segmentations if seg.plane in item.masks and len(seg.structures) > 1}
        records.append(StudyRecord(key, item.acquisition, dict(item.findings),
                                   {label: probability[label] for label in DIAGNOSIS_LABELS[joint]}, dice))
        logger.info("evaluated %d of %d studies", n, len(studies))
    return records, failed


# -- figures --------------------------------------------------------------------------------------------------
def known_pairs(records: Sequence[StudyRecord], label: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, truths) of the studies with a value for ``label``."""
    rows = [(r.probability[label], r.truth[label]) for r in records if r.truth.get(label) is not None]
    return (np.array([p for p, _ in rows], dtype=float), np.array([t for _, t in rows], dtype=int))


def bootstrap_interval(scores: np.ndarray, truths: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float],
                       *, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, int]:
    """(low, high, resamples used) of the percentile interval at :data:`CONFIDENCE`: studies drawn with
    replacement; a resample without a positive or without a negative is discarded (its AUC is undefined)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        index = rng.integers(0, len(scores), len(scores))
        if truths[index].any() and not truths[index].all():
            values.append(statistic(scores[index], truths[index]))
    if not values:
        return math.nan, math.nan, 0
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)), len(values)


def auc_figures(records: Sequence[StudyRecord], labels: Sequence[str], seed: int) -> dict[str, dict]:
    figures = {}
    for k, label in enumerate(labels):
        scores, truths = known_pairs(records, label)
        low, high, used = bootstrap_interval(scores, truths, metrics.roc_auc, seed=seed + k)
        figures[label] = {"auc": metrics.roc_auc(scores, truths) if len(scores) else math.nan, "low": low,
                          "high": high, "resamples": used, "positives": int(truths.sum()),
                          "negatives": int(len(truths) - truths.sum())}
    return figures


def threshold_figures(records: Sequence[StudyRecord], card: SystemCard, joint: Joint) -> dict[str, dict]:
    """Per label: the card's threshold, its sensitivity and specificity on these studies, and the card's
    operating point (what the threshold was chosen for and did on the validation studies), with whether its
    target specificity holds here."""
    figures = {}
    for label in DIAGNOSIS_LABELS[joint]:
        scores, truths = known_pairs(records, label)
        threshold = card.threshold(joint, label)
        here = calibration.split_figures(scores, truths, threshold)
        entry = {"threshold": threshold, "sensitivity": here.sensitivity, "specificity": here.specificity,
                 "positives": here.positives, "negatives": here.negatives, "operating_point": None}
        point = card.operating_point(joint, label)
        if point is not None:
            target = point.target_specificity
            entry["operating_point"] = {
                "rule": point.rule.value, "target_specificity": target, "fp_budget": point.fp_budget,
                "card_validation": point.validation.to_dict(),
                "target_met_here": None if target is None or here.specificity is None
                else bool(here.specificity >= target - 1e-9)}
        figures[label] = entry
    return figures


def reliability(records: Sequence[StudyRecord], labels: Sequence[str], bins: int = RELIABILITY_BINS) -> dict:
    """Every known (study, label) pair in ``bins`` equal-width probability bins: per bin the pairs, mean
    probability and observed share of positives; the expected calibration error over the bins."""
    pairs = [known_pairs(records, label) for label in labels]
    scores = np.concatenate([s for s, _ in pairs]) if pairs else np.array([])
    truths = np.concatenate([t for _, t in pairs]) if pairs else np.array([])
    which = np.minimum((scores * bins).astype(int), bins - 1)
    rows, error = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        mean = float(scores[inside].mean()) if count else math.nan
        observed = float(truths[inside].mean()) if count else math.nan
        if count:
            error += count / len(scores) * abs(observed - mean)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": count, "mean_probability": mean,
                     "observed": observed})
    return {"bins": rows, "pairs": int(len(scores)), "ece": error if len(scores) else math.nan}


def dice_figures(records: Sequence[StudyRecord], structures: Sequence[str]) -> dict[str, dict]:
    """Per structure: the mean Dice over the masked series whose truth holds it, and how many there were."""
    figures = {}
    for name in structures[1:]:
        values = [d[name] for r in records for d in r.dice.values() if d.get(name) is not None]
        figures[name] = {"dice": float(np.mean(values)) if values else math.nan, "series": len(values)}
    return figures


def _group(records: Sequence[StudyRecord], key: Callable[[StudyRecord], str]) -> dict[str, list[StudyRecord]]:
    groups: dict[str, list[StudyRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return dict(sorted(groups.items()))


def breakdown(records: Sequence[StudyRecord], labels: Sequence[str], structures: Sequence[str]) -> dict:
    """AUC per label and Dice per structure per scanner (manufacturer and model) and per field strength."""
    def figures(group: list[StudyRecord]) -> dict:
        aucs = {label: metrics.roc_auc(*known_pairs(group, label)) if len(known_pairs(group, label)[0]) else math.nan
                for label in labels}
        dice = dice_figures(group, structures)
        return {"studies": len(group), "auc": aucs, "macro_auc": metrics.nanmean(aucs.values()),
                "dice": {name: d["dice"] for name, d in dice.items()}}

    by = {"scanner": lambda r: f"{r.acquisition.manufacturer} {r.acquisition.model}",
          "field_strength": lambda r: r.acquisition.field_strength}
    return {name: {group: figures(members) for group, members in _group(records, key).items()}
            for name, key in by.items()}


def evaluation(records: Sequence[StudyRecord], card: SystemCard, joint: Joint, *, seed: int = BOOTSTRAP_SEED
               ) -> dict:
    """Every figure of the report (NaN where a figure cannot be measured)."""
    labels = DIAGNOSIS_LABELS[joint]
    auc = auc_figures(records, labels, seed)
    structures = card.structures
    return {"studies": len(records), "joint": joint.value, "bootstrap": {"draws": BOOTSTRAP_DRAWS, "seed": seed,
                                                                          "confidence": CONFIDENCE},
            "auc": auc, "macro_auc": metrics.nanmean(a["auc"] for a in auc.values()),
            "thresholds": threshold_figures(records, card, joint), "calibration": reliability(records, labels),
            "dice": dice_figures(records, structures) if any(r.dice for r in records) else {},
            "breakdown": breakdown(records, labels, structures)}


def card_metrics(figures: Mapping) -> dict[str, float]:
    """The report's headline figures as flat model-card metrics (``evaluation/...``), measurable ones only."""
    flat: dict[str, float] = {"evaluation/studies": float(figures["studies"])}
    for label, a in figures["auc"].items():
        flat.update({f"evaluation/auc/{label}": a["auc"], f"evaluation/auc_low/{label}": a["low"],
                     f"evaluation/auc_high/{label}": a["high"]})
    for label, t in figures["thresholds"].items():
        flat.update({f"evaluation/sensitivity/{label}": t["sensitivity"],
                     f"evaluation/specificity/{label}": t["specificity"]})
    flat.update({f"evaluation/dice/{name}": d["dice"] for name, d in figures["dice"].items()})
    flat["evaluation/macro_auc"] = figures["macro_auc"]
    flat["evaluation/ece"] = figures["calibration"]["ece"]
    return {k: float(v) for k, v in flat.items() if v is not None and math.isfinite(v)}


def finite(value):
    """``value`` with every NaN replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [finite(v) for v in value]
    return value
