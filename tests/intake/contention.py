"""Real contention on a node's database for the intake tests: another client holding the lock that inserting instance
rows needs, and a count of the node's transactions that inserted instance rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from ortho_node.intake import catalog as catalog_module


class InstancesLocked:
    """Another client's transaction holding the lock that inserting instance rows needs (SQLite: the database's
    write lock; PostgreSQL: an EXCLUSIVE lock on ``instances``) until :meth:`release`; reads go on meanwhile."""

    def __init__(self, url: str) -> None:
        self.sqlite = make_url(url).get_backend_name() == "sqlite"
        self._engine = create_engine(url, isolation_level="AUTOCOMMIT")  # transactions by hand, below
        self.connection = self._engine.connect()
        if self.sqlite:
            self.connection.exec_driver_sql("BEGIN EXCLUSIVE")
        else:
            self.connection.exec_driver_sql("BEGIN")
            self.connection.exec_driver_sql("LOCK TABLE instances IN EXCLUSIVE MODE")

    def wait_for_blocked_writer(self, timeout: float = 30) -> None:
        """PostgreSQL: until another session of the database waits for a lock (the node's insert, for this one)."""
        deadline = time.monotonic() + timeout
        while not self.connection.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")):
            if time.monotonic() > deadline:
                raise TimeoutError("no writer came to wait for the lock")
            time.sleep(0.02)

    def cut_off_others(self) -> None:
        """PostgreSQL: end every other session of the database, as a server restart would (the lock stays)."""
        self.connection.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"))

    def release(self) -> None:
        """Commits what this client did under the lock, and lets the node's writers go on."""
        self.connection.exec_driver_sql("COMMIT")
        self.connection.close()
        self._engine.dispose()


@contextmanager
def instance_commits(engine: Engine) -> Iterator[list[int]]:
    """Yields a list that gets one entry per transaction committed on ``engine`` that inserted instance rows, on
    either of the catalog's paths: SQLAlchemy's execution (its events) and the driver's cursor
    (``ortho_node.db.driver.driver_transaction``, observed by wrapping it where the catalog calls it)."""
    commits: list[int] = []

    def on_execute(connection, cursor, statement, parameters, context, executemany) -> None:
        if _inserts_instances(statement):
            connection.info["inserted_instances"] = True

    def on_commit(connection) -> None:
        if connection.info.pop("inserted_instances", False):
            commits.append(1)

    def on_rollback(connection) -> None:
        connection.info.pop("inserted_instances", None)

    real_transaction = catalog_module.driver_transaction

    @contextmanager
    def observed_transaction(on: Engine):
        with real_transaction(on) as cursor:
            watched = _WatchedCursor(cursor)
            yield watched
        if on is engine and watched.inserted_instances:  # reached only when the transaction committed
            commits.append(1)

    listeners = (("before_cursor_execute", on_execute), ("commit", on_commit), ("rollback", on_rollback))
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        with mock.patch.object(catalog_module, "driver_transaction", observed_transaction):
            yield commits
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


def _inserts_instances(statement: str) -> bool:
    return statement.lstrip().upper().startswith("INSERT INTO INSTANCES")


class _WatchedCursor:
    """A driver cursor that notes whether an instance row was inserted through it."""

    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self.inserted_instances = False

    def execute(self, statement, *args):
        self.inserted_instances |= _inserts_instances(statement)
        return self._cursor.execute(statement, *args)

    def executemany(self, statement, *args):
        self.inserted_instances |= _inserts_instances(statement)
        return self._cursor.executemany(statement, *args)

    def __getattr__(self, name):
        return getattr(self._cursor, name)
