"""Issue 24, deliverable 5: DICOMweb destinations. Results delivered by STOW-RS through the same durable queue as
C-STORE: to Orthanc's DICOMweb plugin (HTTP basic, password from the environment) and read back by QIDO-RS and
WADO-RS, exactly once; a wrong password is permanent; 503/429 (Retry-After honoured), 408 retried; other 4xx
permanent; a 202 read per instance. Only the clock is injected."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from sqlalchemy import select

from ortho_node.config import load_settings
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem
from ortho_node.delivery.worker import DeliveryService
from tests.delivery.conftest import FakeClock, make_result_files
from tests.dicomweb.scripted_peer import Answer, ScriptedStowPeer
from tests.reports.orthanc import ORTHANC, Orthanc, dicomweb_plugin

STUDY = "1.2.826.0.1.3680043.8.498.4242"


@pytest.fixture
def deliveries(tmp_path):
    """factory(destinations TOML, environ) -> (service, clock, session_factory, files)."""
    engines = []

    def factory(tables: str, environ: dict[str, str] | None = None, count: int = 3):
        config = tmp_path / "node.toml"
        config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free_mb = 0\n'
                          '[delivery]\ntimeout = 5.0\n' + tables)
        settings = load_settings(config, environ=environ or {})
        engine = make_engine(settings.database_url)
        engines.append(engine)
        migrations.upgrade(engine)
        clock = FakeClock()
        sessions = make_session_factory(engine)
        service = DeliveryService(settings, sessions, clock=clock)
        files = make_result_files(tmp_path / "results", count, study_uid=STUDY)
        service.enqueue_files(files)
        return service, clock, sessions, files

    yield factory
    for engine in engines:
        engine.dispose()


def _destination(name: str, url: str, **auth: str) -> str:
    lines = [f'[[destinations]]\nname = "{name}"\nprotocol = "dicomweb"\nurl = "{url}"']
    lines += [f'{key} = "{value}"' for key, value in auth.items()]
    return "\n".join(lines) + "\n"


def _items(sessions, destination: str | None = None) -> list[DeliveryItem]:
    with sessions() as session:
        query = select(DeliveryItem).order_by(DeliveryItem.id)
        if destination:
            query = query.where(DeliveryItem.destination == destination)
        return list(session.scalars(query))


def _attempts(sessions) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_attempt")
                                    .order_by(AuditEvent.id)))


@pytest.mark.skipif(not ORTHANC.exists() or dicomweb_plugin() is None, reason="Orthanc DICOMweb plugin missing")
def test_results_reach_orthanc_by_stow_rs_once_and_read_back_by_qido_and_wado(deliveries, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"node": "s3cret-pw"})
    try:
        tables = (_destination("ARCHIVE", f"{orthanc.url}/dicom-web", username="node", password="env:ARCHIVE_PW") +
                  _destination("WRONGPW", f"{orthanc.url}/dicom-web", username="node", password="guess"))
        service, clock, sessions, files = deliveries(tables, {"ARCHIVE_PW": "s3cret-pw"})
        assert service.worker.run_once() == 6
        assert {i.state for i in _items(sessions, "ARCHIVE")} == {"delivered"}
        wrong = _items(sessions, "WRONGPW")
        assert {i.state for i in wrong} == {"failed"} and {i.attempts for i in wrong} == {1}  # 401: permanent
        assert all(i.last_error.startswith("no status HTTP 401") for i in wrong)
        clock.advance(7200)
        assert service.worker.run_once() == 0  # delivered once: nothing is sent again

        auth = ("node", "s3cret-pw")
        qido = requests.get(f"{orthanc.url}/dicom-web/studies/{STUDY}/instances", auth=auth, timeout=10).json()
        found = sorted(i["00080018"]["Value"][0] for i in qido)
        assert found == sorted(i.sop_instance_uid for i in _items(sessions, "ARCHIVE"))
        first = _items(sessions, "ARCHIVE")[0]
        wado = requests.get(f"{orthanc.url}/dicom-web/studies/{STUDY}/series/{first.series_instance_uid}/instances/"
                            f"{first.sop_instance_uid}", auth=auth, timeout=10,
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert wado.status_code == 200
        original = open(first.file_path, "rb").read()
        assert original[132:] in wado.content  # the object as the node stored it, file meta and data set
        assert len(orthanc.get("/instances")) == 3
    finally:
        orthanc.remove()


def test_transient_http_answers_are_retried_and_retry_after_is_honoured(deliveries):
    # An HTTP-date 20 min after the peer's Date header (real time, as the peer's clock: the node measures from it)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=20)
    peer = ScriptedStowPeer([Answer(503, {"Retry-After": "600"}), Answer(408),
                             Answer(429, {"Retry-After": later.strftime("%a, %d %b %Y %H:%M:%S GMT")})])
    try:
        service, clock, sessions, _files = deliveries(_destination("WEB", peer.url, bearer_token="env:WEB_TOKEN"),
                                                      {"WEB_TOKEN": "tok-123"})
        assert service.worker.run_once() == 3  # 503 Retry-After 600: not before 10 min, though our backoff is 30 s
        clock.advance(31)
        assert service.worker.run_once() == 0
        clock.advance(600)
        assert service.worker.run_once() == 3  # 408: our backoff (60 s)
        clock.advance(61)
        assert service.worker.run_once() == 3  # 429 with an HTTP-date 20 min ahead
        clock.advance(120)
        assert service.worker.run_once() == 0
        clock.advance(1100)
        assert service.worker.run_once() == 3
        assert {i.state for i in _items(sessions)} == {"delivered"}
        assert sorted(peer.stored.values()) == [1, 1, 1] and sorted(peer.received.values()) == [4, 4, 4]
        assert set(peer.authorization) == {"Bearer tok-123"}
        failures = [e.details["failure"] for e in _attempts(sessions)][:9]
        assert failures == ["http-transient"] * 9
    finally:
        peer.stop()


def test_a_202_is_read_per_instance_and_other_4xx_are_permanent(deliveries, tmp_path):
    peer = ScriptedStowPeer()
    try:
        service, clock, sessions, files = deliveries(_destination("WEB", peer.url))
        uids = [i.sop_instance_uid for i in _items(sessions)]
        peer.answers = [Answer(202, fail={uids[0]: 0xA700, uids[1]: 0xC000})]
        assert service.worker.run_once() == 3
        states = {i.sop_instance_uid: (i.state, i.last_status) for i in _items(sessions)}
        assert states == {uids[0]: ("pending", 0xA700), uids[1]: ("failed", 0xC000), uids[2]: ("delivered", 0)}
        clock.advance(31)
        assert service.worker.run_once() == 1  # only the out-of-resources one is sent again
        assert _items(sessions)[0].state == "delivered"
        assert peer.received[uids[1]] == 1 and peer.stored[uids[0]] == 1

        peer.answers = [Answer(413)]
        service.resend(STUDY)
        assert service.worker.run_once() == 3
        assert {i.state for i in _items(sessions)} == {"failed"}  # 413: permanent, flagged for an administrator
        assert {i.last_error for i in _items(sessions)} == {"no status HTTP 413 Request Entity Too Large"}
    finally:
        peer.stop()
