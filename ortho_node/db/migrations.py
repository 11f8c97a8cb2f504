"""Schema upgrades through Alembic, run by ``ortho-node db upgrade`` and at ``serve`` start-up."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"


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
    command.upgrade(alembic_config(engine), revision)


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
