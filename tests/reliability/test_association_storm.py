"""Association storms: more dcmtk senders than dicom.max_associations at once, and connections that never send
an A-ASSOCIATE-RQ, against ``ortho-node serve`` with one and with two storage worker processes."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from ortho_node.clock import as_utc
from ortho_node.db.models import Association, Instance
from tests.conftest import dcmtk
from tests.dicom_factory import mr_dataset, write
from tests.node_process import NodeProcess

MAX_ASSOCIATIONS = 25
SENDERS = 30
INSTANCES_PER_SENDER = 40  # long enough that the 30 associations overlap on 2 loaded cores
ACSE_TIMEOUT = 5.0
IDLE_CONNECTIONS = 2 * MAX_ASSOCIATIONS
#: How dcmtk 3.6 prints an A-ASSOCIATE-RJ with result 2 (transient), source 3 (service provider, presentation
#: related), reason 2 (local limit exceeded), PS3.8 section 9.3.4.
TRANSIENT_LIMIT_REJECTION = ("Result: Rejected Transient, Source: Service Provider (Presentation Related)",
                             "Reason: Local Limit Exceeded")


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def node(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"storm-w{request.param}")
    process = NodeProcess(folder / "data", extra_env={
        "ORTHO_NODE_DICOM_WORKERS": str(request.param),
        "ORTHO_NODE_DICOM_MAX_ASSOCIATIONS": str(MAX_ASSOCIATIONS),
        "ORTHO_NODE_DICOM_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
    })
    yield process
    process.stop()


def _rows(data_dir: Path, model):
    engine = create_engine(f"sqlite:///{data_dir / 'ortho-node.db'}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(model)))
    finally:
        engine.dispose()


def _storm_associations(data_dir: Path, wait: float = 10.0) -> list:
    """The storm's association rows once each has its end recorded: a sender exits on the A-RELEASE-RP, a moment
    before the node (a worker process, with dicom.workers 2) writes how the association ended."""
    deadline = time.monotonic() + wait
    while True:
        rows = [row for row in _rows(data_dir, Association) if row.calling_ae.startswith("STORM")]
        if all(row.ended_at is not None for row in rows if row.accepted) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _peak_concurrency(rows) -> int:
    """Most associations open at one moment, from the accepted rows' start and end times."""
    edges = sorted([(as_utc(r.started_at), 1) for r in rows] + [(as_utc(r.ended_at), -1) for r in rows],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same instant
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_storm_of_storescu_completes_or_is_rejected_transient(node, tmp_path):
    folders, uids = [], []
    for sender in range(SENDERS):
        folder = tmp_path / f"sender{sender:02d}"
        series = [mr_dataset(rows=32, columns=32, seed=sender * 100 + i, instance_number=i + 1)
                  for i in range(INSTANCES_PER_SENDER)]
        for i, ds in enumerate(series):
            write(ds, folder / f"{i}.dcm")
        folders.append(folder)
        uids.append({ds.SOPInstanceUID for ds in series})
    senders = [subprocess.Popen([dcmtk("storescu"), "-aet", f"STORM{n:02d}", "-aec", "ORTHODIFF", "127.0.0.1",
                                 str(node.port), "+sd", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
               for n, folder in enumerate(folders)]
    outputs = [sender.communicate(timeout=120)[0] for sender in senders]

    stored = {row.sop_instance_uid for row in _rows(node.data_dir, Instance)}
    completed, rejected = [], []
    for n, (sender, output) in enumerate(zip(senders, outputs)):
        if sender.returncode == 0:
            assert uids[n] <= stored, f"sender {n} succeeded but not all its instances were stored"
            completed.append(n)
        else:
            assert all(text in output for text in TRANSIENT_LIMIT_REJECTION), f"sender {n}: {output[-600:]}"
            assert not uids[n] & stored
            rejected.append(n)
    # A rejection happens only while MAX_ASSOCIATIONS are open, and those complete.
    assert len(completed) >= MAX_ASSOCIATIONS
    assert rejected, "the senders never overlapped beyond the limit: the storm tested nothing"

    associations = _storm_associations(node.data_dir)
    accepted = [row for row in associations if row.accepted]
    assert sorted(int(row.calling_ae[5:]) for row in accepted) == completed
    assert {row.end_state for row in accepted} == {"released"}, [(r.calling_ae, r.end_state) for r in accepted]
    refused = [row for row in associations if not row.accepted]
    assert sorted(int(row.calling_ae[5:]) for row in refused) == rejected
    assert {row.reject_reason for row in refused} == {"local limit exceeded: too many associations"}
    assert _peak_concurrency(accepted) <= MAX_ASSOCIATIONS
    log = node.log()
    assert "Traceback" not in log
    assert log.count("rejected: local limit exceeded") == len(rejected)
    print(f"\nstorm: {len(completed)} completed, {len(rejected)} rejected (2,3,2), at most "
          f"{_peak_concurrency(accepted)} open at once")


def _echoscu(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("echoscu"), "-aet", "AFTERIDLE", "-aec", "ORTHODIFF", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def test_connections_without_association_request_do_not_count_and_are_closed(node):
    # They do not count against dicom.max_associations (an association starts with its A-ASSOCIATE-RQ): an
    # echo succeeds at once while twice the limit of them is open; acse_timeout (ARTIM) closes them.
    opened = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=30) for _ in range(IDLE_CONNECTIONS)]
    try:
        echo = _echoscu(node.port)
        answered = time.monotonic() - opened
        assert echo.returncode == 0, echo.stderr
        assert answered < ACSE_TIMEOUT, f"echo took {answered:.1f} s with idle connections open"
        closed_after = []
        for sock in idle:
            try:
                assert sock.recv(16) == b"", "the node sent something to a peer that never asked"
            except ConnectionResetError:
                pass
            closed_after.append(time.monotonic() - opened)
    finally:
        for sock in idle:
            sock.close()
    assert ACSE_TIMEOUT - 0.5 < min(closed_after) and max(closed_after) < ACSE_TIMEOUT + 5, closed_after
    assert _echoscu(node.port).returncode == 0
    print(f"\nidle connections: echo answered after {answered:.2f} s; closed {min(closed_after):.2f}-"
          f"{max(closed_after):.2f} s after opening")
    log = node.log()
    assert log.count("closed without a valid association request") >= IDLE_CONNECTIONS
