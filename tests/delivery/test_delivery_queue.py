"""The durable delivery queue against a real Storage SCP on loopback, with an injected clock."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem
from ortho_node.clock import RetryPolicy
from ortho_node.delivery.outcomes import Outcome, classify
from ortho_node.delivery.scu import Failure, SendResult
from ortho_node.delivery.worker import DeliveryService
from tests.delivery.conftest import FakeClock, make_result_files
from tests.node_process import free_port


@pytest.fixture
def deliveries(make_settings, tmp_path):
    """factory(port, **settings) -> (service, clock, session_factory, files) on a migrated SQLite database."""
    engines = []

    def factory(port: int, ae_title: str = "PACS", count: int = 3, **overrides):
        values = {"destinations": [f"PACS={ae_title}@127.0.0.1:{port}"], "delivery.timeout": 5.0, **overrides}
        settings = make_settings(**values)
        engine = make_engine(settings.database_url)
        engines.append(engine)
        migrations.upgrade(engine)
        clock = FakeClock()
        sessions = make_session_factory(engine)
        service = DeliveryService(settings, sessions, clock=clock)
        files = make_result_files(tmp_path / "results", count)
        assert service.enqueue_files(files) == count
        return service, clock, sessions, files

    yield factory
    for engine in engines:
        engine.dispose()


def _items(sessions) -> list[DeliveryItem]:
    with sessions() as session:
        return list(session.scalars(select(DeliveryItem).order_by(DeliveryItem.id)))


def _events(sessions, kind: str) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


@pytest.mark.parametrize("status, failure, outcome", [
    (0x0000, None, Outcome.DELIVERED), (0xB000, None, Outcome.DELIVERED), (0xA700, None, Outcome.TRANSIENT),
    (0xA7FF, None, Outcome.TRANSIENT), (0xA900, None, Outcome.PERMANENT), (0xC000, None, Outcome.PERMANENT),
    (0x0122, None, Outcome.PERMANENT), (None, Failure.ABORTED, Outcome.TRANSIENT),
    (None, Failure.NO_ASSOCIATION, Outcome.TRANSIENT), (None, Failure.REJECTED_TRANSIENT, Outcome.TRANSIENT),
    (None, Failure.REJECTED_PERMANENT, Outcome.PERMANENT), (None, Failure.NO_CONTEXT, Outcome.PERMANENT),
])
def test_statuses_are_classified(tmp_path, status, failure, outcome):
    assert classify(SendResult(tmp_path, "1.2", status, "", failure)) is outcome


def test_backoff_doubles_up_to_its_cap_and_ends():
    import datetime as dt

    policy = RetryPolicy(initial=dt.timedelta(seconds=30), maximum=dt.timedelta(minutes=30),
                         retry_for=dt.timedelta(hours=24))
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 7, 8, 100)] == [30, 60, 120, 1800, 1800, 1800]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    # The last retry falls at the end of the retry time, not up to one backoff before it (issue 23's 24 h outage).
    assert policy.next_attempt(5, start, start + dt.timedelta(hours=23, minutes=59)) == start + dt.timedelta(hours=24)
    assert policy.next_attempt(6, start, start + dt.timedelta(hours=24)) is None


def test_destination_down_then_up_is_delivered_exactly_once(deliveries, fake_pacs):
    port = free_port()
    service, clock, sessions, files = deliveries(port)
    assert service.worker.run_once() == 3  # refused: nothing listens yet
    assert {i.state for i in _items(sessions)} == {"pending"}
    assert all(e.details["failure"] == "no-association" for e in _events(sessions, "delivery_attempt"))
    pacs = fake_pacs(port)
    assert service.worker.run_once() == 0  # not due before the backoff
    clock.advance(31)
    assert service.worker.run_once() == 3
    clock.advance(3600)
    assert service.worker.run_once() == 0
    assert {i.state for i in _items(sessions)} == {"delivered"}
    assert sorted(pacs.received.values()) == [1, 1, 1]


def test_out_of_resources_twice_then_success_audits_three_attempts(deliveries, fake_pacs):
    pacs = fake_pacs(statuses=[0xA700, 0xA700])
    service, clock, sessions, _ = deliveries(pacs.port, count=1)
    service.worker.run_once()
    clock.advance(30)
    service.worker.run_once()
    assert service.worker.run_once() == 0  # second backoff is 60 s
    clock.advance(60)
    service.worker.run_once()
    [item] = _items(sessions)
    assert item.state == "delivered" and item.attempts == 3
    attempts = _events(sessions, "delivery_attempt")
    assert [e.details["status"] for e in attempts] == [0xA700, 0xA700, 0x0000]
    assert all(e.sop_instance_uid == item.sop_instance_uid for e in attempts)
    assert list(pacs.stored.values()) == [1]


def test_cannot_understand_stops_is_flagged_and_not_retried(deliveries, fake_pacs):
    pacs = fake_pacs(statuses=[0xC001])
    service, clock, sessions, _ = deliveries(pacs.port, count=1)
    service.worker.run_once()
    clock.advance(86400)
    assert service.worker.run_once() == 0
    [item] = _items(sessions)
    assert item.state == "failed" and item.attempts == 1 and item.last_status == 0xC001
    [flag] = _events(sessions, "delivery_failed")
    assert flag.severity == "error" and "rejected permanently" in flag.message
    assert sum(pacs.received.values()) == 1


def test_permanent_association_rejection_is_flagged(deliveries, fake_pacs):
    pacs = fake_pacs()
    service, _clock, sessions, _ = deliveries(pacs.port, ae_title="NOTPACS", count=2)
    service.worker.run_once()
    assert {(i.state, i.attempts) for i in _items(sessions)} == {("failed", 1)}
    assert "rejected" in _items(sessions)[0].last_error


def test_transient_failures_are_flagged_when_the_retry_time_is_over(deliveries):
    service, clock, sessions, _ = deliveries(free_port(), count=1, **{"delivery.retry_for_hours": 0.05})
    for _ in range(10):
        service.worker.run_once()
        clock.advance(60)
    [item] = _items(sessions)
    assert item.state == "failed" and 2 <= item.attempts <= 4
    assert "retry time exhausted" in _events(sessions, "delivery_failed")[0].message


def test_queueing_twice_adds_nothing_and_kinds_are_respected(make_settings, tmp_path):
    settings = make_settings(destinations=["ALL=A@127.0.0.1:1"])
    from ortho_node.config import DestinationSettings

    only_sr = DestinationSettings(name="SR", ae_title="B", host="127.0.0.1", port=2, kinds=["sr"])
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    service = DeliveryService(settings, make_session_factory(engine), clock=FakeClock())
    service.destinations = (*settings.destinations, only_sr)
    files = make_result_files(tmp_path / "results", 3)
    assert service.enqueue_files(files) == 4
    assert service.enqueue_files(files) == 0
    engine.dispose()


def test_cli_lists_and_resends(deliveries, fake_pacs, monkeypatch, capsys, tmp_path):
    from ortho_node.app.cli.main import main

    pacs = fake_pacs()
    service, _clock, sessions, _ = deliveries(pacs.port, count=2)
    service.worker.run_once()
    monkeypatch.setenv("ORTHO_NODE_STORAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ORTHO_NODE_DESTINATIONS", f"PACS=PACS@127.0.0.1:{pacs.port}")
    assert main(["deliveries", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["destination"], i["state"]) for i in listed] == [("PACS", "delivered")] * 2
    study = listed[0]["study_instance_uid"]
    assert main(["resend", study, "--to", "ELSEWHERE"]) == 2
    assert main(["resend", study, "--to", "PACS"]) == 0
    assert {i.state for i in _items(sessions)} == {"pending"}
    assert len(_events(sessions, "delivery_resend")) == 1
