"""Composition root: builds the node's parts from validated settings and runs them."""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from listeners.policy import AssociationPolicy
from listeners.storescp import StorageSCP
from ortho_node import __version__
from ortho_node.associations import AssociationLog
from ortho_node.audit import AuditKind, AuditTrail, Severity
from ortho_node.config import Settings, TlsSettings
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import Instance
from ortho_node.header import InstanceHeader
from ortho_node.intake import Intake, record_instance
from ortho_node.logs import silence_identifier_sources
from ortho_node.storage import InstanceStore, is_valid_uid

log = logging.getLogger(__name__)


class Node:
    """The running node: database, storage, intake and the Storage SCP, wired together."""

    def __init__(self, settings: Settings) -> None:
        silence_identifier_sources()
        self.settings = settings
        self.engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
        self.session_factory = make_session_factory(self.engine)
        self.audit = AuditTrail(self.session_factory)
        self.store = InstanceStore(settings.data_dir, fsync=settings.storage.fsync)
        self.intake = Intake(self.store, self.session_factory, self.audit)
        self.scp: StorageSCP | None = None

    def prepare(self) -> None:
        """Bring the schema up to date and recover from an earlier crash; run before serving."""
        migrations.upgrade(self.engine)
        removed = self.store.clear_partial_files()
        if removed:
            log.info("removed %d partial files left by an interrupted write (never acknowledged)", removed)
        self.recover_unrecorded_files()

    def recover_unrecorded_files(self) -> int:
        """Index complete files that lack a row (a crash between rename and commit)."""
        with self.session_factory() as session:
            known = set(session.scalars(select(Instance.file_path)))
        recovered = 0
        for path in self.store.iter_instance_files():
            relative = path.relative_to(self.store.data_dir).as_posix()
            if relative not in known and self._recover(path, relative):
                recovered += 1
        if recovered:
            log.warning("indexed %d stored files that had no database row", recovered)
        return recovered

    def _recover(self, path: Path, relative: str) -> bool:
        try:
            dataset = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.error("stored file %s cannot be read (%s); left in place", relative, type(exc).__name__)
            return False
        header = InstanceHeader.from_dataset(dataset)
        if not (is_valid_uid(header.sop_uid) and relative.endswith(f"/{header.sop_uid}.dcm")):
            log.error("stored file %s does not match its SOP Instance UID; left in place", relative)
            return False
        payload = path.read_bytes()
        with self.session_factory.begin() as session:
            record_instance(session, header, path=relative, size=len(payload),
                            sha256=hashlib.sha256(payload).hexdigest(),
                            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
                            association_id=None, calling_ae=None)
        self.audit.record(AuditKind.FILE_RECOVERED, "stored file indexed at start-up", severity=Severity.WARNING,
                          study_instance_uid=header.study_uid, sop_instance_uid=header.sop_uid)
        return True

    def start(self) -> StorageSCP:
        dicom, storage = self.settings.dicom, self.settings.storage
        policy = AssociationPolicy(
            dicom.ae_title, allowed=dicom.allowed_calling_aets, max_associations=dicom.max_associations,
            min_free_bytes=storage.min_free_mb * 1024 * 1024, free_bytes=self.store.free_bytes,
        )
        self.scp = StorageSCP(self.settings, intake=self.intake, association_log=AssociationLog(self.session_factory),
                              policy=policy, ssl_context=server_ssl_context(self.settings.tls))
        self.scp.start()
        self.audit.record(AuditKind.NODE_STARTED, f"node {__version__} started as {dicom.ae_title} on port "
                                                  f"{self.scp.port}")
        return self.scp

    def stop(self) -> None:
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
            self.audit.record(AuditKind.NODE_STOPPED, "node stopped")
        self.engine.dispose()


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.9 profile family): TLS 1.2 or newer, optional client certificates."""
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates:
        context.load_verify_locations(tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context

