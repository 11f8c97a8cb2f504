"""Burst-mode polling: no sleeping while an association stores, pynetdicom's default once it is quiet."""

from __future__ import annotations

import time
from listeners.latency import DEFAULT_DELAY, BurstPolling
from pynetdicom.dul import DULServiceProvider


class _Dul:
    _run_loop_delay = DEFAULT_DELAY


class _Association:
    def __init__(self) -> None:
        self.dul = _Dul()


def test_pynetdicom_still_has_the_polling_knob():
    # If pynetdicom renames it, BurstPolling silently keeps the default: this test says so loudly.
    assert "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names


def test_delay_is_zero_while_storing_and_restored_when_quiet():
    polling = BurstPolling(idle_after=0.1, tick=0.01)
    polling.start()
    try:
        assoc = _Association()
        for _ in range(20):  # an instance every 10 ms keeps the association in burst mode
            polling.stored(assoc)
            time.sleep(0.01)
            assert assoc.dul._run_loop_delay == 0.0
        deadline = time.monotonic() + 2
        while assoc.dul._run_loop_delay == 0.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert assoc.dul._run_loop_delay == DEFAULT_DELAY
    finally:
        polling.stop()
