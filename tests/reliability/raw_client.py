"""A test SCU that sends hand-built DIMSE bytes: C-STORE command sets and data sets no real SCU would send.

pynetdicom negotiates the association and decodes the node's answers; the request itself goes onto the
socket as P-DATA-TF PDUs built here (PS3.8 section 9.3.5), so a command set may carry values that
pynetdicom's encoders refuse (a UID of 80 characters, a wrong length).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

CONTEXT_ID = 1  # the first (only) presentation context requested


def element(tag_element: int, value: bytes, *, group: int = 0x0000) -> bytes:
    """An Implicit VR Little Endian element (the encoding of every command set)."""
    return struct.pack("<HHI", group, tag_element, len(value)) + value


def padded(text: str, pad: bytes = b"\0") -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def store_command(sop_instance_uid: str, *, message_id: int = 7, sop_class_uid: str = MRImageStorage,
                  extra: bytes = b"") -> bytes:
    """A C-STORE-RQ command set with the given values, whatever they are, and its group length."""
    body = b"".join((
        element(0x0002, padded(sop_class_uid)),
        element(0x0100, struct.pack("<H", 0x0001)),
        element(0x0110, struct.pack("<H", message_id)),
        element(0x0700, struct.pack("<H", 0)),
        element(0x0800, struct.pack("<H", 0x0000)),
        element(0x1000, padded(sop_instance_uid)),
    )) + extra
    return element(0x0000, struct.pack("<I", len(body))) + body


def p_data(*fragments: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (message control header, bytes) fragments on the requested context."""
    items = b"".join(struct.pack(">LBB", len(data) + 2, CONTEXT_ID, control) + data for control, data in fragments)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def encode_dataset(ds: Dataset) -> bytes:
    """The data set as an SCU sends it: Explicit VR Little Endian, no file meta."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


@dataclass
class Answer:
    status: int | None  # None: no C-STORE response arrived
    aborted: bool
    message_id: int | None = None


class RawStoreClient:
    """One association to the node; ``send`` puts raw bytes on it and waits for the answer."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", called_ae: str = "ORTHODIFF",
                 calling_ae: str = "FUZZER", timeout: float = 10.0) -> None:
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        self.timeout = timeout
        self.assoc = ae.associate(host, port, ae_title=called_ae)
        if not self.assoc.is_established:
            raise ConnectionError(f"association with 127.0.0.1:{port} not established")
        # Hold the requestor's reactor, as pynetdicom's own send_c_store does, so that it leaves the
        # node's responses to us instead of discarding them as unexpected.
        self.assoc._reactor_checkpoint.clear()
        while not self.assoc._is_paused and self.assoc.is_established:
            time.sleep(0.0001)

    def send_raw(self, pdu: bytes) -> None:
        self.assoc.dul.socket.send(pdu)

    def store(self, command: bytes, data_set: bytes, *, max_fragment: int = 16_000) -> Answer:
        """Send a command set and a data set (split into fragments; empty: one empty last fragment)."""
        pdus = [p_data((0x03, command))]
        chunks = [data_set[i:i + max_fragment] for i in range(0, len(data_set), max_fragment)] or [b""]
        for index, chunk in enumerate(chunks):
            pdus.append(p_data((0x02 if index == len(chunks) - 1 else 0x00, chunk)))
        for pdu in pdus:
            if not self.assoc.is_established:
                break
            self.send_raw(pdu)
        return self.answer()

    def answer(self) -> Answer:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            _, message = self.assoc.dimse.get_msg(block=False)
            if isinstance(message, C_STORE) and message.Status is not None:
                return Answer(int(message.Status), False, message.MessageIDBeingRespondedTo)
            if self.assoc.acse.is_aborted() or not self.assoc.dul.is_alive() or not self.assoc.is_established:
                return Answer(None, True)
            time.sleep(0.005)
        return Answer(None, False)

    def close(self) -> None:
        self.assoc._reactor_checkpoint.set()
        if self.assoc.is_established:
            self.assoc.release()

    def __enter__(self) -> RawStoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
