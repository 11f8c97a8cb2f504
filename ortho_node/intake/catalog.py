"""The catalog of stored instances: study, series and instance rows, written on the C-STORE hot path.

Core statements (not the ORM unit of work) and a cache of known series keep a new instance to one short
transaction: insert the instance, bump the series count, touch the study.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ortho_node.clock import utcnow
from ortho_node.db.models import Instance, Series, Study
from ortho_node.intake.header import InstanceHeader


# Built once: executing a prepared statement with a parameter dict skips per-call statement compilation.
_INSERT_INSTANCE = insert(Instance)
_BUMP_SERIES = update(Series).where(Series.id == bindparam("sid")).values(
    instance_count=Series.instance_count + 1, last_received_at=bindparam("now"))
_TOUCH_STUDY = update(Study).where(Study.id == bindparam("sid")).values(last_received_at=bindparam("now"))
_STORED_PATH = select(Instance.file_path).where(Instance.sop_instance_uid == bindparam("uid"))


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._series_ids: dict[str, tuple[int, int]] = {}  # SeriesInstanceUID -> (study id, series id)
        self._lock = threading.Lock()

    def stored_path(self, sop_instance_uid: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.scalar(_STORED_PATH, {"uid": sop_instance_uid})

    def record(self, header: InstanceHeader, *, path: str, size: int, sha256: str, transfer_syntax_uid: str,
               association_id: int | None, calling_ae: str | None, ignored_by: str | None = None) -> None:
        """Insert the instance row (creating study and series rows as needed) in one transaction;
        ``ignored_by``: the accept rule that keeps it out of analysis.

        Raises ``IntegrityError`` if the SOP Instance UID is already recorded.
        """
        values = dict(sop_instance_uid=header.sop_uid, sop_class_uid=header.sop_class_uid,
                      transfer_syntax_uid=transfer_syntax_uid, file_path=path, file_size=size, sha256=sha256,
                      association_id=association_id, calling_ae=calling_ae, ignored_by=ignored_by,
                      **header.instance)
        try:
            self._record(header, values)
        except IntegrityError:
            if self.stored_path(header.sop_uid) is not None:
                raise
            # Another association created the same study or series between our look-up and insert.
            self._record(header, values)

    def _record(self, header: InstanceHeader, values: dict) -> None:
        now = utcnow()
        with self.engine.begin() as connection:
            study_id, series_id = self._ids(connection, header, now)
            connection.execute(_INSERT_INSTANCE, {"series_id": series_id, "received_at": now, **values})
            connection.execute(_BUMP_SERIES, {"sid": series_id, "now": now})
            connection.execute(_TOUCH_STUDY, {"sid": study_id, "now": now})
        with self._lock:  # only committed rows are cached
            self._series_ids[header.series_uid] = (study_id, series_id)

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
