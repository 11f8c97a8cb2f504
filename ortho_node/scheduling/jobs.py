"""The job queue in the database: the truth about which study needs processing, whatever timers say.

States: pending -> running -> succeeded | skipped | failed | superseded (``skipped``: the study cannot be
analysed, the cause recorded in ``last_error``; a later job supersedes it as it does a success). A job covers the study's instances up to
``last_instance_id``; a study is queued again only when instances beyond that arrived (a superseding job,
never a duplicate) or on request. Failed attempts are retried with capped exponential backoff.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.views import ignored_reason
from ortho_node.clock import RetryPolicy, as_utc
from ortho_node.config import SchedulingSettings
from ortho_node.db.models import Instance, Job, Series, Study
from ortho_node.scheduling.timers import TimeSource

log = logging.getLogger(__name__)


class NotAnalysable(Exception):
    """A study a job could do nothing with: its instances were purged, or an accept rule ignored every one."""


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # the study cannot be analysed (no usable plane, unknown joint, no model for it)
    FAILED = "failed"
    SUPERSEDED = "superseded"


#: Finished jobs with an outcome; a newer job of the same study supersedes them.
OUTCOMES = (JobState.SUCCEEDED, JobState.SKIPPED)


def retry_policy(settings: SchedulingSettings) -> RetryPolicy:
    """The jobs' backoff: ``retry_base`` seconds doubled per attempt up to ``retry_cap``, for at most
    ``max_attempts`` attempts however long that takes."""
    return RetryPolicy.of_seconds(settings.retry_base, settings.retry_cap, retry_for=None,
                                  max_attempts=settings.max_attempts)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_instance_uid: str
    reason: str
    attempt: int


class JobQueue:
    def __init__(self, session_factory: sessionmaker[Session], time: TimeSource, retry: RetryPolicy) -> None:
        self._session_factory = session_factory
        self._time = time
        self.retry = retry

    def enqueue(self, study_uid: str, reason: str, *, force: bool = False,
                kind: AuditKind = AuditKind.STUDY_READY) -> int | None:
        """Queue the study; returns the job id, or None when its instances are already covered (or none could be
        analysed). Raises :class:`NotAnalysable` for a ``force``d one with nothing to analyse (why, one line)."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            # Locking the study row serializes enqueues of one study across threads and processes.
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid).with_for_update())
            if study is None:
                raise LookupError(f"study {study_uid} is not stored")
            refusal = nothing_to_analyse(session, study)
            if refusal is not None:
                if force:
                    raise NotAnalysable(f"study {study_uid} not queued: {refusal}")
                return None
            newest = session.scalar(select(func.max(Instance.id)).join(Series).where(
                Series.study_id == study.id, Instance.ignored_by.is_(None)))  # accept rules' ignored: never analysed
            jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc())).all()
            pending = next((j for j in jobs if j.state == JobState.PENDING), None)
            if pending is not None:  # one pending job per study: it will see everything stored by then
                pending.last_instance_id, pending.reason = newest or 0, reason
                return pending.id
            if not force and any(j.last_instance_id >= (newest or 0) for j in jobs):
                return None
            previous = next((j for j in jobs if j.state in (JobState.RUNNING, *OUTCOMES)), None)
            job = Job(study_id=study.id, state=JobState.PENDING.value, reason=reason, last_instance_id=newest or 0,
                      supersedes_job_id=previous.id if previous else None, attempts=0, next_attempt_at=now,
                      created_at=now)
            session.add(job)
            session.flush()
            message = f"job {job.id} queued: {reason}"
            if previous is not None:
                message += f" (supersedes job {previous.id})"
            session.add(make_event(kind, message, study_instance_uid=study_uid,
                                   details={"job_id": job.id, "supersedes_job_id": job.supersedes_job_id}))
            step = Step.READY if kind is AuditKind.STUDY_READY else Step.REQUESTED
            session.add(entry(step, study_uid, message, job_id=job.id, at=now, data={
                "reason": reason, "first_received_at": as_utc(study.first_received_at).isoformat(),
                "last_received_at": as_utc(study.last_received_at).isoformat(), "last_instance_id": newest or 0,
                "supersedes_job_id": job.supersedes_job_id}))
            log.info("study %s: %s", study_uid, message)
            return job.id

    def claim(self, limit: int) -> list[ClaimedJob]:
        """Mark up to ``limit`` due pending jobs running (one per study at a time) and return them."""
        if limit <= 0:
            return []
        now = self._time.now()
        claimed: list[ClaimedJob] = []
        with self._session_factory.begin() as session:
            busy = set(session.scalars(select(Job.study_id).where(Job.state == JobState.RUNNING.value)))
            due = session.execute(
                select(Job, Study.study_instance_uid).join(Study).where(Job.state == JobState.PENDING.value,
                                                                        Job.next_attempt_at <= now)
                .order_by(Job.next_attempt_at, Job.id)).all()
            for job, study_uid in due:
                if len(claimed) == limit or job.study_id in busy:
                    continue
                # Conditional update: a second node or thread claiming the same job gets rowcount 0.
                result = session.execute(update(Job).where(Job.id == job.id, Job.state == JobState.PENDING.value)
                                         .values(state=JobState.RUNNING.value, attempts=Job.attempts + 1,
                                                 started_at=now).execution_options(synchronize_session=False))
                if result.rowcount != 1:
                    continue
                busy.add(job.study_id)
                claimed.append(ClaimedJob(job.id, study_uid, job.reason, job.attempts + 1))
                session.add(make_event(AuditKind.JOB_STARTED, f"job {job.id} started (attempt {job.attempts + 1})",
                                       study_instance_uid=study_uid, details={"job_id": job.id}))
                session.add(entry(Step.JOB_STARTED, study_uid, f"job {job.id} started (attempt {job.attempts + 1})",
                                  job_id=job.id, at=now, data={"attempt": job.attempts + 1}))
        return claimed

    def succeed(self, job: ClaimedJob) -> None:
        self._finish(job, JobState.SUCCEEDED, None)

    def skip(self, job: ClaimedJob, cause: str) -> None:
        """The study cannot be analysed: the job ends ``skipped`` with ``cause`` (never retried)."""
        self._finish(job, JobState.SKIPPED, cause)

    def _finish(self, job: ClaimedJob, state: JobState, cause: str | None) -> None:
        now = self._time.now()
        uid = job.study_instance_uid
        with self._session_factory.begin() as session:
            row = session.get(Job, job.id)
            row.state, row.finished_at, row.last_error = state.value, now, cause[:2000] if cause else None
            if state is JobState.SKIPPED:
                message = f"job {job.id} skipped: {cause}"
                session.add(make_event(AuditKind.JOB_SKIPPED, message, severity=Severity.WARNING,
                                       study_instance_uid=uid, details={"job_id": job.id, "cause": cause}))
                session.add(entry(Step.JOB_SKIPPED, uid, message, job_id=job.id, at=now, data={"cause": cause}))
                log.warning("study %s: %s", uid, message)
            else:
                session.add(make_event(AuditKind.JOB_SUCCEEDED, f"job {job.id} succeeded", study_instance_uid=uid,
                                       details={"job_id": job.id}))
                session.add(entry(Step.JOB_SUCCEEDED, uid, f"job {job.id} succeeded", job_id=job.id, at=now))
            older = session.scalars(select(Job).where(Job.study_id == row.study_id, Job.id < row.id,
                                                      Job.state.in_([s.value for s in OUTCOMES]))).all()
            for old in older:  # their results (or skip decision) are replaced by this job's
                old.state = JobState.SUPERSEDED.value
                session.add(make_event(AuditKind.JOB_SUPERSEDED, f"job {old.id} superseded by job {job.id}",
                                       study_instance_uid=uid, details={"job_id": old.id, "superseded_by": job.id}))
                session.add(entry(Step.JOB_SUPERSEDED, uid, f"job {old.id} superseded by job {job.id}", job_id=old.id,
                                  at=now, data={"superseded_by": job.id}))

    def note_waiting(self, study_uid: str, waiting: str, until: dt.datetime | None,
                     missing_planes: tuple[str, ...]) -> None:
        """Record what a study that is not ready yet waits for and until when (the completeness timer's
        state, for ``studies``, the timeline and the console)."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            session.add(entry(Step.WAITING, study_uid, waiting, at=now, data={
                "until": until.isoformat() if until else None, "missing_planes": list(missing_planes)}))

    def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> dt.datetime | None:
        """Record a failed attempt; returns the retry time, or None when the job is given up (``permanent``:
        at once, the failure is in the study, not the machine)."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            row = session.get(Job, job.id)
            row.last_error = error[:2000]
            details = {"job_id": job.id, "attempt": row.attempts, "error": error[:500]}
            retry_at = None if permanent else self.retry.next_attempt(row.attempts, as_utc(row.created_at), now)
            if retry_at is not None:
                row.state, row.next_attempt_at = JobState.PENDING.value, retry_at
                session.add(make_event(AuditKind.JOB_RETRY, f"job {job.id} attempt {row.attempts} failed; retry at "
                                       f"{retry_at.isoformat()}", severity=Severity.WARNING,
                                       study_instance_uid=job.study_instance_uid, details=details))
                session.add(entry(Step.JOB_RETRY, job.study_instance_uid, f"attempt {row.attempts} failed: "
                                  f"{error[:500]}; retry at {retry_at.isoformat()}", job_id=job.id, at=now,
                                  data=details))
                log.warning("job %s for study %s failed (attempt %d): %s; retry at %s", job.id,
                            job.study_instance_uid, row.attempts, error, retry_at.isoformat())
                return retry_at
            row.state, row.finished_at = JobState.FAILED.value, now
            details["permanent"] = permanent
            session.add(make_event(AuditKind.JOB_FAILED, f"job {job.id} failed after {row.attempts} attempts",
                                   severity=Severity.ERROR, study_instance_uid=job.study_instance_uid,
                                   details=details))
            session.add(entry(Step.JOB_FAILED, job.study_instance_uid, f"job {job.id} failed after {row.attempts} "
                              f"attempts: {error[:500]}", job_id=job.id, at=now, data=details))
            log.error("job %s for study %s failed for good after %d attempts: %s", job.id,
                      job.study_instance_uid, row.attempts, error)
            return None

    def requeue_running(self) -> int:
        """At start-up: jobs left running by a crash go back to pending (the crashed attempt counts)."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            rows = session.execute(select(Job, Study.study_instance_uid).join(Study)
                                   .where(Job.state == JobState.RUNNING.value)).all()
            for job, study_uid in rows:
                job.state, job.next_attempt_at = JobState.PENDING.value, now
                session.add(make_event(AuditKind.JOB_REQUEUED, f"job {job.id} was running when the node stopped; "
                                       "queued again", severity=Severity.WARNING, study_instance_uid=study_uid,
                                       details={"job_id": job.id, "attempts": job.attempts}))
                session.add(entry(Step.JOB_REQUEUED, study_uid, f"job {job.id} was running when the node stopped; "
                                  "queued again", job_id=job.id, at=now, data={"attempts": job.attempts}))
                log.warning("job %s for study %s requeued after an interrupted run", job.id, study_uid)
        return len(rows)

    def next_due(self) -> dt.datetime | None:
        with self._session_factory() as session:
            when = session.scalar(select(func.min(Job.next_attempt_at)).where(Job.state == JobState.PENDING.value))
        return None if when is None else as_utc(when)

    def unprocessed_studies(self) -> list[tuple[str, dt.datetime]]:
        """Studies with instances no job covers yet (still receiving, or interrupted before a decision)."""
        with self._session_factory() as session:
            newest = (select(Series.study_id, func.max(Instance.id).label("newest")).join(Series)
                      .where(Instance.ignored_by.is_(None)).group_by(Series.study_id).subquery())
            covered = (select(Job.study_id, func.max(Job.last_instance_id).label("covered"))
                       .group_by(Job.study_id).subquery())
            rows = session.execute(
                select(Study.study_instance_uid, Study.last_received_at)
                .join(newest, newest.c.study_id == Study.id)
                .outerjoin(covered, covered.c.study_id == Study.id)
                .where(newest.c.newest > func.coalesce(covered.c.covered, 0))).all()
        return [(uid, as_utc(at)) for uid, at in rows]


def nothing_to_analyse(session: Session, study: Study) -> str | None:
    """Why a job could do nothing with the study (every instance it would analyse was purged, or an accept
    rule ignored every one), in one line; None when some instance is on disk and not ignored."""
    of_study = select(Instance.id).join(Series).where(Series.study_id == study.id)
    if session.scalar(of_study.where(Instance.ignored_by.is_(None), Instance.purged_at.is_(None)).limit(1)):
        return None
    if session.scalar(of_study.where(Instance.ignored_by.is_(None)).limit(1)):
        when = (f" on {as_utc(study.instances_purged_at):%Y-%m-%d %H:%M} UTC"
                if study.instances_purged_at is not None else "")
        why = f" ({study.purge_reason})" if study.purge_reason else ""
        return f"its received instances were deleted{when}{why}: send the study again to analyse it"
    rules = sorted(set(session.scalars(select(Instance.ignored_by).join(Series).where(
        Series.study_id == study.id, Instance.ignored_by.is_not(None)).distinct())))
    if not rules:
        return None  # no instance rows at all
    return f"all instances {' / '.join(ignored_reason(rule) for rule in rules)}: change [accept] first"
