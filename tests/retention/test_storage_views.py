"""Keep and purge states where an operator looks (``ortho-node studies`` and ``--json``, ``audit studies`` CSV,
``audit timeline``, the console's studies list and study page), and ``ortho-node reprocess`` refusing, in one
line with exit status 2, a study a job could do nothing with; new results clear the results-purged mark;
in-process CLI on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, select

from listeners.console import pages
from ortho_node.app.cli.main import main
from ortho_node.audit.timeline import Timeline
from ortho_node.audit.views import STUDY_COLUMNS, list_studies, study_timeline, to_csv
from ortho_node.clock import utcnow
from ortho_node.db.models import Job, Study
from ortho_node.retention.keep import set_keep
from ortho_node.retention.purger import Purger
from tests.reports.study_factory import make_knee_study
from tests.retention.conftest import FakeClock


def _config(tmp_path, archive, database_url: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\ndata_dir = "{archive.data_dir}"\n[database]\nurl = "{database_url}"\n'
                    "[retention]\ninstances_days = 30\n")
    return str(path)


def _kept_and_purged(archive, node_settings) -> tuple[str, str]:
    old = utcnow() - dt.timedelta(days=90)
    kept, purged = archive.study("delivered", at=old), archive.study("delivered", at=old)
    set_keep(archive.sessions, kept, True, reason="training data")
    Purger(node_settings(instances_days=30), archive.sessions, clock=FakeClock(utcnow())).run()
    assert archive.instance_files(purged) == [] and len(archive.instance_files(kept)) == 3
    return kept, purged


def test_studies_and_timeline_say_what_is_kept_and_what_was_purged(archive, node_settings, database_url, tmp_path,
                                                                    capsys):
    kept, purged = _kept_and_purged(archive, node_settings)
    config = _config(tmp_path, archive, database_url)
    day = f"{utcnow():%Y-%m-%d}"

    assert main(["studies", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "    kept: training data\n" in out
    assert f"    instances purged {day} " in out and ": age: delivered 89 days ago (retention.instances_days 30)" in out

    assert main(["studies", "--config", config, "--json"]) == 0
    studies = {s["study_instance_uid"]: s for s in json.loads(capsys.readouterr().out)}
    assert (studies[kept]["keep"], studies[kept]["keep_reason"], studies[kept]["storage"]) == (
        True, "training data", "kept: training data")
    assert studies[purged]["instances_purged_at"].startswith(day) and not studies[purged]["keep"]
    assert studies[purged]["purge_reason"] == "age: delivered 89 days ago (retention.instances_days 30)"

    assert main(["audit", "timeline", purged, "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "instances_purged" in lines[-2] and "3 received instances deleted" in lines[-2]
    assert lines[-1].startswith(f"now: instances purged {day}")
    assert main(["audit", "timeline", kept, "--config", config, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["storage"]["state"] == "kept: training data"
    assert [e["step"] for e in document["timeline"]][-1] == "keep_set"

    rows = {r["study_instance_uid"]: r for r in list_studies(archive.sessions)}
    assert rows[kept]["storage"] == "kept: training data" and rows[purged]["status"] == "delivered"
    assert "storage" in STUDY_COLUMNS and "kept: training data" in to_csv(list(rows.values()), STUDY_COLUMNS)
    listing = pages.studies_page(list(rows.values()), {}, user="admin")
    assert "kept: training data" in listing and f"instances purged {day}" in listing
    page = pages.study_page(rows[purged], study_timeline(archive.sessions, purged), [], [], [], user="admin")
    assert "<dt>Storage</dt>" in page and f"instances purged {day}" in page


def test_reprocess_refuses_a_purged_or_wholly_ignored_study_in_one_line(archive, node_settings, database_url,
                                                                       tmp_path, capsys):
    kept, purged = _kept_and_purged(archive, node_settings)
    ignored = archive.study("ignored")
    config = _config(tmp_path, archive, database_url)

    assert main(["reprocess", purged, "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: study {purged} not queued: its received instances "
                                                   "were deleted on ")
    assert err.rstrip().endswith("(age: delivered 89 days ago (retention.instances_days 30)): send the study "
                                 "again to analyse it")

    assert main(["reprocess", ignored, "--config", config]) == 2
    assert capsys.readouterr().err == (f"error: study {ignored} not queued: all instances ignored by accept rule "
                                       "'no-ct': change [accept] first\n")

    assert main(["reprocess", kept, "--config", config]) == 0
    assert capsys.readouterr().out.startswith("job ")
    with archive.sessions() as session:  # nothing queued for the two refused
        assert session.scalar(select(func.count(Job.id)).where(Job.state == "pending")) == 1


def test_new_results_clear_the_results_purged_mark(archive, tmp_path):
    knee = make_knee_study(tmp_path / "knee")
    uid = knee.prediction.study_instance_uid
    with archive.sessions.begin() as session:
        session.add(Study(study_instance_uid=uid, results_purged_at=utcnow() - dt.timedelta(days=1)))
    assert archive.study_row(uid).results_purged_at is not None
    Timeline(archive.sessions).objects_built(knee.prediction, [], job_id=None)
    assert archive.study_row(uid).results_purged_at is None
    assert {r["study_instance_uid"]: r for r in list_studies(archive.sessions)}[uid]["storage"] is None
