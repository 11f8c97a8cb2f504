"""Outages: the PACS down for 24 hours (an injected clock, a real Storage SCP when it returns), and a real
PostgreSQL server stopped and started again under load while ``ortho-node serve`` keeps running."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import MRImageStorage
from pynetdicom import AE
from sqlalchemy import create_engine, select

from ortho_node.clock import as_utc
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem, Instance
from ortho_node.delivery.worker import DeliveryService
from tests.delivery.conftest import FakeClock, make_result_files
from tests.dicom_factory import mr_dataset
from tests.node_process import NodeProcess, free_port

OUTAGE = dt.timedelta(hours=24)


def _items(sessions) -> list[DeliveryItem]:
    with sessions() as session:
        return list(session.scalars(select(DeliveryItem).order_by(DeliveryItem.id)))


def test_pacs_down_for_24_hours_then_every_result_delivered_once(make_settings, tmp_path, fake_pacs):
    port = free_port()  # nothing listens there during the outage: every attempt is refused
    settings = make_settings(**{"destinations": [f"PACS=PACS@127.0.0.1:{port}"], "delivery.timeout": 5.0,
                                "delivery.retry_for_hours": 24.0, "delivery.initial_backoff": 30.0,
                                "delivery.max_backoff": 1800.0})
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    clock = FakeClock()
    service = DeliveryService(settings, sessions, clock=clock)
    down_at = clock.now()
    # Result sets finished at the start of the outage, during it, and just before the PACS returns.
    pending = {dt.timedelta(hours=h): make_result_files(tmp_path / f"at{h}h", 3,
                                                       study_uid=f"1.2.826.0.1.3680043.8.498.23.{h}")
               for h in (0, 6, 12, 23.9)}
    attempts_during_outage = 0
    while clock.now() < down_at + OUTAGE:
        for finished in [when for when in pending if down_at + when <= clock.now()]:
            service.enqueue_files(pending.pop(finished))
        attempts_during_outage += service.worker.run_once()
        upcoming = [down_at + when for when in pending] + [down_at + OUTAGE]
        due = service.queue.next_due()
        if due is not None and due > clock.now():
            upcoming.append(due)
        clock.current = min(upcoming)
    assert not pending
    assert {item.state for item in _items(sessions)} == {"pending"}, "a result was given up during the outage"

    pacs = fake_pacs(port)  # the PACS is back, 24 h after it went down
    while (due := service.queue.next_due()) is not None and clock.now() <= down_at + OUTAGE + dt.timedelta(hours=1):
        clock.current = max(clock.now(), due)
        service.worker.run_once()
    items = _items(sessions)
    assert {item.state for item in items} == {"delivered"}
    assert len(items) == 12 and sorted(pacs.received.values()) == [1] * 12  # each once, none twice
    # Within one backoff cap (30 min) of the PACS's return; the first results were tried through the whole day.
    back_by = down_at + OUTAGE + dt.timedelta(minutes=30)
    assert max(as_utc(item.delivered_at) for item in items) <= back_by
    first = min(items, key=lambda item: item.id)
    assert first.attempts >= 50 and attempts_during_outage >= 150
    with sessions() as session:
        assert not session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery_failed")).all()
    engine.dispose()
    last = max(as_utc(item.delivered_at) for item in items) - (down_at + OUTAGE)
    print(f"\nPACS down 24 h: {attempts_during_outage} refused attempts, {first.attempts} for the first result; "
          f"12 of 12 delivered once, the last {last.total_seconds() / 60:.1f} min after the PACS's return")


# PostgreSQL stopped under load ---------------------------------------------------------------------------------

class OwnPostgres:
    """A throwaway PostgreSQL cluster of this test alone (other tests and people share the machine's server):
    initdb into a temporary folder, served on a free loopback port, stopped and started with pg_ctl."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: its folders are 0700 root's, and the server runs as the postgres user.
        self.folder = Path(tempfile.mkdtemp(prefix="ortho-pg-"))
        self.data = self.folder / "data"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "ortho")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ortho"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_owner, str(self.bin_dir / tool), *args], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder)


@pytest.fixture
def own_postgres():
    pg_ctls = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not pg_ctls:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = OwnPostgres(pg_ctls[-1].parent)
    yield server
    server.remove()


