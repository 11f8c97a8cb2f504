"""A real data folder and a migrated database (SQLite, and PostgreSQL where the suite has one) holding studies in
every state of their life, built row by row with small files; a clock that moves only when told to."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem, Instance, Job, Series, Study, StudyResult

T0 = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.timezone.utc)
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
INSTANCE_BYTES = 4096

#: Every state a study can be in, as far as the purger cares.
STATES = ("receiving", "pending", "running", "failed", "skipped", "delivered", "delivery_pending", "delivery_failed",
          "no_destination", "kept")
#: The states whose instances may go once their time is up.
DELETABLE = ("skipped", "delivered", "no_destination")


class FakeClock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += dt.timedelta(**delta)


@dataclass
class Archive:
    """Builds studies directly as rows and files, the way the node would have left them."""

    data_dir: Path
    sessions: object
    counter: itertools.count

    def study(self, state: str, *, at: dt.datetime = T0, files: int = 3, file_bytes: int = INSTANCE_BYTES,
              ignored: int = 0) -> str:
        """A study in ``state`` (``STATES``, or "ignored": an accept rule ignored every instance, no job) with
        ``files`` instances, then ``ignored`` more in a CT series an accept rule ignored (after its job)."""
        number = next(self.counter)
        uid = f"1.2.826.0.1.3680043.10.{number}"
        with self.sessions.begin() as session:
            study = Study(study_instance_uid=uid, first_received_at=at, last_received_at=at, keep=state == "kept")
            series = self._series(session, study, f"{uid}.1", files, at,
                                  ignored_by="no-ct" if state == "ignored" else None, file_bytes=file_bytes)
            session.flush()
            newest = session.scalar(select(Instance.id).where(Instance.series_id == series.id)
                                    .order_by(Instance.id.desc()).limit(1))
            self._work(session, study, uid, newest, state, at)
            if ignored:
                self._series(session, study, f"{uid}.2", ignored, at, ignored_by="no-ct", file_bytes=file_bytes)
        return uid

    def _series(self, session, study: Study, series_uid: str, files: int, at: dt.datetime, *,
                ignored_by: str | None, file_bytes: int) -> Series:
        series = Series(study=study, series_instance_uid=series_uid, modality="CT" if ignored_by else "MR",
                        instance_count=files, first_received_at=at, last_received_at=at)
        session.add(series)
        for index in range(files):
            sop = f"{series_uid}.{index + 1}"
            relative = f"instances/{study.study_instance_uid}/{series_uid}/{sop}.dcm"
            path = self.data_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * file_bytes)
            session.add(Instance(series=series, sop_instance_uid=sop, sop_class_uid=MR,
                                 transfer_syntax_uid="1.2.840.10008.1.2.1", file_path=relative,
                                 file_size=file_bytes, sha256="0" * 64, received_at=at, ignored_by=ignored_by))
        session.flush()
        return series

    def _work(self, session, study: Study, uid: str, newest: int, state: str, at: dt.datetime) -> None:
        if state in ("receiving", "ignored"):
            return
        job_state = {"pending": "pending", "running": "running", "failed": "failed", "skipped": "skipped"}.get(
            state, "succeeded")
        finished = at + dt.timedelta(hours=1) if job_state not in ("pending", "running") else None
        job = Job(study=study, state=job_state, reason="test", last_instance_id=newest, attempts=1,
                  next_attempt_at=at, created_at=at, started_at=at, finished_at=finished,
                  last_error="no usable plane" if job_state == "skipped" else None)
        session.add(job)
        session.flush()
        if job_state != "succeeded":
            return
        self.results(session, uid, job.id, at=finished, delivery={
            "delivered": "delivered", "kept": "delivered", "delivery_pending": "pending",
            "delivery_failed": "failed"}.get(state))

    def results(self, session, uid: str, job_id: int, *, at: dt.datetime, delivery: str | None,
                sop_uid: str | None = None) -> StudyResult:
        """One result set (an SR file) of ``job_id``, queued for PACS in state ``delivery`` (None: no row)."""
        sop = sop_uid or f"{uid}.9.{job_id}"
        path = self.data_dir / "results" / uid / f"job-{job_id}" / f"SR_{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\1" * 1000)
        result = StudyResult(study_instance_uid=uid, job_id=job_id, created_at=at, joint="knee", laterality="R",
                             model_name="test", model_version="1", model_card={}, findings=[],
                             objects=[{"kind": "sr", "sop_instance_uid": sop, "series_instance_uid": f"{uid}.9",
                                       "sop_class_uid": SR, "path": str(path)}])
        session.add(result)
        if delivery is not None:
            session.add(DeliveryItem(
                destination="PACS", study_instance_uid=uid, series_instance_uid=f"{uid}.9", sop_instance_uid=sop,
                sop_class_uid=SR, kind="sr", file_path=str(path), state=delivery, attempts=1, queued_at=at,
                next_attempt_at=at, delivered_at=at + dt.timedelta(hours=1) if delivery == "delivered" else None))
        session.flush()
        return result

    def instance_files(self, uid: str) -> list[Path]:
        return sorted((self.data_dir / "instances" / uid).rglob("*.dcm"))

    def study_row(self, uid: str) -> Study:
        with self.sessions() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == uid))

    def events(self, kind: str) -> list[AuditEvent]:
        with self.sessions() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


@pytest.fixture
def node_settings(make_settings, database_url):
    def factory(**retention):
        return make_settings(**{"database.url": database_url, **{f"retention.{k}": v for k, v in retention.items()}})

    return factory


@pytest.fixture
def archive(node_settings) -> Archive:
    settings = node_settings()
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    yield Archive(settings.data_dir, make_session_factory(engine), itertools.count(1))
    engine.dispose()


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
