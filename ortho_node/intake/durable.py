"""Accepted instances made durable in batches: duplicates answered, files written, then every file's folder fsynced
once and every row committed in one transaction, before any status is given.

A batch is what one caller hands over (a STOW-RS request's instances), joined by what concurrent callers hand over
meanwhile (the C-STOREs of other associations: ``ortho_node.intake.group_commit``). When the batch's transaction
fails on one instance's row (a concurrent duplicate, a purged row to bring back), each row is recorded on its own,
so every instance gets the status it would get alone; when the database itself fails, each is refused with 0xA700
and its file stays for start-up recovery, as for an instance received alone.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.dicom_status import Status
from ortho_node.intake.accept import Action, Decision
from ortho_node.intake.catalog import Catalog, NewInstance
from ortho_node.intake.group_commit import GroupCommit, GroupCommitFailed
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.received import IncomingInstance, IntakeResult
from ortho_node.intake.storage import InstanceStore, StoredFile, StorageFull

log = logging.getLogger(__name__)

#: Most instances one group commit makes durable (a larger batch of one caller goes alone).
GROUP_COMMIT_LIMIT = 64
#: Files of one batch written at once: their fdatasyncs overlap, and the file system's journal commits several in
#: one (64 files of 150 kB on the 2-core test machine's ext4: 210-250 ms one after another, 20 ms eight at a time).
_FILE_WRITERS = 8


@dataclass(eq=False)
class Accepted:
    """An instance that passed intake's checks, through the stages of its batch: its file, then its result."""

    incoming: IncomingInstance
    decision: Decision
    key: str
    stored: StoredFile | None = None
    result: IntakeResult | None = None

    @property
    def header(self) -> InstanceHeader:
        return self.incoming.header

    @property
    def ignored_by(self) -> str | None:
        return self.decision.rule if self.decision.action is Action.IGNORE else None

    def answered(self) -> IntakeResult:
        """Its status once its batch is through; an error, not an assert, if a stage left it unanswered."""
        if self.result is None:
            raise RuntimeError(f"instance {self.header.sop_uid} left without a status")
        return self.result


