"""Malformed C-STORE requests, one association each, against a served node: every request whose Message ID
can be read gets a status, every other message an A-ABORT; one log line each, no traceback, an audit event,
nothing written outside the data folder, the node stays up (issue 23's malformed-dataset finding)."""

from __future__ import annotations

import struct
import subprocess

import pytest
from pydicom import Dataset

from tests.conftest import dcmtk
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mr_dataset, write
from tests.reliability.raw_client import RawStoreClient, element, encode_dataset, p_data, padded, store_command

LONG_UID = "1.2.826.0.1.3680043.8.498." + "1" * 60  # 86 characters
A900, C210, C212, C220, C221 = 0xA900, 0xC210, 0xC212, 0xC220, 0xC221


def _request(ds: Dataset, *, command_uid: str | None = None, **command) -> tuple[bytes, bytes]:
    return store_command(command_uid or ds.SOPInstanceUID, **command), encode_dataset(ds)


def _with(**values) -> Dataset:
    ds = mr_dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _deep_sequence(depth: int) -> bytes:
    """A knee instance with Referenced Series Sequences nested ``depth`` deep (undefined lengths, built by
    hand: pydicom's writer re-encodes every level), before the header elements the node reads."""
    data = encode_dataset(mr_dataset())
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    at = data.index(struct.pack("<HH", 0x0010, 0x0010))
    return data[:at] + opening * depth + closing * depth + data[at:]


def _patched(data: bytes, tag: tuple[int, int], new: bytes) -> bytes:
    """``data`` with the Explicit VR header of element ``tag`` replaced (VR and 16-bit length)."""
    marker = struct.pack("<HH", *tag)
    at = data.index(marker)
    return data[:at + 4] + new + data[at + 8:]


