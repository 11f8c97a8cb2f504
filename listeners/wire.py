"""The two byte strings built for every received instance, encoded directly instead of through pydicom.

pynetdicom builds the C-STORE response and the Part 10 file meta header as pydicom data sets and encodes
them element by element; for a 512x512 image that is about a third of the receiver's CPU time per
instance. Both have a fixed shape: a handful of elements whose encodings (PS3.5 section 7, PS3.7
section 9.3.1.2 and section 6.3.1, PS3.10 section 7.1) are written here. Anything outside that shape
(an error comment, an offending element) goes through pynetdicom unchanged. Tests compare the bytes with
pynetdicom's for every status the node returns.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_IMPLICIT_ELEMENT = struct.Struct("<HHI")  # group, element, value length
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")  # group, element, VR, reserved, 32-bit length


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _implicit(element: int, value: bytes) -> bytes:
    return _IMPLICIT_ELEMENT.pack(0x0000, element, len(value)) + value


def store_response_command(rsp: Any) -> bytes | None:
    """The Implicit VR Little Endian command set of a C-STORE-RSP, or None when it is not the plain
    shape (status, message ID and the two affected UIDs) this encoder covers."""
    if type(rsp) is not C_STORE or rsp.ErrorComment is not None or rsp.OffendingElement is not None:
        return None
    sop_class, sop_instance = rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID
    message_id, status = rsp.MessageIDBeingRespondedTo, rsp.Status
    if not sop_class or not sop_instance or message_id is None or status is None:
        return None
    body = b"".join((
        _implicit(0x0002, _padded(str(sop_class), b"\0")),
        _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _implicit(0x0120, struct.pack("<H", message_id)),
        _implicit(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _implicit(0x0900, struct.pack("<H", status)),
        _implicit(0x1000, _padded(str(sop_instance), b"\0")),
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group as pynetdicom's ``Event.file_meta`` describes it."""
    elements = b"".join((
        _EXPLICIT_LONG.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
        _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\0")),
        _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\0")),
        _explicit(0x0010, b"UI", _padded(transfer_syntax_uid, b"\0")),
        _explicit(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\0")),
        _explicit(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    group_length = _explicit(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\0" * 128 + b"DICM" + group_length + elements


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


class DirectStoreResponses(DIMSEServiceProvider):
    """Sends plain C-STORE responses from :func:`store_response_command`; everything else, and every
    message while a handler listens to ``EVT_DIMSE_SENT``, the way pynetdicom does."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_response_command(primitive)
        if command is None or self._dimse_sent_observed() or len(command) + 7 > self._pdv_room():
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
        self.dul.send_pdu(pdata)

    def _dimse_sent_observed(self) -> bool:
        return bool(self.assoc.get_handlers(evt.EVT_DIMSE_SENT))

    def _pdv_room(self) -> int:
        limit = self.maximum_pdu_size
        return limit - 6 if limit else 1 << 31
