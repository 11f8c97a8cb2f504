"""``ortho-node audit``: studies, a study's timeline, deliveries, failures, summary; filters; JSON and CSV."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ortho_node.app.cli import main as cli


@pytest.fixture
def audit(seeded, monkeypatch, capsys):
    monkeypatch.setenv("ORTHO_NODE_STORAGE_DATA_DIR", str(seeded.node.settings.data_dir))

    def run(*argv: str, code: int = 0) -> str:
        assert cli.main(["audit", *argv]) == code
        return capsys.readouterr().out

    return run


def test_studies_json_and_filters(seeded, audit):
    [study] = json.loads(audit("studies", "--json"))
    assert (study["study_instance_uid"], study["status"], study["joint"], study["laterality"]) == (
        seeded.study_uid, "delivery_failed", "knee", "R")
    assert study["model_version"] == "0.1.0-test" and "EFFU" in study["findings_present"]
    assert study["calling_aes"] == ["MR1"] and study["turnaround_seconds"] > 0
    assert json.loads(audit("studies", "--json", "--joint", "ankle")) == []
    assert json.loads(audit("studies", "--json", "--ae", "MR1", "--status", "delivery_failed"))
    assert json.loads(audit("studies", "--json", "--until", "2001-01-01")) == []
    assert audit("studies", "--status", "nonsense", code=2) == ""
    assert seeded.study_uid in audit("studies")


def test_timeline_with_results_and_model_card_version(seeded, audit):
    document = json.loads(audit("timeline", seeded.study_uid, "--json"))
    steps = [entry["step"] for entry in document["timeline"]]
    # Issue 22: the completeness check's waiting state (here: the quiet period) is a step before "ready".
    assert steps[:7] == ["first_received", "last_received", "waiting", "ready", "job_started", "assembled",
                         "inference_started"]
    assert steps.count("delivered") == 8 and steps.count("delivery_failed") == 8
    waiting, ready = document["timeline"][2:4]
    assert waiting["detail"].startswith("waiting: expected planes sagittal, coronal, axial present; quiet period "
                                        "until ") and waiting["data"]["until"]
    assert "quiet for 10 s" in ready["detail"] and ready["data"]["last_received_at"]
    [result] = document["results"]
    assert (result["model_name"], result["model_version"]) == ("OrthoDiffusion-knee", "0.1.0-test")
    assert sorted(o["kind"] for o in result["objects"]).count("seg") == 3
    assert len(document["deliveries"]) == 16
    assert "objects_built" in audit("timeline", seeded.study_uid)
    assert audit("timeline", "1.2.3", code=1) == ""


def test_deliveries_failures_and_summary_csv(seeded, audit, tmp_path):
    rows = list(csv.DictReader(io.StringIO(audit("deliveries", "--csv", "--status", "failed"))))
    assert len(rows) == 8 and all("Called AE title not recognised" in r["last_error"] for r in rows)
    failures = json.loads(audit("failures", "--json"))
    assert {f["step"] for f in failures} == {"delivery_failed"}
    out = tmp_path / "summary.csv"
    audit("summary", "--csv", "--days", "3", "--out", str(out))
    summary = list(csv.DictReader(out.open()))
    assert len(summary) == 3 and summary[-1]["studies"] == "1" and summary[-1]["delivered"] == "8"