def _cases() -> dict[str, tuple[tuple[bytes, bytes], set[int]]]:
    ds = mr_dataset()
    data = encode_dataset(ds)
    pixel_at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    bad_priority = element(0x0700, struct.pack("<I", 2))
    return {
        # The command set (PS3.7 9.3.1.1): values pynetdicom's decoder raises on, or no request may carry.
        "command-uid-over-64": (_request(_with(SOPInstanceUID=LONG_UID)), {C221}),
        "command-sop-class-over-64": (_request(ds, sop_class_uid=LONG_UID), {C221}),
        "command-sop-class-unknown": (_request(ds, sop_class_uid="1.2.3.4"), {0x0122}),
        "command-uid-traversal": (_request(ds, command_uid="../../x"), {C221}),
        "command-uid-not-ascii": (_request(ds, command_uid="1.2.\xe9"), {C221}),
        "command-uid-missing": (_request(ds, command_uid=" "), {C220}),
        "command-priority-4-bytes": ((store_command(ds.SOPInstanceUID).replace(
            element(0x0700, struct.pack("<H", 0)), bad_priority), data), {C212}),
        "command-priority-256": ((store_command(ds.SOPInstanceUID).replace(
            element(0x0700, struct.pack("<H", 0)), element(0x0700, struct.pack("<H", 256))), data), {C212}),
        # The data set.
        "corrupted-bytes": ((store_command(ds.SOPInstanceUID), data[:8] + b"\xff\xfe" * 40 + data[88:]),
                            {C210, C220, C221}),
        "wrong-vr": ((store_command(ds.SOPInstanceUID), _patched(data, (0x0020, 0x000D), b"US\x02\x00")),
                     {C210, C220, C221}),
        "bad-length": ((store_command(ds.SOPInstanceUID), _patched(data, (0x0020, 0x000D), b"UI\xf0\xff")),
                       {C210, C220, C221}),
        # Pixel Data cut inside its value: the element runs past the end of the data set.
        "truncated-pixels": ((store_command(ds.SOPInstanceUID), data[:pixel_at + 12 + 100]), {C210}),
        # Well formed, but half the bytes 64 x 64 x 1 sample x 16 bits need.
        "pixels-shorter-than-the-image": (_request(_with(PixelData=ds.PixelData[:4096])), {A900}),
        "dataset-uid-traversal": (_request(_with(StudyInstanceUID="../../x")), {C221}),
        "dataset-series-uid-over-64": (_request(_with(SeriesInstanceUID=LONG_UID)), {C221}),
        "dataset-sop-uid-over-64": (_request(_with(SOPInstanceUID=LONG_UID), command_uid="1.2.3.4"), {C221, A900}),
        "sequence-300-deep": ((store_command(ds.SOPInstanceUID), _deep_sequence(300)), {0x0000, C210}),
        "empty-body": ((store_command(ds.SOPInstanceUID), b""), {C210, C220}),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_gets_a_status(served_node, case):
    (command, data), expected = CASES[case]
    with RawStoreClient(served_node.port) as client:
        answer = client.store(command, data)
        assert answer.status in expected, answer
        assert answer.message_id == 7
        # The association goes on: a valid instance after the malformed one is stored.
        ds = mr_dataset()
        assert client.store(store_command(ds.SOPInstanceUID, message_id=8), encode_dataset(ds)).status == 0


UNREADABLE = {
    "garbage-command": p_data((0x03, b"\x01\x02\x03")),
    "command-without-message-id": p_data((0x03, element(0x0000, struct.pack("<I", 10))
                                          + element(0x0100, struct.pack("<H", 1)))),
    "unknown-command-field": p_data((0x03, element(0x0100, struct.pack("<H", 0x0777))
                                     + element(0x0110, struct.pack("<H", 1)))),
    "data-without-command": p_data((0x02, b"\x08\x00\x16\x00UI\x04\x001.2\x00")),
    "garbage-then-data-in-one-pdu": p_data((0x03, b"\x01\x02\x03"), (0x02, b"\x08\x00")),
    "echo-uid-over-64": p_data((0x03, element(0x0002, padded(LONG_UID)) + element(0x0100, struct.pack("<H", 0x30))
                                + element(0x0110, struct.pack("<H", 1)) + element(0x0800, struct.pack("<H", 0x0101)))),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_message_aborts_the_association(served_node, case):
    before = len(served_node.audit("malformed_connection"))
    with RawStoreClient(served_node.port) as client:
        client.send_raw(UNREADABLE[case])
        answer = client.answer()
    assert answer.aborted and answer.status is None
    events = served_node.audit("malformed_connection")
    assert len(events) == before + 1 and "unreadable DIMSE message" in events[-1].message


def test_node_survives_with_one_line_each_and_nothing_outside_its_folder(served_node):
    """Runs after the matrix on the same node (module order)."""
    assert served_node.alive()
    log = served_node.process.log()
    assert "Traceback" not in log
    for identifier in (PATIENT_NAME, PATIENT_ID):
        assert identifier not in log
    refused = [line for line in log.splitlines() if "malformed request" in line]
    assert len(refused) == len([case for case in CASES if case.startswith("command-")])  # one line each
    assert len([line for line in log.splitlines() if "unreadable DIMSE message" in line]) == len(UNREADABLE)
    assert len(served_node.audit("instance_rejected")) >= len(refused)
    folder = served_node.data_dir.parent
    strays = [p for p in folder.rglob("*") if p.is_file() and not p.is_relative_to(served_node.data_dir)
              and not p.name.startswith("node-")]
    assert not strays
    escaped = [p for p in folder.parent.rglob("x") if p.is_file()]
    assert not escaped


def test_truncated_pixel_data_from_storescu_is_refused_audited_and_never_stored(served_node, tmp_path):
    """A file whose Pixel Data is shorter than Rows x Columns x Samples per Pixel x Bits Allocated / 8 x Number of
    Frames, sent by dcmtk storescu with a good one: 0xA900, one log line, an instance_rejected event, no file;
    the good one is stored."""
    short = mr_dataset(rows=128, columns=128, seed=5)
    short.PixelData = short.PixelData[: 128 * 64 * 2]  # half the rows
    good = mr_dataset(rows=128, columns=128, seed=6)
    folder = tmp_path / "send"
    write(short, folder / "1-short.dcm")
    write(good, folder / "2-good.dcm")
    before = len(served_node.audit("instance_rejected"))
    result = subprocess.run([dcmtk("storescu"), "-v", "-aet", "SHORTPIX", "-aec", "ORTHODIFF", "127.0.0.1",
                             str(served_node.port), "+sd", str(folder)], capture_output=True, text=True, timeout=60)
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass)" in result.stderr, result.stderr
    assert "Received Store Response (Success)" in result.stderr
    events = served_node.audit("instance_rejected")[before:]
    assert [e.sop_instance_uid for e in events] == [short.SOPInstanceUID]
    assert events[0].details["status"] == A900 and "need 32768" in events[0].message
    log = [line for line in served_node.process.log().splitlines() if "SHORTPIX" in line and "refused" in line]
    assert len(log) == 1 and "0xA900 (Pixel Data holds 16384 bytes" in log[0]
    stored = {path.stem for path in served_node.data_dir.rglob("*.dcm")}
    assert short.SOPInstanceUID not in stored and good.SOPInstanceUID in stored
