"""The node's Verification and Storage SCP (pynetdicom): association policy, C-ECHO, C-STORE.

Handlers are thin: they decide on associations, hand each received instance to intake, and return the
status intake gives. Nothing slow (inference, assembly) happens on these threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
import socketserver
import ssl
import sys
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from listeners.fastpath.pdu_guard import PduGuardSocket
from listeners.fastpath.reactor import EventDrivenAssociation, create_acceptor
from listeners.fastpath.wire import CommandFault, part10_header
from listeners.association_policy import AssociationPolicy, AssociationRequest
from ortho_node.intake.associations import AssociationCounts, AssociationLog, Peer
from ortho_node.config import Settings
from ortho_node.dicom_status import Status
from ortho_node.intake.header import EncodedHeader, InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance, Intake

log = logging.getLogger(__name__)

#: Every transfer syntax we accept; instances are stored exactly as received in any of them.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
    JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]


def supported_contexts() -> list[Any]:
    """Verification plus every standard storage SOP class, each with all our transfer syntaxes."""
    contexts = [build_context(Verification, TRANSFER_SYNTAXES[:3])]
    contexts += [build_context(cx.abstract_syntax, TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    return contexts


@dataclass
class _AssociationState:
    peer: Peer
    association_id: int | None
    counts: AssociationCounts = field(default_factory=AssociationCounts)


class StorageSCP:
    """Listens for associations and stores what they carry through :class:`Intake`."""

    def __init__(self, settings: Settings, *, intake: Intake, association_log: AssociationLog,
                 policy: AssociationPolicy, ssl_context: ssl.SSLContext | None = None,
                 active_associations: Any = None) -> None:
        """``active_associations``: a shared ``multiprocessing.Value('i')`` when several processes serve
        the same port, so that ``dicom.max_associations`` holds across them."""
        self.settings = settings
        self.intake = intake
        self.association_log = association_log
        self.policy = policy
        self.ssl_context = ssl_context
        self._states: dict[Any, _AssociationState] = {}
        self._unrequested: dict[Any, tuple[str, int]] = {}  # connections with no A-ASSOCIATE-RQ yet
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._active = active_associations if active_associations is not None else multiprocessing.Value("i", 0)

    def _make_ae(self) -> AE:
        dicom = self.settings.dicom
        ae = AE(ae_title=dicom.ae_title)
        ae.supported_contexts = supported_contexts()
        ae.acse_timeout = dicom.acse_timeout
        ae.dimse_timeout = dicom.dimse_timeout
        ae.network_timeout = dicom.network_timeout
        ae.maximum_pdu_size = dicom.max_pdu_size
        # dicom.max_associations is our policy's alone (it decides, logs and audits). pynetdicom's own limit
        # counts every connection's thread, those that have not sent an A-ASSOCIATE-RQ yet included, and
        # rejects after our policy has accepted and recorded the association: 50 idle connections made it
        # reject an echo with no association open, audited as accepted. Idle connections are bounded by
        # acse_timeout (ARTIM) instead.
        ae.maximum_associations = sys.maxsize
        ae.require_called_aet = False
        return ae

    def _handlers(self) -> list[tuple]:
        return [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_ended, ["closed"]),
        ]

    def start(self) -> None:
        """Bind and serve on a background thread; ``port`` then gives the bound port."""
        dicom = self.settings.dicom
        self._server = self._make_ae().make_server(
            (dicom.host, dicom.port), evt_handlers=self._handlers(), ssl_context=self.ssl_context,
            server_class=_NodeAssociationServer, request_handler=_GuardedRequestHandler,
        )
        self._server.faults = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="storescp-accept",
                                        daemon=True)
        self._thread.start()
        log.info("Storage SCP %s listening on %s:%d%s", dicom.ae_title, dicom.host, self.port,
                 " (TLS)" if self.ssl_context else "")

    def start_without_listening(self) -> None:
        """Serve only connections handed over by :meth:`serve_connection` (a worker process)."""
        self._server = self._make_ae().make_server(
            ("127.0.0.1", 0), evt_handlers=self._handlers(), ssl_context=self.ssl_context,
            server_class=_HandedOverConnectionServer, request_handler=_GuardedRequestHandler,
        )
        self._server.faults = self

    def serve_connection(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Run an association on an accepted connection (accepted by another process)."""
        if self._server is None:
            raise RuntimeError("start_without_listening() first")
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._server.process_request(sock, address)

    @property
    def active_associations(self) -> int:
        """Associations open now (every process serving the port)."""
        return self._active.value

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("start() first")
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()  # stops serve_forever, then closes the listening socket
            else:
                self._server.server_close()
            self._server = None
        log.info("Storage SCP stopped")

    def drain(self, timeout: float) -> bool:
        """Wait until no association or pending connection is open; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._states and not self._unrequested:
                    return True
            time.sleep(0.05)
        return False

    # Event handlers ---------------------------------------------------------------------------------

    def _on_connection_open(self, event: evt.Event) -> None:
        with self._lock:
            self._unrequested[event.assoc] = (event.address[0], event.address[1])

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        with self._lock:
            self._unrequested.pop(assoc, None)
        primitive = assoc.requestor.primitive
        peer = Peer(calling_ae=primitive.calling_ae_title.strip(), called_ae=primitive.called_ae_title.strip(),
                    host=assoc.requestor.address, port=assoc.requestor.port, tls_subject=_tls_subject(assoc))
        with self._active.get_lock():
            active = self._active.value + 1  # this one included
            rejection = self.policy.evaluate(AssociationRequest(peer.called_ae, peer.calling_ae, peer.host,
                                                                active))
            if rejection is None:
                self._active.value += 1
        if rejection is not None:
            log.warning("association from %s at %s:%d rejected: %s", peer.calling_ae, peer.host, peer.port,
                        rejection.text)
            self.association_log.rejected(peer, rejection.text, transient=rejection.result == 0x02)
            assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
            assoc.kill()  # as pynetdicom's own rejections: returns once the A-ASSOCIATE-RJ is sent
            return
        association_id = self.association_log.accepted(peer)
        with self._lock:
            self._states[assoc] = _AssociationState(peer, association_id)
        log.info("association %s from %s at %s:%d accepted", association_id, peer.calling_ae, peer.host,
                 peer.port)
        self._reject_refused_contexts(assoc, AssociationRef(association_id, peer.calling_ae, peer.host))

    def _reject_refused_contexts(self, assoc: Any, ref: AssociationRef) -> None:
        """SOP classes the accept rules refuse whatever the content leave our supported contexts for this
        association only, so that negotiation rejects them (abstract syntax not supported)."""
        if self.intake.accept.analyse_all:
            return
        supported = assoc.acceptor.supported_contexts
        ours = {cx.abstract_syntax for cx in supported} - {Verification}  # rules are about stored instances
        proposed = {cx.abstract_syntax for cx in assoc.requestor.primitive.presentation_context_definition_list}
        refused = self.intake.refuse_sop_classes(ref, sorted(proposed & ours))
        if refused:  # a new list: the server's shared one stays whole for other associations
            assoc.acceptor.supported_contexts = [cx for cx in supported if cx.abstract_syntax not in refused]

    def _on_echo(self, event: evt.Event) -> int:
        return Status.SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        return self.store(event.assoc, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                          str(event.context.transfer_syntax), request.DataSet.getvalue())

    def store(self, assoc: Any, sop_class: str, sop_instance: str, transfer_syntax: str, received: bytes) -> int:
        """The status of one received instance (``received``: its data set as encoded on the wire), stored through
        intake; called for ``EVT_C_STORE`` and by the reactor that serves C-STOREs on the receiving thread
        (:class:`listeners.fastpath.reactor.StoreHandler`)."""
        state = self._states.get(assoc)
        ref = self._ref(state)
        try:
            header = InstanceHeader.from_dataset(EncodedHeader(received, transfer_syntax))
        except Exception as exc:  # noqa: BLE001 - pydicom signals corrupt data with many exception types
            refused = self.intake.refuse_undecodable(ref, sop_instance, type(exc).__name__)
            return self._count(state, refused.status, 0)
        # The bytes as received behind the file meta pynetdicom's encoded_dataset() would write (same bytes,
        # encoded without building a pydicom data set).
        encoded = part10_header(sop_class, sop_instance, transfer_syntax) + received
        incoming = IncomingInstance(
            encoded=encoded, header=header, transfer_syntax_uid=transfer_syntax,
            affected_sop_class_uid=sop_class, affected_sop_instance_uid=sop_instance, association=ref,
        )
        try:
            result = self.intake.receive(incoming)
        except Exception:  # noqa: BLE001 - a bug must not be acknowledged as success; the sender retries
            log.exception("unexpected failure storing an instance from %s; answered 0xA700", ref.calling_ae)
            return self._count(state, Status.OUT_OF_RESOURCES, 0)
        if state is not None and result.duplicate:
            state.counts.duplicates += 1
        return self._count(state, result.status, len(encoded) if not result.duplicate else 0)

    # Malformed requests (listeners.fastpath.reactor.RequestFaults) ---------------------------------------

    def refused_request(self, assoc: Any, fault: CommandFault) -> int:
        """A C-STORE request identified by its Message ID whose command set cannot be used: its status."""
        state = self._states.get(assoc)
        refused = self.intake.refuse_malformed_request(self._ref(state), Status(fault.status), fault.problem)
        return self._count(state, refused.status, 0)

    def unreadable_request(self, assoc: Any, problem: str) -> None:
        """A message no request can be read from; the association is aborted next."""
        state = self._states.get(assoc)
        ref = self._ref(state)
        log.warning("association %s from %s at %s: unreadable DIMSE message (%s); association aborted",
                    ref.id, ref.calling_ae, ref.peer_host, problem)
        if state is not None:
            self.association_log.unreadable_message(state.association_id, state.peer, problem)

    def tls_refused(self, host: str, port: int, problem: str) -> None:
        """A TLS handshake that failed: one log line and an audit event; the connection is closed."""
        log.warning("TLS handshake with %s:%d failed (%s); connection closed", host, port, problem)
        self.association_log.tls_refused(host, port, problem)

    @staticmethod
    def _ref(state: _AssociationState | None) -> AssociationRef:
        return AssociationRef(state.association_id if state else None,
                              state.peer.calling_ae if state else "?", state.peer.host if state else "?")

    def _count(self, state: _AssociationState | None, status: Status, size: int) -> int:
        if state is not None:
            counts = state.counts
            counts.statuses[int(status)] = counts.statuses.get(int(status), 0) + 1
            if status == Status.SUCCESS:
                counts.received += 1
                counts.bytes += size
            else:
                counts.failed += 1
        return int(status)

    def _on_ended(self, event: evt.Event, how: str) -> None:
        with self._lock:
            state = self._states.pop(event.assoc, None)
            never_requested = self._unrequested.pop(event.assoc, None)
        if never_requested is not None:
            log.warning("connection from %s:%d closed without a valid association request", *never_requested)
            self.association_log.malformed(*never_requested)
        if state is None:  # rejected, or already closed by an earlier event
            return
        with self._active.get_lock():
            self._active.value -= 1
        self.association_log.ended(state.association_id, state.peer, how, state.counts)
        self.intake.association_ended(state.association_id, how)
        log.info("association %s from %s %s: %d stored, %d failed", state.association_id,
                 state.peer.calling_ae, how, state.counts.received, state.counts.failed)


def _tls_subject(assoc: Any) -> str | None:
    sock = getattr(assoc.dul.socket, "socket", None)
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert()
    if not cert:
        return None
    return ", ".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)[:512]


class _NodeAssociationServer(ThreadedAssociationServer):
    """Defers the TLS handshake to the connection's own thread so a slow peer cannot stall accepts;
    copies the presentation contexts once for all its associations."""

    # socketserver's default listen backlog is 5: in a burst (30 senders at once, or idle connections ahead
    # of them) the kernel drops further SYNs and each such sender waits 1 s, 3 s, ... to retry its connect.
    # The worker pool's listener has the same backlog.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acceptor_contexts = deepcopy(self.contexts)
        self.faults: StorageSCP | None = None  # set by the SCP that made this server

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return client_socket, address

    def shutdown(self) -> None:
        # pynetdicom's version also unregisters from AE.start_server's list, which we do not use.
        socketserver.TCPServer.shutdown(self)
        self.server_close()


class _HandedOverConnectionServer(_NodeAssociationServer):
    """A server that never listens: connections arrive through ``process_request`` from the parent."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


