"""DICOM TLS with real certificates, and the CLI commands end to end."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from ortho_node.app.cli.main import main
from ortho_node.db.models import Association
from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}.test", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.pem", cwd=folder)
    return folder


def _client_context(pki, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def _tls_echo(port, context) -> bool:
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHODIFF", tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == 0


def test_tls_with_required_client_certificate(start_node, pki):
    node = start_node(**{"tls.enabled": True, "tls.certificate": str(pki / "server.pem"),
                         "tls.private_key": str(pki / "server.key"), "tls.ca_certificates": str(pki / "ca.pem"),
                         "tls.require_client_certificate": True})
    assert _tls_echo(node.scp.port, _client_context(pki, with_certificate=True))
    assert not _tls_echo(node.scp.port, _client_context(pki, with_certificate=False))
    with node.session_factory() as session:
        subjects = session.scalars(select(Association.tls_subject)).all()
    assert subjects == ["commonName=client.test"]
    # Plain TCP against a TLS port fails cleanly and the node keeps serving.
    assert subprocess.run(["/usr/bin/echoscu", "-aec", "ORTHODIFF", "127.0.0.1", str(node.scp.port)],
                          capture_output=True, timeout=30).returncode != 0
    assert _tls_echo(node.scp.port, _client_context(pki, with_certificate=True))


def test_cli_echo_send_studies(start_node, tmp_path, capsys, monkeypatch):
    node = start_node()
    address = f"ORTHODIFF@127.0.0.1:{node.scp.port}"
    assert main(["echo", address]) == 0
    folder = tmp_path / "study"
    for i in range(4):
        write(mr_dataset(study_uid="1.2.3.9", series_uid="1.2.3.9.1", seed=i, instance_number=i), folder / f"{i}.dcm")
    assert main(["send", str(folder), "--to", address]) == 0
    assert "sent 4 of 4" in capsys.readouterr().out
    (folder / "not-dicom.txt").write_text("hello")
    assert main(["send", str(folder), "--to", address]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main(["send", str(folder), "--to", f"WRONG@127.0.0.1:{node.scp.port}"]) == 1
    assert main(["echo", f"ORTHODIFF@127.0.0.1:{free_port()}"]) == 1
    assert main(["echo", "not-an-address"]) == 2
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", node.settings.database_url)
    capsys.readouterr()
    assert main(["studies", "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)
    assert study["study_instance_uid"] == "1.2.3.9" and study["instance_count"] == 4


def test_cli_subprocess_db_upgrade_and_help(tmp_path):
    env = {"ORTHO_NODE_STORAGE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "ortho_node.app.cli.main", "db", "upgrade"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    from ortho_node.db.migrations import head_revision

    assert f"database at revision {head_revision()}" in result.stdout
    assert (tmp_path / "data" / "ortho-node.db").is_file()


def test_tls_store_of_a_large_instance(start_node, pki):
    # Several PDUs per instance, each split over TLS records: the reactor must also see bytes the TLS layer
    # has already decrypted (they never show as readable on the socket).
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    from ortho_node.db.models import Instance

    node = start_node(**{"tls.enabled": True, "tls.certificate": str(pki / "server.pem"),
                         "tls.private_key": str(pki / "server.key")})
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.maximum_pdu_size = 16384
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="ORTHODIFF",
                         tls_args=(_client_context(pki, with_certificate=False), "127.0.0.1"))
    assert assoc.is_established
    datasets = [mr_dataset(rows=512, columns=512, seed=i, instance_number=i + 1) for i in range(3)]
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    assert statuses == [0, 0, 0]
    with node.session_factory() as session:
        assert len(session.scalars(select(Instance)).all()) == 3
