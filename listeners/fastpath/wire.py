"""The DIMSE bytes of every received instance, decoded and encoded directly instead of through pydicom.

pynetdicom decodes each P-DATA-TF PDU into item objects, copies every fragment into a stream, decodes the
C-STORE request's command set as a pydicom data set, and builds the C-STORE response and the Part 10 file
meta header as pydicom data sets, element by element; for a 512x512 image that is most of the receiver's
CPU time per instance. All of them have a fixed shape: PDV items (PS3.8 section 9.3.5), and a handful of
command and file meta elements whose encodings (PS3.5 section 7, PS3.7 sections 9.3.1.1, 9.3.1.2 and
6.3.1, PS3.10 section 7.1) are read and written here. Anything outside that shape (another DIMSE service,
an unexpected element, an error comment, a handler bound to pynetdicom's PDU or DIMSE events) goes
through pynetdicom unchanged. Tests compare the results with pynetdicom's.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from ortho_node.dicom_status import Status

log = logging.getLogger(__name__)

_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_IMPLICIT_ELEMENT = struct.Struct("<HHI")  # group, element, value length
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")  # group, element, VR, reserved, 32-bit length
#: Every PDU's header (PS3.8 9.3.1): PDU type, reserved, PDU length.
PDU_HEADER = struct.Struct(">BBL")
P_DATA_TF = 0x04
_PDV_ITEM = struct.Struct(">LB")  # item length, presentation context ID
_US = struct.Struct("<H")
#: Command elements a C-STORE-RQ may carry (PS3.7 table 9.3-1), with the length each allows (None: any).
_STORE_RQ_ELEMENTS = {0x0000: 4, 0x0002: None, 0x0100: 2, 0x0110: 2, 0x0700: 2, 0x0800: 2, 0x1000: None,
                      0x1030: None, 0x1031: 2}


class ReceivedPData:
    """A P-DATA-TF PDU as received, standing in for pynetdicom's ``P_DATA_TF`` in the DUL's state machine
    (whose actions only call ``to_primitive``). Its PDVs are views of the received buffer, not copies."""

    def __init__(self, pdu: bytearray) -> None:
        """``pdu``: the whole PDU, header included; raises ``ValueError`` if its items do not add up."""
        view, offset, pdvs = memoryview(pdu), PDU_HEADER.size, []
        while offset < len(view):
            if len(view) - offset < _PDV_ITEM.size + 1:
                raise ValueError("truncated presentation data value item")
            length, context_id = _PDV_ITEM.unpack_from(view, offset)
            end = offset + 4 + length
            if length < 2 or end > len(view):  # context ID and message control header at least
                raise ValueError("presentation data value item length out of bounds")
            pdvs.append([context_id, view[offset + 5 : end]])
            offset = end
        if not pdvs:
            raise ValueError("P-DATA-TF PDU without presentation data value items")
        self.pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive._presentation_data_value_list = self.pdvs  # views: the setter accepts only bytes
        return primitive


def store_request(command: bytes) -> C_STORE | None:
    """The C-STORE-RQ primitive of an Implicit VR Little Endian command set, or None when the command set is
    not a C-STORE-RQ with a data set and only its own elements, each once (pynetdicom decodes it then)."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if len(command) - offset < _IMPLICIT_ELEMENT.size:
            return None
        group, element, length = _IMPLICIT_ELEMENT.unpack_from(command, offset)
        offset += _IMPLICIT_ELEMENT.size
        if group != 0x0000 or element not in _STORE_RQ_ELEMENTS or element in values:
            return None
        allowed = _STORE_RQ_ELEMENTS[element]
        if (allowed is not None and length != allowed) or offset + length > len(command):
            return None
        values[element] = command[offset : offset + length]
        offset += length
    numbers = {e: _US.unpack(values[e])[0] for e in (0x0100, 0x0110, 0x0700, 0x0800, 0x1031) if e in values}
    if numbers.get(0x0100) != _C_STORE_RQ or numbers.get(0x0800, _NO_DATA_SET) == _NO_DATA_SET \
            or 0x0110 not in numbers or 0x0002 not in values or 0x1000 not in values:
        return None
    request = C_STORE()
    try:
        request.MessageID = numbers[0x0110]
        request.AffectedSOPClassUID = _text(values[0x0002])
        request.AffectedSOPInstanceUID = _text(values[0x1000])
        if 0x0700 in numbers:
            request.Priority = numbers[0x0700]
        if 0x1030 in values:
            request.MoveOriginatorApplicationEntityTitle = _text(values[0x1030])
        if 0x1031 in numbers:
            request.MoveOriginatorMessageID = numbers[0x1031]
    except (ValueError, TypeError):
        return None  # pynetdicom refuses the same values, with its own log line
    return request


