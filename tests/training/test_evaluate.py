"""Issue 26: ``ortho-node train evaluate``. The report's figures are recomputed here from its own per-study
predictions with formulas written in this test (AUC by ranks, sensitivity and specificity by counting, ECE by
binning), Dice from a prediction made here; a blank finding leaves its study out of that finding; the page holds
every plot; ``--write-card`` puts the figures into a copy of the model card."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pydicom
import pytest
import torch

from ortho_node.app.cli.main import main
from ortho_node.inference.predictor import Predictor
from ortho_node.labels import DIAGNOSIS_LABELS, UNLABELLED, Joint, Plane
from ortho_node.model.system import OrthoModel, load_system, new_card, save_system
from ortho_node.model.unet import UNetConfig
from ortho_node.training.evaluation import study_key
from ortho_node.training.labelled import read_labelled
from tests.training.labelled_factory import export_study, findings_row, knee, seg_of, write_csv

SEEDS = (5, 6, 7, 8, 9)
LABELS = DIAGNOSIS_LABELS[Joint.KNEE]
THREE_TESLA = 9  # this study's headers say another scanner at 3 T


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    studies = {seed: knee(seed) for seed in SEEDS}
    exported = {seed: export_study(studies[seed], root / "dicom", patient_id=f"PAT-{seed % 3}") for seed in SEEDS}
    for path in (root / "dicom" / studies[THREE_TESLA].study_uid).rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Manufacturer, ds.ManufacturerModelName, ds.MagneticFieldStrength = "Other Vendor", "Big Magnet", 3
        ds.save_as(path)
    (root / "masks").mkdir()
    series = next(s for s in studies[5].series if s.plane is Plane.SAGITTAL)
    sparse = range(0, len(series.labels), 2)  # every other slice labelled: the rest must not count
    seg_of(exported[5]["sagittal"], series.labels, slices=sparse).save_as(root / "masks" / "seg-5.dcm")
    rows = [findings_row(studies[seed], blank=("ACL",) if seed == 6 else ()) for seed in SEEDS]
    write_csv(root / "labels.csv", rows)
    torch.manual_seed(3)
    card = new_card(UNetConfig.reduced(), name="Department knee", version="candidate")
    save_system(root / "model", OrthoModel(card))
    out = root / "report"
    assert main(["train", "evaluate", str(root / "model"), "--data", str(root / "dicom"), "--labels",
                 str(root / "labels.csv"), "--masks", str(root / "masks"), "--out", str(out), "--device", "cpu",
                 "--write-card"]) == 0
    return root, studies, json.loads((out / "report.json").read_text()), out


def rank_auc(scores: list[float], truths: list[int]) -> float | None:
    """Mann-Whitney U from average ranks (ties share their mean rank), divided by positives x negatives."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(truths)
    negatives = len(truths) - positives
    if not positives or not negatives:
        return None
    u = sum(r for r, t in zip(ranks, truths) if t) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def test_auc_and_counts_recomputed_from_the_predictions(evaluated):
    _, studies, report, _ = evaluated
    predictions = report["predictions"]
    assert len(predictions) == len(SEEDS) == report["figures"]["studies"]
    assert {p["study"] for p in predictions} == {study_key(s.study_uid) for s in studies.values()}
    measured = 0
    for label in LABELS:
        known = [p for p in predictions if p["truth"][label] is not None]
        assert len(known) == (len(SEEDS) - 1 if label == "ACL" else len(SEEDS))  # the blank study left out
        truths = [p["truth"][label] for p in known]
        expected = rank_auc([p["probability"][label] for p in known], truths)
        figures = report["figures"]["auc"][label]
        assert (figures["positives"], figures["negatives"]) == (sum(truths), len(truths) - sum(truths))
        if expected is None:
            assert figures["auc"] is None
            continue
        measured += 1
        assert figures["auc"] == pytest.approx(expected, abs=1e-12)
        assert figures["low"] <= figures["auc"] <= figures["high"] and 0 <= figures["low"] <= figures["high"] <= 1
    assert measured >= 2  # the seeds give several findings with both positives and negatives


