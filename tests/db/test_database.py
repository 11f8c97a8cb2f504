"""Schema through Alembic on SQLite and PostgreSQL; the audit trail is append-only."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from ortho_node.audit.trail import AuditKind, AuditTrail
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, Base


def test_upgrade_creates_the_schema_the_models_describe(database_url):
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == migrations.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    for name, table in Base.metadata.tables.items():
        columns = {c["name"] for c in inspect(engine).get_columns(name)}
        assert {c.name for c in table.columns} == columns, name
    migrations.upgrade(engine)  # idempotent
    engine.dispose()


def test_audit_trail_is_append_only(database_url):
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    factory = make_session_factory(engine)
    assert AuditTrail(factory).record(AuditKind.NODE_STARTED, "started")
    with pytest.raises(DBAPIError, match="append-only"):
        with factory.begin() as session:
            session.execute(update(AuditEvent).values(message="rewritten"))
    with pytest.raises(DBAPIError, match="append-only"):
        with factory.begin() as session:
            session.execute(text("DELETE FROM audit_events"))
    with factory() as session:
        assert session.scalars(select(AuditEvent.message)).all() == ["started"]
    engine.dispose()


def test_node_stores_on_each_database(start_node, database_url, tmp_path):
    from ortho_node.delivery.scu import RemoteNode, send_files
    from ortho_node.audit.views import study_inventory
    from tests.dicom_factory import mr_dataset, write

    node = start_node(**{"database.url": database_url})
    files = [write(mr_dataset(study_uid="1.2.3.4", series_uid="1.2.3.4.1", seed=i, instance_number=i),
                   tmp_path / f"{i}.dcm") for i in range(3)]
    results = send_files(RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port), files, calling_ae="SCU")
    assert [r.status for r in results] == [0, 0, 0]
    [study] = study_inventory(node.session_factory)
    assert study["instance_count"] == 3
    assert study["series"][0]["body_part_examined"] == "KNEE"


def test_upgrade_from_0004_keeps_the_rows_and_marks_instances_of_purged_studies(database_url):
    """0005 (retention), 0006 (accept rules) and 0007 (instance purge marks) over a database holding studies: the
    rows stay, nothing is kept or ignored, and the instances of a study purged before 0007 are marked purged."""
    engine = make_engine(database_url)
    migrations.upgrade(engine, "0004")
    with engine.begin() as connection:
        for number in (1, 2):
            connection.execute(text(
                "INSERT INTO studies (id, study_instance_uid, first_received_at, last_received_at) "
                f"VALUES ({number}, '1.2.3.{number}', '2026-01-01 08:00:00+00', '2026-01-01 08:00:00+00')"))
            connection.execute(text(
                "INSERT INTO series (id, study_id, series_instance_uid, instance_count, first_received_at, "
                f"last_received_at) VALUES ({number}, {number}, '1.2.3.{number}.1', 1, '2026-01-01 08:00:00+00', "
                "'2026-01-01 08:00:00+00')"))
            connection.execute(text(
                "INSERT INTO instances (id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
                f"file_path, file_size, sha256, received_at) VALUES ({number}, {number}, '1.2.3.{number}.1.1', "
                f"'1.2.840.10008.5.1.4.1.1.4', '1.2.840.10008.1.2.1', 'instances/{number}.dcm', 10, 'x', "
                "'2026-01-01 08:00:00+00')"))
    migrations.upgrade(engine, "0006")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT keep, instances_purged_at FROM studies ORDER BY id")).all() == [
            (False, None), (False, None)]
        assert connection.execute(text("SELECT ignored_by FROM instances")).all() == [(None,), (None,)]
        connection.execute(text("UPDATE studies SET instances_purged_at = '2026-02-01 08:00:00+00', "
                                "purge_reason = 'age' WHERE id = 2"))
    migrations.upgrade(engine)
    with engine.connect() as connection:
        marks = connection.execute(text("SELECT id, purged_at IS NOT NULL FROM instances ORDER BY id")).all()
    assert [(row[0], bool(row[1])) for row in marks] == [(1, False), (2, True)]
    assert migrations.current_revision(engine) == migrations.head_revision()
    engine.dispose()


def test_0008_up_and_down_keeps_the_studies(database_url):
    """0008 (issue 24) adds the patient facts, the not-for-analysis mark, destination pauses, API tokens and the
    console's indexes over rows of 0007, and takes them away again on downgrade, rows intact."""
    engine = make_engine(database_url)
    migrations.upgrade(engine, "0007")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO studies (id, study_instance_uid, accession_number, first_received_at, last_received_at) "
            "VALUES (1, '1.2.3.1', 'ACC1', '2026-01-01 08:00:00+00', '2026-01-01 08:00:00+00')"))
    migrations.upgrade(engine, "0008")
    inspector = inspect(engine)
    columns = {c["name"] for c in inspector.get_columns("studies")}
    assert {"patient_id", "patient_name", "study_date", "not_for_analysis", "not_for_analysis_reason"} <= columns
    assert {"ix_studies_last_received_at", "ix_studies_patient_id", "ix_studies_accession_number",
            "ix_studies_study_date"} <= {i["name"] for i in inspector.get_indexes("studies")}
    assert {"destination_states", "api_tokens"} <= set(inspector.get_table_names())
    with engine.begin() as connection:
        assert connection.execute(text("SELECT accession_number, patient_id, not_for_analysis FROM studies")).all() \
            == [("ACC1", None, False)]
        connection.execute(text("UPDATE studies SET patient_id = 'P1', not_for_analysis = true"))
    command.downgrade(migrations.alembic_config(engine), "0007")
    inspector = inspect(engine)
    assert "patient_id" not in {c["name"] for c in inspector.get_columns("studies")}
    assert not {"destination_states", "api_tokens"} & set(inspector.get_table_names())
    assert "ix_studies_patient_id" not in {i["name"] for i in inspector.get_indexes("studies")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT study_instance_uid, accession_number FROM studies")).all() == [
            ("1.2.3.1", "ACC1")]
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == migrations.head_revision()
    engine.dispose()
