"""Studies an accept rule kept out of analysis under the retention rules (fake clock, real data folder, SQLite
and PostgreSQL): one whose every instance was ignored goes ``unanalysable_days`` after its last arrival (no job
ever comes); ignored instances that arrive after a study's job never hold it as "not processed yet"."""

from __future__ import annotations

from ortho_node.retention.purger import Purger
from tests.retention.conftest import FakeClock


def test_study_ignored_by_an_accept_rule_goes_after_unanalysable_days(archive, node_settings):
    ignored = archive.study("ignored")
    receiving = archive.study("receiving")
    settings = node_settings(unanalysable_days=7, instances_days=30)
    clock = FakeClock()
    clock.advance(days=6)
    report = Purger(settings, archive.sessions, clock=clock).run()
    assert report.deletions == [] and report.held == {"not processed yet": 1, "within retention": 1}

    clock.advance(days=2)
    [deletion] = Purger(settings, archive.sessions, clock=clock).run().deletions
    assert (deletion.study_instance_uid, deletion.what, deletion.files) == (ignored, "instances", 3)
    assert deletion.reason == "ignored by an accept rule 8 days ago (retention.unanalysable_days 7)"
    assert archive.instance_files(ignored) == [] and len(archive.instance_files(receiving)) == 3
    row = archive.study_row(ignored)
    assert row.instances_purged_at is not None and row.purge_reason == f"age: {deletion.reason}"
    assert [e.study_instance_uid for e in archive.events("instances_purged")] == [ignored]


def test_without_unanalysable_days_an_ignored_study_stays(archive, node_settings):
    ignored = archive.study("ignored")
    clock = FakeClock()
    clock.advance(days=400)
    report = Purger(node_settings(instances_days=30), archive.sessions, clock=clock).run()
    assert report.deletions == [] and len(archive.instance_files(ignored)) == 3


def test_ignored_instances_after_the_job_do_not_hold_the_study(archive, node_settings):
    uid = archive.study("delivered", ignored=2)  # a CT series ignored after the MR was analysed and delivered
    clock = FakeClock()
    clock.advance(days=31)
    [deletion] = Purger(node_settings(instances_days=30), archive.sessions, clock=clock).run().deletions
    assert (deletion.study_instance_uid, deletion.files) == (uid, 5)
    assert archive.instance_files(uid) == []
