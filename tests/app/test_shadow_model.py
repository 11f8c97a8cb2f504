"""Issue 26, shadow mode: a candidate model chosen (recorded, audited, refused where it makes no sense) runs
beside the active one in a real ``ortho-node serve``; its results are stored under ``<data>/shadow`` and
recorded with its version, and the PACS receives only the active model's objects. The agreement figures are
recomputed here from hand-made masks with a Dice written in the test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ortho_node.db.models import DeliveryItem, ShadowChoice, ShadowResult, StudyResult
from ortho_node.inference.agreement import compare, summarize
from ortho_node.labels import DIAGNOSIS_LABELS, Joint, Plane
from ortho_node.prediction import Finding, ModelIdentity, SeriesSegmentation, SliceRef, StudyPrediction
from tests.app.model_registry_helpers import FAST, _cli, _events, _rows
from tests.assembly.factory import store, study
from tests.delivery.conftest import FakePacs
from tests.node_process import NodeProcess

STRUCTURES = ("background", "femur", "tibia")


@pytest.fixture(autouse=True)
def _no_node_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("ORTHO_NODE_")]:
        monkeypatch.delenv(name)


def _prediction(version: str, masks: dict[str, np.ndarray], probabilities: list[float]) -> StudyPrediction:
    segmentations = tuple(SeriesSegmentation(uid, Plane.SAGITTAL, tuple(SliceRef(f"{uid}.{k}", Path("x"))
                                                                        for k in range(len(mask))),
                                             mask.astype(np.uint8), STRUCTURES) for uid, mask in masks.items())
    findings = tuple(Finding(label, p, 0.5) for label, p in zip(DIAGNOSIS_LABELS[Joint.KNEE], probabilities))
    return StudyPrediction("1.2.3", Joint.KNEE, "R", segmentations, findings, ModelIdentity("m", version))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_agreement_dice_and_differing_findings_recomputed_from_hand_made_masks():
    rng = np.random.default_rng(0)
    studies = []
    for n in range(3):
        active = {f"1.2.{n}.1": rng.integers(0, 3, (4, 6, 6)), f"1.2.{n}.2": rng.integers(0, 3, (3, 6, 6))}
        shadow = {uid: np.where(rng.random(m.shape) < 0.3, rng.integers(0, 3, m.shape), m) for uid, m in active.items()}
        calls = [0.9, 0.1, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1]
        other = list(calls)
        if n == 1:
            other[0] = 0.3  # ACL called by the active model only
        studies.append((active, shadow, _prediction("a", active, calls), _prediction("b", shadow, other)))
    agreements = [(10 + n, compare(a, s)) for n, (_, _, a, s) in enumerate(studies)]
    report = summarize(agreements)
    for k, name in enumerate(STRUCTURES[1:], start=1):
        per_study = [_dice(np.concatenate([m.ravel() == k for m in act.values()]),
                           np.concatenate([m.ravel() == k for m in sha.values()])) for act, sha, _, _ in studies]
        assert report["structures"][name]["dice_mean"] == pytest.approx(np.mean(per_study))
        pooled = _dice(np.concatenate([m.ravel() == k for act, _, _, _ in studies for m in act.values()]),
                       np.concatenate([m.ravel() == k for _, sha, _, _ in studies for m in sha.values()]))
        assert report["structures"][name]["dice_pooled"] == pytest.approx(pooled)
    assert report["studies"] == 3 and report["differing_results"] == [11]
    assert report["findings"]["ACL"] == {"studies": 3, "differ": 1, "active_present": 3, "shadow_present": 2}
    assert report["findings"]["MM"]["differ"] == 0


def test_shadow_choice_recorded_audited_and_refused_where_it_makes_no_sense(data_dir, models, monkeypatch, capsys):
    for version in ("dept-a", "dept-b"):
        assert _cli(data_dir, "import", str(models[version])) == 0
    assert _cli(data_dir, "activate", "1", "--by", "dr-lee") == 0
    capsys.readouterr()
    assert _cli(data_dir, "shadow", "1") == 2
    assert "is the active model" in capsys.readouterr().err
    assert _cli(data_dir, "shadow", "bundled") == 2
    assert _cli(data_dir, "shadow", "7") == 2
    assert _cli(data_dir, "shadow", "Department knee@dept-b", "--by", "physicist") == 0
    capsys.readouterr()
    assert _cli(data_dir, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["shadow"]["version"] == "dept-b"
    assert _cli(data_dir, "shadow", "--clear", "--by", "physicist") == 0
    assert [(c.model_id, c.by) for c in _rows(data_dir, ShadowChoice)] == [(2, "physicist"), (None, "physicist")]
    assert [k for k, _ in _events(data_dir, "model_shadow")] == ["model_shadow_set", "model_shadow_cleared"]
    monkeypatch.setenv("ORTHO_NODE_MODEL_SHADOW", "2")
    capsys.readouterr()
    assert _cli(data_dir, "shadow", "--clear") == 2
    assert "model.shadow is set (2)" in capsys.readouterr().err
    assert _cli(data_dir, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["shadow"]["id"] == 2  # the setting pins it


def _wait(predicate, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {timeout} s")


def test_shadow_results_are_stored_and_never_delivered(data_dir, models, capsys):
    for version in ("dept-a", "dept-b"):
        assert _cli(data_dir, "import", str(models[version])) == 0
    assert _cli(data_dir, "activate", "1") == 0
    assert _cli(data_dir, "shadow", "2") == 0
    pacs = FakePacs()
    node = NodeProcess(data_dir, extra_env={**FAST, "ORTHO_NODE_DESTINATIONS": f"PACS=PACS@127.0.0.1:{pacs.port}"})
    try:
        uid, planes = study()
        store(node.port, [ds for group in planes for ds in group])
        [shadow] = _wait(lambda: _rows(data_dir, ShadowResult), "a shadow result")
        [active] = _rows(data_dir, StudyResult)
        delivered = {o["sop_instance_uid"] for o in active.objects}
        _wait(lambda: set(pacs.stored) == delivered, "delivery of the active result")
        time.sleep(2.0)  # a shadow object queued by mistake would have gone out by now
    finally:
        node.stop()
        pacs.stop()
    assert (active.model_version, shadow.model_version, shadow.active_model_version) == ("dept-a", "dept-b", "dept-a")
    assert shadow.active_result_id == active.id and shadow.study_instance_uid == uid
    shadow_uids = {str(pydicom.dcmread(data_dir / path, stop_before_pixels=True).SOPInstanceUID)
                   for path in shadow.objects}
    assert shadow.objects and all(path.startswith(f"shadow/{uid}/") for path in shadow.objects)
    assert shadow_uids and not shadow_uids & delivered
    assert set(pacs.received) == delivered  # nothing of the shadow's ever reached the PACS
    assert all("/shadow/" not in item.file_path for item in _rows(data_dir, DeliveryItem))
    assert [k for k, _ in _events(data_dir, "shadow_")] == ["shadow_stored"]
    capsys.readouterr()
    assert _cli(data_dir, "agreement", "--json") == 0
    [report] = json.loads(capsys.readouterr().out)
    assert (report["shadow_version"], report["active_version"], report["studies"]) == ("dept-b", "dept-a", 1)
    assert report["structures"] and all(s["dice_mean"] is None or 0 <= s["dice_mean"] <= 1
                                        for s in report["structures"].values())
    assert set(report["findings"]) == set(DIAGNOSIS_LABELS[Joint.KNEE])
