"""The facts the purger decides on, for every study not yet fully purged, in a handful of grouped queries (one
pass over 10,000 studies reads no row twice), and the files behind a study's instances and results."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from ortho_node.db.models import DeliveryItem, Instance, Job, Series, ShadowResult, Study, StudyResult
from ortho_node.retention.rules import ACTIVE_STATES, StudyFacts


def study_facts(session: Session) -> list[StudyFacts]:
    """Every study with instances or results still on disk, oldest first."""
    studies = session.execute(
        select(Study.id, Study.study_instance_uid, Study.keep, Study.instances_purged_at, Study.results_purged_at,
               Study.first_received_at, Study.last_received_at)
        .where(or_(Study.instances_purged_at.is_(None), Study.results_purged_at.is_(None)))
        .order_by(Study.first_received_at, Study.id)).all()
    on_disk = Instance.purged_at.is_(None)  # files and bytes: of the instances not purged yet
    instances = {row.study_id: row for row in session.execute(
        select(Series.study_id, func.max(Instance.id).label("newest"),
               func.max(case((Instance.ignored_by.is_(None), Instance.id))).label("newest_analysed"),
               func.coalesce(func.sum(case((on_disk, 1), else_=0)), 0).label("files"),
               func.coalesce(func.sum(case((on_disk, Instance.file_size), else_=0)), 0).label("bytes"))
        .join(Instance, Instance.series_id == Series.id).group_by(Series.study_id))}
    jobs = _jobs(session)
    deliveries = _deliveries(session)
    results: dict[str, list[int]] = defaultdict(list)
    for uid, result_id in session.execute(select(StudyResult.study_instance_uid, StudyResult.id)
                                          .where(StudyResult.files_removed_at.is_(None))):
        results[uid].append(result_id)
    facts = []
    for study in studies:
        stored = instances.get(study.id)
        job = jobs.get(study.id, _NO_JOB)
        pending, failed, delivered_at = deliveries.get(study.study_instance_uid, (0, 0, None))
        facts.append(StudyFacts(
            id=study.id, uid=study.study_instance_uid, keep=bool(study.keep),
            instances_purged=study.instances_purged_at is not None, results_purged=study.results_purged_at is not None,
            first_received_at=study.first_received_at, last_received_at=study.last_received_at,
            newest_instance_id=stored.newest if stored else None,
            newest_analysed_id=stored.newest_analysed if stored else None,
            instance_files=int(stored.files) if stored else 0, instance_bytes=int(stored.bytes) if stored else 0,
            job_state=job.state, jobs_cover=job.covers, job_finished_at=job.finished_at, jobs_active=job.active,
            deliveries_pending=pending, deliveries_failed=failed, last_delivered_at=delivered_at,
            results_on_disk=tuple(sorted(results.get(study.study_instance_uid, ())))))
    return facts


@dataclass(frozen=True)
class _JobFacts:
    state: str | None
    covers: int
    finished_at: dt.datetime | None
    active: bool


_NO_JOB = _JobFacts(None, 0, None, False)


def _jobs(session: Session) -> dict[int, _JobFacts]:
    """Per study: the newest job's state and end, the highest instance any job covers, and whether one is active."""
    newest = select(Job.study_id, func.max(Job.id).label("id"), func.max(Job.last_instance_id).label("covers"),
                    func.sum(case((Job.state.in_(ACTIVE_STATES), 1), else_=0)).label("active")
                    ).group_by(Job.study_id).subquery()
    rows = session.execute(select(newest.c.study_id, Job.state, Job.finished_at, newest.c.covers, newest.c.active)
                           .join(Job, Job.id == newest.c.id))
    return {row.study_id: _JobFacts(row.state, row.covers or 0, row.finished_at, bool(row.active)) for row in rows}


def _deliveries(session: Session) -> dict[str, tuple[int, int, dt.datetime | None]]:
    """Per study UID: deliveries pending, deliveries failed, the last acknowledgement."""
    found: dict[str, list] = defaultdict(lambda: [0, 0, None])
    for uid, state, count, delivered in session.execute(
            select(DeliveryItem.study_instance_uid, DeliveryItem.state, func.count(DeliveryItem.id),
                   func.max(DeliveryItem.delivered_at)).group_by(DeliveryItem.study_instance_uid, DeliveryItem.state)):
        entry = found[uid]
        if state == "pending":
            entry[0] += count
        elif state == "failed":
            entry[1] += count
        elif delivered is not None:
            entry[2] = delivered if entry[2] is None else max(entry[2], delivered)
    return {uid: (pending, failed, delivered) for uid, (pending, failed, delivered) in found.items()}


def instance_files(session: Session, study_id: int, newest_instance_id: int) -> list[str]:
    """The data-folder-relative files of a study's instances up to ``newest_instance_id`` (an instance stored
    after the decision is not the purger's to delete) not purged already."""
    return list(session.scalars(select(Instance.file_path).join(Series, Instance.series_id == Series.id)
                                .where(Series.study_id == study_id, Instance.id <= newest_instance_id,
                                       Instance.purged_at.is_(None))))


def result_paths(session: Session, result_ids: tuple[int, ...] | list[int]) -> dict[int, list[Path]]:
    """Each result set's object files, as recorded when they were built."""
    rows = session.execute(select(StudyResult.id, StudyResult.objects).where(StudyResult.id.in_(list(result_ids))))
    return {result_id: [Path(obj["path"]) for obj in objects or () if obj.get("path")] for result_id, objects in rows}


def shadow_paths(session: Session, study_uid: str, data_dir: Path) -> list[Path]:
    """The study's shadow-mode objects (never delivered, kept for the agreement report): they go with its
    results."""
    rows = session.scalars(select(ShadowResult.objects).where(ShadowResult.study_instance_uid == study_uid))
    return [data_dir / path for objects in rows for path in objects or ()]
