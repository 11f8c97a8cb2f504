"""A fresh, migrated PostgreSQL database per test, and rows of queued work built directly (no DICOM needed to
race two claimers)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import Job, Study
from tests.conftest import _fresh_postgres_database


@pytest.fixture
def postgres_url(postgres_admin_url):
    yield from _fresh_postgres_database(postgres_admin_url)


@pytest.fixture
def sessions(postgres_url) -> sessionmaker[Session]:
    engine = make_engine(postgres_url)
    migrations.upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def queue_jobs(sessions: sessionmaker[Session], studies: int, *, jobs_per_study: int = 1,
               at: dt.datetime, first: int = 1) -> list[int]:
    """``studies`` studies (numbered from ``first``) with ``jobs_per_study`` pending jobs each, each later job
    of a study covering one more instance (as a superseding job queued while none ran), due at ``at``; returns
    the job ids."""
    ids = []
    with sessions.begin() as session:
        for n in range(first, first + studies):
            study = Study(study_instance_uid=f"1.2.826.0.1.3680043.10.1234.{n}", first_received_at=at,
                          last_received_at=at)
            session.add(study)
            session.flush()
            for last in range(jobs_per_study):
                job = Job(study_id=study.id, state="pending", reason="test", last_instance_id=last, attempts=0,
                          next_attempt_at=at, created_at=at)
                session.add(job)
                session.flush()
                ids.append(job.id)
    return ids
