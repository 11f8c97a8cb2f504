"""Intake: one received instance made durable (file fsynced, row committed) before it is acknowledged.

The listener hands over the bytes exactly as received plus the parsed header; intake answers with the DICOM
status to return. Success means the file is on disk under a validated path and its row is committed; a
re-sent SOP Instance UID is acknowledged without a second file or row.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.intake.catalog import Catalog
from ortho_node.dicom_status import Status
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.storage import InstanceStore, StorageFull, is_valid_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssociationRef:
    """Who sent an instance: the association row and its peer, for rows, audit events and logs."""

    id: int | None
    calling_ae: str
    peer_host: str


@dataclass(frozen=True)
class IncomingInstance:
    encoded: bytes  # file meta + data set, as received
    header: InstanceHeader
    transfer_syntax_uid: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    association: AssociationRef


@dataclass(frozen=True)
class StoredInstance:
    """What later stages learn about each newly stored instance (after its row is committed)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    association_id: int | None


class IntakeListener(Protocol):
    """Receives intake notifications (the scheduler uses them to time study completeness)."""

    def instance_stored(self, instance: StoredInstance) -> None: ...

    def association_ended(self, association_id: int | None, state: str) -> None: ...


@dataclass(frozen=True)
class IntakeResult:
    status: Status
    reason: str
    duplicate: bool = False


class Intake:
    """Validates, stores and records received instances."""

    def __init__(self, store: InstanceStore, catalog: Catalog, audit: AuditTrail) -> None:
        self.store = store
        self.catalog = catalog
        self._audit = audit
        self._write_locks = _KeyedLocks()
        self._listeners: list[IntakeListener] = []

    def add_listener(self, listener: IntakeListener) -> None:
        self._listeners.append(listener)

    def notify_stored(self, instance: StoredInstance) -> None:
        for listener in self._listeners:
            listener.instance_stored(instance)

    def association_ended(self, association_id: int | None, state: str) -> None:
        for listener in self._listeners:
            listener.association_ended(association_id, state)

    def receive(self, incoming: IncomingInstance) -> IntakeResult:
        header = incoming.header
        problem = _check_identity(header, incoming)
        if problem is not None:
            return self._reject(incoming, header, *problem)
        relative = self.store.relative_path(header.study_uid, header.series_uid, header.sop_uid)
        # Two associations carrying the same instance must not interleave its write and row.
        with self._write_locks.hold(header.sop_uid):
            return self._store_and_record(incoming, header, relative)

    def refuse_undecodable(self, association: AssociationRef, affected_sop_instance_uid: str,
                           error: str) -> IntakeResult:
        """A data set whose header could not be parsed (``error``: what failed, never its content)."""
        return self._refuse(association, Status.CANNOT_UNDERSTAND_UNDECODABLE, f"undecodable data set ({error})",
                            sop_uid=affected_sop_instance_uid)

    def _store_and_record(self, incoming: IncomingInstance, header: InstanceHeader,
                          relative: str) -> IntakeResult:
        try:
            if self._already_stored(header.sop_uid):
                log.info("duplicate SOP instance %s from %s acknowledged, not stored again",
                         header.sop_uid, incoming.association.calling_ae)
                return IntakeResult(Status.SUCCESS, "duplicate", duplicate=True)
        except SQLAlchemyError as exc:
            return self._database_unavailable(incoming, header, exc)
        try:
            stored = self.store.write(relative, incoming.encoded)
        except StorageFull:
            return self._storage_failed(incoming, header, "disk full")
        except OSError as exc:
            return self._storage_failed(incoming, header, f"write failed: {exc.strerror or exc}")
        try:
            self._record(incoming, header, stored.relative_path, stored.size, stored.sha256)
        except IntegrityError:
            log.info("SOP instance %s recorded concurrently; acknowledged once", header.sop_uid)
            return IntakeResult(Status.SUCCESS, "duplicate", duplicate=True)
        except SQLAlchemyError as exc:
            # The file stays: it is complete, and start-up recovery indexes it if never re-sent.
            return self._database_unavailable(incoming, header, exc)
        self.notify_stored(StoredInstance(header.study_uid, header.series_uid, header.sop_uid,
                                          incoming.association.id))
        return IntakeResult(Status.SUCCESS, "stored")

    def _already_stored(self, sop_uid: str) -> bool:
        path = self.catalog.stored_path(sop_uid)
        return path is not None and self.store.exists(path)

    def _record(self, incoming: IncomingInstance, header: InstanceHeader, path: str, size: int,
                sha256: str) -> None:
        self.catalog.record(header, path=path, size=size, sha256=sha256,
                            transfer_syntax_uid=incoming.transfer_syntax_uid,
                            association_id=incoming.association.id, calling_ae=incoming.association.calling_ae)

    def _reject(self, incoming: IncomingInstance, header: InstanceHeader, status: Status,
                reason: str) -> IntakeResult:
        return self._refuse(incoming.association, status, reason, header.study_uid, header.series_uid,
                            header.sop_uid)

    def _refuse(self, ref: AssociationRef, status: Status, reason: str, study_uid: str | None = None,
                series_uid: str | None = None, sop_uid: str | None = None) -> IntakeResult:
        log.warning("instance refused with status 0x%04X (%s) from %s at %s", status, reason,
                    ref.calling_ae, ref.peer_host)
        self._audit.record(
            AuditKind.INSTANCE_REJECTED, reason, severity=Severity.WARNING, association_id=ref.id,
            calling_ae=ref.calling_ae, peer_host=ref.peer_host, study_instance_uid=_safe_uid(study_uid),
            series_instance_uid=_safe_uid(series_uid), sop_instance_uid=_safe_uid(sop_uid),
            details={"status": int(status)},
        )
        return IntakeResult(status, reason)

    def _storage_failed(self, incoming: IncomingInstance, header: InstanceHeader,
                        reason: str) -> IntakeResult:
        ref = incoming.association
        log.error("instance %s not stored (%s); answered 0xA700", header.sop_uid, reason)
        self._audit.record(
            AuditKind.STORAGE_FAILED, reason, severity=Severity.ERROR, association_id=ref.id,
            calling_ae=ref.calling_ae, peer_host=ref.peer_host, study_instance_uid=header.study_uid,
            sop_instance_uid=header.sop_uid, details={"status": int(Status.OUT_OF_RESOURCES)},
        )
        return IntakeResult(Status.OUT_OF_RESOURCES, reason)

    def _database_unavailable(self, incoming: IncomingInstance, header: InstanceHeader,
                              exc: SQLAlchemyError) -> IntakeResult:
        log.error("database unavailable while storing %s (%s); answered 0xA700", header.sop_uid,
                  type(exc.orig if getattr(exc, "orig", None) else exc).__name__)
        return IntakeResult(Status.OUT_OF_RESOURCES, "database unavailable")


