"""A storage worker process (``dicom.workers`` > 1): intake only, no scheduler, model or console.

Kept apart from :mod:`ortho_node.app.node` so a spawned worker imports only what receiving needs; ``app`` uses
the same policy and TLS builders. The module itself imports nothing heavy: the worker's imports happen in
:func:`run_storage_worker`, after it has kept pydicom's optional pixel libraries out (see
:func:`_without_pixel_libraries`).
"""

from __future__ import annotations

import ssl
import sys
from typing import TYPE_CHECKING, Any

from listeners.association_policy import AssociationPolicy
from ortho_node.config import Settings, TlsSettings

if TYPE_CHECKING:
    from ortho_node.intake.storage import InstanceStore

#: pydicom imports these, when installed, to decode pixel data; a worker stores bytes as received and
#: reads header elements only, so they would be about 16 MB of every worker's memory for nothing.
PIXEL_LIBRARIES = ("numpy", "PIL")


def storage_policy(settings: Settings, store: InstanceStore) -> AssociationPolicy:
    dicom = settings.dicom
    return AssociationPolicy(
        dicom.ae_title, allowed=dicom.allowed_calling_aets, max_associations=dicom.max_associations,
        min_free_bytes=settings.storage.min_free_mb * 1024 * 1024, free_bytes=store.free_bytes,
    )


def run_storage_worker(settings: Settings, channel: Any, active: Any, index: int) -> None:
    """Main function of a storage worker process (``dicom.workers`` > 1): intake only, no scheduler."""
    _without_pixel_libraries()
    from listeners.storescp import StorageSCP
    from listeners.worker_pool import EventRelay, serve_handed_over_connections
    from ortho_node.intake.associations import AssociationLog
    from ortho_node.audit.trail import AuditTrail
    from ortho_node.intake.catalog import Catalog
    from ortho_node.db.engine import make_engine, make_session_factory
    from ortho_node.intake.accept import AcceptRules
    from ortho_node.intake.receive import Intake
    from ortho_node.app.logs import configure_logging
    from ortho_node.intake.storage import LocalInstanceStore

    configure_logging(settings.logging.level, settings.logging.format)
    engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
    session_factory = make_session_factory(engine)
    # A spawned worker builds its own store from the settings: the file system the node's store is on.
    store = LocalInstanceStore(settings.data_dir, fsync=settings.storage.fsync)
    intake = Intake(store, Catalog(engine), AuditTrail(session_factory),
                    accept=AcceptRules.from_settings(settings.accept))
    relay = EventRelay(channel)
    intake.add_listener(relay)
    scp = StorageSCP(settings, intake=intake, association_log=AssociationLog(session_factory),
                     policy=storage_policy(settings, store), ssl_context=server_ssl_context(settings.tls),
                     active_associations=active)
    scp.start_without_listening()
    relay.ready(index)
    serve_handed_over_connections(channel, scp.serve_connection)
    scp.drain(timeout=settings.dicom.network_timeout)
    scp.stop()
    engine.dispose()


def _without_pixel_libraries() -> None:
    """Make ``import numpy`` and ``import PIL`` fail in this (worker) process, so pydicom runs without
    its pixel handlers, as on an installation without them. Only where none is loaded yet: a process that
    already uses them keeps them."""
    if any(name in sys.modules for name in PIXEL_LIBRARIES):
        return
    for name in PIXEL_LIBRARIES:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not available" marker


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
