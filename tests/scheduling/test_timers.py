"""The production timers (APScheduler's background scheduler): stopping them while a pass over due timers is under way."""

from __future__ import annotations

import threading

from apscheduler.triggers.date import DateTrigger

from ortho_node.clock import utcnow
from ortho_node.scheduling.timers import SystemTime


class _HeldDateTrigger(DateTrigger):
    """A one-shot trigger whose first look past its run time (APScheduler's pass over due jobs, which holds the
    job-store lock) waits until the test lets it go on."""

    def __init__(self, run_date, entered: threading.Event, release: threading.Event) -> None:
        super().__init__(run_date=run_date)
        self._entered, self._release, self._held = entered, release, False

    def get_next_fire_time(self, previous_fire_time, now):
        if previous_fire_time is not None and not self._held:
            self._held = True
            self._entered.set()
            self._release.wait(10)
        return super().get_next_fire_time(previous_fire_time, now)


def test_shutdown_during_a_pass_over_due_timers_ends_the_scheduler_thread_without_an_error(monkeypatch):
    # APScheduler 3 marks itself stopped before it waits for its job-store lock; the pass holding that lock then
    # looked for the one-shot job it had just run among the jobs not yet started, failed (JobLookupError) and its
    # thread died with a traceback in the log.
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    ran, entered, release = threading.Event(), threading.Event(), threading.Event()
    timers = SystemTime()
    timers.start()
    timers._scheduler.add_job(ran.set, _HeldDateTrigger(utcnow(), entered, release), id="due-now")
    assert entered.wait(10), "the scheduler never looked at its due timer"

    stopper = threading.Thread(target=timers.shutdown)
    stopper.start()
    stopper.join(0.3)  # shutdown has begun and waits for the pass
    release.set()
    stopper.join(10)

    assert not stopper.is_alive(), "shutdown never returned"
    assert ran.is_set()
    assert not timers._scheduler.running
    assert errors == []
