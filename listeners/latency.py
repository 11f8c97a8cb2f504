"""Burst-mode polling for pynetdicom associations while instances are streaming in.

pynetdicom's DUL thread polls its socket and queues, sleeping ``_run_loop_delay`` (1 ms) after every idle
loop; with synchronous C-STORE that sleep is paid several times per instance and caps a single
association far below what the disk allows. While an association is actively storing we set the delay to
0 (the loop only yields the GIL), and a ticker puts it back to pynetdicom's default once the association
has been quiet for ``idle_after`` seconds, so idle associations cost no CPU.
"""

from __future__ import annotations

import threading
import time
from typing import Any

DEFAULT_DELAY = 0.001


class BurstPolling:
    def __init__(self, *, idle_after: float = 0.02, tick: float = 0.01) -> None:
        self._idle_after = idle_after
        self._tick = tick
        self._active: dict[Any, float] = {}  # association -> monotonic time of its last store
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storescp-burst-polling", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def stored(self, assoc: Any) -> None:
        """An instance was just handled on ``assoc``: poll without sleeping until it goes quiet."""
        dul = getattr(assoc, "dul", None)
        if dul is None or not hasattr(dul, "_run_loop_delay"):
            return  # a pynetdicom without the tuning knob: keep its default behaviour
        with self._lock:
            self._active[assoc] = time.monotonic()
        dul._run_loop_delay = 0.0

    def forget(self, assoc: Any) -> None:
        with self._lock:
            self._active.pop(assoc, None)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                quiet = [a for a, last in self._active.items() if now - last > self._idle_after]
                for assoc in quiet:
                    del self._active[assoc]
            for assoc in quiet:
                assoc.dul._run_loop_delay = DEFAULT_DELAY
