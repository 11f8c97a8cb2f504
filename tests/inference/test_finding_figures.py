"""Issue 21: each finding carries its threshold with the model card's operating point, into the findings JSON
(``infer``'s findings.json and the result row the console reads)."""

from __future__ import annotations

import dataclasses
import json

import torch

from ortho_node.audit.timeline import findings_of
from ortho_node.inference.offline import findings_document
from ortho_node.inference.predictor import Predictor
from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.model.system import OrthoModel, new_card
from ortho_node.model.unet import UNetConfig
from ortho_node.prediction import OperatingPoint, SplitFigures, ThresholdRule
from tests.inference.conftest import locate

POINT = OperatingPoint(ThresholdRule.TARGET_SPECIFICITY, SplitFigures(0.8, 0.97, 10, 30), 0.9625, 0.3,
                       test=SplitFigures(0.7, 0.95, 9, 21))


def test_findings_carry_the_cards_threshold_sensitivity_and_specificity(knee_study):
    torch.manual_seed(0)
    card = new_card(UNetConfig.reduced(), version="test")
    knee = dataclasses.replace(card.diagnosis[Joint.KNEE], thresholds={**card.diagnosis[Joint.KNEE].thresholds,
                                                                       "MM": 0.42}, operating_points={"MM": POINT})
    model = OrthoModel(dataclasses.replace(card, diagnosis={**card.diagnosis, Joint.KNEE: knee}))
    outcome = Predictor(model, torch.device("cpu")).analyse(knee_study, locate=locate)
    findings = {f.label: f for f in outcome.prediction.findings}
    assert list(findings) == list(DIAGNOSIS_LABELS[Joint.KNEE])
    mm = findings["MM"]
    assert (mm.threshold, mm.operating_point, mm.sensitivity, mm.specificity) == (0.42, POINT, 0.8, 0.97)
    assert findings["ACL"].operating_point is None and findings["ACL"].sensitivity is None  # an untrained card

    document = json.loads(json.dumps(findings_document(outcome.prediction, outcome)))
    written = {f["label"]: f for f in document["findings"]}
    assert (written["MM"]["threshold"], written["MM"]["sensitivity"], written["MM"]["specificity"]) == (0.42, 0.8, 0.97)
    assert OperatingPoint.from_dict(written["MM"]["operating_point"]) == POINT
    assert written["ACL"]["sensitivity"] is None and written["ACL"]["operating_point"] is None
    assert findings_of(outcome.prediction) == document["findings"]  # the result row keeps the same figures
