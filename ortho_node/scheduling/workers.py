"""The worker pool: claims due jobs from the queue and runs them on a bounded number of threads.

Concurrency bounds CPU work (assembly); stages that use the GPU take the pipeline's GPU lock, so GPU work
is serialized whatever the concurrency. ``run_job`` returns None when the study was processed, or the cause
when it cannot be analysed (the job ends ``skipped``; so does a :class:`StudyNotAnalysable` from the model).
A failure is recorded on the job (retried with backoff) and never stops the pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.exc import SQLAlchemyError

from ortho_node.prediction import StudyNotAnalysable
from ortho_node.scheduling.jobs import ClaimedJob, JobQueue
from ortho_node.scheduling.timers import TimeSource

log = logging.getLogger(__name__)

RETRY_TIMER = "jobs:next-attempt"


class WorkerPool:
    def __init__(self, queue: JobQueue, run_job: Callable[[ClaimedJob], str | None], time: TimeSource,
                 concurrency: int) -> None:
        self._queue = queue
        self._run_job = run_job
        self._time = time
        self._concurrency = concurrency
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ortho-job")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: dict[int, ClaimedJob] = {}  # claimed and not finished: bounds the next claim
        self._started: set[int] = set()  # begun on a worker thread (the rest can be given back at shutdown)
        self._active = 0  # submitted and not yet through their follow-up dispatch: what "idle" waits for
        self._closed = False

    def dispatch(self) -> None:
        """Start as many due jobs as there are free workers; arm a timer for the next retry."""
        try:
            self._dispatch()
        except SQLAlchemyError as exc:
            # The database is unreachable (restarting, the network cut): the periodic dispatch tries again;
            # one line instead of the scheduler's traceback every few seconds.
            log.error("job dispatch skipped: database unavailable (%s)", type(exc).__name__)

    def _dispatch(self) -> None:
        with self._lock:
            if self._closed:
                return
            jobs = self._queue.claim(self._concurrency - len(self._in_flight))
            for job in jobs:
                self._in_flight[job.id] = job
                self._active += 1
                self._executor.submit(self._run, job)
        when = self._queue.next_due()
        if when is not None and when > self._time.now():
            self._time.call_at(RETRY_TIMER, when, self.dispatch)

    def _run(self, job: ClaimedJob) -> None:
        with self._lock:
            self._started.add(job.id)
        log.info("job %s for study %s: attempt %d (%s)", job.id, job.study_instance_uid, job.attempt, job.reason)
        try:
            skipped = self._run_job(job)
        except StudyNotAnalysable as exc:  # the study's content, not the machine: retrying cannot help
            self._queue.skip(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded on it, then retried
            log.exception("job %s for study %s raised", job.id, job.study_instance_uid)
            self._queue.fail(job, f"{type(exc).__name__}: {exc}")
        else:
            if skipped is None:
                self._queue.succeed(job)
            else:
                self._queue.skip(job, skipped)
        finally:
            with self._lock:
                self._in_flight.pop(job.id, None)
                self._started.discard(job.id)
            try:
                self.dispatch()  # the next due job, or the timer for the next retry
            finally:
                with self._lock:
                    self._active -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is running and every follow-up timer is armed; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: self._active == 0, timeout=timeout)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)
        with self._lock:  # claimed but cancelled before a thread took them: pending again for any processor
            unstarted = [job for job_id, job in self._in_flight.items() if job_id not in self._started]
            for job in unstarted:
                self._in_flight.pop(job.id, None)
        for job in unstarted:
            self._queue.release(job)
