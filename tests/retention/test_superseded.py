"""One copy of results per study: a newer job's result set supersedes the earlier sets' files, the delivery
queue keeps pointing at files that exist, and nothing still owed to a destination is deleted."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from ortho_node.db.models import DeliveryItem, StudyResult
from ortho_node.retention.purger import Purger
from ortho_node.retention.superseded import remove_superseded
from tests.retention.conftest import T0, FakeClock


def _two_sets(archive, uid: str, first_delivery: str | None, *, same_sop: bool = True):
    """Result sets of jobs 1001 and 1002; the newer one rebuilt the earlier SR (same SOP Instance UID) or not."""
    with archive.sessions.begin() as session:
        first = archive.results(session, uid, 1001, at=T0, delivery=first_delivery, sop_uid=f"{uid}.9.1")
        second = archive.results(session, uid, 1002, at=T0 + dt.timedelta(days=1), delivery=None,
                                 sop_uid=f"{uid}.9.1" if same_sop else f"{uid}.9.2")
        return first.id, _path_of(first), second.id, _path_of(second)


def _path_of(result: StudyResult):  # the SR file of a one-object result set
    from pathlib import Path

    return Path(result.objects[0]["path"])


def _item(archive, uid: str) -> DeliveryItem:
    with archive.sessions() as session:
        return session.scalar(select(DeliveryItem).where(DeliveryItem.study_instance_uid == uid))


def _result(archive, result_id: int) -> StudyResult:
    with archive.sessions() as session:
        return session.get(StudyResult, result_id)


def test_a_newer_set_replaces_the_earlier_files_and_the_queue_follows(archive):
    uid = archive.study("receiving")
    first_id, first_path, second_id, second_path = _two_sets(archive, uid, "delivered")
    [deletion] = remove_superseded(archive.sessions, uid, results_root=archive.data_dir / "results", now=T0)
    assert deletion.what == "superseded" and deletion.files == 1
    assert not first_path.exists() and not first_path.parent.exists() and second_path.exists()
    assert _item(archive, uid).file_path == str(second_path)  # a resend finds the same instance's newest file
    earlier = _result(archive, first_id)
    assert earlier.superseded_by == second_id and earlier.files_removed_reason == "superseded"
    assert earlier.objects  # what was built and sent stays on record
    assert _result(archive, second_id).files_removed_at is None
    [event] = archive.events("results_superseded")
    assert event.study_instance_uid == uid and event.details["superseded_by"] == second_id
    assert remove_superseded(archive.sessions, uid, results_root=archive.data_dir / "results", now=T0) == []


def test_an_object_still_being_delivered_keeps_its_file_until_it_is_acknowledged(archive, node_settings):
    uid = archive.study("receiving")
    first_id, first_path, _, second_path = _two_sets(archive, uid, "pending")
    remove_superseded(archive.sessions, uid, results_root=archive.data_dir / "results", now=T0)
    assert first_path.exists()  # the delivery worker may be sending it right now
    assert _item(archive, uid).file_path == str(first_path)
    assert _result(archive, first_id).files_removed_at is None
    with archive.sessions.begin() as session:  # acknowledged
        session.execute(update(DeliveryItem).values(state="delivered", delivered_at=T0))
    Purger(node_settings(), archive.sessions, clock=FakeClock()).run()  # the scheduled pass finishes the job
    assert not first_path.exists() and _item(archive, uid).file_path == str(second_path)
    assert _result(archive, first_id).files_removed_at is not None


def test_a_failed_object_the_newer_set_lacks_is_never_deleted(archive):
    uid = archive.study("receiving")
    first_id, first_path, _, _ = _two_sets(archive, uid, "failed", same_sop=False)
    remove_superseded(archive.sessions, uid, results_root=archive.data_dir / "results", now=T0)
    assert first_path.exists() and _item(archive, uid).file_path == str(first_path)
    assert _result(archive, first_id).files_removed_at is None


def test_supersede_results_false_keeps_every_copy(archive, node_settings):
    uid = archive.study("receiving")
    _, first_path, _, _ = _two_sets(archive, uid, "delivered")
    Purger(node_settings(supersede_results=False), archive.sessions, clock=FakeClock()).run()
    assert first_path.exists()


def test_resend_after_superseding_queues_the_current_objects_only(archive):
    from ortho_node.clock import RetryPolicy
    from ortho_node.delivery.queue import DeliveryQueue

    uid = archive.study("receiving")
    with archive.sessions.begin() as session:
        archive.results(session, uid, 1001, at=T0, delivery="delivered", sop_uid=f"{uid}.9.1")
        archive.results(session, uid, 1002, at=T0, delivery="delivered", sop_uid=f"{uid}.9.2")  # a new model
    remove_superseded(archive.sessions, uid, results_root=archive.data_dir / "results", now=T0)
    queue = DeliveryQueue(archive.sessions, FakeClock(), RetryPolicy())
    assert queue.resend(uid, {"PACS": ["sr"]}) == 1
    with archive.sessions() as session:
        states = dict(session.execute(select(DeliveryItem.sop_instance_uid, DeliveryItem.state)).all())
    assert states == {f"{uid}.9.1": "delivered", f"{uid}.9.2": "pending"}
