"""The heartbeat: every ``cluster.heartbeat_interval`` seconds the node's row is stamped and every lease the
process holds is renewed, on a thread of its own so that a long GPU stage never delays it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from ortho_node.cluster.registry import NodeRegistry

log = logging.getLogger(__name__)

#: Renews the leases of one kind of work held by this process; returns how many it renewed.
Renewal = Callable[[], int]


class Heartbeat:
    def __init__(self, registry: NodeRegistry, node_id: str, interval: float, renewals: Sequence[Renewal],
                 *, on_lost: Callable[[], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self._registry = registry
        self._node_id = node_id
        self._interval = interval
        self._renewals = tuple(renewals)
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self) -> bool:
        """One heartbeat; False when the database could not take it (the leases run on towards expiry)."""
        try:
            if not self._registry.beat(self._node_id) and self._on_lost is not None:
                self._on_lost()  # the row was removed while we ran: register again
            for renew in self._renewals:
                renew()
        except SQLAlchemyError as exc:
            log.error("heartbeat of node %s failed (database unavailable: %s); leases expire after %d missed "
                      "heartbeats", self._node_id, type(exc).__name__, self._registry.missed_heartbeats)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.beat_once()
