"""A study received again after its instances were purged: real DICOM bytes through the intake into a real data
folder and database (SQLite and PostgreSQL), the purger on a fake clock (the catalog reads the same clock). The
purge mark is cleared, the rows of re-sent instances come back, assembly reads only what is on disk, the history
keeps the purge, and the new instances get their own retention period."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from ortho_node.assembly.assembler import Assembler
from ortho_node.assembly.plan import AssemblyRules
from ortho_node.audit.trail import AuditTrail
from ortho_node.dicom_status import Status
from ortho_node.db.models import Instance, Job, Series, Study, TimelineEntry
from ortho_node.intake.catalog import Catalog
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance, Intake
from ortho_node.intake.recovery import Recovery
from ortho_node.intake.storage import LocalInstanceStore
from ortho_node.retention.purger import Purger
from ortho_node.scheduling.jobs import JobQueue, NotAnalysable, retry_policy
from tests.dicom_factory import mr_dataset
from tests.retention.conftest import T0, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def intake(archive, clock) -> Intake:
    engine = archive.sessions.kw["bind"]  # received_at, last_received_at: the same clock
    return Intake(LocalInstanceStore(archive.data_dir, fsync=False), Catalog(engine, clock=clock),
                  AuditTrail(archive.sessions))


def knee_series(study_uid: str, slices: int = 6) -> list:
    """A sagittal knee series, one data set a slice (positions 4 mm apart)."""
    series_uid = generate_uid()
    return [mr_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n, seed=n)
            for n in range(1, slices + 1)]


def send(intake: Intake, datasets: list) -> list:
    results = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        results.append(intake.receive(IncomingInstance(
            encoded=buffer.getvalue(), header=InstanceHeader.from_dataset(ds),
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, affected_sop_class_uid=ds.SOPClassUID,
            affected_sop_instance_uid=ds.SOPInstanceUID, association=AssociationRef(None, "MODALITY1", "127.0.0.1"))))
    return results


def purged_study(archive, intake, clock, node_settings) -> tuple[str, list, object]:
    """A knee study received at T0, its job skipped (unanalysable) an hour later, its instances purged 8 days on
    (retention.unanalysable_days 7). Returns its UID, its data sets and the settings."""
    study_uid = generate_uid()
    datasets = knee_series(study_uid)
    assert all(r.status == Status.SUCCESS for r in send(intake, datasets))
    with archive.sessions.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        newest = session.scalar(select(Instance.id).order_by(Instance.id.desc()).limit(1))
        session.add(Job(study=study, state="skipped", reason="test", last_instance_id=newest, attempts=1,
                        next_attempt_at=T0, created_at=T0, started_at=T0, finished_at=T0 + dt.timedelta(hours=1),
                        last_error="no usable plane"))
    settings = node_settings(unanalysable_days=7)
    clock.advance(days=8)
    report = Purger(settings, archive.sessions, clock=clock).run()
    assert [d.study_instance_uid for d in report.deletions] == [study_uid]
    assert archive.instance_files(study_uid) == []
    return study_uid, datasets, settings


def rows(archive, study_uid: str) -> list[Instance]:
    with archive.sessions() as session:
        return list(session.scalars(select(Instance).join(Series).join(Study)
                                    .where(Study.study_instance_uid == study_uid).order_by(Instance.id)))


def steps(archive, study_uid: str) -> list[str]:
    with archive.sessions() as session:
        return list(session.scalars(select(TimelineEntry.step).where(TimelineEntry.study_instance_uid == study_uid)
                                    .order_by(TimelineEntry.id)))


def assembler(archive, settings) -> Assembler:
    return Assembler(archive.sessions, LocalInstanceStore(archive.data_dir, fsync=False).local_path,
                     AssemblyRules.from_settings(settings.assembly))


def queue(archive, clock, settings) -> JobQueue:
    return JobQueue(archive.sessions, clock, retry_policy(settings.scheduling))


def test_purge_marks_every_instance_row_and_reprocess_says_why_it_cannot(archive, intake, clock, node_settings):
    study_uid, _, settings = purged_study(archive, intake, clock, node_settings)
    assert all(row.purged_at is not None for row in rows(archive, study_uid))
    with pytest.raises(NotAnalysable) as refused:
        queue(archive, clock, settings).enqueue(study_uid, "reprocess requested", force=True)
    assert str(refused.value) == (
        f"study {study_uid} not queued: its received instances were deleted on 2026-01-09 08:00 UTC (age: found "
        "unanalysable 7 days ago (retention.unanalysable_days 7)): send the study again to analyse it")


def test_study_sent_again_after_its_purge_is_analysable_and_keeps_its_history(archive, intake, clock,
                                                                            node_settings):
    study_uid, datasets, settings = purged_study(archive, intake, clock, node_settings)
    clock.advance(days=1)
    results = send(intake, datasets)
    assert [(r.status, r.duplicate) for r in results] == [(Status.SUCCESS, False)] * 6

    study = archive.study_row(study_uid)
    assert study.instances_purged_at is None and study.purge_reason is None
    assert all(row.purged_at is None for row in rows(archive, study_uid))
    assert len(archive.instance_files(study_uid)) == 6
    with archive.sessions() as session:  # re-sent instances were counted once, when first received
        assert session.scalar(select(Series.instance_count).join(Study)
                              .where(Study.study_instance_uid == study_uid)) == 6
    assert steps(archive, study_uid)[-2:] == ["instances_purged", "received_after_purge"]
    assert len(archive.events("instances_purged")) == 1 and len(archive.events("received_after_purge")) == 1

    plan, _, _ = assembler(archive, settings).plan(study_uid)
    assert [len(choice.volume.slices) for choice in plan.choices.values()] == [6]
    assert queue(archive, clock, settings).enqueue(study_uid, "reprocess requested", force=True) is not None

    # Its instances are on disk again for their own period, counted from their arrival, not the old job's end.
    report = Purger(settings, archive.sessions, clock=clock).run()
    assert report.deletions == [] and len(archive.instance_files(study_uid)) == 6


def test_new_instances_after_a_purge_are_assembled_without_the_purged_ones(archive, intake, clock, node_settings):
    study_uid, _, settings = purged_study(archive, intake, clock, node_settings)
    later = knee_series(study_uid, slices=5)
    assert all(r.status == Status.SUCCESS and not r.duplicate for r in send(intake, later))
    assert archive.study_row(study_uid).instances_purged_at is None
    assert len(archive.events("received_after_purge")) == 1  # once per purge, not per instance

    jobs = queue(archive, clock, settings)
    assert jobs.enqueue(study_uid, "expected planes present") is not None  # new instances: a new job
    assembled = assembler(archive, settings).assemble(study_uid, "test")
    [volume] = assembled.planes.values()
    assert volume.geometry.series_instance_uid == later[0].SeriesInstanceUID
    assert volume.pixels.shape[0] == 5
    assert sum(row.purged_at is not None for row in rows(archive, study_uid)) == 6


def test_start_up_recovery_brings_back_a_re_sent_file_whose_row_was_not(archive, intake, clock, node_settings):
    """A crash between writing a re-sent instance and bringing its row back: the file is on disk, its row still
    says purged; the start-up scan indexes it as it does a file without a row."""
    study_uid, datasets, _ = purged_study(archive, intake, clock, node_settings)
    [first] = [row for row in rows(archive, study_uid) if row.sop_instance_uid == datasets[0].SOPInstanceUID]
    path = archive.data_dir / first.file_path
    path.parent.mkdir(parents=True)  # the purger removed the emptied folders
    datasets[0].save_as(path, enforce_file_format=True)
    engine = archive.sessions.kw["bind"]
    recovery = Recovery(str(engine.url), archive.sessions, LocalInstanceStore(archive.data_dir, fsync=False),
                        Catalog(engine, clock=clock), AuditTrail(archive.sessions), data_dir=archive.data_dir)
    assert recovery.recover_unrecorded_files() == 1
    revived = [row for row in rows(archive, study_uid) if row.purged_at is None]
    assert [row.sop_instance_uid for row in revived] == [datasets[0].SOPInstanceUID]
    assert archive.study_row(study_uid).instances_purged_at is None
    assert recovery.recover_unrecorded_files() == 0