class DurableWriter:
    """Stores distinct accepted instances, each batch durable as a whole before :meth:`store_all` returns."""

    def __init__(self, store: InstanceStore, catalog: Catalog, audit: AuditTrail) -> None:
        self.store = store
        self.catalog = catalog
        self._audit = audit
        self._write_locks = _KeyedLocks()
        self._group_commit = GroupCommit(self._make_durable, limit=GROUP_COMMIT_LIMIT)
        self._writers: ThreadPoolExecutor | None = None
        self._writers_lock = threading.Lock()

    def store_all(self, items: list[Accepted]) -> None:
        """Sets each item's result: a duplicate, a failure, or stored (file and row durable). SOP Instance UIDs
        must be distinct within ``items``."""
        with ExitStack() as held:
            # Two senders of the same instance must not interleave its write and row. Taken in sorted order, so two
            # batches sharing instances wait for each other instead of deadlocking.
            for sop_uid in sorted(item.header.sop_uid for item in items):
                held.enter_context(self._write_locks.hold(sop_uid))
            self._answer_duplicates(items)
            self._write_files([item for item in items if item.result is None])
            written = [item for item in items if item.stored is not None]
            if written:
                self._commit(written)

    def _answer_duplicates(self, items: list[Accepted]) -> None:
        try:
            stored = self.catalog.stored_paths(item.header.sop_uid for item in items)
        except SQLAlchemyError as exc:
            _database_unavailable(items, exc)
            return
        for item in items:
            path = stored.get(item.header.sop_uid)
            if path is not None and self.store.exists(path):
                log.info("duplicate SOP instance %s from %s acknowledged, not stored again",
                         item.header.sop_uid, item.incoming.association.calling_ae)
                item.result = IntakeResult(Status.SUCCESS, "duplicate", duplicate=True)

    def _write_files(self, items: list[Accepted]) -> None:
        if len(items) <= 1:
            for item in items:
                self._write_file(item)
            return
        list(self._file_writers().map(self._write_file, items))

    def _file_writers(self) -> ThreadPoolExecutor:
        """The writer threads, started with the first batch and kept: starting eight threads for every STOW-RS
        request was a twentieth of a receiving process's interpreter time. Idle, they wait on a queue."""
        with self._writers_lock:
            if self._writers is None:
                self._writers = ThreadPoolExecutor(_FILE_WRITERS, thread_name_prefix="intake-write")
            return self._writers

    def _write_file(self, item: Accepted) -> None:
        try:
            item.stored = self.store.put(item.key, item.incoming.encoded)
        except StorageFull:
            item.result = self._storage_failed(item, "disk full")
        except OSError as exc:
            item.result = self._storage_failed(item, f"write failed: {exc.strerror or exc}")

    def _commit(self, written: list[Accepted]) -> None:
        """Waits until the written files are durable with their rows (or answered as failed), in a group commit
        with the instances of concurrent callers."""
        try:
            self._group_commit.submit(written)
        except GroupCommitFailed:  # a bug: what it left unanswered is refused, and the sender retries it
            log.exception("unexpected failure making %d instances durable; answered 0xA700", len(written))
            for item in written:
                if item.result is None:
                    item.result = IntakeResult(Status.OUT_OF_RESOURCES, "internal error")

    def _make_durable(self, items: list[Accepted]) -> None:
        """The group commit's work, on the written files of one or several callers: their folders fsynced, then
        their rows committed in one transaction; each item's result set."""
        synced = self._sync(items)
        if not synced:
            return
        try:
            self.catalog.record_many([_new_instance(item) for item in synced])
        except (IntegrityError, DataError) as exc:  # one instance's row, not the database: each alone
            if len(synced) > 1:
                log.info("a batch of %d instances not recorded together (%s); recorded one by one", len(synced),
                         type(exc).__name__)
            self._record_one_by_one(synced)
        except SQLAlchemyError as exc:
            # The files stay: they are complete, and start-up recovery indexes them if never re-sent.
            _database_unavailable(synced, exc)
        else:
            for item in synced:
                item.result = _stored(item)

    def _sync(self, items: list[Accepted]) -> list[Accepted]:
        """The items whose files are durable under their keys; the others answered as failed writes."""
        try:
            self.store.sync(item.key for item in items)
        except OSError:  # which folder failed is unknown: each instance's again, so a failure is answered alone
            return [item for item in items if self._sync_one(item)]
        return items

    def _sync_one(self, item: Accepted) -> bool:
        try:
            self.store.sync([item.key])
        except OSError as exc:
            item.result = self._storage_failed(item, f"write failed: {exc.strerror or exc}")
            return False
        return True

    def _record_one_by_one(self, items: list[Accepted]) -> None:
        """Each row in its own transaction, so each instance gets the status it would get alone. Once the database
        itself fails, the rest are answered so without a try each (each try would wait out its timeout)."""
        for position, item in enumerate(items):
            try:
                self.catalog.record(_new_instance(item))
            except IntegrityError:
                log.info("SOP instance %s recorded concurrently; acknowledged once", item.header.sop_uid)
                item.result = IntakeResult(Status.SUCCESS, "duplicate", duplicate=True)
            except DataError as exc:  # this instance's own value: the others are still tried
                _database_unavailable([item], exc)
            except SQLAlchemyError as exc:
                _database_unavailable(items[position:], exc)
                return
            else:
                item.result = _stored(item)

    def _storage_failed(self, item: Accepted, reason: str) -> IntakeResult:
        ref, header = item.incoming.association, item.header
        log.error("instance %s not stored (%s); answered 0xA700", header.sop_uid, reason)
        self._audit.record(
            AuditKind.STORAGE_FAILED, reason, severity=Severity.ERROR, association_id=ref.id,
            calling_ae=ref.calling_ae, peer_host=ref.peer_host, study_instance_uid=header.study_uid,
            sop_instance_uid=header.sop_uid, details={"status": int(Status.OUT_OF_RESOURCES)},
        )
        return IntakeResult(Status.OUT_OF_RESOURCES, reason)


def _new_instance(item: Accepted) -> NewInstance:
    if item.stored is None:  # an error, not an assert: python -O must not let an unwritten instance be recorded
        raise RuntimeError(f"instance {item.header.sop_uid} recorded before its file was written")
    ref, stored = item.incoming.association, item.stored
    return NewInstance(item.header, stored.key, stored.size, stored.sha256, item.incoming.transfer_syntax_uid,
                       ref.id, ref.calling_ae, item.ignored_by)


def _stored(item: Accepted) -> IntakeResult:
    if item.ignored_by is not None:
        return IntakeResult(Status.SUCCESS, "stored, " + item.decision.reason)
    return IntakeResult(Status.SUCCESS, "stored")


def _database_unavailable(items: list[Accepted], exc: SQLAlchemyError) -> None:
    why = type(exc.orig if getattr(exc, "orig", None) else exc).__name__
    for item in items:
        log.error("database unavailable while storing %s (%s); answered 0xA700", item.header.sop_uid, why)
        item.result = IntakeResult(Status.OUT_OF_RESOURCES, "database unavailable")


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
