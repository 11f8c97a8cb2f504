"""multipart/related request bodies (RFC 2387) as STOW-RS sends them (PS3.18 8.6.1.2): the media type and its
parameters, the body spooled to a file as it arrives, and its parts found in that file.

The body is never held in memory whole: it is written to ``<data>/tmp`` while it arrives (a ``.part`` file, so a
crash's leftover is removed at start-up with the other partial writes), and its parts are located in a memory map
of that file; each instance is read into memory on its own, when intake takes it.
"""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DICOM_MEDIA_TYPE = "application/dicom"
_HEADER_LIMIT = 8192
_BOUNDARY_LIMIT = 256  # bytes of a part's header block; a longer one is not a STOW-RS part


class UnsupportedMediaType(ValueError):
    """The request is not multipart/related with application/dicom parts: HTTP 415."""


class MalformedBody(ValueError):
    """The body is not the multipart/related its Content-Type announces: HTTP 400."""


class BodyTooLarge(ValueError):
    """The body is over the configured limit: HTTP 413."""


@dataclass(frozen=True)
class RelatedType:
    """The parameters of a ``multipart/related`` Content-Type that STOW-RS uses."""

    boundary: bytes
    root_type: str | None  # the ``type`` parameter; PS3.18 requires it, some senders leave it out


def parse_content_type(header: str | None) -> RelatedType:
    """``multipart/related; type="application/dicom"; boundary=...``; raises :class:`UnsupportedMediaType` for
    another media type (or another root type: DICOM JSON metadata with bulk data is not accepted) and
    :class:`MalformedBody` for one without a boundary."""
    media_type, params = _split_parameters(header or "")
    if media_type != "multipart/related":
        raise UnsupportedMediaType(f"expected multipart/related; type=\"{DICOM_MEDIA_TYPE}\", got "
                                   f"{media_type or 'no Content-Type'}")
    root_type = params.get("type", "").lower() or None
    if root_type is not None and root_type != DICOM_MEDIA_TYPE:
        raise UnsupportedMediaType(f"only type=\"{DICOM_MEDIA_TYPE}\" parts are accepted, got type=\"{root_type}\"")
    boundary = params.get("boundary", "")
    # RFC 2046 5.1.1 allows 70 characters; Orthanc sends 73 (two UUIDs): a receiver takes what senders send.
    if not 0 < len(boundary) <= _BOUNDARY_LIMIT:
        raise MalformedBody("the multipart/related Content-Type has no valid boundary parameter")
    return RelatedType(boundary.encode("latin-1"), root_type)


def _split_parameters(header: str) -> tuple[str, dict[str, str]]:
    """A Content-Type's media type (lower case) and parameters; quoted values may hold ';'."""
    media_type, _, rest = header.partition(";")
    params: dict[str, str] = {}
    while rest:
        name, _, rest = rest.partition("=")
        rest = rest.lstrip()
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
            rest = rest.partition(";")[2]
        else:
            value, _, rest = rest.partition(";")
        params[name.strip().lower()] = value.strip()
    return media_type.strip().lower(), params


class SpooledBody:
    """A request body written to a file under ``folder`` as it arrives, refused once over ``limit`` bytes."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.path = folder / f"stow-{uuid.uuid4().hex}.part"
        self.limit = limit
        self.size = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise BodyTooLarge(f"request body over {self.limit} bytes")
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names in lower case) and where its content lies in the body."""

    headers: dict[str, str]
    offset: int
    length: int

    @property
    def content_type(self) -> str:
        return _split_parameters(self.headers.get("content-type", ""))[0]


class BodyParts:
    """The parts of a spooled multipart/related body, read from a memory map of its file."""

    def __init__(self, path: Path, related: RelatedType) -> None:
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            self._file.close()
            raise MalformedBody("the request body is empty")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._delimiter = b"--" + related.boundary

    def __enter__(self) -> BodyParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self._map.close()
        self._file.close()

    def content(self, part: Part) -> bytes:
        return self._map[part.offset:part.offset + part.length]

    def parts(self) -> list[Part]:
        """Every part, in order; raises :class:`MalformedBody` when the first delimiter or the closing one is
        missing, or a part's headers cannot be read. All parts are located before any is stored, so a truncated
        body stores nothing."""
        return list(self._iter_parts())

    def _iter_parts(self) -> Iterator[Part]:
        body, delimiter = self._map, self._delimiter
        if body[:len(delimiter)] == delimiter:  # no preamble (RFC 2046 5.1.1): the body opens with the delimiter
            at = len(delimiter)
        else:
            found = body.find(b"\r\n" + delimiter)
            if found < 0:
                raise MalformedBody("the body does not contain the boundary of its Content-Type")
            at = found + 2 + len(delimiter)
        while True:
            if body[at:at + 2] == b"--":
                return  # the closing delimiter
            line_end = body.find(b"\r\n", at)
            if line_end < 0 or body[at:line_end].strip(b" \t"):
                raise MalformedBody("a boundary line is not followed by a line break")
            start = line_end + 2
            end = body.find(b"\r\n" + delimiter, start)
            if end < 0:
                raise MalformedBody("the closing boundary is missing: the body is cut short")
            yield self._part(start, end)
            at = end + 2 + len(delimiter)

    def _part(self, start: int, end: int) -> Part:
        if self._map[start:start + 2] == b"\r\n":  # no header fields
            return Part({}, start + 2, end - start - 2)
        split = self._map.find(b"\r\n\r\n", start, min(end, start + _HEADER_LIMIT))
        if split < 0:
            raise MalformedBody("a part's header fields are not ended by an empty line")
        headers: dict[str, str] = {}
        for line in self._map[start:split].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise MalformedBody("a part's header line has no ':'")
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        return Part(headers, split + 4, end - split - 4)