#: Command elements whose value is a UID (PS3.7 section E.1), by the name the standard gives them.
_UID_ELEMENTS = {0x0002: "Affected SOP Class UID", 0x0003: "Requested SOP Class UID",
                 0x1000: "Affected SOP Instance UID", 0x1001: "Requested SOP Instance UID"}
_UID_FORMAT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_AE_TITLE_LENGTH = 16


@dataclass(frozen=True)
class CommandFault:
    """What is wrong with a received command set, without any of its values.

    With a ``message_id`` it is a C-STORE-RQ the node answers with ``status``; without one the request cannot
    be identified and the association is aborted."""

    problem: str
    message_id: int | None = None
    sop_class_uid: str | None = None  # the request's, when it is a valid UID (echoed in the response)
    status: int = Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    context_id: int = 0
    data_set_follows: bool = False


def command_elements(command: bytes) -> dict[int, bytes] | None:
    """Every element of an Implicit VR Little Endian command set by element number (a repeated one: its last
    value), or None when the bytes are not a sequence of group 0000 elements."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if len(command) - offset < _IMPLICIT_ELEMENT.size:
            return None
        group, element, length = _IMPLICIT_ELEMENT.unpack_from(command, offset)
        offset += _IMPLICIT_ELEMENT.size
        if group != 0x0000 or offset + length > len(command):
            return None
        values[element] = command[offset : offset + length]
        offset += length
    return values


def command_fault(command: bytes) -> CommandFault | None:
    """None when the command set can be decoded (here or by pynetdicom), else what is wrong with it: values
    pynetdicom's decoder raises on (a UID over 64 characters) or that no request may carry."""
    elements = command_elements(command)
    if elements is None:
        return CommandFault("command set is not a sequence of command elements")
    command_field, message_id = _number(elements, 0x0100), _number(elements, 0x0110)
    if command_field is None or command_field not in _MESSAGE_TYPES:
        return CommandFault("command set without a known Command Field")
    if message_id is None and _number(elements, 0x0120) is None:
        return CommandFault("command set without a readable Message ID")
    if command_field == _C_STORE_RQ and message_id is not None:
        problem, status = _store_problem(elements)
        if problem is None:
            return None
        data_set_type = _number(elements, 0x0800)
        return CommandFault(problem, message_id, _valid_uid(elements.get(0x0002)), status,
                            data_set_follows=data_set_type != _NO_DATA_SET)
    for element, name in _UID_ELEMENTS.items():
        problem = _uid_problem(elements.get(element), name, len_only=True)
        if problem is not None:
            return CommandFault(f"command 0x{command_field:04X}: {problem}")
    return None


