"""Read-only views of what the node holds, shared by the CLI and (later) the admin console."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ortho_node.db.models import Job, Series, Study, StudyAssembly


def list_studies(session_factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Received studies, newest first, with their series and instance counts, the latest assembly decision
    (joint, laterality, planes with the chosen series and why, completeness reason) and job state."""
    with session_factory() as session:
        studies = session.scalars(
            select(Study).options(selectinload(Study.series)).order_by(Study.last_received_at.desc())
        ).all()
        latest_jobs = _latest_by_study(session, Job, Job.id)
        assemblies = _latest_by_study(session, StudyAssembly, StudyAssembly.id)
        return [_study(study, latest_jobs.get(study.id), assemblies.get(study.id)) for study in studies]


def _latest_by_study(session: Session, model, order_column) -> dict[int, Any]:
    latest: dict[int, Any] = {}
    for row in session.scalars(select(model).order_by(order_column)):
        latest[row.study_id] = row
    return latest


def list_jobs(session_factory: sessionmaker[Session], *, limit: int = 200) -> list[dict[str, Any]]:
    """The most recent jobs, newest first."""
    with session_factory() as session:
        rows = session.execute(select(Job, Study.study_instance_uid).join(Study).order_by(Job.id.desc())
                               .limit(limit)).all()
        return [_job(job, uid) for job, uid in rows]


def _job(job: Job, study_uid: str | None = None) -> dict[str, Any]:
    entry = {"id": job.id, "state": job.state, "reason": job.reason, "attempts": job.attempts,
             "next_attempt_at": job.next_attempt_at, "last_error": job.last_error,
             "supersedes_job_id": job.supersedes_job_id, "created_at": job.created_at,
             "started_at": job.started_at, "finished_at": job.finished_at}
    if study_uid is not None:
        entry["study_instance_uid"] = study_uid
    return entry


def _assembly(record: StudyAssembly | None) -> dict[str, Any] | None:
    if record is None:
        return None
    summary = record.summary
    return {"job_id": record.job_id, "outcome": record.outcome, "joint": record.joint,
            "joint_reason": summary.get("joint_reason"), "laterality": record.laterality,
            "laterality_reason": summary.get("laterality_reason"), "conflicts": summary.get("conflicts", []),
            "planes": summary.get("planes", {}), "missing_planes": summary.get("missing_planes", []),
            "completeness_reason": record.completeness_reason, "skip_reason": record.skip_reason,
            "excluded": summary.get("excluded", [])}


def _study(study: Study, job: Job | None = None, assembly: StudyAssembly | None = None) -> dict[str, Any]:
    series = [_series(s) for s in study.series]
    return {
        "study_instance_uid": study.study_instance_uid,
        "study_description": study.study_description,
        "first_received_at": study.first_received_at,
        "last_received_at": study.last_received_at,
        "instance_count": sum(s["instance_count"] for s in series),
        "series": series,
        "job": _job(job) if job is not None else None,
        "assembly": _assembly(assembly),
    }


def _series(series: Series) -> dict[str, Any]:
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "modality": series.modality,
        "series_description": series.series_description,
        "body_part_examined": series.body_part_examined,
        "laterality": series.laterality,
        "instance_count": series.instance_count,
    }
