"""Fuzzing the association request: a valid A-ASSOCIATE-RQ PDU (MR storage and verification contexts, maximum
length and implementation class UID), mutated by hypothesis (bit flips, truncation, length fields, spliced bytes),
each sent on a new loopback connection to a served node.

Each gets an A-ASSOCIATE-AC, -RJ, an A-ABORT, a closed connection, or (a PDU cut short, whose rest the node waits
for) nothing within the wait; the node stays up, logs no traceback, ends every connection's threads and grows by
less than 50 MB.
``ORTHO_FUZZ_EXAMPLES`` sets how many inputs (300 in CI).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from tests.reliability.mutations import RSS_GROWTH_LIMIT, mutate

EXAMPLES = int(os.environ.get("ORTHO_FUZZ_EXAMPLES", "300"))
ANSWERS = {0x02: "associate-ac", 0x03: "associate-rj", 0x07: "abort"}
ABORT = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0)  # A-ABORT, service user, no reason


def _request() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "FUZZER", "ORTHODIFF"
    contexts = []
    for number, abstract in enumerate((MRImageStorage, Verification)):
        context = build_context(abstract, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        context.context_id = 2 * number + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    maximum, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    maximum.maximum_length_received = 16384
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


REQUEST = _request()


def _length_fields(pdu: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the PDU length and of every item's and sub-item's length (PS3.8 9.3.2)."""
    fields = [(2, 4)]

    def items(start: int, end: int) -> None:
        while start + 4 <= end:
            kind, length = pdu[start], struct.unpack_from(">H", pdu, start + 2)[0]
            fields.append((start + 2, 2))
            if kind in (0x20, 0x50):  # a presentation context and the user information hold sub-items
                items(start + 4 + (4 if kind == 0x20 else 0), start + 4 + length)
            start += 4 + length

    items(74, len(pdu))
    return fields


FIELDS = _length_fields(REQUEST)
_LENGTHS = [0, 1, 3, 4, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated_requests(draw) -> bytes:
    return mutate(draw, REQUEST, FIELDS, _LENGTHS, "big")


def _send(port: int, pdu: bytes, wait: float) -> str:
    """The node's answer to ``pdu`` on a new connection: the kind of the PDU it sent back, "closed", or "none"
    within ``wait`` seconds. An accepted association is aborted at once (it would hold one of the node's slots)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(pdu)
        connection.settimeout(wait)
        try:
            first = connection.recv(1)
        except TimeoutError:
            return "none"
        except ConnectionResetError:
            return "closed"
        if not first:
            return "closed"
        answer = ANSWERS.get(first[0], f"pdu 0x{first[0]:02X}")
        if first[0] == 0x02:
            connection.sendall(ABORT)
        return answer


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _association_request(*items: bytes) -> bytes:
    """An A-ASSOCIATE-RQ of these variable items, built by hand (pynetdicom's encoder refuses what these carry)."""
    body = struct.pack(">HH", 1, 0) + b"ORTHODIFF".ljust(16) + b"FUZZER".ljust(16) + bytes(32) + b"".join(items)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


_APPLICATION_CONTEXT = _item(0x10, b"1.2.840.10008.3.1.1.1")
_USER_INFORMATION = _item(0x50, _item(0x51, struct.pack(">L", 16384)))
_EXPLICIT_LE = _item(0x40, ExplicitVRLittleEndian.encode())
NO_ABSTRACT_SYNTAX = _association_request(
    _APPLICATION_CONTEXT, _item(0x20, bytes([1, 0, 0, 0]) + _EXPLICIT_LE), _USER_INFORMATION)
UNKNOWN_PDU = bytes([0x0B, 0]) + struct.pack(">L", 2) + b"??"
_CONTEXT_ID_AT = next(offset for offset, _ in FIELDS if REQUEST[offset - 2] == 0x20) + 2
EVEN_CONTEXT_ID = REQUEST[:_CONTEXT_ID_AT] + bytes([2]) + REQUEST[_CONTEXT_ID_AT + 1:]


@pytest.mark.parametrize("served_node", [1, 2], indirect=True, ids=["workers1", "workers2"])
def test_requests_that_broke_pynetdicoms_threads_are_aborted_with_one_line(served_node):
    """Found by the fuzzing below: a presentation context without an abstract syntax (pynetdicom's negotiation
    raised a TypeError), one with an even ID (its state machine's action raised a ValueError), and a request
    followed at once by a PDU that makes the node abort, so that the negotiation's accept arrives after the abort
    (InvalidEventError): each ended its thread on a traceback in the log. The race needs many tries to show."""
    assert _send(served_node.port, NO_ABSTRACT_SYNTAX, wait=10) in ("abort", "associate-rj")
    assert _send(served_node.port, EVEN_CONTEXT_ID, wait=10) == "abort"
    answers = {_send(served_node.port, REQUEST + UNKNOWN_PDU, wait=10) for _ in range(100)}
    assert answers <= {"abort", "associate-ac", "closed"}
    assert served_node.alive()
    log = served_node.process.log()
    assert "Traceback" not in log
    assert "association request not negotiable (TypeError" in log
    assert "event Evt6 in state Sta2 failed ('context_id' must be an odd integer" in log
    _assert_every_accepted_association_ended(served_node)


@pytest.mark.parametrize("served_node", [1], indirect=True, ids=["workers1"])
def test_mutated_association_requests_are_answered_and_the_node_stays_up(served_node):
    assert _send(served_node.port, REQUEST, wait=10) == "associate-ac"  # the seed itself is accepted
    rss_before, threads_before = served_node.rss(), served_node.threads()
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_requests())
    def send(pdu: bytes) -> None:
        answer = _send(served_node.port, pdu, wait=0.5)
        assert not answer.startswith("pdu "), f"the node answered an association request with a {answer}"
        outcomes[answer] = outcomes.get(answer, 0) + 1

    send()
    # Every connection's threads end with it: a thread waiting out the ACSE timeout after its connection was
    # aborted once held hundreds of threads and sockets at a time.
    deadline = time.monotonic() + 10
    while served_node.threads() > threads_before + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served_node.threads() <= threads_before + 4
    growth = served_node.rss() - rss_before
    print("association fuzz outcomes:", dict(sorted(outcomes.items())), f"RSS growth {growth / 1e6:.1f} MB")
    assert served_node.alive()
    assert growth < RSS_GROWTH_LIMIT
    log = served_node.process.log()
    assert "Traceback" not in log
    _assert_every_accepted_association_ended(served_node)


def _assert_every_accepted_association_ended(served_node, timeout: float = 10) -> None:
    """Each association the node accepted also ends in its log (released, aborted or closed), so that none holds
    one of the node's association slots (an abort that bypassed pynetdicom's events once left them held)."""
    deadline = time.monotonic() + timeout
    while True:
        log = served_node.process.log()
        accepted = set(re.findall(r"association (\d+) from .* accepted", log))
        ended = set(re.findall(r"association (\d+) from .* (?:released|aborted|closed): ", log))
        if accepted <= ended or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert accepted and accepted <= ended, f"associations never ended: {sorted(accepted - ended)[:10]}"