def _number(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return _US.unpack(value)[0] if value is not None and len(value) == 2 else None


def _store_problem(elements: dict[int, bytes]) -> tuple[str | None, int]:
    for element in (0x0002, 0x1000):
        value = elements.get(element)
        if not value or not value.strip(b"\0 "):
            return f"{_UID_ELEMENTS[element]} missing", Status.CANNOT_UNDERSTAND_MISSING_UID
        problem = _uid_problem(value, _UID_ELEMENTS[element])
        if problem is not None:
            return problem, Status.CANNOT_UNDERSTAND_INVALID_UID
    if _number(elements, 0x0800) is None:
        return "Command Data Set Type unreadable", Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    if _number(elements, 0x0800) == _NO_DATA_SET:
        return "C-STORE request without a data set", Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    for element, name in ((0x0700, "Priority"), (0x1031, "Move Originator Message ID")):
        if element in elements and _number(elements, element) is None:
            return f"{name} of {len(elements[element])} bytes", Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    if _number(elements, 0x0700) not in (None, 0, 1, 2):  # medium, high, low (PS3.7 table 9.3-1)
        return "Priority not 0, 1 or 2", Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    originator = elements.get(0x1030)
    if originator is not None and (len(originator.strip(b"\0 ")) > _AE_TITLE_LENGTH or not originator.isascii()):
        return "Move Originator AE Title not a valid AE title", Status.CANNOT_UNDERSTAND_INVALID_COMMAND
    return None, Status.SUCCESS


def _uid_problem(value: bytes | None, name: str, *, len_only: bool = False) -> str | None:
    if value is None:
        return None
    if not value.isascii():
        return f"{name} is not ASCII"
    text = _text(value)
    if len(text) > 64:
        return f"{name} longer than 64 characters ({len(text)})"
    if not len_only and not _UID_FORMAT.fullmatch(text):
        return f"{name} is not a valid UID"
    return None


def _valid_uid(value: bytes | None) -> str | None:
    if value is None or _uid_problem(value, "") is not None:
        return None
    return _text(value) or None


def refused_store_response_command(fault: CommandFault) -> bytes:
    """The command set of the C-STORE-RSP answering a refused request: its status and message ID, and the
    SOP class only when it is a valid UID (a value the peer's decoder might refuse is never echoed)."""
    body = b"".join((
        _implicit(0x0002, _padded(fault.sop_class_uid, b"\0")) if fault.sop_class_uid else b"",
        _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _implicit(0x0120, struct.pack("<H", fault.message_id or 0)),
        _implicit(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _implicit(0x0900, struct.pack("<H", fault.status)),
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def _text(value: bytes) -> str:
    return value.decode("ascii").rstrip("\0 ")


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
    return plain_store_response_command(str(sop_class), str(sop_instance), message_id, status)


#: Length of the longest command set :func:`plain_store_response_command` writes: both UIDs at their 64-character
#: maximum (a request with a longer one is refused before it is served).
LONGEST_STORE_RESPONSE = 196


def plain_store_response_command(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int) -> bytes:
    """The command set of a C-STORE-RSP with only its status, message ID and the two affected UIDs."""
    body = b"".join((
        _implicit(0x0002, _padded(sop_class_uid, b"\0")),
        _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _implicit(0x0120, struct.pack("<H", message_id)),
        _implicit(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _implicit(0x0900, struct.pack("<H", status)),
        _implicit(0x1000, _padded(sop_instance_uid, b"\0")),
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def command_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU carrying ``command`` whole: one PDV, a command's last fragment (PS3.8 9.3.5, E.2)."""
    item = _PDV_ITEM.pack(len(command) + 2, context_id) + b"\x03" + command
    return PDU_HEADER.pack(P_DATA_TF, 0, len(item)) + item


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


class DirectStoreMessages(DIMSEServiceProvider):
    """Receives C-STORE requests through :func:`store_request` and sends plain C-STORE responses from
    :func:`store_response_command`; everything else, and every message while a handler listens to
    ``EVT_DIMSE_RECV`` or ``EVT_DIMSE_SENT``, the way pynetdicom does."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        self._command = bytearray()  # command fragments of the message being received
        self._request: C_STORE | None = None  # a C-STORE-RQ whose data set is being received
        self._fragments: list[Any] = []  # its data set fragments, views of the received PDUs
        self._refusing: CommandFault | None = None  # a refused C-STORE-RQ whose data set is being dropped
        self._aborting = False  # an unreadable message was reported and the association is being aborted

    def receive_primitive(self, primitive: P_DATA) -> None:
        for context_id, pdv in primitive.presentation_data_value_list:
            if self._aborting:  # an unreadable message ends the association: nothing after it is read
                return
            if self.message is not None:  # pynetdicom is decoding this message
                super().receive_primitive(_p_data(context_id, pdv))
            elif self._request is not None:
                self._receive_data(self._request, pdv)
            elif self._refusing is not None and not pdv[0] & 1:
                self._discard_data(self._refusing, pdv)
            elif pdv[0] & 1:
                if self._refusing is not None:  # a new command: the refused request brought no data set
                    self._answer_refused()
                self._receive_command(context_id, pdv)
            else:  # pynetdicom's decoder raises on a data set with no command before it
                self._abort_unreadable(CommandFault("data set fragment with no command before it"))

    def _receive_command(self, context_id: int, pdv: Any) -> None:
        self._command += pdv[1:]
        if not pdv[0] & 2:
            return  # more command fragments follow
        command, self._command = bytes(self._command), bytearray()
        fault = command_fault(command)
        if fault is not None:
            fault = replace(fault, context_id=context_id)
            if fault.message_id is None:
                self._abort_unreadable(fault)
            elif fault.data_set_follows:
                self._refusing = fault
            else:
                self.msg_queue.put((context_id, fault))
            return
        request = None if self._dimse_recv_observed() else store_request(command)
        if request is None:
            super().receive_primitive(_p_data(context_id, b"\x03" + command))
            return
        request._context_id = context_id
        self._request = request

    def _receive_data(self, request: C_STORE, pdv: Any) -> None:
        if pdv[0] & 1:
            self._request, self._fragments = None, []
            self._abort_unreadable(CommandFault("command fragment received inside a C-STORE data set"))
            return
        self._fragments.append(pdv[1:])
        if not pdv[0] & 2:
            return  # more data set fragments follow
        self._request = None
        data = b"".join(self._fragments)
        self._fragments = []
        if self.assoc.store_directly(request, data):
            return
        request.DataSet = BytesIO(data)
        self.msg_queue.put((request._context_id, request))

    def _discard_data(self, fault: CommandFault, pdv: Any) -> None:
        """The data set of a refused request is read and dropped; the answer follows its last fragment."""
        if pdv[0] & 2:
            self._answer_refused()

    def _answer_refused(self) -> None:
        fault, self._refusing = self._refusing, None
        if fault is not None:
            self.msg_queue.put((fault.context_id, fault))

    def _abort_unreadable(self, fault: CommandFault) -> None:
        """A message no request can be read from: reported (one log line, an audit event), then aborted
        (Evt19: an A-ABORT PDU, as pynetdicom answers an invalid DIMSE message)."""
        self._command, self._refusing, self._aborting = bytearray(), None, True
        report = getattr(self.assoc, "report_unreadable", None)
        if report is not None:
            report(fault.problem)
        else:
            log.warning("unreadable DIMSE message (%s); association aborted", fault.problem)
        self.dul.event_queue.put("Evt19")

    def _dimse_recv_observed(self) -> bool:
        return bool(self.assoc.get_handlers(evt.EVT_DIMSE_RECV)) or _config.STORE_RECV_CHUNKED_DATASET

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_response_command(primitive)
        if command is None or self._dimse_sent_observed() or len(command) + 7 > self.pdv_room():
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
        self.dul.send_pdu(pdata)

    def _dimse_sent_observed(self) -> bool:
        return bool(self.assoc.get_handlers(evt.EVT_DIMSE_SENT))

    def pdv_room(self) -> int:
        """Bytes one P-DATA-TF PDU to the peer holds after its header (the peer's maximum PDU length)."""
        limit = self.maximum_pdu_size
        return limit - 6 if limit else 1 << 31


def _p_data(context_id: int, pdv: Any) -> P_DATA:
    primitive = P_DATA()
    primitive._presentation_data_value_list = [[context_id, pdv]]
    return primitive
