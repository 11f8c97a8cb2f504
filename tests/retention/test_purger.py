"""The purger on a real data folder and database with a fake clock: files gone, rows marked, audit events and
timeline steps written; nothing unprocessed, undelivered, kept or within its retention touched; the watermark
with the free-space function injected; purgers in parallel never delete twice."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from sqlalchemy import select

from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import ShadowResult, StudyResult, TimelineEntry
from ortho_node.retention.purger import MB, Purger
from tests.retention.conftest import DELETABLE, INSTANCE_BYTES, STATES, T0, FakeClock, folder_bytes


def _every_state(archive, **kwargs) -> dict[str, str]:
    return {state: archive.study(state, **kwargs) for state in STATES}


def _assert_untouched(archive, uids):
    for uid in uids:
        assert len(archive.instance_files(uid)) == 3, uid
        assert archive.study_row(uid).instances_purged_at is None, uid


def test_retention_off_by_default_deletes_nothing_however_old(archive, node_settings):
    studies = _every_state(archive)
    clock = FakeClock(T0.replace(year=2036))
    report = Purger(node_settings(), archive.sessions, clock=clock).run()
    assert report.deletions == []
    _assert_untouched(archive, studies.values())


def test_instances_go_after_their_days_and_only_what_may_go(archive, node_settings):
    studies = _every_state(archive)
    settings = node_settings(instances_days=30, unanalysable_days=7)
    clock = FakeClock()
    clock.advance(days=8)  # past the unanalysable period, within the delivered one
    Purger(settings, archive.sessions, clock=clock).run()
    assert archive.instance_files(studies["skipped"]) == []
    _assert_untouched(archive, [uid for state, uid in studies.items() if state != "skipped"])

    clock.advance(days=30)
    report = Purger(settings, archive.sessions, clock=clock).run()
    assert {d.study_instance_uid for d in report.deletions} == {studies["delivered"], studies["no_destination"]}
    for state in DELETABLE:
        uid = studies[state]
        assert archive.instance_files(uid) == []
        assert not (archive.data_dir / "instances" / uid).exists()  # emptied folders go too
        row = archive.study_row(uid)
        assert row.instances_purged_at is not None and row.purge_reason.startswith("age: ")
    _assert_untouched(archive, [uid for state, uid in studies.items() if state not in DELETABLE])
    assert report.held == {"marked to keep": 1, "not processed yet": 1, "job queued or running": 2,
                           "job failed": 1, "delivery pending": 1, "delivery failed": 1}

    events = archive.events("instances_purged")
    assert sorted(e.study_instance_uid for e in events) == sorted(studies[s] for s in DELETABLE)
    delivered = next(e for e in events if e.study_instance_uid == studies["delivered"])
    assert delivered.details["files"] == 3 and delivered.details["bytes"] == 3 * INSTANCE_BYTES
    assert "retention.instances_days 30" in delivered.message
    with archive.sessions() as session:  # the history stays: rows and a timeline step
        steps = session.scalars(select(TimelineEntry.step).where(
            TimelineEntry.study_instance_uid == studies["delivered"])).all()
    assert "instances_purged" in steps
    # Results are not touched by the instances rule, and a second pass finds nothing more.
    assert Purger(settings, archive.sessions, clock=clock).run().deletions == []


def _shadow_result(archive, uid: str) -> Path:
    """A shadow model's stored objects for the study (issue 26), as ``inference.shadow`` records them."""
    folder = archive.data_dir / "shadow" / uid / "job-1"
    folder.mkdir(parents=True)
    (folder / "seg.dcm").write_bytes(b"\0" * 100)
    with archive.sessions.begin() as session:
        session.add(ShadowResult(study_instance_uid=uid, model_name="candidate", model_version="2",
                                 active_model_version="1", findings=[], agreement={},
                                 objects=[str((folder / "seg.dcm").relative_to(archive.data_dir))]))
    return folder


def test_results_go_after_results_days_with_the_shadow_models_objects(archive, node_settings):
    uid = archive.study("delivered")
    pending = archive.study("delivery_pending")
    shadow, pending_shadow = _shadow_result(archive, uid), _shadow_result(archive, pending)
    clock = FakeClock()
    clock.advance(days=11)
    Purger(node_settings(results_days=10), archive.sessions, clock=clock).run()
    assert folder_bytes(archive.data_dir / "results" / pending) > 0 and folder_bytes(pending_shadow) == 100
    assert not (archive.data_dir / "results" / uid).exists()
    assert not shadow.exists() and not shadow.parent.exists()  # emptied folders go too
    assert len(archive.instance_files(uid)) == 3  # instances have their own rule
    with archive.sessions() as session:
        row = session.scalar(select(StudyResult).where(StudyResult.study_instance_uid == uid))
    assert row.files_removed_at is not None and row.files_removed_reason == "retention"
    assert row.objects  # what was built stays on record
    [event] = archive.events("results_purged")
    assert event.study_instance_uid == uid and event.details["shadow_files"] == 1


