"""Accept rules with real peers: dcmtk storescu sends an ankle CT and a knee MR to a running node on loopback;
the CT is ignored (stored, never queued) or refused (presentation context rejected, or a content status) per
rule, the MR goes to analysis; every refusal is audited and logged without patient identifiers."""

from __future__ import annotations

import io
import logging
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from sqlalchemy import select

from ortho_node.app.cli.main import main as cli
from ortho_node.app.node import Node
from ortho_node.audit.views import Filters, list_studies, study_inventory, study_timeline
from ortho_node.config import load_settings
from ortho_node.db.models import AuditEvent, Instance, Job, Series, Study
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance
from tests.conftest import dcmtk
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mr_dataset, write


def ankle_ct(folder: Path, slices: int = 3) -> tuple[str, list[Path]]:
    """An axial ankle CT series (CT Image Storage), one file a slice."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number in range(1, slices + 1):
        ds = mr_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=number, seed=number)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        for keyword in ("EchoTime", "RepetitionTime", "ScanningSequence", "SequenceVariant", "ScanOptions",
                        "MRAcquisitionType"):
            delattr(ds, keyword)
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "CT", "ANKLE", "AX ANKLE BONE"
        ds.StudyDescription = "CT ANKLE RIGHT"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-60.0, -60.0, float(number) * 2.0]
        ds.RescaleIntercept, ds.RescaleSlope, ds.KVP = -1024, 1, 120
        files.append(write(ds, folder / f"ct{number}.dcm"))
    return study_uid, files


def knee_mr(folder: Path, slices: int = 5) -> tuple[str, list[Path]]:
    """A sagittal knee MR series (MR Image Storage)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [write(mr_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n, seed=n),
                   folder / f"mr{n}.dcm") for n in range(1, slices + 1)]
    return study_uid, files


RULES = {
    "ignore": '[[accept.rules]]\nname = "no-ct"\naction = "ignore"\nmodalities = ["CT"]\n',
    "refuse-class": '[[accept.rules]]\nname = "no-ct"\naction = "refuse"\nsop_classes = ["CTImageStorage"]\n',
    "refuse-content": '[[accept.rules]]\nname = "no-ankles"\naction = "refuse"\nbody_parts = ["*ankle*"]\n',
    "mr-only": '[accept]\ndefault = "refuse"\n'
               '[[accept.rules]]\nname = "mr"\naction = "analyse"\nsop_classes = ["MRImageStorage"]\n',
}


@pytest.fixture
def accept_node(tmp_path):
    """A node on a free loopback port with ``RULES[kind]`` in its configuration file; short completeness times
    so that a study is queued within seconds."""
    nodes = []

    def start(kind: str, *, workers: int = 1, database_url: str = "") -> Node:
        config = tmp_path / "node.toml"
        config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free_mb = 0\nfsync = false\n'
                          f'[database]\nurl = "{database_url}"\n'
                          f'[dicom]\nhost = "127.0.0.1"\nport = 0\nworkers = {workers}\n'
                          '[scheduling]\nquiet_period = 0.3\nlong_timeout = 0.6\nsettle_time = 0.2\n'
                          f'poll_interval = 0.5\n{RULES[kind]}')
        node = Node(load_settings(config, environ={}))
        node.config_file = config
        node.prepare()
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def storescu(node: Node, files: list[Path], *, verbosity: str = "-v") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), verbosity, "-aet", "MODALITY1", "-aec", "ORTHODIFF", "127.0.0.1",
                           str(node.scp.port), *map(str, files)], capture_output=True, text=True, timeout=60)


def events(node: Node, kind: str) -> list[AuditEvent]:
    with node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def jobs_of(node: Node, study_uid: str) -> list[Job]:
    with node.session_factory() as session:
        return list(session.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)))