def _check_identity(header: InstanceHeader, incoming: IncomingInstance) -> tuple[Status, str] | None:
    for name, value in (("SOPInstanceUID", header.sop_uid), ("StudyInstanceUID", header.study_uid),
                        ("SeriesInstanceUID", header.series_uid), ("SOPClassUID", header.sop_class_uid)):
        if not value:
            return Status.CANNOT_UNDERSTAND_MISSING_UID, f"{name} missing"
        if not is_valid_uid(value):
            return Status.CANNOT_UNDERSTAND_INVALID_UID, f"{name} is not a valid UID"
    if header.sop_uid != incoming.affected_sop_instance_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the C-STORE request"
    if header.sop_class_uid != incoming.affected_sop_class_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the C-STORE request"
    return None


def _safe_uid(value: str | None) -> str | None:
    """Only valid UIDs go into audit columns (a hostile value is described, not copied)."""
    return value if is_valid_uid(value) else None


class _KeyedLocks:
    """A lock per key, dropped when nobody holds it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list[Any]] = {}

    def hold(self, key: str):
        return _KeyedLock(self, key)


class _KeyedLock:
    def __init__(self, owner: _KeyedLocks, key: str) -> None:
        self._owner, self._key = owner, key

    def __enter__(self) -> None:
        with self._owner._guard:
            entry = self._owner._locks.setdefault(self._key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()

    def __exit__(self, *exc: object) -> None:
        with self._owner._guard:
            entry = self._owner._locks[self._key]
            entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                del self._owner._locks[self._key]
