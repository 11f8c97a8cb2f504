"""Issue 21: the model card records each label's operating point; cards written before it load unchanged."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ortho_node.labels import Joint
from ortho_node.model.card import CARD_FILE, CheckpointError
from ortho_node.model.system import DiagnosisTask, SystemCard, new_card, read_system_card
from ortho_node.model.unet import UNetConfig
from ortho_node.prediction import OperatingPoint, SplitFigures, ThresholdRule

CHOSEN = OperatingPoint(ThresholdRule.TARGET_SPECIFICITY, SplitFigures(0.8, 0.97, 10, 30), 0.9625, 0.3,
                        test=SplitFigures(0.75, 0.96, 8, 22))
FALLBACK = OperatingPoint(ThresholdRule.FALLBACK, SplitFigures(None, 0.9, 0, 40), 0.9625, 0.3, target_met=False,
                          note="no positive validation study: fixed threshold 0.5")


def _with_points(card: SystemCard) -> SystemCard:
    knee = card.diagnosis[Joint.KNEE]
    knee = dataclasses.replace(knee, thresholds={**knee.thresholds, "MM": 0.71},
                               operating_points={"MM": CHOSEN, "PD": FALLBACK})
    return dataclasses.replace(card, diagnosis={**card.diagnosis, Joint.KNEE: knee})


def test_operating_points_survive_the_card_round_trip():
    card = _with_points(new_card(UNetConfig.reduced()))
    again = SystemCard.from_json(card.to_json())
    assert again.diagnosis == card.diagnosis
    assert again.threshold(Joint.KNEE, "MM") == 0.71 and again.operating_point(Joint.KNEE, "MM") == CHOSEN
    assert again.operating_point(Joint.KNEE, "PD").validation.sensitivity is None
    written = json.loads(card.to_json())["diagnosis"]["knee"]["operating_points"]
    assert written["MM"]["validation"] == {"sensitivity": 0.8, "specificity": 0.97, "positives": 10, "negatives": 30}
    assert written["PD"]["rule"] == "fallback" and written["PD"]["target_met"] is False


def test_a_card_without_operating_points_writes_the_json_it_always_wrote():
    card = new_card(UNetConfig.official())
    assert "operating_points" not in card.to_json()
    assert all(card.operating_point(joint, label) is None
               for joint, task in card.diagnosis.items() for label in task.labels)


def test_a_card_without_operating_points_loads_unchanged_and_reports_its_validation_figures(old_card_folder):
    shipped = json.loads((old_card_folder / CARD_FILE).read_text())
    card = read_system_card(old_card_folder)
    for joint, task in card.diagnosis.items():
        assert dict(task.thresholds) == shipped["diagnosis"][joint.value]["thresholds"]
        assert not task.operating_points
    point = card.operating_point(Joint.KNEE, "MM")  # from the card's metrics, at its own (Youden) threshold
    assert point.rule is ThresholdRule.YOUDEN and point.validation.positives is None
    assert point.validation.sensitivity == shipped["metrics"]["knee-dx/val/sensitivity/MM"]
    assert point.validation.specificity == shipped["metrics"]["knee-dx/val/specificity/MM"]
    moved = DiagnosisTask(card.diagnosis[Joint.KNEE].labels, {**card.diagnosis[Joint.KNEE].thresholds, "MM": 0.9})
    other = dataclasses.replace(card, diagnosis={**card.diagnosis, Joint.KNEE: moved})
    assert other.operating_point(Joint.KNEE, "MM") is None  # metrics of another threshold say nothing


def test_operating_points_are_checked():
    with pytest.raises(CheckpointError, match="unknown labels"):
        DiagnosisTask(("MM",), {"MM": 0.5}, operating_points={"XX": CHOSEN})
    with pytest.raises(ValueError, match="specificity"):
        SplitFigures(0.5, 1.5)
    text = json.loads(_with_points(new_card(UNetConfig.reduced())).to_json())
    text["diagnosis"]["knee"]["operating_points"]["MM"]["rule"] = "guess"
    with pytest.raises(CheckpointError):
        SystemCard.from_json(json.dumps(text))