def test_sensitivity_specificity_and_calibration_recomputed(evaluated):
    _, _, report, _ = evaluated
    predictions, figures = report["predictions"], report["figures"]
    pairs = []
    for label in LABELS:
        known = [(p["probability"][label], p["truth"][label]) for p in predictions if p["truth"][label] is not None]
        pairs += known
        threshold = figures["thresholds"][label]["threshold"]
        positives = [s for s, t in known if t == 1]
        negatives = [s for s, t in known if t == 0]
        sensitivity = sum(s >= threshold for s in positives) / len(positives) if positives else None
        specificity = sum(s < threshold for s in negatives) / len(negatives) if negatives else None
        assert figures["thresholds"][label]["sensitivity"] == (None if sensitivity is None else pytest.approx(sensitivity))
        assert figures["thresholds"][label]["specificity"] == (None if specificity is None else pytest.approx(specificity))
    ece = 0.0
    for b in range(10):
        inside = [(s, t) for s, t in pairs if min(int(s * 10), 9) == b]
        if inside:
            ece += len(inside) / len(pairs) * abs(np.mean([t for _, t in inside]) - np.mean([s for s, _ in inside]))
    assert figures["calibration"]["pairs"] == len(pairs)
    assert figures["calibration"]["ece"] == pytest.approx(ece)


def test_breakdown_by_scanner_and_field_strength(evaluated):
    root, studies, report, _ = evaluated
    expected_strengths, expected_scanners = {}, {}
    for study in studies.values():
        ds = pydicom.dcmread(next((root / "dicom" / study.study_uid).rglob("*.dcm")), stop_before_pixels=True)
        strength = f"{float(ds.MagneticFieldStrength):g} T"
        scanner = f"{ds.Manufacturer} {ds.ManufacturerModelName}"
        expected_strengths[strength] = expected_strengths.get(strength, 0) + 1
        expected_scanners[scanner] = expected_scanners.get(scanner, 0) + 1
    breakdown = report["figures"]["breakdown"]
    assert {name: group["studies"] for name, group in breakdown["field_strength"].items()} == expected_strengths
    assert {name: group["studies"] for name, group in breakdown["scanner"].items()} == expected_scanners
    assert expected_scanners["Other Vendor Big Magnet"] == 1 and "3 T" in expected_strengths
    for name, group in breakdown["scanner"].items():  # each group's AUC from its own studies only
        members = [p for p in report["predictions"] if f"{p['manufacturer']} {p['scanner_model']}" == name]
        for label in LABELS:
            known = [p for p in members if p["truth"][label] is not None]
            expected = rank_auc([p["probability"][label] for p in known], [p["truth"][label] for p in known])
            assert group["auc"][label] == (None if expected is None else pytest.approx(expected))


def test_dice_recomputed_from_a_prediction_made_here_on_the_labelled_slices_only(evaluated):
    root, studies, report, _ = evaluated
    [item] = [s for s in read_labelled(root / "dicom", root / "labels.csv", Joint.KNEE, masks=root / "masks")
              if s.masks]
    truth = item.masks[Plane.SAGITTAL]
    assert (truth == UNLABELLED).any() and (truth != UNLABELLED).any()  # the sparse SEG's unlabelled slices
    outcome = Predictor.from_checkpoint(root / "model", "cpu").analyse(item.study, locate=item.sources.__getitem__)
    predicted = next(s.mask for s in outcome.prediction.segmentations if s.plane is Plane.SAGITTAL)
    labelled = (truth != UNLABELLED).all(axis=(1, 2))
    record = next(p for p in report["predictions"] if p["study"] == study_key(item.uid))
    names = load_system(root / "model").card.structures
    for k, name in enumerate(names[1:], start=1):
        t, p = truth[labelled] == k, predicted[labelled] == k
        expected = 2 * (t & p).sum() / (t.sum() + p.sum()) if t.any() else None
        got = record["dice"]["sagittal"][name]
        assert got == (None if expected is None else pytest.approx(expected)), name
        assert report["figures"]["dice"][name]["series"] == (0 if expected is None else 1)


def test_the_page_holds_every_plot_and_no_study_uid(evaluated):
    _, studies, _, out = evaluated
    page = (out / "report.html").read_text()
    for plot in ("roc", "reliability", "dice", "breakdown"):
        match = re.search(rf'id="plot-{plot}"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        assert match, plot
        assert base64.b64decode(match.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    text = page + (out / "report.json").read_text()
    assert not any(s.study_uid in text for s in studies.values()) and "PAT-" not in text


def test_write_card_records_the_figures_in_a_copy_of_the_card(evaluated):
    root, _, report, out = evaluated
    copy = load_system(out / "model").card  # loads: weights verified against the copy's card
    assert load_system(root / "model").card.metrics == {}  # the original is untouched
    for label, figures in report["figures"]["auc"].items():
        if figures["auc"] is None:
            assert f"evaluation/auc/{label}" not in copy.metrics
        else:
            assert copy.metrics[f"evaluation/auc/{label}"] == pytest.approx(figures["auc"])
            assert copy.metrics[f"evaluation/auc_low/{label}"] == pytest.approx(figures["low"])
    assert copy.metrics["evaluation/studies"] == len(SEEDS)
    assert not any(math.isnan(v) for v in copy.metrics.values())