def stored(node: Node, study_uid: str) -> list[Instance]:
    with node.session_factory() as session:
        return list(session.scalars(select(Instance).join(Series).join(Study)
                                    .where(Study.study_instance_uid == study_uid)))


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_ignored_ct_is_stored_and_recorded_never_queued_while_the_mr_is(accept_node, database_url, tmp_path,
                                                                        capsys):
    node = accept_node("ignore", database_url=database_url)
    ct_uid, ct_files = ankle_ct(tmp_path)
    mr_uid, mr_files = knee_mr(tmp_path)
    result = storescu(node, ct_files + mr_files)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: jobs_of(node, mr_uid))
    time.sleep(1.5)  # past the CT's own long timeout: it would have been queued by now
    assert jobs_of(node, ct_uid) == []
    assert {row.ignored_by for row in stored(node, ct_uid)} == {"no-ct"} and len(stored(node, ct_uid)) == 3
    assert {row.ignored_by for row in stored(node, mr_uid)} == {None}
    [ignored] = events(node, "series_ignored")  # one per series, not per instance
    assert ignored.study_instance_uid == ct_uid and ignored.details == {"accept_rule": "no-ct"}
    rows = {r["study_instance_uid"]: r for r in list_studies(node.session_factory, Filters())}
    assert rows[ct_uid]["status"] == "ignored" and rows[ct_uid]["ignored"] == "ignored by accept rule 'no-ct'"
    assert rows[ct_uid]["failure_reasons"] == ["ignored by accept rule 'no-ct'"] and rows[ct_uid]["waiting"] is None
    assert rows[mr_uid]["status"] != "ignored"
    inventory = {s["study_instance_uid"]: s for s in study_inventory(node.session_factory)}
    assert inventory[ct_uid]["ignored"] == "ignored by accept rule 'no-ct'"
    assert inventory[ct_uid]["series"][0]["ignored"] == "ignored by accept rule 'no-ct'"
    with redirect_stdout(io.StringIO()) as out:
        assert cli(["studies", "--config", str(node.config_file)]) == 0
    assert "ignored by accept rule 'no-ct': stored, not analysed" in out.getvalue()
    ignored_steps = [e for e in study_timeline(node.session_factory, ct_uid) if e["step"] == "ignored"]
    series_uid = inventory[ct_uid]["series"][0]["series_instance_uid"]
    assert [e["detail"] for e in ignored_steps] == [
        f"series {series_uid} ignored by accept rule 'no-ct': stored, not analysed"]
    assert not [e for e in study_timeline(node.session_factory, mr_uid) if e["step"] == "ignored"]
    # A restart does not queue it either (start-up recovery watches only analysable instances).
    assert all(uid != ct_uid for uid, _ in node.scheduler.queue.unprocessed_studies())
    # Nor does a request: a job would have nothing to analyse.
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        assert cli(["reprocess", ct_uid, "--config", str(node.config_file)]) == 2
    assert err.getvalue() == f"error: study {ct_uid} not queued: all instances ignored by accept rule 'no-ct': " \
                             "change [accept] first\n"
    assert jobs_of(node, ct_uid) == []


def test_refused_sop_class_is_rejected_at_negotiation(accept_node, tmp_path, caplog):
    node = accept_node("refuse-class")
    ct_uid, ct_files = ankle_ct(tmp_path, slices=1)
    mr_uid, mr_files = knee_mr(tmp_path, slices=2)
    with caplog.at_level(logging.INFO):
        refused = storescu(node, ct_files)
        accepted = storescu(node, mr_files)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "Abstract Syntax Not Supported" in output or "No presentation context" in output, output
    assert accepted.returncode == 0, accepted.stderr
    assert stored(node, ct_uid) == [] and len(stored(node, mr_uid)) == 2
    # storescu proposes every storage SOP class: each association has the CT context rejected, once each.
    rejected = events(node, "presentation_contexts_rejected")
    assert len(rejected) == 2 and len({e.association_id for e in rejected}) == 2
    assert rejected[0].calling_ae == "MODALITY1" and rejected[0].details == {"sop_classes": {CTImageStorage: "no-ct"}}
    assert "CT Image Storage (refused by accept rule 'no-ct')" in rejected[0].message
    lines = [r.getMessage() for r in caplog.records if "presentation contexts rejected" in r.getMessage()]
    assert len(lines) == 2 and "MODALITY1" in lines[0]
    # An ingest path that did not negotiate (an SCU sending on another context) gets 0x0122 instead.
    ds = mr_dataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    result = node.intake.receive(IncomingInstance(
        encoded=buffer.getvalue(), header=InstanceHeader.from_dataset(ds),
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, affected_sop_class_uid=CTImageStorage,
        affected_sop_instance_uid=ds.SOPInstanceUID, association=AssociationRef(None, "MODALITY1", "127.0.0.1")))
    assert result.status == 0x0122


