"""Jobs and deliveries claimed through PostgreSQL: two claimers racing never get the same job (or two jobs of one
study), an expired lease is taken over and its late holder records nothing, heartbeats keep a batch of claims
alive, and SQLite keeps its single-process behaviour. The clock is the only thing faked."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

import pytest
from sqlalchemy import select

from ortho_node.clock import RetryPolicy, utcnow
from ortho_node.cluster.lease import Lease
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem, Job
from ortho_node.delivery.queue import DeliveryQueue
from ortho_node.delivery.scu import SendResult
from ortho_node.scheduling.jobs import JobQueue
from ortho_node.scheduling.timers import ManualTime
from tests.cluster.conftest import queue_jobs

pytestmark = pytest.mark.postgres

LEASE = dt.timedelta(seconds=30)


def _queue(sessions, time, node: str, *, shared: bool = True) -> JobQueue:
    return JobQueue(sessions, time, RetryPolicy.of_seconds(30, 60, retry_for=None, max_attempts=5),
                    lease=Lease(node, LEASE, shared))


def _kinds(sessions, kind: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def test_two_claimers_racing_never_get_the_same_job_or_two_jobs_of_one_study(sessions):
    time = ManualTime()
    # 40 studies with one job and 10 with two (a superseding job queued while none ran): 60 jobs.
    single = queue_jobs(sessions, 40, at=time.now())
    doubled = queue_jobs(sessions, 10, jobs_per_study=2, at=time.now(), first=41)
    claimers = {name: _queue(sessions, time, name) for name in ("node-a", "node-b")}
    claimed: dict[str, list[int]] = {name: [] for name in claimers}
    start = threading.Barrier(len(claimers))
    errors: list[BaseException] = []

    def claim_all(name: str) -> None:
        try:
            start.wait()
            while True:
                jobs = claimers[name].claim(3)
                if not jobs:
                    break
                with sessions() as session:  # while held, no other job of the same study runs
                    studies = [session.get(Job, job.id).study_id for job in jobs]
                    assert len(set(studies)) == len(studies)
                claimed[name] += [job.id for job in jobs]
                for job in jobs:
                    claimers[name].succeed(job)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=claim_all, args=(name,)) for name in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    every = claimed["node-a"] + claimed["node-b"]
    assert sorted(every) == sorted(single + doubled)  # each job claimed once, none lost
    assert claimed["node-a"] and claimed["node-b"]  # both claimers took work
    with sessions() as session:
        rows = session.scalars(select(Job)).all()
        assert {row.state for row in rows} <= {"succeeded", "superseded"}
        for name, ids in claimed.items():
            assert {row.claimed_by for row in rows if row.id in ids} == {name}
    started = Counter(event.details["job_id"] for event in _kinds(sessions, "job_started"))
    assert set(started.values()) == {1}


def test_an_expired_lease_is_taken_over_and_the_late_holder_records_nothing(sessions):
    time = ManualTime()
    [job_id] = queue_jobs(sessions, 1, at=time.now())
    a, b = _queue(sessions, time, "node-a"), _queue(sessions, time, "node-b")
    [held] = a.claim(5)
    assert (held.id, held.node_id, held.lease_expires_at) == (job_id, "node-a", time.now() + LEASE)
    time.advance(20)
    assert a.renew() == 1  # the heartbeat: 30 s from now
    time.advance(20)
    assert b.claim(5) == []  # 40 s after the claim, but renewed 20 s ago
    time.advance(10.5)  # 30.5 s without a heartbeat: node-a counts as dead
    [taken] = b.claim(5)
    assert (taken.id, taken.node_id, taken.attempt) == (job_id, "node-b", 2)
    [event] = _kinds(sessions, "job_taken_over")
    assert event.details["from_node"] == "node-a" and event.details["node"] == "node-b"
    a.succeed(held)  # node-a wakes up and finishes: nothing recorded, node-b holds the job
    a.fail(held, "late")
    assert a.release(held) is False
    with sessions() as session:
        row = session.get(Job, job_id)
        assert (row.state, row.claimed_by, row.attempts, row.last_error) == ("running", "node-b", 2, None)
    b.succeed(taken)
    with sessions() as session:
        row = session.get(Job, job_id)
        assert (row.state, row.claimed_by, row.lease_expires_at) == ("succeeded", "node-b", None)
    assert [e.details["node"] for e in _kinds(sessions, "job_succeeded")] == ["node-b"]


def test_heartbeats_keep_a_batch_of_claims_alive_while_it_waits(sessions):
    """The claim API for batching: one claim takes several studies, renewals hold them all for as long as they
    wait, and a job given back unstarted costs no attempt."""
    time = ManualTime()
    queue_jobs(sessions, 5, at=time.now())
    a, b = _queue(sessions, time, "node-a"), _queue(sessions, time, "node-b")
    batch = a.claim(4)
    assert len(batch) == 4 and len({job.study_instance_uid for job in batch}) == 4
    for _ in range(6):  # three minutes of waiting, beating every 20 s
        time.advance(20)
        assert a.renew() == 4
        assert [job.id for job in b.claim(10)] in ([], [_fifth(sessions, batch)])
    assert a.release(batch[0])
    [again] = b.claim(10)
    assert (again.id, again.attempt) == (batch[0].id, 1)


def _fifth(sessions, batch) -> int:
    with sessions() as session:
        return next(i for i in session.scalars(select(Job.id)) if i not in {job.id for job in batch})


def test_sqlite_keeps_one_process_claims_never_take_over_and_start_up_requeues(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    time = ManualTime()
    [job_id] = queue_jobs(sessions, 1, at=time.now())
    first = _queue(sessions, time, "one", shared=False)
    [held] = first.claim(1)
    time.advance(3600)  # a lease long expired: on SQLite the one process may still be running it
    assert _queue(sessions, time, "other", shared=False).claim(1) == []
    restarted = _queue(sessions, time, "one-again", shared=False)
    assert restarted.requeue_interrupted() == 1  # start-up: whatever ran was this node's, and it died
    [again] = restarted.claim(1)
    assert (again.id, again.attempt) == (job_id, 2)
    first.succeed(held)  # the dead process's outcome is not recorded
    with sessions() as session:
        assert session.get(Job, job_id).claimed_by == "one-again"
    engine.dispose()


def test_deliveries_claimed_by_two_processes_are_disjoint_and_an_expired_claim_is_taken_over(sessions, tmp_path):
    time = ManualTime()
    now = time.now()
    with sessions.begin() as session:
        for n in range(30):
            session.add(DeliveryItem(destination="PACS", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                                     sop_instance_uid=f"1.2.3.4.{n + 1}", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                                     kind="summary", file_path=str(tmp_path / f"{n}.dcm"), state="pending",
                                     attempts=0, queued_at=now, next_attempt_at=now))
    policy = RetryPolicy()
    a = DeliveryQueue(sessions, time, policy, lease=Lease("node-a", LEASE, True))
    b = DeliveryQueue(sessions, time, policy, lease=Lease("node-b", LEASE, True))
    got: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claim(name, queue):
        start.wait()
        while items := queue.claim("PACS", 4):
            got[name] += [item.id for item in items]

    threads = [threading.Thread(target=claim, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(got["a"]) & set(got["b"]) and len(got["a"]) + len(got["b"]) == 30
    some = got["a"][0]
    outcome = a.record(some, SendResult(tmp_path / "0.dcm", 0, 0, "Success", None), destination_label="PACS")
    assert outcome.value == "delivered"
    time.advance(31)  # node-a dies holding the rest: node-b takes them over, never the delivered one
    taken = []
    while items := b.claim("PACS", 50):
        taken += [item.id for item in items]
    assert sorted(taken) == sorted(set(got["a"]) - {some})
    claims = _kinds(sessions, "delivery_claimed")
    assert any(event.details["taken_over"] for event in claims if event.details["node"] == "node-b")
    assert b.renew() == 29 and a.renew() == 0  # node-b holds every undelivered item now


def test_lease_and_node_id_are_validated():
    with pytest.raises(ValueError, match="node id"):
        Lease("no spaces allowed", LEASE)
    with pytest.raises(ValueError, match="positive"):
        Lease("node-a", dt.timedelta(0))
    assert Lease.local().expires(utcnow()) > utcnow()
