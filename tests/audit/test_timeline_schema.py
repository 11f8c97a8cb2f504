"""Migration 0004 (study timeline and results): one head, upgrade, downgrade and upgrade again."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine


def test_single_head_and_round_trip(database_url):
    config = migrations.alembic_config(make_engine(database_url))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1  # a linear chain
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    assert {"study_timeline", "study_results"} <= set(inspect(engine).get_table_names())
    command.downgrade(migrations.alembic_config(engine), "0003")
    assert "study_timeline" not in inspect(engine).get_table_names()
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == migrations.head_revision()
    engine.dispose()
