"""Wake-ups through PostgreSQL LISTEN/NOTIFY: a queued job or delivery wakes idle processors at once.

``notify`` is called inside the transaction that queues the work, so the notification is delivered when (and
only if) it commits. ``Listener`` holds one connection of its own that LISTENs on the channels and calls the
channel's callback for each notification. Polling (``scheduling.poll_interval``, ``delivery.poll_interval``)
stays the fallback: a notification lost while the listener reconnects delays work by one poll at most. On
SQLite there is one process, woken directly, and both are no-ops.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: Seconds between reconnection attempts after the listening connection failed.
RECONNECT_AFTER = 5.0
#: Seconds to gather the rest of a burst of notifications after the first.
BURST = 0.01


class Channel(str, enum.Enum):
    JOBS = "ortho_node_jobs"  # a job was queued (or became due again)
    DELIVERIES = "ortho_node_deliveries"  # result objects were queued for delivery


def notify(session: Session, channel: Channel) -> None:
    """Notify ``channel`` when ``session``'s transaction commits (PostgreSQL; nothing on SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel.value})


class Listener:
    """LISTENs on ``callbacks``' channels on its own connection and thread; reconnects after a failure."""

    def __init__(self, engine: Engine, callbacks: Mapping[Channel, Callable[[], None]], *,
                 check_every: float = 1.0) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("LISTEN/NOTIFY needs PostgreSQL")
        # psycopg's own connection string: the SQLAlchemy driver suffix (+psycopg) is not part of it.
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._callbacks = dict(callbacks)
        self._check_every = check_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while LISTENing (tests wait for it)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="listen-notify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._check_every + 10)
            self._thread = None

    def _run(self) -> None:
        import psycopg  # the PostgreSQL driver, present wherever a PostgreSQL URL is configured

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as connection:
                    for channel in self._callbacks:
                        connection.execute(f'LISTEN "{channel.value}"')
                    self.listening.set()
                    self._drain(connection)
            except psycopg.Error as exc:
                log.warning("LISTEN connection failed (%s); polling until it is back", type(exc).__name__)
            finally:
                self.listening.clear()
            self._stop.wait(RECONNECT_AFTER)

    def _drain(self, connection) -> None:
        while not self._stop.is_set():
            woken = {Channel(m.channel) for m in connection.notifies(timeout=self._check_every, stop_after=1)}
            if woken:  # a burst (a receiver queueing many studies) wakes each channel once
                woken |= {Channel(m.channel) for m in connection.notifies(timeout=BURST)}
            for channel in woken:
                try:
                    self._callbacks[channel]()
                except Exception:  # noqa: BLE001 - a failing wake-up must not end the listener; polling still runs
                    log.exception("wake-up for %s failed", channel.value)
