"""Several processes serving one DICOM port: the parent accepts, worker processes run the associations.

pynetdicom runs associations on threads that share one interpreter lock, so one process uses about one
core. With ``dicom.workers`` > 1 the parent accepts each connection and hands it, round robin, to a worker
process (file-descriptor passing over a Unix socket pair). Workers store through their own intake and
database connections and relay intake notifications to the parent, where the scheduler lives. A worker
that dies is restarted; a worker whose parent goes away finishes its associations and exits.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from ortho_node.config import Settings
from ortho_node.intake import Intake, StoredInstance

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")  # no fork: the parent has threads and open database pools

#: ``target(settings, channel, events, active, index)``: a worker process's main function.
WorkerTarget = Callable[[Settings, socket.socket, Any, Any, int], None]


@dataclass
class _Worker:
    index: int
    process: Any
    channel: socket.socket  # parent end of the socket pair


class WorkerPoolSCP:
    """The parent side: listening socket, hand-over, event relay, restarts."""

    def __init__(self, settings: Settings, *, workers: int, intake: Intake, target: WorkerTarget) -> None:
        self.settings = settings
        self._count = workers
        self._intake = intake
        self._target = target
        self._workers: dict[int, _Worker] = {}
        self._events = _CONTEXT.Queue()
        self._active = _CONTEXT.Value("i", 0)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() first"
        return self._listener.getsockname()[1]

    def start(self, *, ready_timeout: float = 120.0) -> None:
        dicom = self.settings.dicom
        self._listener = socket.create_server((dicom.host, dicom.port), backlog=128)
        for index in range(self._count):
            self._workers[index] = self._spawn(index)
        self._wait_ready(ready_timeout)
        for target, name in ((self._accept_loop, "accept"), (self._relay_loop, "relay"),
                             (self._monitor_loop, "monitor")):
            threading.Thread(target=target, name=f"storescp-{name}", daemon=True).start()
        log.info("Storage SCP %s listening on %s:%d with %d worker processes", dicom.ae_title, dicom.host,
                 self.port, self._count)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.channel.close()  # workers finish their associations and exit
        for worker in workers:
            worker.process.join(timeout)
            if worker.process.is_alive():
                log.warning("worker %d did not stop in %.0f s; terminating", worker.index, timeout)
                worker.process.terminate()
        self._events.put(None)
        log.info("Storage SCP stopped")

    def _spawn(self, index: int) -> _Worker:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = _CONTEXT.Process(target=self._target, name=f"ortho-node-storescp-{index}", daemon=False,
                                   args=(self.settings, child_end, self._events, self._active, index))
        process.start()
        child_end.close()
        return _Worker(index, process, parent_end)

    def _wait_ready(self, timeout: float) -> None:
        deadline, ready = time.monotonic() + timeout, 0
        while ready < self._count:
            try:
                kind, _ = self._events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"only {ready} of {self._count} storage workers started") from None
            ready += kind == "ready"

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

    def _relay_loop(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            kind, payload = event
            if kind == "stored":
                self._intake.notify_stored(StoredInstance(*payload))
            elif kind == "ended":
                self._intake.association_ended(*payload)

    def _monitor_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {w.process.sentinel: w for w in self._workers.values()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                if self._stopping.is_set():
                    return
                dead = sentinels[sentinel]
                log.error("storage worker %d exited with code %s; restarting it", dead.index,
                          dead.process.exitcode)
                dead.channel.close()
                with self._lock:
                    self._workers[dead.index] = self._spawn(dead.index)


class EventRelay:
    """Worker side: forwards intake notifications to the parent process."""

    def __init__(self, events: Any) -> None:
        self._events = events

    def instance_stored(self, instance: StoredInstance) -> None:
        self._events.put(("stored", (instance.study_uid, instance.series_uid, instance.sop_uid,
                                     instance.association_id)))

    def association_ended(self, association_id: int | None, state: str) -> None:
        self._events.put(("ended", (association_id, state)))


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
