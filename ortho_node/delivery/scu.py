"""C-ECHO and C-STORE SCU: every response status checked; an empty response is a failure."""

from __future__ import annotations

import enum
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from ortho_node.config import parse_dicom_address
from ortho_node.dicom_status import describe

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
#: A stored transfer syntax -> the one also offered for a peer that refuses it. Deflate wraps Explicit VR Little
#: Endian losslessly (the summary images are stored deflated), and pynetdicom inflates a file read from disk
#: when only that context is accepted; compressed pixel data is never transcoded.
FALLBACK_SYNTAX = {DeflatedExplicitVRLittleEndian: ExplicitVRLittleEndian}


@dataclass(frozen=True)
class RemoteNode:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RemoteNode:
        """Parse ``AE@HOST:PORT``."""
        return cls(*parse_dicom_address(text))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Failure(str, enum.Enum):
    """Why an object got no status from the peer; ``delivery.policy`` decides which ones are retried."""

    UNREADABLE = "unreadable"  # not a DICOM file we can read
    NO_ASSOCIATION = "no-association"  # connection refused, timed out or TLS handshake failed
    REJECTED_TRANSIENT = "rejected-transient"  # A-ASSOCIATE-RJ result 2
    REJECTED_PERMANENT = "rejected-permanent"  # A-ASSOCIATE-RJ result 1
    NO_CONTEXT = "no-context"  # the peer accepted no presentation context for this SOP class
    ABORTED = "aborted"  # no response: timeout, A-ABORT or connection lost
    HTTP_TRANSIENT = "http-transient"  # STOW-RS: no connection, a timeout, HTTP 408, 429 or 5xx
    HTTP_REFUSED = "http-refused"  # STOW-RS: any other HTTP 4xx (credentials, media type, size), or no answer to read


# PS3.8 Table 9-21, (source, reason/diag.) -> the standard's words, as dcmtk's echoscu and storescu print them.
_REJECTION_REASONS = {
    (1, 1): "No Reason Given", (1, 2): "Application Context Name Not Supported",
    (1, 3): "Calling AE Title Not Recognized", (1, 7): "Called AE Title Not Recognized",
    (2, 1): "No Reason Given", (2, 2): "Protocol Version Not Supported",
    (3, 1): "Temporary Congestion", (3, 2): "Local Limit Exceeded",
}


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result (1 permanent, 2 transient), source (1 service user, 2 and 3 service
    provider) and reason (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int

    def __str__(self) -> str:
        words = _REJECTION_REASONS.get((self.source, self.reason), f"reason {self.reason}")
        return f"{words} ({'permanent' if self.result == 0x01 else 'transient'})"


@dataclass(frozen=True)
class SendResult:
    path: Path
    sop_instance_uid: str | None
    status: int | None  # None: no response (timeout, abort, no context)
    reason: str
    failure: Failure | None = None  # set when status is None
    rejection: Rejection | None = None  # set when the peer rejected the association
    retry_after: float | None = None  # seconds the peer asked us to wait (HTTP Retry-After)

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or self.status in (0xB000, 0xB007, 0xB006))


@dataclass(frozen=True)
class EchoResult:
    status: int | None  # None: no association or no response
    reason: str  # what went wrong, for an operator; "" on a response
    failure: Failure | None = None
    rejection: Rejection | None = None


def echo(remote: RemoteNode, *, calling_ae: str = "ORTHODIFF", timeout: float = 30.0) -> int | None:
    """C-ECHO; returns the status, or ``None`` when no association or response came."""
    return echo_peer(remote, calling_ae=calling_ae, timeout=timeout).status


