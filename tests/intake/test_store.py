"""Storage SCP over loopback with real peers: dcmtk echoscu/storescu and a pynetdicom SCU."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pydicom.uid import MRImageStorage
from sqlalchemy import func, select

from ortho_node.db.models import AuditEvent, Instance, Series
from ortho_node.delivery.scu import RemoteNode, send_files
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance
from tests.conftest import GE_SERIES, dcmtk
from tests.dicom_factory import LOSSY, UNTERMINATED_SEQUENCE, mr_dataset, write, write_in_syntax

ALL_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


def remote(node) -> RemoteNode:
    return RemoteNode(node.settings.dicom.ae_title, "127.0.0.1", node.scp.port)


def count(node, model) -> int:
    with node.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_dcmtk_echoscu_succeeds(start_node):
    node = start_node()
    result = subprocess.run([dcmtk("echoscu"), "-aec", "ORTHODIFF", "127.0.0.1", str(node.scp.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def _assert_same_dataset(sent, stored) -> None:
    sent_tags = {e.tag for e in sent if e.tag != 0x7FE00010}
    stored_tags = {e.tag for e in stored if e.tag != 0x7FE00010}
    assert sent_tags == stored_tags
    for tag in sent_tags:
        assert sent[tag].value == stored[tag].value, f"{sent[tag].keyword or tag} differs"
    assert np.array_equal(sent.pixel_array, stored.pixel_array)


def test_dcmtk_storescu_sends_real_big_endian_series(start_node):
    node = start_node()
    files = sorted(GE_SERIES.glob("*.dcm"))
    assert len(files) == 192
    result = subprocess.run(
        [dcmtk("storescu"), "-v", "-aec", "ORTHODIFF", "127.0.0.1", str(node.scp.port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("Received Store Response (Success)") == 192
    assert count(node, Instance) == 192
    with node.session_factory() as session:
        rows = {i.sop_instance_uid: i.file_path for i in session.scalars(select(Instance))}
    for path in files:
        sent = dcmread(path)
        stored = dcmread(node.store.local_path(rows[sent.SOPInstanceUID]))
        _assert_same_dataset(sent, stored)


@pytest.mark.parametrize("syntax", ALL_SYNTAXES)
def test_pynetdicom_scu_every_transfer_syntax(start_node, tmp_path, syntax):
    node = start_node()
    bits = 8 if syntax == "1.2.840.10008.1.2.4.50" else 12
    original = mr_dataset(bits=bits, seed=len(syntax))
    path = write_in_syntax(original, syntax, tmp_path / "src")
    assert str(dcmread(path).file_meta.TransferSyntaxUID) == syntax
    [result] = send_files(remote(node), [path], calling_ae="SCU")
    assert result.status == 0x0000, result.reason
    with node.session_factory() as session:
        row = session.scalars(select(Instance)).one()
    stored = dcmread(node.store.local_path(row.file_path))
    assert row.transfer_syntax_uid == syntax
    assert str(stored.file_meta.TransferSyntaxUID) == syntax
    decoded = stored.pixel_array
    if syntax in LOSSY:
        assert decoded.shape == original.pixel_array.shape
    else:
        assert np.array_equal(decoded, original.pixel_array)


def test_resent_study_is_not_duplicated(start_node, tmp_path):
    node = start_node()
    study = "1.2.826.0.1.3680043.8.498.1"
    series = "1.2.826.0.1.3680043.8.498.1.1"
    files = [write(mr_dataset(study_uid=study, series_uid=series, instance_number=i, seed=i),
                   tmp_path / f"{i}.dcm") for i in range(1, 6)]
    first = send_files(remote(node), files, calling_ae="SCU")
    second = send_files(remote(node), files, calling_ae="SCU")
    assert all(r.status == 0 for r in first + second)
    assert count(node, Instance) == 5
    with node.session_factory() as session:
        assert session.scalar(select(Series.instance_count)) == 5
    stored = list((node.store.instances_dir / study / series).glob("*.dcm"))
    assert len(stored) == 5


def _send_datasets(port: int, datasets, *, calling_ae="SCU", called_ae="ORTHODIFF"):
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_dataset_not_matching_request_gets_a900(start_node):
    # SCUs derive the request from the data set, so the mismatch is exercised at the intake boundary.
    node = start_node()
    ds = mr_dataset()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    for sop_class, sop_instance in ((ds.SOPClassUID, "1.2.3.4.5"), ("1.2.840.10008.5.1.4.1.1.2", ds.SOPInstanceUID)):
        result = node.intake.receive(IncomingInstance(
            encoded=buffer.getvalue(), header=InstanceHeader.from_dataset(ds), transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            affected_sop_class_uid=sop_class, affected_sop_instance_uid=sop_instance,
            association=AssociationRef(None, "SCU", "127.0.0.1"),
        ))
        assert result.status == 0xA900
    assert count(node, Instance) == 0


def test_missing_uid_gets_precise_status(start_node):
    node = start_node()
    ds = mr_dataset()
    del ds.StudyInstanceUID
    assert _send_datasets(node.scp.port, [ds]) == [0xC220]
    with node.session_factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "instance_rejected")).one()
    assert "StudyInstanceUID missing" in event.message


def test_undecodable_data_set_gets_c210_and_is_audited(start_node, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send a file's bytes without reading them
    node = start_node()
    ds = mr_dataset()
    path = write(ds, tmp_path / "broken.dcm")
    raw = path.read_bytes()
    data_set_start = 144 + int.from_bytes(raw[140:144], "little")  # after the file meta group
    path.write_bytes(raw[:data_set_start] + UNTERMINATED_SEQUENCE + raw[data_set_start:])
    assert _send_datasets(node.scp.port, [path, mr_dataset()]) == [0xC210, 0x0000]
    with node.session_factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "instance_rejected")).one()
    assert "undecodable data set" in event.message and event.sop_instance_uid == ds.SOPInstanceUID
    assert event.details["status"] == 0xC210
    assert count(node, Instance) == 1


def test_path_traversal_uids_are_refused(start_node, tmp_path):
    node = start_node()
    hostile = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        for value in ("../../../../tmp/escape", "1.2/../../x", "/etc/passwd"):
            ds = mr_dataset()
            setattr(ds, keyword, value)
            hostile.append(ds)
    before = set(tmp_path.parent.rglob("*"))
    statuses = _send_datasets(node.scp.port, hostile)
    assert statuses == [0xC221] * len(hostile)
    assert count(node, Instance) == 0
    assert not list(node.store.instances_dir.rglob("*.dcm"))
    created = {p for p in set(tmp_path.parent.rglob("*")) - before if p.is_file()}
    assert all(p.is_relative_to(node.store.data_dir) or p.suffix in (".db", ".db-wal", ".db-shm") for p in created)
