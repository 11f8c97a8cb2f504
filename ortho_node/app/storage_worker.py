"""Worker processes: a storage worker (``dicom.workers`` > 1) and a STOW-RS worker (``dicomweb.workers`` > 1),
intake only, no scheduler, model or console.

Kept apart from :mod:`ortho_node.app.node` so a spawned worker imports only what receiving needs; ``app`` uses
the same policy and TLS builders. The module itself imports nothing heavy: the worker's imports happen in
:func:`run_storage_worker`, after it has kept pydicom's optional pixel libraries out (see
:func:`_without_pixel_libraries`).
"""

from __future__ import annotations

import signal
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


def _leave_interrupts_to_the_parent() -> None:
    """A terminal's Ctrl-C reaches every process of the node; the parent stops the workers in order (they finish
    their associations and requests first), so a worker that took the SIGINT itself would cut them and print a
    traceback. SIGTERM keeps its default: the parent terminates a worker that does not stop in time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_storage_worker(settings: Settings, channel: Any, active: Any, index: int) -> None:
    """Main function of a storage worker process (``dicom.workers`` > 1): intake only, no scheduler."""
    _leave_interrupts_to_the_parent()
    _without_pixel_libraries()
    from listeners.storescp import StorageSCP
    from listeners.worker_pool import serve_handed_over_connections
    from ortho_node.intake.associations import AssociationLog

    worker = _WorkerIntake(settings, channel)
    scp = StorageSCP(settings, intake=worker.intake, association_log=AssociationLog(worker.session_factory),
                     policy=storage_policy(settings, worker.store), ssl_context=server_ssl_context(settings.tls),
                     active_associations=active)
    scp.start_without_listening()
    worker.relay.ready(index)
    serve_handed_over_connections(channel, scp.serve_connection)
    scp.drain(timeout=settings.dicom.network_timeout)
    scp.stop()
    worker.engine.dispose()


def run_stow_worker(settings: Settings, channel: Any, active: Any, index: int) -> None:
    """Main function of a STOW-RS worker process (``dicomweb.workers`` > 1): the DICOMweb listener's routes on
    the listening socket the parent shares, intake only. Failed basic-auth logins are counted per process."""
    _leave_interrupts_to_the_parent()
    _without_pixel_libraries()
    from listeners.console.sessions import LoginThrottle
    from listeners.dicomweb.routes import dicomweb_listener_app
    from listeners.web.listener import TlsFiles, WebListener
    from listeners.worker_pool import shared_listener, wait_for_parent

    worker = _WorkerIntake(settings, channel)
    dicomweb, console = settings.dicomweb, settings.console
    throttle = LoginThrottle(console.max_failed_logins, console.lockout_minutes * 60)
    endpoint = stow_endpoint(settings, worker.intake, worker.audit, worker.session_factory, worker.store, throttle)
    tls = TlsFiles(dicomweb.tls_cert, dicomweb.tls_key) if dicomweb.tls else None
    listener = WebListener(dicomweb_listener_app(endpoint), dicomweb.host, dicomweb.port,
                           name=f"DICOMweb worker {index}", tls=tls, sock=shared_listener(channel))
    listener.start()
    worker.relay.ready(index)
    wait_for_parent(channel)
    listener.stop()  # requests in flight finish first
    worker.engine.dispose()


def stow_endpoint(settings: Settings, intake: Any, audit: Any, session_factory: Any, store: InstanceStore,
                  throttle: Any) -> Any:
    """The STOW-RS endpoint over ``intake``: the node's own, or a STOW-RS worker's."""
    from listeners.api.routes import token_check
    from listeners.dicomweb.access import StowAccess
    from listeners.dicomweb.routes import StowEndpoint
    from listeners.dicomweb.stow import StowReceiver

    access = StowAccess(settings.console.users, token_check(session_factory), audit, throttle)
    return StowEndpoint(StowReceiver(intake, audit), access, audit, spool_folder=store.tmp_dir,
                        max_bytes=settings.dicomweb.max_request_mb * 1024 * 1024)


class _WorkerIntake:
    """What every worker process stores through: its own engine, store, audit trail and intake, whose
    notifications go to the parent over ``channel``."""

    def __init__(self, settings: Settings, channel: Any) -> None:
        from listeners.worker_pool import EventRelay
        from ortho_node.app.logs import configure_logging
        from ortho_node.audit.trail import AuditTrail
        from ortho_node.db.engine import make_engine, make_session_factory
        from ortho_node.intake.accept import AcceptRules
        from ortho_node.intake.catalog import Catalog
        from ortho_node.intake.receive import Intake
        from ortho_node.intake.storage import LocalInstanceStore

        configure_logging(settings.logging.level, settings.logging.format)
        self.engine = make_engine(settings.database_url, busy_timeout=settings.database.busy_timeout)
        self.session_factory = make_session_factory(self.engine)
        # A spawned worker builds its own store from the settings: the file system the node's store is on.
        self.store = LocalInstanceStore(settings.data_dir, fsync=settings.storage.fsync)
        self.audit = AuditTrail(self.session_factory)
        self.intake = Intake(self.store, Catalog(self.engine), self.audit,
                             accept=AcceptRules.from_settings(settings.accept))
        self.relay = EventRelay(channel)
        self.intake.add_listener(self.relay)


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
