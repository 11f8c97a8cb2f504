"""The nodes table and ``ortho-node nodes``, the roles' start-up checks, LISTEN/NOTIFY wake-ups and overdue
completeness decisions taken over (PostgreSQL; the clock is faked where time must pass)."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from sqlalchemy import select, update

from ortho_node.app.cli import main as cli
from ortho_node.clock import RetryPolicy
from ortho_node.cluster.heartbeat import Heartbeat
from ortho_node.cluster.lease import Lease
from ortho_node.cluster.registry import NodeIdentity, NodeIdInUse, NodeRegistry, NodeState
from ortho_node.cluster.roles import Role
from ortho_node.cluster.wakeup import Channel, Listener, notify
from ortho_node.db.models import AuditEvent, Node, Study
from ortho_node.scheduling.jobs import JobQueue
from ortho_node.scheduling.timers import ManualTime
from tests.cluster.conftest import queue_jobs

IDENTITY = NodeIdentity("gpu-1", Role.PROCESS, "gpu-host", 4242, "0.1.0", "2.3.0", "NVIDIA H100")


@pytest.mark.postgres
def test_a_node_that_missed_three_heartbeats_is_flagged_and_its_leases_expire(sessions):
    time = ManualTime()
    registry = NodeRegistry(sessions, time, missed_heartbeats=3)
    registry.register(IDENTITY, heartbeat_interval=10.0)
    queue = JobQueue(sessions, time, RetryPolicy(), lease=Lease("gpu-1", registry_lease(), True))
    queue_jobs(sessions, 1, at=time.now())
    [job] = queue.claim(1)
    beat = Heartbeat(registry, "gpu-1", 10.0, [queue.renew])
    time.advance(10)
    assert beat.beat_once()
    time.advance(29)
    [status] = registry.nodes()
    assert (status.state, status.missed_heartbeats, status.model_version, status.gpu) == \
        (NodeState.LIVE, 2, "2.3.0", "NVIDIA H100")
    other = JobQueue(sessions, time, RetryPolicy(), lease=Lease("gpu-2", registry_lease(), True))
    assert other.claim(1) == []
    time.advance(1.5)  # the third heartbeat missed: flagged, and the lease has run out with it
    [status] = registry.nodes()
    assert (status.state, status.missed_heartbeats) == (NodeState.MISSED, 3)
    [taken] = other.claim(1)
    assert taken.id == job.id
    with pytest.raises(NodeIdInUse):  # a second live process may not take the id...
        NodeRegistry(sessions, ManualTime(start=status.last_heartbeat_at), missed_heartbeats=3).register(
            IDENTITY, heartbeat_interval=10.0)
    registry.register(IDENTITY, heartbeat_interval=10.0)  # ...a restart after the flag may
    registry.stopped("gpu-1")
    assert registry.nodes()[0].state is NodeState.STOPPED


@pytest.mark.postgres
def test_nodes_forget_removes_a_missed_or_stopped_row_audited_and_refuses_a_live_one(postgres_url, sessions, capsys,
                                                                                      monkeypatch, tmp_path):
    registry = NodeRegistry(sessions, ManualTime(), missed_heartbeats=3)
    registry.register(IDENTITY, heartbeat_interval=10.0)  # live by the command's clock (the real one)
    registry.register(NodeIdentity("recv-1", Role.RECEIVE, "dicom-host", 17, "0.1.0"), heartbeat_interval=10.0)
    with sessions.begin() as session:  # recv-1 beat last a minute ago: missed
        session.execute(update(Node).where(Node.id == "recv-1").values(
            last_heartbeat_at=Node.last_heartbeat_at - dt.timedelta(seconds=60)))
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", postgres_url)
    data = ["--data-dir", str(tmp_path)]
    assert cli.main(["nodes", "--forget", "gpu-1", *data]) == 2
    assert capsys.readouterr().err.startswith("error: node 'gpu-1' is live (last heartbeat ")
    assert cli.main(["nodes", "--forget", "nobody", *data]) == 2
    assert "no node 'nobody' in the nodes table" in capsys.readouterr().err
    assert cli.main(["nodes", "--forget", "recv-1", "--by", "dr-ops", *data]) == 0
    assert capsys.readouterr().out == "node recv-1 (receive on dicom-host, missed) removed from the nodes table\n"
    assert [n.node_id for n in registry.nodes()] == ["gpu-1"]
    with sessions() as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "node_forgotten")).all()
    assert event.details["by"] == "dr-ops" and event.details["state"] == "missed"
    registry.stopped("gpu-1")
    assert cli.main(["nodes", "--forget", "gpu-1", *data]) == 0


@pytest.mark.postgres
def test_stopped_nodes_are_forgotten_after_the_configured_days_missed_ones_are_kept(sessions):
    time = ManualTime()
    registry = NodeRegistry(sessions, time, missed_heartbeats=3)
    for node_id in ("old", "recent", "missed"):
        registry.register(NodeIdentity(node_id, Role.PROCESS, "host", 1, "0.1.0"), heartbeat_interval=10.0)
    registry.stopped("old")
    time.advance(6 * 86400)
    registry.stopped("recent")
    time.advance(1 * 86400 + 1)
    assert registry.forget_stopped(dt.timedelta(days=7)) == ["old"]
    assert {n.node_id: n.state for n in registry.nodes()} == {"recent": NodeState.STOPPED,
                                                              "missed": NodeState.MISSED}
    with sessions() as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "node_forgotten")).all()
    assert event.details["node"] == "old" and event.details["by"].startswith("automatic")


def registry_lease() -> dt.timedelta:
    return dt.timedelta(seconds=30)  # 3 heartbeats of 10 s, as Lease.from_settings makes it


@pytest.mark.postgres
def test_nodes_command_text_and_json(postgres_url, sessions, capsys, monkeypatch, tmp_path):
    time = ManualTime()
    registry = NodeRegistry(sessions, time, missed_heartbeats=3)
    registry.register(IDENTITY, heartbeat_interval=10.0)
    registry.register(NodeIdentity("recv-1", Role.RECEIVE, "dicom-host", 17, "0.1.0"), heartbeat_interval=10.0)
    with sessions.begin() as session:  # recv-1 beat last a minute ago (the command reads the real clock)
        session.execute(update(Node).where(Node.id == "recv-1").values(
            last_heartbeat_at=Node.last_heartbeat_at - dt.timedelta(seconds=60)))
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", postgres_url)
    data = ["--data-dir", str(tmp_path)]
    assert cli.main(["nodes", "--json", *data]) == 0
    rows = {row["node_id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["gpu-1"]["state"] == "live" and rows["gpu-1"]["gpu"] == "NVIDIA H100"
    assert rows["recv-1"]["state"] == "missed" and rows["recv-1"]["model_version"] is None
    assert cli.main(["nodes", *data]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("gpu-1  process  gpu-host (pid 4242)  ortho-node 0.1.0  model 2.3.0 on NVIDIA H100")
    assert "recv-1  receive" in text[1] and "MISSED 6 heartbeats: leases expired, work taken over" in text[1]


@pytest.mark.parametrize("role", ["receive", "process"])
def test_sqlite_refuses_roles_other_than_all_in_one_line(role, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ORTHO_NODE_DATABASE_URL", raising=False)
    assert cli.main(["serve", "--role", role, "--data-dir", str(tmp_path / "data"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"configuration error: cluster.role: '{role}' needs a PostgreSQL database (database.url) shared "
                   "by every process; SQLite serves one process: role 'all'")
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.postgres
def test_notify_wakes_a_listener_when_the_transaction_commits_only(sessions):
    woken = threading.Event()
    engine = sessions.kw["bind"]
    listener = Listener(engine, {Channel.JOBS: woken.set}, check_every=0.2)
    listener.start()
    try:
        assert listener.listening.wait(10)
        with pytest.raises(RuntimeError):
            with sessions.begin() as session:
                notify(session, Channel.JOBS)
                raise RuntimeError("rolled back")
        assert not woken.wait(1.0)
        with sessions.begin() as session:
            notify(session, Channel.JOBS)
        assert woken.wait(5)
    finally:
        listener.stop()


@pytest.mark.postgres
def test_an_overdue_completeness_decision_is_taken_over_by_one_receiver(sessions):
    time = ManualTime()
    queue_jobs(sessions, 2, jobs_per_study=0, at=time.now())
    with sessions.begin() as session:  # both studies' receiver died after their last instance
        session.execute(update(Study).values(decision_due_at=time.now()))
    receivers = [JobQueue(sessions, time, RetryPolicy(), lease=Lease(f"recv-{n}", registry_lease(), True))
                 for n in (1, 2)]
    overdue = dt.timedelta(seconds=32)  # settle time 2 s + a lease
    time.advance(30)
    assert receivers[0].take_overdue_decisions(overdue) == []  # the receiver may still be deciding
    time.advance(3)
    taken = receivers[0].take_overdue_decisions(overdue)
    assert len(taken) == 2 and receivers[1].take_overdue_decisions(overdue) == []  # taken once
    with sessions() as session:
        assert set(session.scalars(select(Study.decision_due_at))) == {time.now()}


def test_on_sqlite_a_new_process_marks_the_gone_ones_stopped_not_missed(tmp_path):
    from ortho_node.db import migrations
    from ortho_node.db.engine import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    time = ManualTime()
    registry = NodeRegistry(sessions, time, missed_heartbeats=3)
    registry.register(NodeIdentity("host-100", Role.ALL, "host", 100, "0.1.0"), heartbeat_interval=10.0, sole=True)
    crashed_at = time.now()
    time.advance(600)  # SIGKILLed; restarted ten minutes later with another process id
    registry.register(NodeIdentity("host-200", Role.ALL, "host", 200, "0.1.0"), heartbeat_interval=10.0, sole=True)
    states = {node.node_id: (node.state, node.stopped_at) for node in registry.nodes()}
    assert states == {"host-200": (NodeState.LIVE, None), "host-100": (NodeState.STOPPED, crashed_at)}
    engine.dispose()


def test_metrics_count_the_processes_by_role_and_state(tmp_path):
    from prometheus_client import generate_latest

    from ortho_node.audit.prometheus import NodeCollector, make_registry
    from ortho_node.db import migrations
    from ortho_node.db.engine import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    time = ManualTime()
    registry = NodeRegistry(sessions, time, missed_heartbeats=3)
    for node_id, role in (("recv-1", Role.RECEIVE), ("gpu-1", Role.PROCESS), ("gpu-2", Role.PROCESS)):
        registry.register(NodeIdentity(node_id, role, "host", 1, "0.1.0"), heartbeat_interval=10.0)
    time.advance(20)
    registry.beat("recv-1")
    registry.beat("gpu-1")
    time.advance(15)  # gpu-2 last beat 35 s ago: three missed
    collector = NodeCollector(sessions, tmp_path, 0, nodes=lambda: [(n.role, n.state.value) for n in registry.nodes()])
    text = generate_latest(make_registry(collector)).decode()
    assert 'ortho_node_cluster_nodes{role="process",state="missed"} 1.0' in text
    assert 'ortho_node_cluster_nodes{role="process",state="live"} 1.0' in text
    assert 'ortho_node_cluster_nodes{role="receive",state="live"} 1.0' in text
    assert 'ortho_node_cluster_nodes{role="all",state="live"} 0.0' in text
    engine.dispose()
