"""DICOM TLS with real peers: dcmtk ``storescu +tls`` against ``ortho-node serve`` (client certificates required,
one and two storage worker processes), and delivery over TLS to a dcmtk ``storescp +tls``. Certificates are
made by openssl in the test: a CA the node trusts, and a rogue CA it does not."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from sqlalchemy import create_engine, select

from ortho_node.clock import RetryPolicy, SystemClock
from ortho_node.config import DestinationSettings, TlsSettings
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import Association, AuditEvent, DeliveryItem, Instance
from ortho_node.delivery.queue import DeliveryQueue, ResultFile
from ortho_node.delivery.worker import DeliveryWorker
from tests.conftest import dcmtk
from tests.delivery.conftest import make_result_files
from tests.dicom_factory import mr_dataset, write
from tests.node_process import NodeProcess, free_port


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """ca.pem signs server and client; rogue.pem signs rogueclient, a certificate the node must not trust."""
    folder = tmp_path_factory.mktemp("pki")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=Test {ca} CA",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=folder)
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogueclient", "rogue")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}.test", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.pem", cwd=folder)
    # A client limited to TLS 1.1: OpenSSL 3 refuses TLS 1.1 below security level 0, so it needs both lines
    # to even offer it (dcmtk reads them through OPENSSL_CONF; its BCP 195 profile then negotiates TLS 1.1).
    (folder / "tls11.cnf").write_text(
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n[ssl_sect]\n"
        "system_default = system_default_sect\n[system_default_sect]\n"
        "MinProtocol = TLSv1\nMaxProtocol = TLSv1.1\nCipherString = DEFAULT:@SECLEVEL=0\n")
    return folder


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def tls_node(request, pki, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tls-w{request.param}")
    process = NodeProcess(folder / "data", ready_tls=_client_context(pki, with_certificate=True), extra_env={
        "ORTHO_NODE_DICOM_WORKERS": str(request.param),
        "ORTHO_NODE_TLS_ENABLED": "true",
        "ORTHO_NODE_TLS_CERTIFICATE": str(pki / "server.pem"),
        "ORTHO_NODE_TLS_PRIVATE_KEY": str(pki / "server.key"),
        "ORTHO_NODE_TLS_CA_CERTIFICATES": str(pki / "ca.pem"),
        "ORTHO_NODE_TLS_REQUIRE_CLIENT_CERTIFICATE": "true",
    })
    yield process
    process.stop()


def _client_context(pki: Path, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def _rows(node: NodeProcess, model, *conditions) -> list:
    engine = create_engine(f"sqlite:///{node.data_dir / 'ortho-node.db'}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(model).where(*conditions)))
    finally:
        engine.dispose()


def _storescu(node: NodeProcess, path: Path, *tls: str, calling_ae: str, env: dict | None = None):
    return subprocess.run([dcmtk("storescu"), *tls, "-aet", calling_ae, "-aec", "ORTHODIFF", "127.0.0.1",
                           str(node.port), str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _trusted(pki: Path) -> tuple[str, ...]:
    return ("+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem"))


def _echo_tls(node: NodeProcess, pki: Path) -> bool:
    result = subprocess.run([dcmtk("echoscu"), *_trusted(pki), "-aet", "ALIVE", "-aec", "ORTHODIFF", "127.0.0.1",
                             str(node.port)], capture_output=True, text=True, timeout=60)
    return result.returncode == 0


def _refused(node: NodeProcess, before: int) -> list:
    events = _rows(node, AuditEvent, AuditEvent.kind == "tls_refused")
    return events[before:]


def _refused_count(node: NodeProcess) -> int:
    return len(_rows(node, AuditEvent, AuditEvent.kind == "tls_refused"))


def test_trusted_client_certificate_stores(tls_node, pki, tmp_path):
    ds = mr_dataset(seed=1)
    result = _storescu(tls_node, write(ds, tmp_path / "a.dcm"), *_trusted(pki), calling_ae="TRUSTED")
    assert result.returncode == 0, result.stderr
    assert _rows(tls_node, Instance, Instance.sop_instance_uid == ds.SOPInstanceUID)
    [association] = _rows(tls_node, Association, Association.calling_ae == "TRUSTED")
    assert association.accepted and association.tls_subject == "commonName=client.test"


@pytest.mark.parametrize("client", ["untrusted certificate", "no certificate"])
def test_client_without_trusted_certificate_is_refused_and_audited(tls_node, pki, tmp_path, client):
    if client == "untrusted certificate":
        tls = ("+tls", str(pki / "rogueclient.key"), str(pki / "rogueclient.pem"), "+cf", str(pki / "ca.pem"))
        problem = "certificate verify failed"
    else:
        tls = ("+tla", "+cf", str(pki / "ca.pem"))  # dcmtk's anonymous TLS: the server verified, no own certificate
        problem = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    before = _refused_count(tls_node)
    ds = mr_dataset(seed=2)
    result = _storescu(tls_node, write(ds, tmp_path / "b.dcm"), *tls, calling_ae="ROGUE")
    assert result.returncode != 0
    assert not _rows(tls_node, Instance, Instance.sop_instance_uid == ds.SOPInstanceUID)
    assert not _rows(tls_node, Association, Association.calling_ae == "ROGUE"), "no association may start"
    [event] = _refused(tls_node, before)
    assert event.severity == "warning" and event.peer_host == "127.0.0.1" and problem in event.message
    assert tls_node.log().count(f"TLS handshake with 127.0.0.1:{event.details['peer_port']} failed") == 1
    assert _echo_tls(tls_node, pki)


def test_plain_tcp_to_the_tls_port_is_refused_and_the_node_stays_up(tls_node, pki, tmp_path):
    before = _refused_count(tls_node)
    result = _storescu(tls_node, write(mr_dataset(seed=3), tmp_path / "c.dcm"), calling_ae="PLAIN")
    assert result.returncode != 0
    [event] = _refused(tls_node, before)
    assert "WRONG_VERSION_NUMBER" in event.message or "HTTP_REQUEST" in event.message, event.message
    assert not _rows(tls_node, Association, Association.calling_ae == "PLAIN")
    assert _echo_tls(tls_node, pki)


def test_a_client_limited_to_tls_1_1_is_refused(tls_node, pki, tmp_path):
    before = _refused_count(tls_node)
    result = _storescu(tls_node, write(mr_dataset(seed=4), tmp_path / "d.dcm"), *_trusted(pki), "+px",
                       calling_ae="OLDTLS", env={"OPENSSL_CONF": str(pki / "tls11.cnf")})
    assert result.returncode != 0
    [event] = _refused(tls_node, before)
    # The node's own reason shows the client offered nothing newer than TLS 1.1 (not some other failure).
    assert "UNSUPPORTED_PROTOCOL" in event.message, event.message
    assert not _rows(tls_node, Association, Association.calling_ae == "OLDTLS")
    assert _echo_tls(tls_node, pki)
    assert "Traceback" not in tls_node.log()


def test_tls_store_of_a_large_instance(start_node, pki):
    # Several PDUs per instance, each split over TLS records: the reactor must also see bytes the TLS layer
    # has already decrypted (they never show as readable on the socket).
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

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


@pytest.fixture
def tls_pacs(pki, tmp_path):
    """dcmtk storescp +tls as the PACS: presents server.pem, requires a client certificate signed by ca.pem."""
    port, received = free_port(), tmp_path / "pacs"
    received.mkdir()
    log = open(tmp_path / "storescp.log", "w")
    process = subprocess.Popen([dcmtk("storescp"), "+tls", str(pki / "server.key"), str(pki / "server.pem"),
                                "+cf", str(pki / "ca.pem"), "--require-peer-cert", "-aet", "TLSPACS", "-od",
                                str(received), "-v", str(port)], stdout=log, stderr=subprocess.STDOUT)
    yield port, received, tmp_path / "storescp.log"
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_delivery_over_tls_to_dcmtk_storescp(tls_pacs, pki, tmp_path):
    port, received, pacs_log = tls_pacs
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    files = make_result_files(tmp_path / "results", 3)
    queue = DeliveryQueue(sessions, SystemClock(), RetryPolicy.of_seconds(0, 0))
    # The node presents its [tls] certificate as the client's; the PACS requires one signed by ca.pem.
    node_tls = TlsSettings(enabled=True, certificate=str(pki / "client.pem"), private_key=str(pki / "client.key"))

    def deliver(name: str, ca: str, tls: TlsSettings) -> dict[str, str]:
        destination = DestinationSettings(name=name, ae_title="TLSPACS", host="127.0.0.1", port=port, tls=True,
                                          ca_certificates=str(pki / ca))
        queue.enqueue([ResultFile.read(f) for f in files], [destination])
        DeliveryWorker(queue, [destination], calling_ae="ORTHODIFF", timeout=30, batch_size=10, poll_interval=1,
                       tls=tls).run_once()
        with sessions() as session:
            return {item.sop_instance_uid: item.state
                    for item in session.scalars(select(DeliveryItem).where(DeliveryItem.destination == name))}

    # A PACS whose certificate the destination's CA bundle does not vouch for gets nothing.
    assert set(deliver("UNVERIFIED", "rogue.pem", node_tls).values()) == {"pending"}
    # Without a client certificate the PACS refuses the node.
    assert set(deliver("NOCERT", "ca.pem", TlsSettings()).values()) == {"pending"}
    assert not list(received.iterdir())
    states = deliver("PACS", "ca.pem", node_tls)
    assert set(states.values()) == {"delivered"}
    stored = {path.name.split(".", 1)[1] for path in received.iterdir()}  # storescp names files MODALITY.UID
    assert stored == set(states)
    pacs_says = pacs_log.read_text()
    assert "alert unknown ca" in pacs_says  # the node refused the PACS's certificate
    assert "peer did not return a certificate" in pacs_says
    engine.dispose()
