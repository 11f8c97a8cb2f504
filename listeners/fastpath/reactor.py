"""Event-driven pynetdicom reactors: association and DUL threads that wait for work instead of polling.

pynetdicom's DUL thread polls its socket and queues and sleeps ``_run_loop_delay`` (1 ms) whenever a loop
found nothing; the association thread sleeps 1 ms on every loop. With synchronous C-STORE those sleeps
fall on the critical path several times per instance, and setting the delay to 0 makes the threads spin
and fight over the interpreter lock. Here the DUL thread blocks in ``select`` on its socket plus a wake-up
socket pair that other threads signal when they queue something for it, and the association thread blocks
on an event set whenever a DIMSE message or a primitive for it is queued. Both still wake at least every
``MAX_WAIT`` seconds for the timers (ARTIM, network idle) and for state changed behind their back.

A complete C-STORE request is stored and answered on the DUL thread that received it
(``EventDrivenAssociation.store_directly``) whenever nothing else is in flight on the association; every other
message goes to the association thread, pynetdicom's way.

The loops keep pynetdicom's order of checks (pynetdicom 3.0, ``DULServiceProvider.run_reactor`` and
``Association._run_reactor``); tests/listeners/test_reactor.py fails loudly if the attributes relied on
change.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol, cast

from pynetdicom import _config, _handlers, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket

from ortho_node.dicom_status import Status
from listeners.fastpath.wire import (
    LONGEST_STORE_RESPONSE, P_DATA_TF, PDU_HEADER, CommandFault, DirectStoreMessages, ReceivedPData, command_pdu,
    plain_store_response_command, refused_store_response_command,
)

log = logging.getLogger(__name__)

#: Longest a reactor sleeps without a signal: the resolution of the ARTIM and network idle timers.
MAX_WAIT = 0.02
#: Largest single ``recv_into`` while reading a PDU (pynetdicom reads 4 KiB at a time).
_RECV_CHUNK = 1024 * 1024
#: pynetdicom's logging handlers, bound to every association; with its logger quiet they only cost time.
_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
)


class StoreHandler(Protocol):
    """Who stores a received instance and decides its status (the Storage SCP's ``EVT_C_STORE`` handler)."""

    def __call__(self, assoc: Any, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                 data_set: bytes) -> int:
        """The C-STORE-RSP status of the instance whose encoded data set is ``data_set``."""


class RequestFaults(Protocol):
    """Who decides, logs and audits what a malformed request gets (the Storage SCP)."""

    def refused_request(self, assoc: Any, fault: CommandFault) -> int:
        """The status for a request identified by its Message ID whose command set cannot be used."""

    def unreadable_request(self, assoc: Any, problem: str) -> None:
        """A message no request can be read from; the association is aborted after this returns."""


class SignallingQueue(queue.Queue):
    """A queue that calls ``signal`` after every put (under the queue's lock, so nothing is missed)."""

    def __init__(self, signal: Any) -> None:
        super().__init__()
        self._signal = signal

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._signal()


class WakeableDUL(DULServiceProvider):
    """A DUL reactor that sleeps in ``select`` on its socket and a wake-up socket pair."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._reactor_ident: int | None = None
        # Events and primitives queued by other threads (the association's responses, an abort, a socket
        # closed from outside) must interrupt the wait; the reactor's own puts need no wake-up.
        self.event_queue = SignallingQueue(self._wake_from_other_thread)
        self.to_provider_queue = SignallingQueue(self._wake_from_other_thread)

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the buffer is full of wake-ups already: the reactor will wake
        except OSError:
            pass  # reactor finished and closed the pair: nothing to wake

    def _wake_from_other_thread(self) -> None:
        if threading.get_ident() != self._reactor_ident:
            self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def run_reactor(self) -> None:
        self._reactor_ident = threading.get_ident()
        try:
            self._run_event_driven()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            # The association thread may still wait for the A-ASSOCIATE-RQ primitive (a connection that sent
            # garbage and was aborted): wake it now rather than after the ACSE timeout, which held a thread and
            # a socket per such connection for 30 s (hundreds under a stream of bad connections).
            self.to_user_queue.put(None)

    def _run_event_driven(self) -> None:
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One outgoing primitive or one incoming PDU per loop, as pynetdicom does; but the next PDU is
                # read only once the events of the last one are acted on: a peer that sent a request and, in
                # the same segment, part of another PDU left the read blocked on the rest while the request's
                # answer waited in the queue.
                if self._process_recv_primitive():
                    pass
                elif self.event_queue.empty() and self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - pynetdicom's contract: any failure aborts the association
                log.error("exception in the DUL reactor (%s); aborting the association", type(exc).__name__)
                log.debug("DUL reactor failure", exc_info=True)
                self._abort_hard()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            try:
                self.state_machine.do_action(event)
            except Exception as exc:  # noqa: BLE001 - pynetdicom would end the thread on a traceback
                # What the peer sent broke an action (a presentation context ID that is even, an event out of
                # sequence because its PDUs crossed our accept): bad input, aborted with one line.
                problem = "out of sequence" if isinstance(exc, InvalidEventError) else f"failed ({exc})"
                log.error("event %s in state %s %s; aborting the association", event,
                          self.state_machine.current_state, problem)
                log.debug("state machine failure", exc_info=True)
                self._abort_hard()
                return

    def _abort_hard(self) -> None:
        """Send an A-ABORT and close the connection bypassing the state machine, whose state can no longer be
        trusted; the connection-closed event is triggered as the state machine's own close does, so that the
        association's slot and record are released (without it the node waited for the association forever)."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        sock = cast(AssociationSocket, self.socket)
        sock.send(abort_pdu.encode())
        sock.close()
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True
        remote = self.assoc.requestor if self.assoc.is_acceptor else self.assoc.acceptor
        address = remote.address_info.as_tuple if remote.address_info is not None else ("", 0)
        evt.trigger(self.assoc, evt.EVT_CONN_CLOSE, {"address": address})

    def _is_transport_event(self) -> bool:
        sock = cast(AssociationSocket, self.socket)
        if self.state_machine.current_state == "Sta13":
            # Waiting for the connection to close: act on whatever still arrives, then close.
            if sock and self._readable(sock):
                self._read_pdu_data()
            else:
                sock.close()
            return True
        if sock and self._readable(sock):
            self._read_pdu_data()
            return True
        return False

    def _read_pdu_data(self) -> None:
        """Read one PDU with a few large reads (pynetdicom's loop reads 4 KiB at a time); the events
        are pynetdicom's: Evt17 when the connection breaks, Evt19 for an unknown or undecodable PDU."""
        sock = cast(AssociationSocket, self.socket)
        pdu = bytearray(PDU_HEADER.size)
        try:
            complete = _receive_into(sock.socket, memoryview(pdu))
        except (OSError, TimeoutError) as exc:
            log.error("connection closed before a PDU was received (%s)", type(exc).__name__)
            self.event_queue.put("Evt17")
            return
        if not complete:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = PDU_HEADER.unpack(pdu)
        if not 0x01 <= pdu_type <= 0x07:
            log.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")
            return
        header, pdu = pdu, bytearray(PDU_HEADER.size + length)  # length checked by the PDU guard
        pdu[: PDU_HEADER.size] = header
        try:
            complete = _receive_into(sock.socket, memoryview(pdu)[PDU_HEADER.size:])
        except (OSError, TimeoutError) as exc:
            log.error("connection closed before the entire PDU was received (%s)", type(exc).__name__)
            complete = False
        if not complete:
            self.event_queue.put("Evt17")
            return
        try:
            decoded, event = self._decode(pdu_type, pdu)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is an invalid PDU (Evt19)
            if self.assoc.is_established:
                cast(EventDrivenAssociation, self.assoc).report_unreadable(
                    f"undecodable PDU of type 0x{pdu_type:02X} ({type(exc).__name__})")
            else:
                log.error("unable to decode a received PDU (%s)", type(exc).__name__)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _decode(self, pdu_type: int, pdu: bytearray) -> tuple[Any, str]:
        """pynetdicom's ``_decode_pdu``, except that a P-DATA-TF PDU (Evt10) is split into its items directly
        when no handler listens to the received bytes or PDUs."""
        if pdu_type == P_DATA_TF and not self._pdus_observed():
            return ReceivedPData(pdu), "Evt10"
        return self._decode_pdu(pdu)

    def _pdus_observed(self) -> bool:
        return bool(self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV))

    @staticmethod
    def _readable(sock: AssociationSocket) -> bool:
        # ``ready`` misses bytes a TLS socket has already decrypted when the socket is wrapped (our PDU
        # guard), so ask the TLS layer directly as well.
        return sock.ready or _tls_pending(sock.socket) > 0

    def _wait_for_work(self) -> None:
        if self._kill_thread or self.to_provider_queue.qsize() or not self.event_queue.empty():
            return
        watched: list[Any] = [self._wake_r]
        sock = cast(AssociationSocket, self.socket)
        raw = sock.socket if sock is not None and sock._is_connected else None
        if raw is not None:
            if _tls_pending(raw) > 0:
                return
            watched.append(raw)
        try:
            readable, _, _ = select.select(watched, [], [], MAX_WAIT)
        except (OSError, ValueError):
            return  # the socket was closed under us: the next loop sees the closed connection
        if self._wake_r in readable:
            self._drain_wake_ups()

    def _drain_wake_ups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass


def _receive_into(raw: Any, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False if the peer closed the connection first."""
    filled = 0
    while filled < len(view):
        received = raw.recv_into(view[filled:], min(len(view) - filled, _RECV_CHUNK))
        if not received:
            return False
        filled += received
    return True


def _tls_pending(raw: Any) -> int:
    pending = getattr(raw, "pending", None)
    if pending is None:
        return 0
    try:
        return pending()
    except (OSError, ValueError, ssl.SSLError):
        return 0


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor blocks until a DIMSE message or primitive is queued."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._work = threading.Event()
        self.dul = WakeableDUL(self)  # replaces the polling DUL before anything started it
        self.dimse = DirectStoreMessages(self)
        # The timeout setters forward to the DUL's timers, which the new DUL has at their defaults.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dul.to_user_queue = SignallingQueue(self._work.set)
        self.dimse.msg_queue = SignallingQueue(self._work.set)
        self.faults: RequestFaults | None = None
        self.store_handler: StoreHandler | None = None
        self._serving = False  # the association thread is serving a request (pynetdicom's way)
        self._storing = False  # the DUL thread is storing an instance (store_directly)

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        except Exception as exc:  # noqa: BLE001 - either way the association is aborted, and the thread ends
            if self.is_established:  # a failure while serving: ours to find, with its traceback
                log.exception("association thread failed; aborting the association")
            else:
                # pynetdicom decoded the request but its negotiation raised on it (a presentation context without
                # an abstract syntax): the peer's fault, answered with an A-ABORT and one line, no traceback.
                log.error("association request not negotiable (%s: %s); aborted", type(exc).__name__, exc)
            self.abort()
            sock = cast(AssociationSocket, self.dul.socket)
            if self._server and sock.socket:
                self._server.shutdown_request(sock.socket)

    def store_directly(self, request: C_STORE, data_set: bytes) -> bool:
        """Serve a complete C-STORE request on the DUL thread that received it: store, then send the response
        on the socket. False (nothing done) where pynetdicom's way must serve it: no store handler, a handler
        observing sent PDUs or messages, the association thread busy or with responses to send first (their order
        is the peer's), a context not accepted, a SOP class no storage service serves, or a release under way.

        Served there, an instance costs no hand-over to the association thread and back (two thread wake-ups,
        pynetdicom's service class and response primitive, the state machine's send path); the bytes on the wire
        are the same."""
        context_id = cast(int, request._context_id)
        context = self._accepted_cx.get(context_id)
        if (self.store_handler is None or context is None or self._serving or self._sent_release
                or not self.is_established or not self.dimse.msg_queue.empty()
                or not self.dul.to_provider_queue.empty() or self._sends_observed()
                or self._unservable_store(request, context_id) is not None):
            return False
        if LONGEST_STORE_RESPONSE + 7 > self.dimse.pdv_room():
            return False  # a peer whose PDUs cannot hold the response whole: pynetdicom fragments it
        sop_class, sop_instance = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        message_id = cast(int, request.MessageID)
        self._storing = True
        try:
            status = self.store_handler(self, sop_class, sop_instance, str(context.transfer_syntax[0]), data_set)
        except Exception:  # noqa: BLE001 - as pynetdicom answers a handler that raised
            log.exception("exception in the C-STORE handler; answered 0xC211")
            status = 0xC211
        finally:
            self._storing = False
            self.dul._idle_timer.restart()  # the peer waited for us, not the other way round
        if self.is_established:
            command = plain_store_response_command(sop_class, sop_instance, message_id, status)
            cast(AssociationSocket, self.dul.socket).send(command_pdu(context_id, command))
        return True

    def _sends_observed(self) -> bool:
        return any(self.get_handlers(event) for event in (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT))

    def report_unreadable(self, problem: str) -> None:
        """One log line and (through ``faults``) an audit event for a message that cannot be read."""
        if self.faults is not None:
            self.faults.unreadable_request(self, problem)
        else:
            log.warning("unreadable DIMSE message (%s); association aborted", problem)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and not self._sent_release:
            msg = self._unservable_store(msg, context_id) or msg
        if isinstance(msg, CommandFault):
            if context_id not in self._accepted_cx:  # PS3.8 7.1: a protocol error, as pynetdicom treats it
                self.report_unreadable(f"request on presentation context {context_id}, which was not accepted")
                self.abort()
                return
            self._answer_fault(msg)
            return
        super()._serve_request(msg, context_id)

    def _unservable_store(self, msg: C_STORE, context_id: int) -> CommandFault | None:
        """A C-STORE-RQ whose SOP class no storage service serves: pynetdicom would abort the association;
        it is answered 0x0122 (SOP Class Not Supported) instead."""
        if msg.MessageID is None or msg.AffectedSOPClassUID is None or _config.UNRESTRICTED_STORAGE_SERVICE:
            return None
        class_uid = msg.AffectedSOPClassUID
        class_uid = self.acceptor.accepted_common_extended.get(class_uid, (class_uid,))[0]
        if issubclass(uid_to_service_class(class_uid), StorageServiceClass):
            return None
        return CommandFault("Affected SOP Class UID is not a storage SOP class", msg.MessageID,
                            str(msg.AffectedSOPClassUID), Status.SOP_CLASS_NOT_SUPPORTED, context_id)

    def _answer_fault(self, fault: CommandFault) -> None:
        """A C-STORE-RSP with a failure status for a request pynetdicom could not have decoded."""
        if self.faults is not None:
            status = self.faults.refused_request(self, fault)
        else:
            status = fault.status
            log.warning("C-STORE request %d refused with status 0x%04X (%s)", fault.message_id, status,
                        fault.problem)
        pdata = P_DATA()
        command = refused_store_response_command(replace(fault, status=status))
        pdata.presentation_data_value_list.append((fault.context_id, b"\x03" + command))  # command, last fragment
        self.dul.send_pdu(pdata)

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            self._work.wait(MAX_WAIT)
            self._work.clear()  # anything queued after this sets it again
            # Let a service that sends DIMSE messages itself pause the reactor (pynetdicom's checkpoint).
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if self._step():
                return

    def _step(self) -> bool:
        """One pass over pynetdicom's acceptor checks; True once the association is over."""
        self._serving = True  # before the queue is read: the DUL thread then leaves any new message to us
        try:
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                self._work.set()  # more messages may have queued while serving: look again at once
        finally:
            self._serving = False
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            log.debug("association released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            log.debug("association aborted")
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for the abort
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired() and not self._storing:  # a store under way is not the peer idling
            log.error("network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False


def create_acceptor(request_handler: Any, contexts: list[Any], *, faults: RequestFaults | None = None,
                    store: StoreHandler | None = None) -> EventDrivenAssociation:
    """Build the acceptor association for a request handler's connection, as pynetdicom's
    ``RequestHandler._create_association`` does, but with the event-driven reactors.

    ``contexts`` are shared by every association of the server: pynetdicom deep-copies them per
    association (tens of milliseconds for every storage SOP class with all transfer syntaxes), but
    negotiation only reads them; tests/listeners/test_reactor.py checks that it still does."""
    server, ae = request_handler.server, request_handler.ae
    assoc = EventDrivenAssociation(ae, MODE_ACCEPTOR)
    assoc._server = server
    assoc.faults = faults
    assoc.store_handler = store
    assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
    assoc.set_socket(AssociationSocket(assoc, client_socket=request_handler.request))
    acceptor = assoc.acceptor
    acceptor.maximum_length = ae.maximum_pdu_size
    acceptor.ae_title = server.ae_title
    acceptor.address_info = request_handler.local
    acceptor.implementation_class_uid = ae.implementation_class_uid
    acceptor.implementation_version_name = ae.implementation_version_name
    acceptor.supported_contexts = list(contexts)
    assoc.requestor.address_info = request_handler.remote
    for event, bound in server._handlers.items():
        if event.is_intervention and bound:
            assoc.bind(event, *bound)
        elif isinstance(event, evt.NotificationEvent):
            for handler, args in bound:
                assoc.bind(event, handler, args)
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # Bound by pynetdicom to the server and the association; they would log nothing.
        for event, handler in _STANDARD_LOG_HANDLERS:
            assoc.unbind(event, handler)
    return assoc


