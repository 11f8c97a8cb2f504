"""The catalog of stored instances: study, series and instance rows, written on the C-STORE hot path.

Core statements (not the ORM unit of work) and a cache of known series keep new instances to one short
transaction: insert the instances, bump each series' count, touch each study; a batch of instances (a STOW-RS
request, concurrent C-STOREs coalesced by intake's group commit) shares that one transaction. The common case
(series known, study not purged) and the duplicate look-up run on the driver's cursor (``ortho_node.db.driver``):
a quarter of a busy receiver's interpreter time went to SQLAlchemy's execution around these few statements.

A study whose received instances the purger deleted (``ortho_node.retention``) is analysable again from what
arrives after the purge: the first new instance clears the study's purge mark (its history keeps the purge), and
a re-sent instance whose file was purged brings its row back (``instances.purged_at`` cleared, the new file's
facts recorded) instead of counting as a duplicate.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import datetime as dt

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ortho_node.audit.timeline import Step
from ortho_node.audit.trail import AuditKind, Severity
from ortho_node.clock import Clock, SystemClock
from ortho_node.db.driver import DriverStatement, driver_transaction
from ortho_node.db.models import AuditEvent, Instance, Series, Study, TimelineEntry
from ortho_node.intake.header import InstanceHeader


# Built once: executing a prepared statement with a parameter dict skips per-call statement compilation.
_INSERT_INSTANCE = insert(Instance)
_BUMP_SERIES = update(Series).where(Series.id == bindparam("sid")).values(
    instance_count=Series.instance_count + bindparam("arrived"), last_received_at=bindparam("now"))
# Returns the study's purge mark in the same statement: the hot path pays nothing for the purge check.
# A new arrival also makes the study's completeness decision due (studies.decision_due_at): the truth a receiver
# reads to take over the decision when the one that received this instance dies before deciding.
_TOUCH_STUDY = (update(Study).where(Study.id == bindparam("sid"))
                .values(last_received_at=bindparam("now"), decision_due_at=bindparam("now"))
                .returning(Study.instances_purged_at, Study.study_instance_uid))
_STORED_PATH = select(Instance.file_path).where(Instance.sop_instance_uid == bindparam("uid"),
                                                Instance.purged_at.is_(None))
_RECORDED = select(Instance.id).where(Instance.sop_instance_uid == bindparam("uid"))
# The duplicate look-up on the driver's cursor takes this many UIDs a statement (one compiled statement per count).
_LOOKUP_CHUNK = 32


@dataclass(frozen=True)
class NewInstance:
    """An instance to record: its header and its stored file's facts; ``ignored_by``: the accept rule that keeps it
    out of analysis."""

    header: InstanceHeader
    path: str
    size: int
    sha256: str
    transfer_syntax_uid: str
    association_id: int | None
    calling_ae: str | None
    ignored_by: str | None = None

    def values(self) -> dict[str, Any]:
        """Its ``instances`` row, less the series and the arrival time."""
        header = self.header
        return dict(sop_instance_uid=header.sop_uid, sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=self.transfer_syntax_uid, file_path=self.path, file_size=self.size,
                    sha256=self.sha256, association_id=self.association_id, calling_ae=self.calling_ae,
                    ignored_by=self.ignored_by, **header.instance)


class Catalog:
    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        """``clock``: the node's one clock, which also times the completeness decisions that read these
        arrival times (``studies.last_received_at``)."""
        self.engine = engine
        self._clock = clock or SystemClock()
        self._series_ids: dict[str, tuple[int, int]] = {}  # SeriesInstanceUID -> (study id, series id)
        self._lock = threading.Lock()
        self._driver_statements: dict[Any, DriverStatement] = {}

    def _driver_statement(self, key: Any, build) -> DriverStatement:
        """The statement ``build()`` makes, compiled for this engine once (``key`` names it)."""
        statement = self._driver_statements.get(key)
        if statement is None:
            statement = self._driver_statements[key] = build()
        return statement

    def stored_path(self, sop_instance_uid: str) -> str | None:
        """The data-folder-relative file of a stored instance; None when unknown or purged."""
        with self.engine.connect() as connection:
            return connection.scalar(_STORED_PATH, {"uid": sop_instance_uid})

    def stored_paths(self, sop_instance_uids: Iterable[str]) -> dict[str, str]:
        """:meth:`stored_path` of several instances in one query: only those stored (known, not purged)."""
        uids, stored = list(sop_instance_uids), {}
        with driver_transaction(self.engine) as cursor:
            for start in range(0, len(uids), _LOOKUP_CHUNK):
                chunk = uids[start:start + _LOOKUP_CHUNK]
                lookup = self._driver_statement(("stored", len(chunk)), lambda: _stored_paths_statement(
                    self.engine, len(chunk)))
                cursor.execute(lookup.sql, lookup.parameters({f"uid{i}": uid for i, uid in enumerate(chunk)}))
                stored.update(cursor.fetchall())
        return stored

    def record(self, instance: NewInstance) -> None:
        """Insert the instance row (creating study and series rows as needed) in one transaction.

        Raises ``IntegrityError`` if the SOP Instance UID is already recorded (and its file not purged).
        """
        try:
            self.record_many([instance])
        except IntegrityError:
            if self._revive(instance.values(), _identifiers(instance.header)):
                return
            with self.engine.connect() as connection:
                if connection.scalar(_RECORDED, {"uid": instance.header.sop_uid}) is not None:
                    raise
            # Another association created the same study or series between our look-up and insert.
            self.record_many([instance])

    def record_many(self, instances: Sequence[NewInstance]) -> None:
        """Insert the rows of several instances (distinct SOP Instance UIDs) in one transaction: each series
        counted and each study touched once.

        Raises ``IntegrityError`` when any of them cannot be inserted as new (already recorded, a purged row to
        bring back, a study or series created by another association meanwhile); nothing is recorded then, and
        :meth:`record` of each sorts out which case it is.
        """
        now = self._clock.now()
        if self._record_known(instances, now):
            return
        ids: dict[str, tuple[int, int]] = {}  # SeriesInstanceUID -> (study id, series id)
        with self.engine.begin() as connection:
            for instance in instances:
                if instance.header.series_uid not in ids:
                    ids[instance.header.series_uid] = self._ids(connection, instance.header, now)
            # Rows in one order (by UID, series, study) in every transaction: two batches written at once by two
            # receivers of one PostgreSQL database wait for each other instead of deadlocking.
            ordered = sorted(instances, key=lambda instance: instance.header.sop_uid)
            connection.execute(_INSERT_INSTANCE, [
                {"series_id": ids[i.header.series_uid][1], "received_at": now, **i.values()} for i in ordered])
            arrived = Counter(ids[i.header.series_uid][1] for i in instances)
            connection.execute(_BUMP_SERIES, [{"sid": series_id, "arrived": count, "now": now}
                                              for series_id, count in sorted(arrived.items())])
            studies = {ids[i.header.series_uid][0]: i.header for i in instances}
            for study_id, header in sorted(studies.items()):
                self._touch_study(connection, study_id, now, _identifiers(header))
        with self._lock:  # only committed rows are cached
            self._series_ids.update(ids)

    def _record_known(self, instances: Sequence[NewInstance], now: dt.datetime) -> bool:
        """:meth:`record_many` on the driver's cursor when every series is known and no study is purged (the
        statements and their order as there); False, with nothing written, when the batch needs the general path
        (a new series or study, a study's purge mark to clear)."""
        with self._lock:
            ids = {i.header.series_uid: self._series_ids.get(i.header.series_uid) for i in instances}
        if None in ids.values():
            return False
        rows = [{"series_id": ids[i.header.series_uid][1], "received_at": now, **i.values()}
                for i in sorted(instances, key=lambda instance: instance.header.sop_uid)]
        columns = tuple(rows[0])
        if any(tuple(row) != columns for row in rows):
            return False
        insert_rows = self._driver_statement(("insert", columns), lambda: DriverStatement(
            self.engine, _INSERT_INSTANCE, column_keys=columns))
        bump = self._driver_statement("bump", lambda: DriverStatement(self.engine, _BUMP_SERIES))
        touch = self._driver_statement("touch", lambda: DriverStatement(self.engine, _TOUCH_STUDY))
        arrived = Counter(ids[i.header.series_uid][1] for i in instances)
        try:
            with driver_transaction(self.engine) as cursor:
                cursor.executemany(insert_rows.sql, [insert_rows.parameters(row) for row in rows])
                cursor.executemany(bump.sql, [bump.parameters({"sid": series_id, "arrived": count, "now": now})
                                              for series_id, count in sorted(arrived.items())])
                for study_id in sorted({study_id for study_id, _ in ids.values()}):
                    cursor.execute(touch.sql, touch.parameters({"sid": study_id, "now": now}))
                    purged_at, _ = cursor.fetchone()
                    if purged_at is not None:
                        raise _NeedsGeneralPath
        except _NeedsGeneralPath:
            return False
        return True

    def _revive(self, values: dict, identifiers: dict) -> bool:
        """A re-sent instance whose file the purger deleted: its row takes the new file and is on disk again
        (the series count stays: the row was counted). False when its row is not purged."""
        now = self._clock.now()
        with self.engine.begin() as connection:
            series_id = connection.execute(
                update(Instance).where(Instance.sop_instance_uid == values["sop_instance_uid"],
                                       Instance.purged_at.is_not(None))
                .values(**values, received_at=now, purged_at=None).returning(Instance.series_id)).scalar()
            if series_id is None:
                return False
            study_id = connection.scalar(select(Series.study_id).where(Series.id == series_id))
            connection.execute(update(Series).where(Series.id == series_id).values(last_received_at=now))
            self._touch_study(connection, study_id, now, identifiers)
        return True

    @staticmethod
    def _touch_study(connection: Connection, study_id: int, now: dt.datetime, identifiers: dict) -> None:
        """The study's last arrival; the first instance after a purge also clears its purge mark, so that it
        is analysable (and purgeable) again from what is on disk now; the purge stays in its history, and the
        patient identifiers the purge cleared come back from the new instance (``identifiers``)."""
        purged_at, study_uid = connection.execute(_TOUCH_STUDY, {"sid": study_id, "now": now}).one()
        if purged_at is None:
            return
        cleared = connection.execute(update(Study).where(Study.id == study_id, Study.instances_purged_at.is_not(None))
                                     .values(instances_purged_at=None, purge_reason=None, **identifiers)).rowcount
        if cleared != 1:  # another association cleared it first
            return
        message = ("instances received after the purge of its earlier ones: purge mark cleared, analysable from "
                   "the instances stored now")
        details = {"instances_purged_at": purged_at.isoformat() if isinstance(purged_at, dt.datetime) else None}
        connection.execute(insert(AuditEvent).values(
            at=now, kind=AuditKind.RECEIVED_AFTER_PURGE.value, severity=Severity.INFO.value, message=message,
            study_instance_uid=study_uid, details=details))
        connection.execute(insert(TimelineEntry).values(
            study_instance_uid=study_uid, at=now, step=Step.RECEIVED_AFTER_PURGE.value, detail=message,
            data=details))

    def _ids(self, connection: Connection, header: InstanceHeader, now) -> tuple[int, int]:
        with self._lock:
            cached = self._series_ids.get(header.series_uid)
        if cached is not None:
            return cached
        study_id = connection.scalar(select(Study.id).where(Study.study_instance_uid == header.study_uid))
        if study_id is None:
            study_id = connection.execute(insert(Study).values(
                study_instance_uid=header.study_uid, first_received_at=now, last_received_at=now, **header.study,
            ).returning(Study.id)).scalar_one()
        series_id = connection.scalar(select(Series.id).where(Series.series_instance_uid == header.series_uid))
        if series_id is None:
            series_id = connection.execute(insert(Series).values(
                series_instance_uid=header.series_uid, study_id=study_id, first_received_at=now,
                last_received_at=now, instance_count=0, **header.series,
            ).returning(Series.id)).scalar_one()
        return study_id, series_id


class _NeedsGeneralPath(Exception):
    """Raised inside a driver transaction to roll it back: the batch is for :meth:`Catalog.record_many`'s general
    path."""


def _stored_paths_statement(engine: Engine, count: int) -> DriverStatement:
    return DriverStatement(engine, select(Instance.sop_instance_uid, Instance.file_path).where(
        Instance.sop_instance_uid.in_([bindparam(f"uid{i}") for i in range(count)]), Instance.purged_at.is_(None)))


def _identifiers(header: InstanceHeader) -> dict:
    """The patient identifiers of the study row (cleared by a purge, written again by the next arrival)."""
    return {key: header.study.get(key) for key in ("patient_id", "patient_name")}
