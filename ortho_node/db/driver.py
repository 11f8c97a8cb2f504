"""Core statements executed on the database driver's own connection, for the few statements of a hot path.

A statement executed through SQLAlchemy's ``Connection`` costs about 0.1-0.2 ms of interpreter time a call
(pool checkout, execution context, result wrapping); the driver's cursor costs a tenth of that. Intake records
every received instance in a handful of such statements, so on a busy receiver they were about a quarter of its
interpreter time. Here a statement is compiled once for the engine's dialect, its parameters go through the same
type processing SQLAlchemy would apply (so the rows written are the same), and driver errors come back as
SQLAlchemy's exception classes, so callers handle one family of errors whichever way a statement ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


class DriverStatement:
    """``statement`` compiled for ``engine``'s dialect; ``column_keys``: the columns an INSERT names (else all)."""

    def __init__(self, engine: Engine, statement: ClauseElement, *, column_keys: Sequence[str] | None = None) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            # Python-side column defaults are computed by SQLAlchemy's execution, which this path skips.
            raise ValueError(f"{compiled.string!r}: columns with Python-side defaults must be given values")
        self.sql = compiled.string
        self._names = list(compiled.positiontup) if compiled.positional else None
        self._processors = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor

    def parameters(self, values: Mapping[str, Any]) -> tuple | dict:
        """``values`` by bind name, as the driver takes them (positional or named, types processed)."""
        processed = {name: self._processors[name](value) if name in self._processors else value
                     for name, value in values.items()}
        return processed if self._names is None else tuple(processed[name] for name in self._names)


@contextmanager
def driver_transaction(engine: Engine) -> Iterator[Any]:
    """A cursor in one transaction on a pooled driver connection: committed when the block ends, rolled back when
    it raises. Driver errors are raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``, ...); a
    connection the driver reports lost is discarded from the pool, as SQLAlchemy's own execution does."""
    dialect = engine.dialect
    try:
        connection = engine.raw_connection()
    except dialect.loaded_dbapi.Error as exc:  # the database is unreachable: as SQLAlchemy's connect() raises it
        raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
    cursor = None
    try:
        cursor = connection.cursor()
        yield cursor
        connection.commit()
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, connection.dbapi_connection, cursor)
        if lost:
            connection.invalidate(exc)
        else:
            _roll_back(connection)
        raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                  dialect=dialect) from exc
    except BaseException:
        _roll_back(connection)
        raise
    finally:
        if cursor is not None:
            try:
                cursor.close()
            except dialect.loaded_dbapi.Error:
                pass
        connection.close()


def _roll_back(connection: Any) -> None:
    try:
        connection.rollback()
    except Exception:  # the connection is returned to the pool, which resets or discards it
        pass
