"""Study watcher: listens to intake and decides, per study, when it is complete enough to process.

Intake calls ``instance_stored`` and ``association_ended`` on the C-STORE handler threads, so both only
note the time and arm the study's timer (a per-study debounce); the completeness check itself runs on the
timer thread, reads the header-only plan from the database and either queues a job or re-arms the timer
for the next deadline, recording in the study's timeline what it waits for and until when (the timers live
in memory; the database holds what an operator reads, and start-up recovery re-arms them from it).

Several receivers may share a study (its series sent to two of them): the check counts from the study's last
arrival at any receiver (``studies.last_received_at``) as well as this process's own activity, reads every
receiver's instances and association ends, and queues through the study's row lock, so the study is decided
once. The next decision's time is in the database (``studies.decision_due_at``); ``take_over`` watches the
studies whose decision is overdue because the receiver that watched them died.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from ortho_node.assembly.assembler import Assembler, StudyNotFound
from ortho_node.assembly.completeness import CompletenessRules, evaluate
from ortho_node.clock import as_utc
from ortho_node.intake.receive import StoredInstance
from ortho_node.scheduling.jobs import JobQueue
from ortho_node.scheduling.timers import TimeSource

log = logging.getLogger(__name__)

#: Wait before re-checking a study whose check failed (database briefly unavailable).
RETRY_CHECK = dt.timedelta(seconds=5)


def timer_key(study_uid: str) -> str:
    return f"study:{study_uid}"


class StudyWatcher:
    def __init__(self, assembler: Assembler, queue: JobQueue, time: TimeSource, rules: CompletenessRules,
                 on_queued: Callable[[], None]) -> None:
        self._assembler = assembler
        self._queue = queue
        self._time = time
        self._rules = rules
        self._on_queued = on_queued
        self._lock = threading.Lock()
        self._activity: dict[str, dt.datetime] = {}  # study UID -> last instance or association end
        self._armed: dict[str, dt.datetime] = {}  # study UID -> when its timer fires
        self._noted: dict[str, str] = {}  # study UID -> the waiting state last recorded (recorded once each)
        self._association_studies: dict[int, set[str]] = defaultdict(set)

    # -- intake listener: cheap, never blocks on the database -------------------------------------------
    def instance_stored(self, instance: StoredInstance) -> None:
        with self._lock:
            if instance.association_id is not None:
                self._association_studies[instance.association_id].add(instance.study_uid)
        self._touch(instance.study_uid, self._time.now())

    def association_ended(self, association_id: int | None, state: str) -> None:
        with self._lock:
            studies = self._association_studies.pop(association_id, set()) if association_id is not None else set()
        now = self._time.now()
        for study_uid in studies:
            self._touch(study_uid, now)

    # -- recovery and checks --------------------------------------------------------------------------
    def watch(self, study_uid: str, last_activity: dt.datetime) -> None:
        """Start watching a study found in the database at start-up (still receiving when the node stopped)."""
        self._touch(study_uid, last_activity)

    def _touch(self, study_uid: str, when: dt.datetime) -> None:
        with self._lock:
            self._activity[study_uid] = max(when, self._activity.get(study_uid, when))
            due = when + self._rules.settle_time
            armed = self._armed.get(study_uid)
            if armed is not None and armed <= due:
                return  # the armed timer fires first and re-arms itself if activity moved on (debounce)
            self._arm(study_uid, due)

    def _arm(self, study_uid: str, when: dt.datetime) -> None:
        self._armed[study_uid] = when
        self._time.call_at(timer_key(study_uid), when, lambda: self.check(study_uid))

    def check(self, study_uid: str) -> None:
        now = self._time.now()
        with self._lock:
            self._armed.pop(study_uid, None)
            last = self._activity.get(study_uid)
            if last is None:
                return
            if now < last + self._rules.settle_time:
                self._arm(study_uid, last + self._rules.settle_time)
                return
        try:
            self._decide(study_uid, last, now)
        except StudyNotFound:
            log.error("study %s is watched but not stored", study_uid)
            self._forget(study_uid, last)
        except SQLAlchemyError as exc:
            log.error("completeness check of study %s failed (%s); retrying", study_uid, type(exc).__name__)
            with self._lock:
                self._arm(study_uid, now + RETRY_CHECK)

    def take_over(self, overdue: dt.timedelta) -> int:
        """Watch the studies whose completeness decision is overdue by more than ``overdue`` (their receiver
        died or lost the database); returns how many this process took."""
        taken = 0
        for study_uid, last_received in self._queue.take_overdue_decisions(overdue):
            with self._lock:
                watched = study_uid in self._activity
            if not watched:
                log.warning("study %s: completeness decision overdue; taken over by this receiver", study_uid)
                self.watch(study_uid, last_received)
                taken += 1
        return taken

    def _decide(self, study_uid: str, last: dt.datetime, now: dt.datetime) -> None:
        plan, signals, study = self._assembler.plan(study_uid)
        # Instances of this study may arrive at another receiver: its last arrival anywhere counts.
        last_anywhere = max(last, as_utc(study.last_received_at))
        if last_anywhere > last and now < last_anywhere + self._rules.settle_time:
            with self._lock:
                self._activity[study_uid] = max(self._activity.get(study_uid, last_anywhere), last_anywhere)
                if study_uid not in self._armed:
                    self._arm(study_uid, last_anywhere + self._rules.settle_time)
            return
        readiness = evaluate(plan, signals, last_anywhere, now, self._rules)
        if not readiness.ready:
            if self._noted.get(study_uid) == readiness.reason:
                log.debug("study %s %s", study_uid, readiness.reason)
            else:  # a new waiting state: logged and recorded once
                log.info("study %s %s", study_uid, readiness.reason)
                self._queue.note_waiting(study_uid, readiness.reason, readiness.next_check, readiness.missing_planes)
                self._noted[study_uid] = readiness.reason
            with self._lock:
                if study_uid not in self._armed:  # activity meanwhile may have armed an earlier check
                    self._arm(study_uid, readiness.next_check)
            return
        self._noted.pop(study_uid, None)
        log.info("study %s ready: %s", study_uid, readiness.reason)
        job_id = self._queue.enqueue(study_uid, readiness.reason)
        self._forget(study_uid, last)
        if job_id is not None:
            self._on_queued()

    def _forget(self, study_uid: str, last: dt.datetime) -> None:
        with self._lock:
            if self._activity.get(study_uid) == last:  # nothing arrived meanwhile
                del self._activity[study_uid]
            elif study_uid not in self._armed:
                self._arm(study_uid, self._activity[study_uid] + self._rules.settle_time)
