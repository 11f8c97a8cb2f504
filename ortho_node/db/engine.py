"""Engine and session creation: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


def make_engine(url: str, *, busy_timeout: float = 5.0) -> Engine:
    """Create the engine for ``url``; SQLite gets WAL, full fsync on commit and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout})
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args={"connect_timeout": 5}
    )


def _sqlite_pragmas(busy_timeout: float):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; after a power loss the last commits may
        # roll back, but every acknowledged instance's file was fsynced first and start-up recovery
        # (ortho_node.intake.recovery) rebuilds rows from files. This halves fsyncs per instance.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    return on_connect


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