def echo_peer(remote: RemoteNode, *, calling_ae: str = "ORTHODIFF", timeout: float = 30.0,
              ssl_context: ssl.SSLContext | None = None) -> EchoResult:
    """C-ECHO (over DICOM TLS with ``ssl_context``), telling a refused connection, a rejected association and a
    missing response apart."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    connection = _ConnectionWatch()
    tls_args = (ssl_context, remote.host) if ssl_context else None
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, tls_args=tls_args,
                         evt_handlers=connection.handlers())
    if not assoc.is_established:
        failure, reason, rejection = _association_failure(assoc, remote, connected=connection.opened)
        return EchoResult(None, reason, failure, rejection)
    try:
        status = assoc.send_c_echo()
        if "Status" not in status:
            return EchoResult(None, "no response (timeout or abort)", Failure.ABORTED)
        return EchoResult(int(status.Status), "")
    finally:
        if assoc.is_established:
            assoc.release()


class _ConnectionWatch:
    """Did the TCP (and TLS) connection open? Without it an association failure is 'cannot connect'; with it,
    the peer accepted the connection but did not answer the association request."""

    def __init__(self) -> None:
        self.opened = False

    def handlers(self) -> list:
        return [(evt.EVT_CONN_OPEN, self._on_open)]

    def _on_open(self, _event: evt.Event) -> None:
        self.opened = True


@dataclass(frozen=True)
class Item:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def collect_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def send_files(remote: RemoteNode, files: Sequence[Path], *, calling_ae: str = "ORTHODIFF",
               timeout: float = 60.0, progress: Callable[[SendResult], None] | None = None,
               ssl_context: ssl.SSLContext | None = None) -> list[SendResult]:
    """C-STORE each file as stored (no transcoding); one result per file, in order.

    One association per batch of at most 128 presentation contexts, requesting exactly the (SOP class,
    transfer syntax) pairs of its files. ``progress`` sees each result as soon as its response arrives.
    """
    results: list[SendResult] = []
    items: list[Item] = []

    def report(result: SendResult) -> None:
        results.append(result)
        if progress:
            progress(result)

    for path in files:
        item = read_item(path)
        if isinstance(item, SendResult):
            report(item)
        else:
            items.append(item)
    for batch in _batches(items):
        _send_batch(remote, batch, calling_ae, timeout, ssl_context, report)
    return results


def read_item(path: Path) -> Item | SendResult:
    """A result file's SOP Class, Instance and Transfer Syntax UIDs, or why it cannot be sent."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        return Item(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
    except InvalidDicomError:
        return SendResult(path, None, None, "not a DICOM file", Failure.UNREADABLE)
    except OSError as exc:
        return SendResult(path, None, None, f"cannot be read: {exc.strerror or type(exc).__name__}",
                          Failure.UNREADABLE)
    except (AttributeError, ValueError) as exc:  # no SOP Class / Instance UID or file meta, or a broken header
        return SendResult(path, None, None, f"not a usable DICOM file: {type(exc).__name__}", Failure.UNREADABLE)


def _batches(items: list[Item]) -> Iterable[list[Item]]:
    batch: list[Item] = []
    contexts: set[tuple[str, str]] = set()
    for item in items:
        keys = _contexts(item)
        if len(contexts | keys) > MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts |= keys
        batch.append(item)
    if batch:
        yield batch


def _contexts(item: Item) -> set[tuple[str, str]]:
    """The presentation contexts an item needs: its stored syntax, and the fallback for a peer refusing it."""
    keys = {(item.sop_class_uid, item.transfer_syntax_uid)}
    fallback = FALLBACK_SYNTAX.get(item.transfer_syntax_uid)
    if fallback is not None:
        keys.add((item.sop_class_uid, str(fallback)))
    return keys


def _send_batch(remote: RemoteNode, batch: list[Item], calling_ae: str, timeout: float,
                ssl_context: ssl.SSLContext | None, report: Callable[[SendResult], None]) -> None:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # One context per (class, syntax) pair: the peer accepts or refuses the stored syntax and its fallback apart.
    for sop_class, syntax in sorted(set().union(*(_contexts(i) for i in batch))):
        ae.add_requested_context(sop_class, syntax)
    tls_args = (ssl_context, remote.host) if ssl_context else None
    connection = _ConnectionWatch()
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, max_pdu=0, tls_args=tls_args,
                         evt_handlers=connection.handlers())
    if not assoc.is_established:
        failure, reason, rejection = _association_failure(assoc, remote, connected=connection.opened)
        log.error("%s: %s", remote, reason)
        for item in batch:
            report(SendResult(item.path, item.sop_instance_uid, None, reason, failure, rejection))
        return
    sent = 0
    try:
        for item in batch:
            report(_store_one(assoc, item))
            sent += 1
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for item in batch[sent:]:
        report(SendResult(item.path, item.sop_instance_uid, None, "association lost", Failure.ABORTED))


def _association_failure(assoc, remote: RemoteNode, *,
                         connected: bool) -> tuple[Failure, str, Rejection | None]:
    """Why no association: (kind, reason for logs and the delivery queue, the A-ASSOCIATE-RJ if any)."""
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        text = f"association rejected ({primitive.result_str}, {primitive.source_str}: {primitive.reason_str})"
        rejection = Rejection(int(primitive.result), int(primitive.result_source), int(primitive.diagnostic))
        failure = Failure.REJECTED_PERMANENT if primitive.result == 0x01 else Failure.REJECTED_TRANSIENT
        return failure, text, rejection
    if primitive is not None and primitive.result == 0x00:
        return Failure.NO_CONTEXT, "association accepted without any presentation context, aborted", None
    if not connected:
        return Failure.NO_ASSOCIATION, f"cannot connect to {remote.host}:{remote.port}", None
    return Failure.NO_ASSOCIATION, "no response to the association request (timeout or abort)", None


def _store_one(assoc, item: Item) -> SendResult:
    try:
        # A path is streamed from disk exactly as stored (file meta stripped), without decoding.
        status = assoc.send_c_store(item.path)
    except ValueError as exc:  # no accepted presentation context for this SOP class / transfer syntax
        return SendResult(item.path, item.sop_instance_uid, None, f"not sent: {exc}", Failure.NO_CONTEXT)
    if "Status" not in status:
        return SendResult(item.path, item.sop_instance_uid, None, "no response (timeout or abort)",
                          Failure.ABORTED)
    code = int(status.Status)
    return SendResult(item.path, item.sop_instance_uid, code, describe(code))
