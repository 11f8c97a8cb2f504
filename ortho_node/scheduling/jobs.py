"""The job queue in the database: the truth about which study needs processing, whatever timers say.

States: pending -> running -> succeeded | skipped | failed | superseded (``skipped``: the study cannot be
analysed, the cause recorded in ``last_error``; a later job supersedes it as it does a success). A job covers the study's instances up to
``last_instance_id``; a study is queued again only when instances beyond that arrived (a superseding job,
never a duplicate) or on request. Failed attempts are retried with capped exponential backoff.

Claims (``claim``) take several due jobs at once, one per study, under this process's lease (node id and expiry,
``ortho_node.cluster.lease``; renewed by ``renew`` at each heartbeat while they run or wait). On PostgreSQL the
candidate rows and their studies are locked ``FOR UPDATE SKIP LOCKED``, so processes claiming at the same moment
never get the same job or two jobs of one study; a running job whose lease expired (its process died) is taken
over by the next claim. A job's outcome is recorded only by the process that holds it (a process that lost its
lease records nothing). On SQLite, one process, a conditional UPDATE guards the claim and a crash is recovered at
start-up (``requeue_interrupted``).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.audit.timeline import Step, entry
from ortho_node.audit.views import ignored_reason
from ortho_node.clock import RetryPolicy, as_utc
from ortho_node.cluster.lease import Lease
from ortho_node.cluster.wakeup import Channel, notify
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
    node_id: str = ""  # the process holding it
    lease_expires_at: dt.datetime | None = None  # at the claim; renewed by the holder's heartbeat


class JobQueue:
    def __init__(self, session_factory: sessionmaker[Session], time: TimeSource, retry: RetryPolicy, *,
                 lease: Lease | None = None) -> None:
        self._session_factory = session_factory
        self._time = time
        self.retry = retry
        self.lease = lease or Lease.local()

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
            study.decision_due_at = None  # decided, under the study's lock: no receiver takes it over
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
            notify(session, Channel.JOBS)  # idle processors wake when this commits
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
        """Claim up to ``limit`` due jobs (one per study, none of a study whose job another process runs) under
        this process's lease and return them; a job whose holder's lease expired is taken over."""
        if limit <= 0:
            return []
        now = self._time.now()
        claimable = self._claimable(now)
        with self._session_factory.begin() as session:
            query = (select(Job.id, Job.study_id, Job.state, Job.claimed_by, Job.lease_expires_at, Job.attempts,
                            Job.reason, Study.study_instance_uid).join(Study).where(claimable)
                     .order_by(Job.next_attempt_at, Job.id).limit(max(4 * limit, 16)))
            if self.lease.shared:  # rows another claimer holds are skipped, not waited for
                query = query.with_for_update(skip_locked=True, of=(Job.__table__, Study.__table__))
            candidates = session.execute(query).all()
            if not candidates:
                return []
            busy = set(session.scalars(select(Job.study_id).where(
                Job.study_id.in_({c.study_id for c in candidates}), Job.state == JobState.RUNNING.value,
                ~claimable)))
            claimed: list[ClaimedJob] = []
            for candidate in candidates:
                if len(claimed) == limit:
                    break
                if candidate.study_id in busy:
                    continue
                job = self._claim_one(session, candidate, claimable, now)
                if job is not None:
                    busy.add(candidate.study_id)
                    claimed.append(job)
        return claimed

    def _claimable(self, now: dt.datetime) -> ColumnElement[bool]:
        """Due pending jobs; on a shared database also running jobs whose holder's lease expired (never one of
        this process's own: it may still be running it)."""
        due = and_(Job.state == JobState.PENDING.value, Job.next_attempt_at <= now)
        if not self.lease.shared:
            return due
        expired = and_(Job.state == JobState.RUNNING.value,
                       or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
                       or_(Job.claimed_by.is_(None), Job.claimed_by != self.lease.node_id))
        return or_(due, expired)

    def _claim_one(self, session: Session, candidate, claimable: ColumnElement[bool],
                   now: dt.datetime) -> ClaimedJob | None:
        node, expires = self.lease.node_id, self.lease.expires(now)
        # Conditional update: on SQLite (no row locks) a second thread claiming the same job gets rowcount 0.
        result = session.execute(update(Job).where(Job.id == candidate.id, claimable)
                                 .values(state=JobState.RUNNING.value, attempts=Job.attempts + 1, started_at=now,
                                         claimed_by=node, lease_expires_at=expires)
                                 .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            return None
        uid, attempt = candidate.study_instance_uid, candidate.attempts + 1
        if candidate.state == JobState.RUNNING.value:
            self._record_takeover(session, candidate, now)
        details = {"job_id": candidate.id, "attempt": attempt, "node": node, "lease_expires_at": expires.isoformat()}
        message = f"job {candidate.id} started (attempt {attempt}) on node {node}"
        session.add(make_event(AuditKind.JOB_STARTED, message, study_instance_uid=uid, details=details))
        session.add(entry(Step.JOB_STARTED, uid, message, job_id=candidate.id, at=now, data=details))
        return ClaimedJob(candidate.id, uid, candidate.reason, attempt, node, expires)

    def _record_takeover(self, session: Session, candidate, now: dt.datetime) -> None:
        expired = as_utc(candidate.lease_expires_at)
        when = expired.isoformat() if expired else "never leased"
        message = (f"job {candidate.id} taken over by node {self.lease.node_id}: node {candidate.claimed_by}'s lease "
                   f"expired ({when})")
        details = {"job_id": candidate.id, "node": self.lease.node_id, "from_node": candidate.claimed_by,
                   "lease_expired_at": expired.isoformat() if expired else None, "attempts": candidate.attempts}
        session.add(make_event(AuditKind.JOB_TAKEN_OVER, message, severity=Severity.WARNING,
                               study_instance_uid=candidate.study_instance_uid, details=details))
        session.add(entry(Step.JOB_REQUEUED, candidate.study_instance_uid, message, job_id=candidate.id, at=now,
                          data=details))
        log.warning("study %s: %s", candidate.study_instance_uid, message)

    def renew(self) -> int:
        """Extend the lease on every job this process runs or holds (the heartbeat); returns how many."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            return session.execute(update(Job).where(Job.claimed_by == self.lease.node_id,
                                                     Job.state == JobState.RUNNING.value)
                                   .values(lease_expires_at=self.lease.expires(now))
                                   .execution_options(synchronize_session=False)).rowcount

    def release(self, job: ClaimedJob) -> bool:
        """Give a claimed job back unstarted (pending again, the attempt not counted): a processor stopping
        before it ran it, or one that claimed more than it will batch. False when this process no longer
        holds it."""
        with self._session_factory.begin() as session:
            row = session.get(Job, job.id, with_for_update=True)
            if not self._holds(row, job):
                return False
            row.state, row.attempts, row.next_attempt_at = JobState.PENDING.value, row.attempts - 1, self._time.now()
            row.claimed_by = row.lease_expires_at = None
            notify(session, Channel.JOBS)
        return True

    def _holds(self, row: Job | None, job: ClaimedJob) -> bool:
        """Whether this process still holds ``job`` (this claim of it): a process whose lease expired and whose
        job was taken over records nothing more on it."""
        if row is not None and row.state == JobState.RUNNING.value and row.claimed_by == self.lease.node_id \
                and row.attempts == job.attempt:
            return True
        holder = "nobody" if row is None else f"node {row.claimed_by} ({row.state}, attempt {row.attempts})"
        log.error("job %s: node %s no longer holds it (%s held it after its lease expired); its outcome here is "
                  "not recorded", job.id, self.lease.node_id, holder)
        return False

    def succeed(self, job: ClaimedJob) -> None:
        self._finish(job, JobState.SUCCEEDED, None)

    def skip(self, job: ClaimedJob, cause: str) -> None:
        """The study cannot be analysed: the job ends ``skipped`` with ``cause`` (never retried)."""
        self._finish(job, JobState.SKIPPED, cause)

    def _finish(self, job: ClaimedJob, state: JobState, cause: str | None) -> None:
        now = self._time.now()
        uid = job.study_instance_uid
        with self._session_factory.begin() as session:
            row = session.get(Job, job.id, with_for_update=True)
            if not self._holds(row, job):
                return
            row.state, row.finished_at, row.last_error = state.value, now, cause[:2000] if cause else None
            row.lease_expires_at = None  # claimed_by stays: which process ran it
            if state is JobState.SKIPPED:
                message = f"job {job.id} skipped: {cause}"
                session.add(make_event(AuditKind.JOB_SKIPPED, message, severity=Severity.WARNING,
                                       study_instance_uid=uid, details={"job_id": job.id, "cause": cause,
                                                                        "node": self.lease.node_id}))
                session.add(entry(Step.JOB_SKIPPED, uid, message, job_id=job.id, at=now, data={"cause": cause}))
                log.warning("study %s: %s", uid, message)
            else:
                session.add(make_event(AuditKind.JOB_SUCCEEDED, f"job {job.id} succeeded", study_instance_uid=uid,
                                       details={"job_id": job.id, "node": self.lease.node_id}))
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
            if until is not None:  # the timer's truth, for a receiver taking the decision over
                session.execute(update(Study).where(Study.study_instance_uid == study_uid,
                                                    Study.decision_due_at.is_not(None))
                                .values(decision_due_at=until).execution_options(synchronize_session=False))

    def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> dt.datetime | None:
        """Record a failed attempt; returns the retry time, or None when the job is given up (``permanent``:
        at once, the failure is in the study, not the machine)."""
        now = self._time.now()
        with self._session_factory.begin() as session:
            row = session.get(Job, job.id, with_for_update=True)
            if not self._holds(row, job):
                return None
            row.last_error, row.lease_expires_at = error[:2000], None
            details = {"job_id": job.id, "attempt": row.attempts, "error": error[:500], "node": self.lease.node_id}
            retry_at = None if permanent else self.retry.next_attempt(row.attempts, as_utc(row.created_at), now)
            if retry_at is not None:
                row.state, row.next_attempt_at, row.claimed_by = JobState.PENDING.value, retry_at, None
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

    def requeue_interrupted(self) -> int:
        """At start-up: jobs this process's earlier life left running go back to pending (the crashed attempt
        counts). On SQLite that is every running job (one process); on a shared database only those held under
        this node id (a configured ``cluster.node_id``): the others' leases expire and are taken over."""
        now = self._time.now()
        interrupted = Job.state == JobState.RUNNING.value
        if self.lease.shared:
            interrupted = and_(interrupted, Job.claimed_by == self.lease.node_id)
        with self._session_factory.begin() as session:
            rows = session.execute(select(Job, Study.study_instance_uid).join(Study).where(interrupted)).all()
            for job, study_uid in rows:
                job.state, job.next_attempt_at, job.claimed_by, job.lease_expires_at = \
                    JobState.PENDING.value, now, None, None
                session.add(make_event(AuditKind.JOB_REQUEUED, f"job {job.id} was running when the node stopped; "
                                       "queued again", severity=Severity.WARNING, study_instance_uid=study_uid,
                                       details={"job_id": job.id, "attempts": job.attempts}))
                session.add(entry(Step.JOB_REQUEUED, study_uid, f"job {job.id} was running when the node stopped; "
                                  "queued again", job_id=job.id, at=now, data={"attempts": job.attempts}))
                log.warning("job %s for study %s requeued after an interrupted run", job.id, study_uid)
        return len(rows)

    def take_overdue_decisions(self, overdue: dt.timedelta, limit: int = 100) -> list[tuple[str, dt.datetime]]:
        """Studies whose completeness decision is overdue by more than ``overdue`` (the receiver watching them
        died): each is stamped taken now, so that one receiver takes it, and returned with its last arrival."""
        now = self._time.now()
        cutoff = now - overdue
        taken: list[tuple[str, dt.datetime]] = []
        with self._session_factory.begin() as session:
            query = (select(Study.id, Study.study_instance_uid, Study.last_received_at)
                     .where(Study.decision_due_at <= cutoff).order_by(Study.decision_due_at).limit(limit))
            if self.lease.shared:
                query = query.with_for_update(skip_locked=True)
            for study_id, uid, last in session.execute(query).all():
                if session.execute(update(Study).where(Study.id == study_id, Study.decision_due_at <= cutoff)
                                   .values(decision_due_at=now)
                                   .execution_options(synchronize_session=False)).rowcount == 1:
                    taken.append((uid, as_utc(last)))
        return taken

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
