"""Statements on the driver's cursor (``ortho_node.db.driver``), on SQLite and PostgreSQL: the rows written are
the ones SQLAlchemy's execution writes, driver errors arrive as SQLAlchemy's, and a failed block leaves nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import bindparam, create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from ortho_node.db import migrations
from ortho_node.db.driver import DriverStatement, driver_transaction
from ortho_node.db.engine import make_engine
from ortho_node.db.models import Series, Study


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()


def _study(uid: str, at: dt.datetime) -> dict:
    return {"study_instance_uid": uid, "first_received_at": at, "last_received_at": at,
            "study_date": dt.date(2026, 12, 7), "study_description": "KNEE", "keep": False,
            "not_for_analysis": False}


def test_rows_written_through_the_driver_are_those_sqlalchemy_writes(engine):
    # A microsecond of 0 and one of 5: the driver's own datetime adapter would write them differently.
    times = [dt.datetime(2026, 12, 7, 20, 1, 2, tzinfo=dt.timezone.utc),
             dt.datetime(2026, 12, 7, 20, 1, 2, 5, tzinfo=dt.timezone.utc)]
    columns = tuple(_study("1.2", times[0]))
    statement = DriverStatement(engine, insert(Study), column_keys=columns)
    for n, at in enumerate(times):
        with engine.begin() as connection:
            connection.execute(insert(Study), _study(f"1.1.{n}", at))
        with driver_transaction(engine) as cursor:
            cursor.execute(statement.sql, statement.parameters(_study(f"1.2.{n}", at)))

    stored = text("SELECT CAST(first_received_at AS TEXT), CAST(study_date AS TEXT), study_description, "
                  "CAST(keep AS TEXT) FROM studies WHERE study_instance_uid = :uid")
    with engine.connect() as connection:
        for n in range(len(times)):
            by_sqlalchemy = connection.execute(stored, {"uid": f"1.1.{n}"}).one()
            by_driver = connection.execute(stored, {"uid": f"1.2.{n}"}).one()
            assert by_driver == by_sqlalchemy
        read = connection.execute(select(Study.first_received_at).where(Study.study_instance_uid == "1.2.1"))
        assert read.scalar_one().replace(tzinfo=dt.timezone.utc) == times[1]


def test_a_driver_error_is_sqlalchemys_and_the_transaction_is_rolled_back(engine):
    at = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc)
    columns = tuple(_study("1.3", at))
    statement = DriverStatement(engine, insert(Study), column_keys=columns)
    with driver_transaction(engine) as cursor:
        cursor.execute(statement.sql, statement.parameters(_study("1.3", at)))

    with pytest.raises(IntegrityError):  # the second row repeats the first's unique Study Instance UID
        with driver_transaction(engine) as cursor:
            cursor.execute(statement.sql, statement.parameters(_study("1.4", at)))
            cursor.execute(statement.sql, statement.parameters(_study("1.3", at)))

    with engine.connect() as connection:
        assert connection.scalars(select(Study.study_instance_uid).order_by(Study.id)).all() == ["1.3"]
    with driver_transaction(engine) as cursor:  # the pooled connection is usable again
        cursor.execute(statement.sql, statement.parameters(_study("1.4", at)))
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM studies")) == 2


def test_an_exception_in_the_block_rolls_back(engine):
    at = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc)
    statement = DriverStatement(engine, insert(Study), column_keys=tuple(_study("1.5", at)))
    with pytest.raises(LookupError):
        with driver_transaction(engine) as cursor:
            cursor.execute(statement.sql, statement.parameters(_study("1.5", at)))
            raise LookupError("the caller changed its mind")
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM studies")) == 0


def test_a_statement_that_needs_python_side_defaults_is_refused(engine):
    # series.first_received_at has a Python-side default that only SQLAlchemy's execution would compute.
    with pytest.raises(ValueError, match="Python-side defaults"):
        DriverStatement(engine, insert(Series), column_keys=["series_instance_uid", "study_id"])
    DriverStatement(engine, select(Series.id).where(Series.series_instance_uid == bindparam("uid")))


def test_an_unreachable_database_raises_sqlalchemys_error(tmp_path):
    # The intake maps SQLAlchemy's errors to 0xA700; a driver error escaping here was logged as an unexpected
    # failure with its traceback (found by the PostgreSQL outage test).
    unreachable = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'ortho-node.db'}")
    with pytest.raises(OperationalError):
        with driver_transaction(unreachable):
            pass
