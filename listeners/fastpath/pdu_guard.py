"""A socket wrapper that enforces PDU length limits before pynetdicom buffers a PDU.

pynetdicom reads a PDU's declared length and then keeps receiving until that many bytes arrived, so a
peer announcing a 4 GiB PDU could make the node buffer without bound. This wrapper follows the PDU
framing (type byte, reserved byte, 32-bit big-endian length) of everything received and closes the
connection as soon as a header announces more than its limit.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
_HEADER = 6
_SMALL_PDU_LIMIT = 64 * 1024  # release/abort/associate-ac/rj PDUs are tens of bytes
_ASSOCIATE_RQ_LIMIT = 1024 * 1024  # many presentation contexts and user identity fit easily


class PduTooLarge(ConnectionAbortedError):
    """The peer announced a PDU above the limit; the connection is closed."""


class PduGuardSocket:
    """Delegates to the wrapped socket; ``recv`` and ``recv_into`` check each PDU header that passes through."""

    def __init__(self, sock: Any, *, max_pdata_length: int, peer: str) -> None:
        self._sock = sock
        self._max_pdata = max_pdata_length
        self._peer = peer
        self._header = bytearray()
        self._body_left = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, bufsize: int, *args: Any) -> bytes:
        data = self._sock.recv(bufsize, *args)
        self._follow(memoryview(data))
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, *args: Any) -> int:
        received = self._sock.recv_into(buffer, nbytes, *args)
        self._follow(memoryview(buffer)[:received])
        return received

    def _follow(self, data: memoryview) -> None:
        while data:
            if self._body_left:
                step = min(self._body_left, len(data))
                self._body_left -= step
                data = data[step:]
                continue
            step = min(_HEADER - len(self._header), len(data))
            self._header += data[:step]
            data = data[step:]
            if len(self._header) == _HEADER:
                pdu_type, _, length = struct.unpack(">BBL", self._header)
                self._header.clear()
                self._check(pdu_type, length)
                self._body_left = length

    def _check(self, pdu_type: int, length: int) -> None:
        if pdu_type == P_DATA_TF:
            limit = self._max_pdata
        elif pdu_type == A_ASSOCIATE_RQ:
            limit = _ASSOCIATE_RQ_LIMIT
        else:
            limit = _SMALL_PDU_LIMIT
        if length > limit:
            log.warning("peer %s announced a PDU of type 0x%02X with %d bytes (limit %d); connection closed",
                        self._peer, pdu_type, length, limit)
            raise PduTooLarge(f"PDU of {length} bytes exceeds the limit of {limit}")