def test_refused_by_content_gets_c230_audited_without_patient_identifiers(accept_node, tmp_path, caplog):
    node = accept_node("refuse-content")
    ct_uid, ct_files = ankle_ct(tmp_path, slices=1)
    mr_uid, mr_files = knee_mr(tmp_path, slices=2)
    with caplog.at_level(logging.INFO):
        refused = storescu(node, ct_files, verbosity="-d")  # -d: the response's status value as well
        accepted = storescu(node, mr_files)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "DIMSE Status                  : 0xc230: Error: Cannot understand" in output, output
    assert accepted.returncode == 0, accepted.stderr
    assert stored(node, ct_uid) == [] and len(stored(node, mr_uid)) == 2
    [event] = events(node, "instance_rejected")
    assert event.details == {"status": 0xC230, "accept_rule": "no-ankles"}
    assert event.message == "refused by accept rule 'no-ankles'" and event.study_instance_uid == ct_uid
    logged = [r.getMessage() for r in caplog.records]
    assert any("0xC230 (refused by accept rule 'no-ankles') from MODALITY1" in m for m in logged)
    assert not any(PATIENT_NAME in m or PATIENT_ID in m or "PHIPATIENT" in m for m in logged)
    wait_for(lambda: jobs_of(node, mr_uid))


def test_storage_worker_processes_apply_the_rules(accept_node, tmp_path):
    node = accept_node("refuse-content", workers=2)  # associations run in spawned processes
    ct_uid, ct_files = ankle_ct(tmp_path, slices=1)
    mr_uid, mr_files = knee_mr(tmp_path, slices=2)
    refused, accepted = storescu(node, ct_files), storescu(node, mr_files)
    assert refused.returncode != 0 and "CannotUnderstand" in refused.stdout + refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert stored(node, ct_uid) == [] and len(stored(node, mr_uid)) == 2
    [event] = events(node, "instance_rejected")
    assert event.details == {"status": 0xC230, "accept_rule": "no-ankles"}


def test_an_allow_list_rejects_every_other_class_and_still_answers_echo(accept_node, tmp_path):
    node = accept_node("mr-only")
    ct_uid, ct_files = ankle_ct(tmp_path, slices=1)
    mr_uid, mr_files = knee_mr(tmp_path, slices=2)
    echo = subprocess.run([dcmtk("echoscu"), "-aec", "ORTHODIFF", "127.0.0.1", str(node.scp.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr  # Verification is not a stored instance: rules leave it alone
    refused, accepted = storescu(node, ct_files), storescu(node, mr_files)
    assert refused.returncode != 0 and accepted.returncode == 0, accepted.stderr
    assert stored(node, ct_uid) == [] and len(stored(node, mr_uid)) == 2
    rejected = events(node, "presentation_contexts_rejected")[0].details["sop_classes"]
    assert rejected[CTImageStorage] == "accept.default" and MRImageStorage not in rejected


def test_files_indexed_at_start_up_follow_the_rules(accept_node, tmp_path):
    node = accept_node("ignore")
    ct_uid, [ct_file] = ankle_ct(tmp_path, slices=1)
    ds = dcmread(ct_file)
    # As after a crash between the file's rename and its row's commit.
    node.store.write(node.store.key(ct_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID), ct_file.read_bytes())
    assert node.recovery.recover_unrecorded_files() == 1
    assert [row.ignored_by for row in stored(node, ct_uid)] == ["no-ct"]
    assert all(uid != ct_uid for uid, _ in node.scheduler.queue.unprocessed_studies())
