"""STOW-RS sender (PS3.18 10.5) for DICOMweb destinations: a batch of result files POSTed as one multipart/related
request to ``<url>/studies``, and each file's outcome read from the Store Instances Response.

What the HTTP answer means for each object (``delivery.outcomes`` turns it into delivered, transient, permanent):
200: every instance stored. 202 and 409: per instance, from the Referenced SOP Sequence (stored; a Warning Reason
is the C-STORE warning it stands for) and the Failed SOP Sequence (its Failure Reason, a C-STORE status: A7xx is
retried, others are not); an instance named in neither got no answer and is retried. 408, 429, 5xx, a timeout
or no connection: every instance retried (after Retry-After when the peer gives one). Any other 4xx: permanent.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ortho_node.config import DestinationSettings
from ortho_node.delivery.scu import Failure, Item, SendResult, read_item
from ortho_node.dicom_status import describe

log = logging.getLogger(__name__)

_REFERENCED_SOP_SEQUENCE, _FAILED_SOP_SEQUENCE = "00081199", "00081198"
_REFERENCED_SOP_INSTANCE_UID, _FAILURE_REASON, _WARNING_REASON = "00081155", "00081197", "00081196"
_RETRIED_HTTP = frozenset({408, 429})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb destination as the sender needs it: where, how to sign in, whom to trust."""

    url: str  # <base>/studies
    headers: dict[str, str]
    auth: tuple[str, str] | None
    verify: ssl.SSLContext | bool

    @classmethod
    def of(cls, dest: DestinationSettings) -> StowTarget:
        headers = {"Authorization": f"Bearer {dest.bearer_token}"} if dest.bearer_token else {}
        auth = (dest.username, dest.password) if dest.username else None
        return cls(dest.url.rstrip("/") + "/studies", headers, auth, _tls_context(dest))


def _tls_context(dest: DestinationSettings) -> ssl.SSLContext | bool:
    """For an https:// url: TLS 1.2 or newer, the destination's CA bundle (or the system's), its client
    certificate when configured."""
    if not dest.url.startswith("https:"):
        return True  # unused for plain http
    context = ssl.create_default_context(cafile=dest.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.client_certificate:
        context.load_cert_chain(dest.client_certificate, dest.client_key)
    return context


def send_stow(target: StowTarget, files: Sequence[Path], *, timeout: float,
              progress: Callable[[SendResult], None]) -> None:
    """Send ``files`` in one STOW-RS request; ``progress`` gets one result per file."""
    items: list[Item] = []
    for path in files:
        item = read_item(path)
        if isinstance(item, SendResult):
            progress(item)
        else:
            items.append(item)
    if not items:
        return
    for result in _post(target, items, timeout):
        progress(result)


def _post(target: StowTarget, items: list[Item], timeout: float) -> list[SendResult]:
    boundary = f"ortho-node-{uuid.uuid4().hex}"
    try:
        body = _Body(boundary, [item.path for item in items])
        headers = {**target.headers, "Accept": "application/dicom+json", "Content-Length": str(body.length),
                   "Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'}
        with httpx.Client(verify=target.verify, timeout=timeout, auth=target.auth) as client:
            response = client.post(target.url, content=body.chunks(), headers=headers)
    except httpx.TimeoutException:
        return _all(items, None, "no response (timeout)", Failure.HTTP_TRANSIENT)
    except (httpx.TransportError, OSError) as exc:  # refused, reset, TLS handshake, a file gone while read
        return _all(items, None, f"cannot send: {type(exc).__name__}: {exc}"[:200], Failure.HTTP_TRANSIENT)
    return _results(items, response)


def _results(items: list[Item], response: httpx.Response) -> list[SendResult]:
    status = response.status_code
    phrase = f"HTTP {status} {response.reason_phrase}".strip()
    if status in _RETRIED_HTTP or status >= 500:
        return _all(items, None, phrase, Failure.HTTP_TRANSIENT, retry_after=_retry_after(response))
    if status not in (200, 202, 409):
        return _all(items, None, phrase, Failure.HTTP_REFUSED)
    answered = _per_instance(response)
    if answered is None and status != 200:
        return _all(items, None, f"{phrase} without a readable Store Instances Response", Failure.HTTP_REFUSED)
    results = []
    for item in items:
        code = (answered or {}).get(item.sop_instance_uid)
        if code is None and status == 200:
            code = 0x0000  # 200: every instance stored, whether or not the body lists it
        if code is None:
            results.append(SendResult(item.path, item.sop_instance_uid, None,
                                      f"{phrase}: instance named in neither sequence", Failure.HTTP_TRANSIENT))
        else:
            results.append(SendResult(item.path, item.sop_instance_uid, code, f"{phrase}: {describe(code)}"))
    return results


def _per_instance(response: httpx.Response) -> dict[str, int] | None:
    """SOP Instance UID -> the C-STORE status its sequence item stands for; None when the body is not DICOM JSON."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    statuses: dict[str, int] = {}
    for sequence, reason_tag, default in ((_REFERENCED_SOP_SEQUENCE, _WARNING_REASON, 0x0000),
                                          (_FAILED_SOP_SEQUENCE, _FAILURE_REASON, 0x0110)):
        for entry in _items(body, sequence):
            uid = _first(entry, _REFERENCED_SOP_INSTANCE_UID)
            reason = _first(entry, reason_tag)
            if isinstance(uid, str):
                statuses[uid] = int(reason) if isinstance(reason, int) else default  # 0110: Processing failure
    return statuses


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent or unreadable.
    An HTTP-date is measured from the response's own Date (the peer's clock, so a skew between the clocks does
    not count), or from now when the peer sends none."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    sent = _http_date(response.headers.get("date", "")) or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - sent).total_seconds())


def _http_date(value: str) -> dt.datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _all(items: list[Item], status: int | None, reason: str, failure: Failure,
         retry_after: float | None = None) -> list[SendResult]:
    return [SendResult(item.path, item.sop_instance_uid, status, reason, failure, retry_after=retry_after)
            for item in items]


class _Body:
    """A multipart/related body streamed from the files (each read when sent), with its length known first."""

    def __init__(self, boundary: str, paths: list[Path]) -> None:
        self._head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._tail = f"--{boundary}--\r\n".encode()
        self._paths = paths
        self.length = sum(len(self._head) + path.stat().st_size + 2 for path in paths) + len(self._tail)

    def chunks(self) -> Iterator[bytes]:
        for path in self._paths:
            yield self._head
            with open(path, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield self._tail
