"""Association records: one row per association request, accepted or rejected, closed with its counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.clock import utcnow
from ortho_node.db.models import Association

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    calling_ae: str
    called_ae: str
    host: str
    port: int
    tls_subject: str | None = None


@dataclass
class AssociationCounts:
    received: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class AssociationLog:
    """Writes association rows and their audit events; a database outage is logged, never raised."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def accepted(self, peer: Peer) -> int | None:
        try:
            with self._session_factory.begin() as session:
                row = _row(peer, accepted=True, reason=None)
                session.add(row)
                session.flush()
                session.add(make_event(
                    AuditKind.ASSOCIATION_ACCEPTED, f"association from {peer.calling_ae} accepted",
                    association_id=row.id, calling_ae=peer.calling_ae, peer_host=peer.host,
                    details={"called_ae": peer.called_ae, "peer_port": peer.port, "tls_subject": peer.tls_subject},
                ))
                return row.id
        except SQLAlchemyError as exc:
            log.error("association from %s at %s not recorded: database unavailable (%s)",
                      peer.calling_ae, peer.host, type(exc).__name__)
            return None

    def rejected(self, peer: Peer, reason: str, *, transient: bool) -> None:
        try:
            with self._session_factory.begin() as session:
                row = _row(peer, accepted=False, reason=reason)
                row.ended_at, row.end_state = utcnow(), "rejected"
                session.add(row)
                session.flush()
                session.add(make_event(
                    AuditKind.ASSOCIATION_REJECTED, f"association from {peer.calling_ae} rejected: {reason}",
                    severity=Severity.WARNING, association_id=row.id, calling_ae=peer.calling_ae,
                    peer_host=peer.host,
                    details={"called_ae": peer.called_ae, "peer_port": peer.port, "transient": transient},
                ))
        except SQLAlchemyError as exc:
            log.error("rejected association from %s at %s not recorded: database unavailable (%s)",
                      peer.calling_ae, peer.host, type(exc).__name__)

    def malformed(self, host: str, port: int) -> None:
        """A connection that closed without a valid association request (a probe, HTTP, garbage)."""
        try:
            with self._session_factory.begin() as session:
                session.add(make_event(
                    AuditKind.MALFORMED_CONNECTION, f"connection from {host}:{port} closed without a valid "
                    "association request", severity=Severity.WARNING, peer_host=host, details={"peer_port": port},
                ))
        except SQLAlchemyError as exc:
            log.error("malformed connection from %s not recorded: database unavailable (%s)", host,
                      type(exc).__name__)

    def tls_refused(self, host: str, port: int, problem: str) -> None:
        """A connection to the TLS port whose handshake failed, so no association request could follow
        (an untrusted or missing client certificate, a protocol version below TLS 1.2, plain TCP)."""
        try:
            with self._session_factory.begin() as session:
                session.add(make_event(
                    AuditKind.TLS_REFUSED, f"TLS connection from {host}:{port} refused: {problem}",
                    severity=Severity.WARNING, peer_host=host, details={"peer_port": port, "problem": problem},
                ))
        except SQLAlchemyError as exc:
            log.error("refused TLS connection from %s not recorded: database unavailable (%s)", host,
                      type(exc).__name__)

    def unreadable_message(self, association_id: int | None, peer: Peer, problem: str) -> None:
        """A DIMSE message on an accepted association that no request could be read from (then aborted);
        ``problem`` says what is wrong, never a value."""
        try:
            with self._session_factory.begin() as session:
                session.add(make_event(
                    AuditKind.MALFORMED_CONNECTION, f"association from {peer.calling_ae} aborted: unreadable "
                    f"DIMSE message ({problem})", severity=Severity.WARNING, association_id=association_id,
                    calling_ae=peer.calling_ae, peer_host=peer.host, details={"peer_port": peer.port,
                                                                              "problem": problem},
                ))
        except SQLAlchemyError as exc:
            log.error("unreadable message from %s not recorded: database unavailable (%s)", peer.host,
                      type(exc).__name__)

    def ended(self, association_id: int | None, peer: Peer, state: str, counts: AssociationCounts) -> None:
        if association_id is None:
            return
        try:
            with self._session_factory.begin() as session:
                row = session.get(Association, association_id)
                if row is None:
                    return
                row.ended_at, row.end_state = utcnow(), state
                row.instances_received, row.instances_failed = counts.received, counts.failed
                row.bytes_received = counts.bytes
                session.add(make_event(
                    AuditKind.ASSOCIATION_ENDED,
                    f"association from {peer.calling_ae} {state}: {counts.received} stored, "
                    f"{counts.duplicates} duplicates, {counts.failed} failed",
                    severity=Severity.INFO if counts.failed == 0 and state == "released" else Severity.WARNING,
                    association_id=association_id, calling_ae=peer.calling_ae, peer_host=peer.host,
                    details={"statuses": {f"0x{k:04X}": v for k, v in counts.statuses.items()},
                             "duplicates": counts.duplicates, "bytes": counts.bytes},
                ))
        except SQLAlchemyError as exc:
            log.error("end of association %s not recorded: database unavailable (%s)", association_id,
                      type(exc).__name__)


def _row(peer: Peer, *, accepted: bool, reason: str | None) -> Association:
    return Association(calling_ae=peer.calling_ae, called_ae=peer.called_ae, peer_host=peer.host,
                       peer_port=peer.port, tls_subject=peer.tls_subject, accepted=accepted,
                       reject_reason=reason)
