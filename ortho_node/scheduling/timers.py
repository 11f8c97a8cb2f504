"""Timers for the scheduler: one-shot and periodic callbacks on a :class:`~ortho_node.clock.Clock`.

Production uses APScheduler's background scheduler; tests use :class:`ManualTime`, whose ``advance``
fires due timers synchronously, so no test sleeps through a real timeout.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ortho_node.clock import Clock, SystemClock, utcnow

log = logging.getLogger(__name__)

Callback = Callable[[], None]


class TimeSource(Clock, Protocol):
    def call_at(self, key: str, when: dt.datetime, callback: Callback) -> None:
        """Run ``callback`` once at ``when``, replacing any timer armed under ``key``."""

    def every(self, key: str, seconds: float, callback: Callback) -> None: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...


class SystemTime(SystemClock):
    """Wall-clock time with APScheduler timers (in-memory job store: the database holds the truth)."""

    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(timezone=dt.timezone.utc,
                                              job_defaults={"coalesce": True, "misfire_grace_time": None,
                                                            "max_instances": 1})
        # APScheduler's shutdown(wait=True) holds its job store lock while it waits for running callbacks, and
        # a callback that arms a timer (a completeness check re-arming itself) needs that lock: a deadlock.
        # Once shutdown begins, timers are no longer armed (under this lock, so none is half-way through).
        self._arming = threading.Lock()
        self._stopping = False

    def call_at(self, key: str, when: dt.datetime, callback: Callback) -> None:
        with self._arming:
            if not self._stopping:
                self._scheduler.add_job(callback, DateTrigger(run_date=when), id=key, replace_existing=True)

    def every(self, key: str, seconds: float, callback: Callback) -> None:
        with self._arming:
            if not self._stopping:
                self._scheduler.add_job(callback, IntervalTrigger(seconds=seconds), id=key, replace_existing=True)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        with self._arming:
            self._stopping = True
        if self._scheduler.running:
            # APScheduler 3 marks itself stopped before it waits for its job-store lock, so a pass over due timers
            # holding that lock fails to remove the one-shot timer it has just run (JobLookupError) and its thread
            # dies with a traceback. Paused, then emptied under that lock, no pass is left in flight.
            self._scheduler.pause()
            self._scheduler.remove_all_jobs()
            self._scheduler.shutdown(wait=True)


class ManualTime:
    """A clock that moves only when told to; ``advance`` runs the timers that come due, in time order."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or utcnow()
        self._lock = threading.RLock()
        self._timers: dict[str, tuple[dt.datetime, Callback]] = {}
        self._periodic: dict[str, tuple[float, Callback]] = {}
        self._order = itertools.count()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def call_at(self, key: str, when: dt.datetime, callback: Callback) -> None:
        with self._lock:
            self._timers[key] = (when, callback)

    def every(self, key: str, seconds: float, callback: Callback) -> None:
        with self._lock:
            self._periodic[key] = (seconds, callback)

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        with self._lock:
            self._timers.clear()
            self._periodic.clear()

    def pending(self) -> dict[str, dt.datetime]:
        with self._lock:
            return {key: when for key, (when, _) in self._timers.items()}

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing each due timer at its own time (callbacks may arm new ones)."""
        with self._lock:
            target = self._now + dt.timedelta(seconds=seconds)
        while True:
            with self._lock:
                due = [(when, next(self._order), key) for key, (when, _) in self._timers.items() if when <= target]
                if not due:
                    self._now = target
                    break
                when, _, key = heapq.nsmallest(1, due)[0]
                _, callback = self._timers.pop(key)
                self._now = max(self._now, when)
            callback()  # outside the lock: callbacks arm timers from other threads too
        for _, callback in list(self._periodic.values()):
            callback()
