"""The scheduler as the node sees it: watcher (completeness timers), job queue, worker pool, recovery.

``start`` recovers first: jobs this process left running when it crashed are queued again, and studies with
instances that no job covers get their completeness timers back; then the pool starts and the job table is
polled for work queued by other processes (``ortho-node reprocess``, receivers of a cluster).

Its parts follow the process's role (``ortho_node.cluster.roles``): a receiver decides completeness and queues
jobs, a processor claims and runs them, a node of role ``all`` does both. On a shared database a receiver also
takes over the decisions of a receiver that died, and a processor takes over the jobs whose lease expired (the
claim does, at every poll).
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.assembler import Assembler
from ortho_node.assembly.completeness import CompletenessRules
from ortho_node.audit.trail import AuditKind
from ortho_node.cluster.lease import Lease
from ortho_node.cluster.roles import Role
from ortho_node.config import SchedulingSettings
from ortho_node.scheduling.pipeline import Pipeline
from ortho_node.scheduling.jobs import ClaimedJob, JobQueue, retry_policy
from ortho_node.scheduling.timers import SystemTime, TimeSource
from ortho_node.scheduling.watcher import StudyWatcher
from ortho_node.scheduling.workers import WorkerPool

log = logging.getLogger(__name__)

POLL_TIMER = "jobs:poll"
TAKE_OVER_TIMER = "studies:overdue-decisions"


class Scheduler:
    def __init__(self, settings: SchedulingSettings, session_factory: sessionmaker[Session], assembler: Assembler,
                 pipeline: Pipeline, *, time: TimeSource | None = None, lease: Lease | None = None,
                 role: Role = Role.ALL) -> None:
        self.time = time or SystemTime()
        self._settings = settings
        self._assembler = assembler
        self._pipeline = pipeline
        self.role = role
        self.queue = JobQueue(session_factory, self.time, retry_policy(settings), lease=lease)
        self.pool = WorkerPool(self.queue, self._run_job, self.time, settings.concurrency)
        self.rules = CompletenessRules.from_settings(settings)
        # A receiver alone leaves the jobs it queues to the processors (woken by NOTIFY when it commits).
        self.watcher = StudyWatcher(assembler, self.queue, self.time, self.rules,
                                    on_queued=self.pool.dispatch if role.processes else lambda: None)
        self.running = False  # for the health check

    def start(self) -> None:
        self.recover()
        if self.role.processes:
            self.time.every(POLL_TIMER, self._settings.poll_interval, self.pool.dispatch)
        if self.role.receives and self.queue.lease.shared:
            self.time.every(TAKE_OVER_TIMER, self._settings.poll_interval, self.take_over_decisions)
        self.time.start()
        self.running = True
        if self.role.processes:
            self.pool.dispatch()

    def recover(self) -> None:
        requeued = self.queue.requeue_interrupted() if self.role.processes else 0
        studies = self.queue.unprocessed_studies() if self.role.receives else []
        for study_uid, last_received in studies:
            self.watcher.watch(study_uid, last_received)
        if requeued or studies:
            log.info("recovery: %d interrupted jobs requeued, %d studies watched again", requeued, len(studies))

    def take_over_decisions(self) -> None:
        """Watch the studies whose decision is overdue: later than the settle time plus a lease, so a live
        receiver (which renews nothing here, but decides within its settle time) is never second-guessed."""
        overdue = self.rules.settle_time + self.queue.lease.duration
        try:
            self.watcher.take_over(overdue)
        except SQLAlchemyError as exc:  # database away: the next poll tries again
            log.error("overdue completeness decisions not read (%s)", type(exc).__name__)

    def wake(self) -> None:
        """Work was queued elsewhere (a NOTIFY): claim it now rather than at the next poll."""
        if self.role.processes and self.running:
            self.pool.dispatch()

    def reprocess(self, study_uid: str) -> int:
        job_id = self.queue.enqueue(study_uid, "reprocess requested", force=True, kind=AuditKind.JOB_QUEUED)
        self.pool.dispatch()
        return job_id  # type: ignore[return-value]  # force always queues or returns the pending job

    def stop(self) -> None:
        self.running = False
        self.time.shutdown()
        self.pool.shutdown(wait=True)

    def _run_job(self, job: ClaimedJob) -> str | None:
        """Assemble and process the job's study; returns the cause when it cannot be analysed."""
        assembled = self._assembler.assemble(job.study_instance_uid, job.reason)
        self._pipeline.run(assembled, job_id=job.id)
        return assembled.skip_reason

