"""Event-driven association and DUL reactors (listeners/fastpath/reactor.py) and the direct DIMSE decoding and
encoding (wire.py)."""

from __future__ import annotations

import io
import queue
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.transport import RequestHandler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

import listeners.fastpath.reactor as reactor
from listeners.fastpath.wire import (LONGEST_STORE_RESPONSE, DirectStoreMessages, ReceivedPData, part10_header,
                                     plain_store_response_command, store_request, store_response_command)
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


def _recording_store(node, calls, delay=0.0):
    """Wrap the node's store handler (bound per association) to note the thread each instance is stored on."""
    original = node.scp.store

    def store(*args):
        calls.append(threading.current_thread())
        time.sleep(delay)
        return original(*args)

    node.scp.store = store


def test_c_stores_are_served_on_the_receiving_thread(start_node, tmp_path):
    node = start_node()
    calls = []
    _recording_store(node, calls)
    files = [write(mr_dataset(seed=i, instance_number=i + 1), tmp_path / f"{i}.dcm") for i in range(4)]
    results = send_files(_remote(node), files, calling_ae="SCU")
    assert [r.status for r in results] == [0] * 4
    assert len(calls) == 4 and all(isinstance(thread, reactor.WakeableDUL) for thread in calls)
    assert len(list(Path(node.settings.storage.data_dir, "instances").rglob("*.dcm"))) == 4
    assert echo(_remote(node), calling_ae="SCU") == 0  # other services still go pynetdicom's way


def test_observed_sends_keep_pynetdicoms_path(start_node, tmp_path):
    node = start_node()
    calls, sent = [], []
    _recording_store(node, calls)
    node.scp._server.bind(evt.EVT_DIMSE_SENT, lambda event: sent.append(type(event.message).__name__))
    files = [write(mr_dataset(seed=i, instance_number=i + 1), tmp_path / f"{i}.dcm") for i in range(2)]
    assert [r.status for r in send_files(_remote(node), files, calling_ae="SCU")] == [0, 0]
    assert sent == ["C_STORE_RSP", "C_STORE_RSP"]
    assert calls and not any(isinstance(thread, reactor.WakeableDUL) for thread in calls)


def test_a_store_longer_than_the_network_timeout_is_answered(start_node, tmp_path):
    # The peer waits for our response: a slow store (a database failing over) is not the peer idling.
    node = start_node(**{"dicom.network_timeout": 1.0})
    calls = []
    _recording_store(node, calls, delay=1.6)
    files = [write(mr_dataset(seed=i, instance_number=i + 1), tmp_path / f"{i}.dcm") for i in range(2)]
    assert [r.status for r in send_files(_remote(node), files, calling_ae="SCU")] == [0, 0]
    assert len(calls) == 2


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


def _store_request_command(**values) -> bytes:
    request = C_STORE()
    request.MessageID = values.get("message_id", 7)
    request.AffectedSOPClassUID = MRImageStorage
    request.AffectedSOPInstanceUID = values.get("instance", "1.2.826.0.1.3680043.8.498.12")
    request.Priority = values.get("priority", 2)
    request.MoveOriginatorApplicationEntityTitle = values.get("originator")
    request.MoveOriginatorMessageID = values.get("originator_id")
    request.DataSet = io.BytesIO(b"\x08\x00\x18\x00UI\x04\x001.2\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return b"".join(pdv[1:] for p in message.encode_msg(1, 16384) for _, pdv in p.presentation_data_value_list
                    if pdv[0] & 1)


@pytest.mark.parametrize("values", [
    {}, {"message_id": 65535, "priority": 1, "instance": "1.2.3.45"},
    {"originator": "MOVESCU", "originator_id": 3, "priority": 0},
])
def test_store_request_equals_pynetdicoms(values):
    command = _store_request_command(**values)
    message = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + command]]
    assert message.decode_msg(pdata) is False  # a data set follows
    expected = message.message_to_primitive()
    ours = store_request(command)
    for name in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(ours, name) == getattr(expected, name), name


