"""Event-driven association and DUL reactors (listeners/reactor.py) and the direct encodings (wire.py)."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.transport import RequestHandler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

import listeners.reactor as reactor
from listeners.wire import part10_header, store_response_command
from ortho_node.delivery.scu import RemoteNode, echo, send_files
from tests.dicom_factory import mr_dataset, write


def _remote(node) -> RemoteNode:
    return RemoteNode(node.settings.dicom.ae_title, "127.0.0.1", node.scp.port)


def test_pynetdicom_still_has_what_the_reactors_replace():
    # The reactors override these; if pynetdicom renames them, these tests say so before production does.
    for name in ("run_reactor", "_is_transport_event", "_read_pdu_data", "_process_recv_primitive",
                 "_decode_pdu", "send_pdu", "stop_dul", "kill_dul"):
        assert hasattr(DULServiceProvider, name), name
    for name in ("_run_reactor", "_serve_request", "set_socket", "unbind"):
        assert hasattr(Association, name), name
    assert hasattr(RequestHandler, "_create_association")


def test_no_wake_up_is_lost(start_node, tmp_path, monkeypatch):
    # With the safety-net timeout at 5 s, any wait that missed its signal would cost 5 s.
    monkeypatch.setattr(reactor, "MAX_WAIT", 5.0)
    node = start_node()
    files = [write(mr_dataset(seed=i, instance_number=i + 1), tmp_path / f"{i}.dcm") for i in range(5)]
    started = time.monotonic()
    results = send_files(_remote(node), files, calling_ae="SCU")
    assert echo(_remote(node), calling_ae="SCU") == 0
    assert [r.status for r in results] == [0] * 5
    assert time.monotonic() - started < 4.0


def test_idle_association_sleeps(start_node, monkeypatch):
    node = start_node()
    waits = []
    original = reactor.WakeableDUL._wait_for_work

    def counting(self):
        waits.append(time.monotonic())
        original(self)

    monkeypatch.setattr(reactor.WakeableDUL, "_wait_for_work", counting)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title=node.settings.dicom.ae_title)
    assert assoc.is_established
    time.sleep(0.2)
    waits.clear()
    time.sleep(1.0)
    idle_waits = len(waits)
    assoc.release()
    # pynetdicom's own loop runs about a thousand times a second; ours wakes only for the timers.
    assert idle_waits <= 2 / reactor.MAX_WAIT


def test_negotiation_leaves_the_shared_contexts_untouched(start_node, tmp_path):
    node = start_node()
    contexts = node.scp._server.acceptor_contexts

    def snapshot():
        return [(cx.abstract_syntax, list(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.context_id,
                 cx.result) for cx in contexts]

    before = snapshot()
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    for _ in range(2):
        assoc = ae.associate("127.0.0.1", node.scp.port, ae_title=node.settings.dicom.ae_title)
        assert assoc.is_established
        assoc.release()
    assert snapshot() == before


def test_announced_giant_pdu_is_refused_without_buffering(start_node):
    node = start_node()
    with socket.create_connection(("127.0.0.1", node.scp.port), timeout=5) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))  # an A-ASSOCIATE-RQ of almost 4 GiB
        sock.sendall(b"\0" * 1024)
        deadline = time.monotonic() + 5
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                closed = sock.recv(4096) == b""
            except ConnectionResetError:
                closed = True
    assert closed
    assert echo(_remote(node), calling_ae="SCU") == 0


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC210, 0xC220, 0xC221, 0xB000])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_store_response_bytes_equal_pynetdicoms(status, message_id):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MRImageStorage
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1" + "1" * (message_id % 2)  # odd and even
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [pdata] = list(message.encode_msg(1, 16384))
    assert b"\x03" + store_response_command(rsp) == pdata.presentation_data_value_list[0][1]


def test_store_response_with_error_comment_is_left_to_pynetdicom():
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 1, 0xC000
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = MRImageStorage, "1.2.3"
    rsp.ErrorComment = "no"
    assert store_response_command(rsp) is None


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"])
def test_part10_header_equals_pynetdicoms(syntax, instance):
    meta = create_file_meta(sop_class_uid=MRImageStorage, sop_instance_uid=instance, transfer_syntax=syntax)
    assert part10_header(MRImageStorage, instance, syntax) == b"\0" * 128 + b"DICM" + encode_file_meta(meta)