class _GuardedRequestHandler(RequestHandler):
    """Completes TLS and wraps the connection in the PDU length guard before pynetdicom reads it; the
    association runs on the event-driven reactors (:mod:`listeners.fastpath.reactor`)."""

    def _create_association(self) -> EventDrivenAssociation:
        scp = self.server.faults
        return create_acceptor(self, self.server.acceptor_contexts, faults=scp,
                               store=scp.store if scp is not None else None)

    def handle(self) -> None:
        host, port = self.client_address[0], self.client_address[1]
        peer = f"{host}:{port}"
        try:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(self.ae.acse_timeout)
                self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.request.close()
            faults = self.server.faults
            if faults is not None:
                faults.tls_refused(host, port, tls_problem(exc))
            else:
                log.warning("TLS handshake with %s failed (%s); connection closed", peer, tls_problem(exc))
            return
        self.request = PduGuardSocket(self.request, max_pdata_length=self.ae.maximum_pdu_size, peer=peer)
        super().handle()


def tls_problem(exc: BaseException) -> str:
    """Why a TLS handshake failed, in OpenSSL's words (``UNSUPPORTED_PROTOCOL``, ``certificate verify failed:
    unable to get local issuer certificate``, ``WRONG_VERSION_NUMBER`` for plain TCP)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within dicom.acse_timeout"
    return exc.strerror or type(exc).__name__
