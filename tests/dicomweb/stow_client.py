"""Building STOW-RS requests by hand for the tests: multipart/related bodies of PS3.10 files (PS3.18 8.6.1.2)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence

from pydicom import Dataset

BOUNDARY = "ortho-test-boundary"


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(payloads: Sequence[bytes], *, boundary: str | None = None,
              part_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request carrying ``payloads``, one part each."""
    boundary = boundary or f"{BOUNDARY}-{uuid.uuid4().hex}"
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + payload + b"\r\n"
                    for payload in payloads)
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'
