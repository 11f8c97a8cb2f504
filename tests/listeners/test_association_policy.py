"""Association policy and robustness against hostile or broken peers."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import psutil
from sqlalchemy import select

from ortho_node.db.models import Association, AuditEvent
from ortho_node.delivery.scu import RemoteNode, echo
from tests.conftest import dcmtk


def _events(node, kind):
    with node.session_factory() as session:
        return session.scalars(select(AuditEvent).where(AuditEvent.kind == kind)).all()


def _echo(port: int, calling="SCU", called="ORTHODIFF"):
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def test_wrong_called_ae_is_rejected_and_audited(start_node):
    node = start_node()
    result = _echo(node.scp.port, called="SOMEONE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    [event] = _events(node, "association_rejected")
    assert event.calling_ae == "SCU" and event.peer_host == "127.0.0.1"
    assert "called AE title not recognized" in event.message
    with node.session_factory() as session:
        row = session.scalars(select(Association)).one()
    assert not row.accepted and row.reject_reason == "called AE title not recognized"


def test_unknown_calling_ae_is_rejected_and_audited(start_node):
    node = start_node(**{"dicom.allowed_calling_aets": ["PACS", "SCANNER@127.0.0.1"]})
    assert _echo(node.scp.port, calling="PACS").returncode == 0
    assert _echo(node.scp.port, calling="SCANNER").returncode == 0
    rejected = _echo(node.scp.port, calling="INTRUDER")
    assert "Calling AE Title Not Recognized" in rejected.stderr
    [event] = _events(node, "association_rejected")
    assert event.calling_ae == "INTRUDER"


def test_peer_host_check(start_node):
    node = start_node(**{"dicom.allowed_calling_aets": ["SCANNER@192.0.2.10"]})
    result = _echo(node.scp.port, calling="SCANNER")
    assert result.returncode != 0
    [event] = _events(node, "association_rejected")
    assert "not allowed from this host" in event.message


def test_too_many_associations_rejected_transient(start_node):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = start_node(**{"dicom.max_associations": 1})
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", node.scp.port, ae_title="ORTHODIFF")
    assert first.is_established
    second = ae.associate("127.0.0.1", node.scp.port, ae_title="ORTHODIFF")
    assert second.is_rejected
    first.release()
    [event] = _events(node, "association_rejected")
    assert event.details["transient"] is True


def test_low_disk_space_rejects_new_associations_transient(start_node):
    node = start_node(**{"storage.min_free_mb": 10**9})  # far more than any disk has
    result = _echo(node.scp.port)
    assert result.returncode != 0 and "Rejected Transient" in result.stderr
    [event] = _events(node, "association_rejected")
    assert "free disk space below the watermark" in event.message


def _send_raw(port: int, payload: bytes, *, stream_bytes: int = 0) -> bytes:
    """Send ``payload`` (and optionally a long junk stream); return what the node answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunk = os.urandom(65536)
        sent = 0
        try:
            while sent < stream_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while data := sock.recv(4096):
                received += data
        except (ConnectionResetError, socket.timeout):
            pass
        return received


def test_garbage_is_aborted_and_node_keeps_serving(start_node):
    node = start_node()
    port = node.scp.port
    process = psutil.Process()
    rss_before = process.memory_info().rss
    http = _send_raw(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    junk = _send_raw(port, bytes([0x99]) + os.urandom(4095))
    # An A-ASSOCIATE-RQ announcing ~4 GiB, followed by 64 MiB of junk the node must not buffer.
    oversized = _send_raw(port, struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0), stream_bytes=64 * 1024 * 1024)
    growth = process.memory_info().rss - rss_before
    assert growth < 32 * 1024 * 1024, f"memory grew by {growth / 1e6:.0f} MB"
    for answer in (http, junk):
        assert answer[:1] in (b"\x07", b""), "expected an A-ABORT PDU or a closed connection"
    assert oversized[:1] in (b"\x07", b"")
    assert echo(RemoteNode("ORTHODIFF", "127.0.0.1", port), calling_ae="NEXT") == 0x0000
    assert len(_events(node, "malformed_connection")) == 3
    assert _events(node, "association_accepted")[0].calling_ae == "NEXT"


def test_silent_peer_is_dropped_after_acse_timeout(start_node):
    node = start_node(**{"dicom.acse_timeout": 1.0})
    with socket.create_connection(("127.0.0.1", node.scp.port), timeout=10) as sock:
        started = time.monotonic()
        try:
            answer = sock.recv(10)
        except ConnectionResetError:
            answer = b""
        waited = time.monotonic() - started
    assert answer == b"", "the node must close a connection that never sends an association request"
    assert 0.5 < waited < 8
    assert echo(RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port)) == 0
