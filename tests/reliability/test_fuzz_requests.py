"""Fuzzing the receive path: a valid knee MR instance's command set and data set, and a real scanner's slice
(``tests/data/ge_knee_slice``), mutated by hypothesis (bit flips, truncation, length fields, spliced bytes), sent
to a served node over loopback.

Every request whose command set still reads as a C-STORE-RQ with a Message ID gets a status for that
Message ID; anything else gets a status or an A-ABORT; the node stays up, logs no traceback, writes
nothing outside its data folder and grows by less than 50 MB. ``ORTHO_FUZZ_EXAMPLES`` sets how many inputs (300
in CI, under a minute).
"""

from __future__ import annotations

import os
import struct

import pytest
from pydicom import dcmread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listeners.fastpath.wire import command_elements
from tests.conftest import REPO
from tests.dicom_factory import mr_dataset
from tests.reliability.mutations import RSS_GROWTH_LIMIT, mutate
from tests.reliability.raw_client import RawStoreClient, encode_dataset, store_command

EXAMPLES = int(os.environ.get("ORTHO_FUZZ_EXAMPLES", "300"))
_KNEE = mr_dataset(rows=64, columns=64, seed=23)
COMMAND = store_command(_KNEE.SOPInstanceUID)
DATA = encode_dataset(_KNEE)
# A GE scanner's slice, re-encoded in the negotiated Explicit VR Little Endian with every element it had.
_REAL = dcmread(REPO / "tests" / "data" / "ge_knee_slice" / "E3655S8I001.MR.dcm")
REAL_COMMAND = store_command(_REAL.SOPInstanceUID)
REAL_DATA = encode_dataset(_REAL)
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


FIELDS = {"command": _command_length_fields(COMMAND), "data": _data_length_fields(DATA),
          "real": _data_length_fields(REAL_DATA)}


@st.composite
def mutated_requests(draw) -> tuple[bytes, bytes]:
    target = draw(st.sampled_from(["command", "data", "data", "real"]))
    seed = {"command": COMMAND, "data": DATA, "real": REAL_DATA}[target]
    mutated = mutate(draw, seed, FIELDS[target], _LENGTHS, "little")
    if target == "command":
        return mutated, DATA
    return (REAL_COMMAND if target == "real" else COMMAND), mutated


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
    for command, data in ((COMMAND, DATA), (REAL_COMMAND, REAL_DATA)):  # both seeds are stored as they are
        assert connection.get(timeout=10).store(command, data).status == 0
    rss_before = served_node.rss()

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
    growth = served_node.rss() - rss_before
    print("fuzz outcomes:", dict(sorted(outcomes.items())), f"RSS growth {growth / 1e6:.1f} MB")
    assert served_node.alive()
    assert growth < RSS_GROWTH_LIMIT
    log = served_node.process.log()
    assert "Traceback" not in log
    folder = served_node.data_dir.parent
    assert not [p for p in folder.rglob("*") if p.is_file() and not p.is_relative_to(served_node.data_dir)
                and not p.name.startswith("node-")]