def test_other_command_sets_are_left_to_pynetdicom():
    command = _store_request_command()
    echo = C_ECHO_RQ()
    request = C_ECHO()
    request.MessageID = 1
    echo.primitive_to_message(request)
    [echo_pdata] = list(echo.encode_msg(1, 16384))
    status = struct.pack("<HHIH", 0x0000, 0x0900, 2, 0)  # a Status element has no place in a request
    assert store_request(echo_pdata.presentation_data_value_list[0][1][1:]) is None
    assert store_request(command + status) is None
    assert store_request(command[:-3]) is None  # truncated
    assert store_request(command.replace(b"498.12", b"498.\xe9\xe9")) is None  # not ASCII


def test_longest_store_response_is_that_of_two_64_character_uids():
    assert len(plain_store_response_command("1" * 64, "2" * 64, 0xFFFF, 0xFFFF)) == LONGEST_STORE_RESPONSE


def test_received_pdata_equals_pynetdicoms():
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + _store_request_command()], [1, b"\x02" + b"\x55" * 301]]
    encoded = bytearray(P_DATA_TF(pdata).encode())
    reference = P_DATA_TF()
    reference.decode(bytes(encoded))
    ours = ReceivedPData(encoded).to_primitive().presentation_data_value_list
    assert [[c, bytes(v)] for c, v in ours] == [list(x) for x in reference.to_primitive().presentation_data_value_list]
    for broken in (encoded[:-1], encoded[:6] + b"\x00\x00\x00\x01\x01", encoded[:6]):
        with pytest.raises(ValueError):
            ReceivedPData(bytearray(broken))


class _Association:
    """What DirectStoreMessages asks of its association."""

    def __init__(self) -> None:
        self.dul = type("DUL", (), {"event_queue": queue.Queue()})()

    def get_handlers(self, event):
        return []

    def store_directly(self, request, data_set):
        return False  # as an association with no store handler: the message is queued


def _provider() -> DirectStoreMessages:
    return DirectStoreMessages(_Association())


def _pdvs(*pdvs) -> P_DATA:
    pdata = P_DATA()
    pdata._presentation_data_value_list = [[3, memoryview(pdv)] for pdv in pdvs]
    return pdata


def test_fragmented_store_request_is_reassembled_and_other_messages_go_to_pynetdicom():
    provider = _provider()
    command, data = _store_request_command(), bytes(range(256)) * 40
    provider.receive_primitive(_pdvs(b"\x01" + command[:10], b"\x01" + command[10:50]))
    provider.receive_primitive(_pdvs(b"\x03" + command[50:], b"\x00" + data[:1000]))
    provider.receive_primitive(_pdvs(*(b"\x00" + data[i : i + 1000] for i in range(1000, 9000, 1000))))
    assert provider.msg_queue.empty()
    provider.receive_primitive(_pdvs(b"\x02" + data[9000:]))
    context_id, request = provider.msg_queue.get_nowait()
    assert context_id == 3 and isinstance(request, C_STORE) and request.MessageID == 7
    assert request.DataSet.getvalue() == data
    echo = C_ECHO_RQ()
    primitive = C_ECHO()
    primitive.MessageID = 9
    echo.primitive_to_message(primitive)
    [echo_pdata] = list(echo.encode_msg(3, 16384))
    provider.receive_primitive(echo_pdata)
    context_id, request = provider.msg_queue.get_nowait()
    assert isinstance(request, C_ECHO) and request.MessageID == 9


def test_command_fragment_inside_a_data_set_aborts():
    provider = _provider()
    provider.receive_primitive(_pdvs(b"\x03" + _store_request_command(), b"\x00" + b"\x01" * 10))
    provider.receive_primitive(_pdvs(b"\x03" + _store_request_command()))
    assert provider.dul.event_queue.get_nowait() == "Evt19"
    assert provider.msg_queue.empty()
