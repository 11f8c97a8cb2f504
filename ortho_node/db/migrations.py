"""Schema upgrades through Alembic, run by ``ortho-node db upgrade`` and at ``serve`` start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"
#: PostgreSQL advisory lock key held while migrating: processes of a cluster starting together upgrade one at a
#: time (the others then find the schema at head), instead of racing to create the same tables.
MIGRATION_LOCK = 0x0_7274_686F  # "ortho"


def alembic_config(engine: Engine) -> Config:
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise RuntimeError(
            f"Alembic migrations not found at {SCRIPT_LOCATION}; install the node from its source tree "
            "(pip install -e .)"
        )
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    log.info("upgrading database schema to %s", revision)
    if engine.dialect.name != "postgresql":  # SQLite: one process, and its writes are serialized anyway
        command.upgrade(alembic_config(engine), revision)
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        try:
            command.upgrade(alembic_config(engine), revision)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