def test_a_file_already_gone_is_not_an_error(archive, node_settings):
    uid = archive.study("delivered")
    archive.instance_files(uid)[0].unlink()
    clock = FakeClock()
    clock.advance(days=2)
    Purger(node_settings(instances_days=1), archive.sessions, clock=clock).run()
    [event] = archive.events("instances_purged")
    assert event.details["already_gone"] == 1 and archive.instance_files(uid) == []


def _free_space(archive, capacity: int):
    """A disk of ``capacity`` bytes holding only the data folder."""
    return lambda _path: max(0, capacity - folder_bytes(archive.data_dir))


BIG = 128 * 1024  # per instance file: three make a study of 384 KiB against 1 MiB watermarks
STUDY = 3 * BIG


def test_watermark_deletes_the_oldest_eligible_studies_until_the_low_mark(archive, node_settings):
    others = {state: archive.study(state, at=T0 - dt.timedelta(days=30), file_bytes=BIG) for state in STATES}
    newer = [archive.study("delivered", at=T0 + dt.timedelta(days=day), file_bytes=BIG) for day in range(4)]
    recent = archive.study("delivered", at=T0 + dt.timedelta(days=10), file_bytes=BIG)  # delivered an hour ago
    clock = FakeClock(T0 + dt.timedelta(days=10, hours=3))
    settings = node_settings(purge_below_free_mb=1, purge_until_free_mb=2, min_keep_hours=24)
    # Free space just under the high mark, and 1 MiB + two studies short of the low mark: five studies must go.
    capacity = folder_bytes(archive.data_dir) + MB - 1 - 2 * STUDY
    report = Purger(settings, archive.sessions, clock=clock, free_bytes=_free_space(archive, capacity)).run()
    assert [d.study_instance_uid for d in report.deletions] == [
        others["skipped"], others["delivered"], others["no_destination"], newer[0], newer[1]]  # oldest first
    assert all(d.reason.startswith("free space") for d in report.deletions)
    assert not report.short and report.free_after >= 2 * MB
    _assert_untouched(archive, newer[2:] + [recent])
    _assert_untouched(archive, [uid for state, uid in others.items() if state not in DELETABLE])
    assert archive.study_row(newer[0]).purge_reason.startswith("watermark: ")


def test_watermark_short_of_its_target_deletes_all_it_may_and_says_so_once(archive, node_settings):
    studies = [archive.study("delivered", at=T0 + dt.timedelta(days=day), file_bytes=BIG) for day in range(3)]
    kept = archive.study("kept", file_bytes=BIG)
    pending = archive.study("delivery_pending", file_bytes=BIG)
    clock = FakeClock(T0 + dt.timedelta(days=30))
    settings = node_settings(purge_below_free_mb=1, purge_until_free_mb=2)
    purger = Purger(settings, archive.sessions, clock=clock,
                    free_bytes=_free_space(archive, folder_bytes(archive.data_dir) - 2 * STUDY))  # more than full
    first, second = purger.run(), purger.run()
    assert [d.study_instance_uid for d in first.deletions] == studies and second.deletions == []
    assert first.short and second.short
    _assert_untouched(archive, [kept, pending])
    [event] = archive.events("purge_short")  # one per episode, not one per pass
    assert event.severity == "warning"


def test_dry_run_deletes_nothing_and_says_what_would_go(archive, node_settings):
    studies = _every_state(archive)
    clock = FakeClock()
    clock.advance(days=400)
    settings = node_settings(instances_days=30, unanalysable_days=7, results_days=365)
    report = Purger(settings, archive.sessions, clock=clock).run(dry_run=True)
    assert {(d.study_instance_uid, d.what) for d in report.deletions} == {
        (studies["delivered"], "instances"), (studies["no_destination"], "instances"), (studies["skipped"], "instances"),
        (studies["delivered"], "results"), (studies["no_destination"], "results")}
    _assert_untouched(archive, studies.values())
    assert folder_bytes(archive.data_dir / "results") == 1000 * 5  # every built set still there
    assert archive.events("instances_purged") == [] and archive.events("results_purged") == []


def test_purgers_in_parallel_delete_each_study_once(archive, node_settings):
    uids = [archive.study("delivered") for _ in range(40)]
    settings = node_settings(instances_days=1)
    clock = FakeClock()
    clock.advance(days=2)
    reports, engines = [], []
    barrier = threading.Barrier(3)

    def run() -> None:
        engine = make_engine(settings.database_url)  # a process of its own would have its own engine
        engines.append(engine)
        purger = Purger(settings, make_session_factory(engine), clock=clock)
        barrier.wait()
        reports.append(purger.run())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for engine in engines:
        engine.dispose()
    assert len(reports) == 3
    deleted = [d.study_instance_uid for report in reports for d in report.deletions]
    assert sorted(deleted) == sorted(uids)  # each once, by whichever purger claimed it
    assert sorted(e.study_instance_uid for e in archive.events("instances_purged")) == sorted(uids)
    assert all(archive.instance_files(uid) == [] for uid in uids)
