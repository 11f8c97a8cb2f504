"""Fuzzing the receive path: a valid knee MR instance's command set and data set, mutated by hypothesis (bit
flips, truncation, length fields, spliced bytes), sent to a served node over loopback.

Every request whose command set still reads as a C-STORE-RQ with a Message ID gets a status for that
Message ID; anything else gets a status or an A-ABORT; the node stays up, logs no traceback and writes
nothing outside its data folder. ``ORTHO_FUZZ_EXAMPLES`` sets how many inputs (300 in CI, under a minute).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listeners.fastpath.wire import command_elements
from tests.dicom_factory import mr_dataset
from tests.reliability.raw_client import RawStoreClient, encode_dataset, store_command

EXAMPLES = int(os.environ.get("ORTHO_FUZZ_EXAMPLES", "300"))
_KNEE = mr_dataset(rows=64, columns=64, seed=23)
COMMAND = store_command(_KNEE.SOPInstanceUID)
DATA = encode_dataset(_KNEE)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_LENGTHS = [0, 1, 2, 3, 63, 64, 65, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]


def _command_length_fields(command: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each Implicit VR element length."""
    fields, offset = [], 0
    while offset + 8 <= len(command):
        fields.append((offset + 4, 4))
        offset += 8 + struct.unpack_from("<I", command, offset + 4)[0]
    return fields


def _data_length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each top-level Explicit VR Little Endian element length."""
    fields, offset = [], 0
    while offset + 8 <= len(data):
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            fields.append((offset + 8, 4))
            offset += 12 + struct.unpack_from("<I", data, offset + 8)[0]
        else:
            fields.append((offset + 6, 2))
            offset += 8 + struct.unpack_from("<H", data, offset + 6)[0]
    return fields


FIELDS = {"command": _command_length_fields(COMMAND), "data": _data_length_fields(DATA)}


@st.composite
def mutated_requests(draw) -> tuple[bytes, bytes]:
    target = draw(st.sampled_from(["command", "data", "data"]))
    buffer = bytearray(COMMAND if target == "command" else DATA)
    kind = draw(st.sampled_from(["flip", "truncate", "length", "splice"]))
    if kind == "flip":
        for position in draw(st.lists(st.integers(0, len(buffer) - 1), min_size=1, max_size=8)):
            buffer[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del buffer[draw(st.integers(0, len(buffer) - 1)):]
    elif kind == "length":
        offset, size = draw(st.sampled_from(FIELDS[target]))
        value = draw(st.sampled_from(_LENGTHS) | st.integers(0, 2 ** (8 * size) - 1)) % 2 ** (8 * size)
        buffer[offset : offset + size] = value.to_bytes(size, "little")
    else:
        position = draw(st.integers(0, len(buffer)))
        buffer[position:position] = draw(st.binary(min_size=1, max_size=64))
    if target == "command":
        return bytes(buffer), DATA
    return COMMAND, bytes(buffer)


def _identified_store(command: bytes) -> int | None:
    """The Message ID of a command set that still reads as a C-STORE-RQ (it must be answered), else None."""
    elements = command_elements(command)
    if elements is None or elements.get(0x0100) != b"\x01\x00" or len(elements.get(0x0110, b"")) != 2:
        return None
    return struct.unpack("<H", elements[0x0110])[0]


class _Connection:
    """One association, reopened whenever the node aborted it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: RawStoreClient | None = None

    def get(self, timeout: float) -> RawStoreClient:
        if self.client is None or not self.client.assoc.is_established or self.client.assoc.acse.is_aborted():
            self.drop()
            self.client = RawStoreClient(self.port, timeout=10)
        self.client.timeout = timeout
        return self.client

    def drop(self) -> None:
        if self.client is not None and self.client.assoc.is_established:
            self.client.assoc.abort()
        self.client = None


@pytest.mark.parametrize("served_node", [1], indirect=True, ids=["workers1"])
def test_mutated_instances_are_answered_and_the_node_stays_up(served_node):
    connection = _Connection(served_node.port)
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_requests())
    def send(request: tuple[bytes, bytes]) -> None:
        command, data = request
        message_id = _identified_store(command)
        client = connection.get(timeout=10 if message_id is not None else 2)
        answer = client.store(command, data)
        if message_id is not None:
            assert answer.status is not None, f"no status for message {message_id}: {answer}"
            assert answer.message_id == message_id
        key = f"0x{answer.status:04X}" if answer.status is not None else ("abort" if answer.aborted else "none")
        outcomes[key] = outcomes.get(key, 0) + 1
        if answer.status is None:
            connection.drop()  # aborted, or a message the node ignores (a response sent to it)

    try:
        send()
    finally:
        connection.drop()
    print("fuzz outcomes:", dict(sorted(outcomes.items())))
    assert served_node.alive()
    log = served_node.process.log()
    assert "Traceback" not in log
    folder = served_node.data_dir.parent
    assert not [p for p in folder.rglob("*") if p.is_file() and not p.is_relative_to(served_node.data_dir)
                and not p.name.startswith("node-")]
