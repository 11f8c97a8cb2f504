"""The delivery worker: sends due queue items, one association (C-STORE) or one request (STOW-RS) per destination
and batch, on its own thread.

``run_once`` does one pass and is what tests drive with an injected clock; ``start`` runs passes until
``stop``, every ``delivery.poll_interval`` seconds or sooner when woken by new work.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.clock import Clock, SystemClock
from ortho_node.cluster.lease import Lease
from ortho_node.config import DestinationSettings, Settings, TlsSettings
from ortho_node.delivery.outcomes import Outcome, retry_policy
from ortho_node.delivery.pause import paused_destinations, set_paused
from ortho_node.delivery.queue import DeliveryQueue, ResultFile
from ortho_node.delivery.scu import Failure, RemoteNode, SendResult, send_files
from ortho_node.delivery.stow import StowTarget, send_stow

log = logging.getLogger(__name__)


def client_ssl_context(destination: DestinationSettings, tls: TlsSettings) -> ssl.SSLContext | None:
    """DICOM TLS towards a destination: TLS 1.2 or newer, its CA bundle (or the system's), and our
    certificate when [tls] configures one."""
    if not destination.tls:
        return None
    context = ssl.create_default_context(cafile=destination.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate and tls.private_key:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context


class DeliveryWorker:
    def __init__(self, queue: DeliveryQueue, destinations: Sequence[DestinationSettings], *, calling_ae: str,
                 timeout: float, batch_size: int, poll_interval: float, tls: TlsSettings | None = None) -> None:
        self.queue = queue
        self.destinations = tuple(destinations)
        self._calling_ae = calling_ae
        self._timeout = timeout
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._tls = tls or TlsSettings()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Send every item that is due now; returns the number of attempts made."""
        attempts = 0
        paused = paused_destinations(self.queue.session_factory)  # an operator's pause: the queue waits
        for dest in self.destinations:
            if dest.name in paused:
                continue
            while items := self.queue.claim(dest.name, self._batch_size):
                attempts += self._deliver(dest, items)
                if len(items) < self._batch_size or self._stop.is_set():
                    break
        return attempts

    def _deliver(self, dest: DestinationSettings, items) -> int:
        label = f"{dest.name} ({dest.address})"
        by_path = {Path(item.file_path): item.id for item in items}
        outcomes: list[Outcome] = []

        def on_result(result: SendResult) -> None:
            outcomes.append(self.queue.record(by_path[result.path], result, destination_label=label))

        present = [path for path in by_path if path.is_file()]
        for missing in by_path.keys() - set(present):
            on_result(SendResult(missing, None, None, "result file is missing", Failure.UNREADABLE))
        if present:
            self._send(dest, present, on_result)
        delivered = outcomes.count(Outcome.DELIVERED)
        log.info("delivery to %s: %d of %d delivered", label, delivered, len(outcomes))
        return len(outcomes)

    def _send(self, dest: DestinationSettings, files: list[Path], on_result: Callable[[SendResult], None]) -> None:
        """By the destination's protocol: C-STORE (one association) or STOW-RS (one request)."""
        if dest.protocol == "dicomweb":
            send_stow(StowTarget.of(dest), files, timeout=self._timeout, progress=on_result)
        else:
            send_files(RemoteNode(dest.ae_title, dest.host, dest.port), files, calling_ae=self._calling_ae,
                       timeout=self._timeout, progress=on_result, ssl_context=client_ssl_context(dest, self._tls))

    def start(self) -> None:
        if self._thread is None and self.destinations:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except SQLAlchemyError as exc:  # database away: the queue is intact, try again next round
                log.error("delivery pass failed, database unavailable: %s", type(exc).__name__)
            self._wake.wait(self._poll_interval)


class UnknownDestination(LookupError):
    """``resend --to`` names a destination that is neither configured nor in the study's queue."""


class DeliveryService:
    """Queue, policy and worker built from settings: what the node's composition root holds."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], *,
                 clock: Clock | None = None, lease: Lease | None = None) -> None:
        delivery = settings.delivery
        self.destinations = settings.destinations
        self._session_factory = session_factory
        self._data_dir = settings.data_dir
        self.queue = DeliveryQueue(session_factory, clock or SystemClock(), retry_policy(delivery), lease=lease)
        self.worker = DeliveryWorker(
            self.queue, settings.destinations, calling_ae=delivery.calling_ae or settings.dicom.ae_title,
            timeout=delivery.timeout, batch_size=delivery.batch_size, poll_interval=delivery.poll_interval,
            tls=settings.tls)

    def enqueue_files(self, paths: Sequence[Path]) -> int:
        """Queue result files (SEG, SR, summary) for every destination accepting their kind."""
        added = self.queue.enqueue([ResultFile.read(Path(p)) for p in paths], self.destinations)
        self.worker.wake()
        return added

    def resend(self, study_instance_uid: str, to: str | None = None) -> tuple[int, list[str]]:
        """Queue the study's results again for ``to`` (default: every configured destination and every one the
        study was queued for). Objects the queue holds are reset; a study whose results were built while no
        destination (or not this one) was configured gets its latest built result set queued. Returns the
        rows queued and the destinations; :class:`LookupError` (:class:`UnknownDestination` for ``to``) says
        what is missing."""
        from ortho_node.config import OBJECT_KINDS
        from ortho_node.delivery.results import latest_result_files

        configured = {dest.name: dest for dest in self.destinations}
        queued_for = self.queue.destinations_of(study_instance_uid)
        targets = {**{name: list(OBJECT_KINDS) for name in queued_for},
                   **{name: dest.kinds for name, dest in configured.items()}}
        if to is not None:
            if to not in targets:
                raise UnknownDestination(f"destination {to!r} is neither configured nor in the queue for this study")
            targets = {to: targets[to]}
        count = self.queue.resend(study_instance_uid, targets) if queued_for else 0
        missing = [configured[name] for name in targets if name in configured and name not in queued_for]
        if missing:  # built while these destinations did not exist: queue the latest result set for them
            files = latest_result_files(self._session_factory, self._data_dir, study_instance_uid)
            count += self.queue.enqueue(files, missing)
        if not count:
            raise LookupError(f"no result objects of study {study_instance_uid} in the delivery queue or among "
                              "its built results")
        self.worker.wake()
        return count, sorted(targets)

    def retry(self, item_id: int, *, by: str | None = None) -> tuple[str, str]:
        """Queue one flagged object again (``DeliveryQueue.retry``) and wake the worker."""
        done = self.queue.retry(item_id, by=by)
        self.worker.wake()
        return done

    def pause(self, name: str, paused: bool, *, by: str | None = None, reason: str = "") -> str:
        """Pause or resume deliveries to a configured destination, or one the queue still names (removed from
        the configuration since). Raises :class:`UnknownDestination` for any other name."""
        if name not in {dest.name for dest in self.destinations} | self.queue.destination_names():
            raise UnknownDestination(f"destination {name!r} is neither configured nor in the delivery queue")
        done = set_paused(self._session_factory, name, paused, by=by, reason=reason)
        if not paused:
            self.worker.wake()
        return done

    def start(self) -> None:
        if not self.queue.lease.shared:  # the one process of a SQLite node: claims left by a crash are void
            self.queue.release_claims(everyone=True)
        self.worker.start()

    @property
    def running(self) -> bool | None:
        """None when no destination is configured (nothing to run), else whether the worker thread runs."""
        return self.worker.running if self.destinations else None

    def stop(self) -> None:
        self.worker.stop()
        try:
            self.queue.release_claims()  # claimed and not sent: free for another process at once
        except SQLAlchemyError as exc:  # database away: the claims expire with this process's lease instead
            log.error("delivery claims not released (%s); they expire with the lease", type(exc).__name__)
