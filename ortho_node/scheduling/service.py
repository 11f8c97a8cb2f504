"""The scheduler as the node sees it: watcher (completeness timers), job queue, worker pool, recovery.

``start`` recovers first: jobs left running by a crash are queued again, and studies with instances that
no job covers get their completeness timers back; then the pool starts and the job table is polled for work
queued by other processes (``ortho-node reprocess``).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.assembler import Assembler
from ortho_node.assembly.completeness import CompletenessRules
from ortho_node.audit.trail import AuditKind
from ortho_node.config import SchedulingSettings
from ortho_node.scheduling.pipeline import Pipeline
from ortho_node.scheduling.jobs import ClaimedJob, JobQueue, retry_policy
from ortho_node.scheduling.timers import SystemTime, TimeSource
from ortho_node.scheduling.watcher import StudyWatcher
from ortho_node.scheduling.workers import WorkerPool

log = logging.getLogger(__name__)

POLL_TIMER = "jobs:poll"


class Scheduler:
    def __init__(self, settings: SchedulingSettings, session_factory: sessionmaker[Session], assembler: Assembler,
                 pipeline: Pipeline, *, time: TimeSource | None = None) -> None:
        self.time = time or SystemTime()
        self._settings = settings
        self._assembler = assembler
        self._pipeline = pipeline
        self.queue = JobQueue(session_factory, self.time, retry_policy(settings))
        self.pool = WorkerPool(self.queue, self._run_job, self.time, settings.concurrency)
        self.watcher = StudyWatcher(assembler, self.queue, self.time, CompletenessRules.from_settings(settings),
                                    on_queued=self.pool.dispatch)
        self.running = False  # for the health check

    def start(self) -> None:
        self.recover()
        self.time.every(POLL_TIMER, self._settings.poll_interval, self.pool.dispatch)
        self.time.start()
        self.running = True
        self.pool.dispatch()

    def recover(self) -> None:
        requeued = self.queue.requeue_running()
        studies = self.queue.unprocessed_studies()
        for study_uid, last_received in studies:
            self.watcher.watch(study_uid, last_received)
        if requeued or studies:
            log.info("recovery: %d interrupted jobs requeued, %d studies watched again", requeued, len(studies))

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
