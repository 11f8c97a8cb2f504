"""Several processes serving one port: the DICOM port (``dicom.workers``) or the DICOMweb one (``dicomweb.workers``).

A Python process runs its requests on threads that share one interpreter lock, so it uses about one core.
With workers, the parent binds the port and worker processes serve it. For DICOM the parent accepts each
connection and hands it, round robin, to a worker (file-descriptor passing over a Unix socket pair), which
keeps the association limit exact; an HTTP server accepts on its own, so for DICOMweb each worker gets the
listening socket itself once (``share_listener``) and the kernel spreads the connections. Workers store
through their own intake and database connections and send intake notifications back over the same socket
pair to the parent, where the scheduler lives. A worker that dies is restarted; a worker whose parent goes
away finishes its requests and exits.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from listeners.shared_counter import SharedCounter
from ortho_node.config import Settings
from ortho_node.intake.receive import Intake, StoredInstance

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")  # no fork: the parent has threads and open database pools

#: ``target(settings, channel, active, index)``: a worker process's main function.
WorkerTarget = Callable[[Settings, socket.socket, SharedCounter, int], None]


@dataclass
class _Worker:
    index: int
    process: Any
    channel: socket.socket  # parent end of the socket pair: connections out, events in
    relay: threading.Thread | None = field(default=None, repr=False)


class WorkerPool:
    """The parent side: listening socket, hand-over, event relay, restarts. ``address``: (host, port) to listen
    on (default the DICOM port's); ``share_listener``: workers accept on the listening socket themselves;
    ``name``: what the log calls the service."""

    def __init__(self, settings: Settings, *, workers: int, intake: Intake, target: WorkerTarget,
                 address: tuple[str, int] | None = None, share_listener: bool = False,
                 name: str = "Storage SCP") -> None:
        self.settings = settings
        self._count = workers
        self._intake = intake
        self._target = target
        self._address = address or (settings.dicom.host, settings.dicom.port)
        self._share_listener = share_listener
        self.name = name
        self._workers: dict[int, _Worker] = {}
        self._active = SharedCounter.create()
        self._ready = threading.Semaphore(0)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def active_associations(self) -> int:
        """Associations open now (every process serving the port)."""
        return self._active.value

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("start() first")
        return self._listener.getsockname()[1]

    def start(self, *, ready_timeout: float = 120.0) -> None:
        self._listener = socket.create_server(self._address, backlog=128)
        for index in range(self._count):
            self._workers[index] = self._spawn(index)
        self._wait_ready(ready_timeout)
        loops = [(self._monitor_loop, "monitor")] + ([] if self._share_listener else [(self._accept_loop, "accept")])
        for target, name in loops:
            threading.Thread(target=target, name=f"workers-{name}", daemon=True).start()
        log.info("%s listening on %s:%d with %d worker processes", self.name, self._address[0], self.port, self._count)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            # No more connections; the worker finishes its associations, still reporting them, and exits.
            _shutdown(worker.channel, socket.SHUT_WR)
        for worker in workers:
            worker.process.join(timeout)
            if worker.process.is_alive():
                log.warning("worker %d did not stop in %.0f s; terminating", worker.index, timeout)
                worker.process.terminate()
                worker.process.join(timeout)
        for worker in workers:
            _shutdown(worker.channel, socket.SHUT_RDWR)  # ends its relay thread
            if worker.relay is not None:
                worker.relay.join(timeout)
            worker.channel.close()
        self._active.remove()
        log.info("%s stopped", self.name)

    def _spawn(self, index: int) -> _Worker:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = _CONTEXT.Process(target=self._target, name=f"ortho-node-worker-{index}", daemon=False,
                                   args=(self.settings, child_end, self._active, index))
        process.start()
        child_end.close()
        if self._share_listener and self._listener is not None:
            socket.send_fds(parent_end, [b"listener"], [self._listener.fileno()])
        worker = _Worker(index, process, parent_end)
        worker.relay = threading.Thread(target=self._relay_loop, args=(worker,), name=f"worker-relay-{index}",
                                        daemon=True)
        worker.relay.start()
        return worker

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for ready in range(self._count):
            if not self._ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"only {ready} of {self._count} {self.name} workers started")

    def _accept_loop(self) -> None:
        turns = itertools.count()
        while not self._stopping.is_set():
            try:
                connection, address = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            with connection:
                self._hand_over(connection, address, next(turns))

    def _hand_over(self, connection: socket.socket, address: tuple[str, int], turn: int) -> None:
        message = json.dumps([address[0], address[1]]).encode()
        with self._lock:
            workers = [w for w in self._workers.values() if w.process.is_alive()]
        for offset in range(len(workers)):
            worker = workers[(turn + offset) % len(workers)]
            try:
                socket.send_fds(worker.channel, [message], [connection.fileno()])
                return
            except OSError as exc:
                log.warning("worker %d cannot take a connection (%s); trying the next", worker.index, exc)
        log.error("no storage worker available; connection from %s:%d closed", *address)

    def _relay_loop(self, worker: _Worker) -> None:
        """Reads one worker's events (JSON lines) until its end of the channel closes."""
        pending = b""
        while True:
            try:
                chunk = worker.channel.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._dispatch(json.loads(line), worker.index)

    def _dispatch(self, event: list[Any], index: int) -> None:
        kind, payload = event
        if kind == "stored":
            self._intake.notify_stored(StoredInstance(*payload))
        elif kind == "ended":
            self._intake.association_ended(*payload)
        elif kind == "ready":
            self._ready.release()
        else:
            log.error("unknown event %r from %s worker %d", kind, self.name, index)

    def _monitor_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {w.process.sentinel: w for w in self._workers.values()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                if self._stopping.is_set():
                    return
                dead = sentinels[sentinel]
                log.error("%s worker %d exited with code %s; restarting it", self.name, dead.index,
                          dead.process.exitcode)
                _shutdown(dead.channel, socket.SHUT_RDWR)
                dead.channel.close()
                with self._lock:
                    self._workers[dead.index] = self._spawn(dead.index)


def _shutdown(channel: socket.socket, how: int) -> None:
    try:
        channel.shutdown(how)
    except OSError:
        pass  # already closed by the other side


class EventRelay:
    """Worker side: sends intake notifications to the parent over the worker's channel (JSON lines).

    Each worker has its own channel, so a worker killed mid-message affects only its own (replaced)
    channel; a shared ``multiprocessing.Queue`` lock held by a killed worker blocked every other writer."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._lock = threading.Lock()

    def ready(self, index: int) -> None:
        self._send(["ready", index])

    def instance_stored(self, instance: StoredInstance) -> None:
        self._send(["stored", [instance.study_uid, instance.series_uid, instance.sop_uid,
                               instance.association_id]])

    def association_ended(self, association_id: int | None, state: str) -> None:
        self._send(["ended", [association_id, state]])

    def _send(self, event: list[Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        with self._lock:
            try:
                self._channel.sendall(data)
            except OSError as exc:  # the parent is gone or stopping: nobody left to tell
                log.debug("event not relayed to the parent (%s)", type(exc).__name__)


def serve_handed_over_connections(channel: socket.socket, serve: Callable[[socket.socket, tuple], None]) -> None:
    """Worker side: run each connection the parent sends until the parent closes the channel."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 256, 1)
        except OSError:
            return
        if not message:
            return
        host, port = json.loads(message)
        serve(socket.socket(fileno=fds[0]), (host, port))


def shared_listener(channel: socket.socket) -> socket.socket:
    """Worker side of a ``share_listener`` pool: the listening socket the parent sends first."""
    message, fds, _, _ = socket.recv_fds(channel, 64, 1)
    if message != b"listener" or len(fds) != 1:
        raise RuntimeError("the parent sent no listening socket")
    return socket.socket(fileno=fds[0])


def wait_for_parent(channel: socket.socket) -> None:
    """Worker side: blocks until the parent closes its end (it is stopping, or gone)."""
    while True:
        try:
            if not channel.recv(4096):
                return
        except OSError:
            return
