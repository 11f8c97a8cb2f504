"""Shared fixtures: real databases (SQLite, PostgreSQL), a running node on a loopback port, DICOM factories."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "ORTHO_TEST_SHARED"


def _shared_folder() -> Path:
    """The project's ``shared/`` (reference files, the real GE series): ``$ORTHO_TEST_SHARED``, else beside the
    repository, else beside the repository a local clone came from (``git clone . /tmp/x``)."""
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV])
    beside = REPO.parent / "shared"
    if beside.is_dir():
        return beside
    origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir() and (Path(origin).resolve().parent / "shared").is_dir():
        return Path(origin).resolve().parent / "shared"
    return beside


SHARED = _shared_folder()
GE_SERIES = SHARED / "data" / "knee-ge-mese-t2"
ARTIFACTS = REPO / "test-artifacts"
POSTGRES_ENV = "ORTHO_TEST_POSTGRES_URL"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") == "true" and not os.environ.get(POSTGRES_ENV):
        raise pytest.UsageError(f"CI must provide PostgreSQL through {POSTGRES_ENV}")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (set by .ci/run)")
    return url


def _fresh_postgres_database(admin_url: str) -> Iterator[str]:
    name = f"ortho_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name})
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, empty database of each supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'ortho-node.db'}"
    else:
        yield from _fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def make_settings(tmp_path):
    from ortho_node.config import load_settings

    def factory(**overrides):
        # One receiving process (not the default's two on two cores): these tests read the in-process SCP
        # and DICOMweb listener.
        values = {"dicom.host": "127.0.0.1", "dicom.port": 0, "storage.data_dir": str(tmp_path / "data"),
                  "storage.min_free_mb": 0, "dicom.acse_timeout": 5.0, "dicom.network_timeout": 10.0,
                  "dicom.workers": 1, "dicomweb.workers": 1}
        values.update(overrides)
        return load_settings(environ={}, overrides=values)

    return factory


@pytest.fixture
def start_node(make_settings):
    """Start an in-process node (migrated, listening on a free loopback port); stopped at teardown."""
    from ortho_node.app.node import Node

    nodes = []

    def factory(**overrides):
        node = Node(make_settings(**overrides))
        node.prepare()
        node.start()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()


def dcmtk(tool: str) -> str:
    """dcmtk's own binary (pynetdicom installs Python scripts with the same names on PATH)."""
    path = Path("/usr/bin") / tool
    if not path.exists():
        pytest.fail(f"dcmtk tool {tool} missing: install the Debian package dcmtk")
    return str(path)