class Senders:
    """Threads that store new instances over and over, one association per batch, recording every answer."""

    def __init__(self, port: int, count: int = 3, batch: int = 5) -> None:
        self.port, self.batch = port, batch
        self.answers: list[tuple[float, str, int | None]] = []  # (monotonic time, SOP Instance UID, status)
        self.datasets: dict[str, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self, sender: int) -> None:
        ae = AE(ae_title=f"LOAD{sender}")
        ae.add_requested_context(MRImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        serial = 0
        while not self._stop.is_set():
            datasets = [mr_dataset(seed=sender * 100_000 + serial + i, instance_number=serial + i + 1)
                        for i in range(self.batch)]
            serial += self.batch
            assoc = ae.associate("127.0.0.1", self.port, ae_title="ORTHODIFF")
            if not assoc.is_established:
                time.sleep(0.2)
                continue
            statuses = []
            for ds in datasets:
                if not assoc.is_established:  # ended under us (a response timed out, or the node aborted): resend later
                    statuses.append(None)
                    break
                response = assoc.send_c_store(ds)
                statuses.append(int(response.Status) if "Status" in response else None)
                with self._lock:
                    self.datasets[ds.SOPInstanceUID] = ds
                    self.answers.append((time.monotonic(), ds.SOPInstanceUID, statuses[-1]))
            if assoc.is_established:
                assoc.release()
            if any(status != 0 for status in statuses):
                time.sleep(0.5)  # as a modality or PACS backs off after a failure

    def successes(self, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for at, _, status in self.answers if status == 0 and at >= since)

    def wait_for_successes(self, count: int, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.successes(since) >= count:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


@pytest.fixture
def node_on_own_postgres(own_postgres, tmp_path):
    node = NodeProcess(tmp_path / "data", extra_env={"ORTHO_NODE_DATABASE_URL": own_postgres.url})
    yield node
    node.stop()  # before the cluster goes (fixture order)


def test_postgresql_stopped_under_load_no_success_without_a_committed_row(own_postgres, node_on_own_postgres):
    node = node_on_own_postgres
    senders = Senders(node.port)
    try:
        assert senders.wait_for_successes(30, 0.0, timeout=60), "no load before the outage"
        own_postgres.stop("immediate")  # as a crash: sessions cut without a goodbye
        stopped_at = time.monotonic()
        time.sleep(3)
        own_postgres.start()
        restarted_at = time.monotonic()
        recovered = senders.wait_for_successes(20, restarted_at, timeout=60)
    finally:
        senders.stop()
    log = node.log()
    assert recovered, f"no success after PostgreSQL came back: {log[-3000:]}"
    assert node.process.poll() is None, "the node must recover without a restart"

    during = Counter(status for at, _, status in senders.answers if stopped_at <= at < restarted_at)
    # Out of resources: the sender keeps the instance and sends it again. (A success answered just after the stop
    # was committed before it; every success is checked against the database below.)
    assert during[0xA700] > 0 and set(during) <= {0x0000, 0xA700}, during
    acknowledged = {uid for _, uid, status in senders.answers if status == 0}
    refused = {uid for _, uid, status in senders.answers if status != 0} - acknowledged
    engine = create_engine(own_postgres.url)
    try:
        with engine.connect() as connection:
            rows = {row.sop_instance_uid: row for row in connection.execute(select(Instance))}
    finally:
        engine.dispose()
    missing = acknowledged - rows.keys()
    assert not missing, f"{len(missing)} instances acknowledged with success have no committed row"
    for uid in acknowledged:
        path = node.data_dir / rows[uid].file_path  # relative to the data folder
        assert hashlib.sha256(path.read_bytes()).hexdigest() == rows[uid].sha256
    assert "Traceback" not in log
    # What was refused during the outage is stored when the sender sends it again.
    ae = AE(ae_title="RETRY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ORTHODIFF")
    statuses = Counter(int(assoc.send_c_store(senders.datasets[uid]).Status) for uid in refused)
    assoc.release()
    assert set(statuses) <= {0x0000}, statuses
    first_after = min(at for at, _, status in senders.answers if status == 0 and at >= restarted_at)
    print(f"\nPostgreSQL outage under load: {len(acknowledged)} acknowledged, all committed; during the outage "
          f"{dict(during)}; first success {first_after - restarted_at:.2f} s after the restart; {len(refused)} "
          "refused instances stored when sent again")
