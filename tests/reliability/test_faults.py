"""Faults: disk full, database unavailable, SIGKILL mid-transfer; patient identifiers never logged."""

from __future__ import annotations

import hashlib
import subprocess
import threading

import numpy as np
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pydicom.uid import MRImageStorage
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from ortho_node.app.node import Node
from ortho_node.db.models import AuditEvent, Instance
from ortho_node.delivery.scu import RemoteNode, send_files
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mr_dataset, write
from tests.node_process import NodeProcess


def _remote(node) -> RemoteNode:
    return RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port)


def _count(node) -> int:
    with node.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Instance))


@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_disk_full_answers_a700_without_partial_file_and_recovers(start_node, tmpfs, tmp_path):
    node = start_node(**{"storage.data_dir": str(tmpfs / "data"),
                         "database.url": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    files = [write(mr_dataset(rows=512, columns=512, seed=i, instance_number=i), tmp_path / f"{i}.dcm")
             for i in range(3)]
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (node.store.free_bytes() - 200_000))
    [refused] = send_files(_remote(node), files[:1], calling_ae="SCU")
    assert refused.status == 0xA700
    assert _count(node) == 0
    assert not list(node.store.tmp_dir.iterdir()), "a partial file was left behind"
    assert not list(node.store.instances_dir.rglob("*.dcm"))
    with node.session_factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "storage_failed")).one()
    assert event.message == "disk full"
    filler.unlink()
    results = send_files(_remote(node), files, calling_ae="SCU")
    assert [r.status for r in results] == [0, 0, 0]
    assert _count(node) == 3


class _Outage:
    """Makes the node's database refuse work, then restores it (SQLite: a held write lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = create_engine(url, isolation_level="AUTOCOMMIT")

    def __enter__(self):
        parsed = make_url(self.url)
        self._connection = self._engine.connect()
        if parsed.get_backend_name() == "sqlite":
            self._connection.exec_driver_sql("BEGIN EXCLUSIVE")
        else:
            self._admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
            self._connection.close()
            with self._admin.connect() as admin:
                admin.execute(text(f'ALTER DATABASE "{parsed.database}" ALLOW_CONNECTIONS false'))
                admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": parsed.database})
        return self

    def __exit__(self, *exc):
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            self._connection.exec_driver_sql("ROLLBACK")
            self._connection.close()
        else:
            with self._admin.connect() as admin:
                admin.execute(text(f'ALTER DATABASE "{parsed.database}" ALLOW_CONNECTIONS true'))
            self._admin.dispose()
        self._engine.dispose()


def test_database_unavailable_answers_a700_and_recovers(start_node, database_url, tmp_path):
    node = start_node(**{"database.url": database_url, "database.busy_timeout": 0.5})
    files = [write(mr_dataset(seed=i, instance_number=i), tmp_path / f"{i}.dcm") for i in range(2)]
    with _Outage(database_url):
        [refused] = send_files(_remote(node), files[:1], calling_ae="SCU")
        assert refused.status == 0xA700
    results = send_files(_remote(node), files, calling_ae="SCU")
    assert [r.status for r in results] == [0, 0]
    assert _count(node) == 2


def _send_until_killed(remote: RemoteNode, datasets, acknowledged: list, kill_after: int, node: NodeProcess):
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage)
    ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title)
    killer = threading.Timer(0.01, node.kill)  # lands in the middle of the next transfer
    for ds in datasets:
        if len(acknowledged) == kill_after:
            killer.start()
        response = assoc.send_c_store(ds)
        if "Status" not in response:
            break
        if response.Status == 0:
            acknowledged.append(ds)
    if assoc.is_established:
        assoc.abort()
    killer.join()


def test_sigkill_mid_transfer_loses_nothing_acknowledged(tmp_path):
    data_dir = tmp_path / "data"
    node = NodeProcess(data_dir)
    datasets = [mr_dataset(rows=512, columns=512, seed=i, instance_number=i,
                           study_uid="1.2.826.0.1.3680043.8.498.77", series_uid="1.2.826.0.1.3680043.8.498.77.1")
                for i in range(40)]
    acknowledged: list = []
    _send_until_killed(node.remote, datasets, acknowledged, kill_after=12, node=node)
    assert node.process.returncode == -9
    assert 12 <= len(acknowledged) < 40

    restarted = NodeProcess(data_dir)  # start-up runs migrations and crash recovery
    restarted.stop()
    from ortho_node.config import load_settings

    recovered = Node(load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)}))
    with recovered.session_factory() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
    for ds in acknowledged:
        row = rows[ds.SOPInstanceUID]
        path = recovered.store.local_path(row.file_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        assert np.array_equal(dcmread(path).pixel_array, ds.pixel_array)
    assert not list(recovered.store.tmp_dir.iterdir())
    recovered.engine.dispose()


def test_patient_identifiers_never_logged(tmp_path):
    node = NodeProcess(tmp_path / "data", log_level="DEBUG")
    try:
        good = write(mr_dataset(), tmp_path / "good.dcm")
        broken = mr_dataset()
        del broken.SeriesInstanceUID
        broken_path = write(broken, tmp_path / "broken.dcm")
        results = send_files(node.remote, [good, broken_path], calling_ae="SCU")
        assert [r.status for r in results] == [0x0000, 0xC220]
    finally:
        node.stop()
    log = node.log()
    assert "accepted" in log and "0xC220" in log  # the run was logged at DEBUG level
    for identifier in (PATIENT_NAME, PATIENT_ID, "PHIPATIENT", "19700101"):
        assert identifier not in log
