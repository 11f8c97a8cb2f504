"""One predictor shared by the node's job threads, the device batched across their studies.

Each job thread prepares its own study (:meth:`Predictor.prepare`: CPU) and finishes it (:meth:`Predictor.finish`:
masks onto the source grids, findings), then builds its result objects, all on its own thread; only the device
pass is handed to a single device thread. That thread takes every prepared study waiting, up to
``max_studies``, and runs them in one :meth:`Predictor.run` (their windows pooled through each backbone). It
never waits for a batch to fill: with one study ready it runs one. So while one study is on the device, the
next ones are read from disk and the previous ones' results are built, and the device is only ever used by
one pass at a time (no lock around the model in the pipeline).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ortho_node.assembly.study import AssembledStudy
from ortho_node.inference.predictor import Locate, PredictionOutcome, PreparedStudy, Predictor
from ortho_node.labels import Plane
from ortho_node.model.system import SystemCard
from ortho_node.prediction import StudyPrediction

logger = logging.getLogger(__name__)


@dataclass
class _Ticket:
    """One prepared study waiting for the device, and what came back."""

    prepared: PreparedStudy
    done: threading.Event = field(default_factory=threading.Event)
    runs: Mapping[Plane, object] | None = None
    error: BaseException | None = None


class DeviceBatcher:
    """``predict`` / ``analyse`` as :class:`Predictor`'s, safe to call from many threads at once."""

    def __init__(self, predictor: Predictor, max_studies: int = 1) -> None:
        if max_studies < 1:
            raise ValueError(f"max_studies must be at least 1, not {max_studies}")
        self.predictor = predictor
        self.max_studies = max_studies
        self._waiting: queue.Queue[_Ticket | None] = queue.Queue()  # None: close
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.passes = 0  # device passes run, and the studies they carried: how well batching fills
        self.studies = 0

    @property
    def card(self) -> SystemCard:
        return self.predictor.card

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def predict(self, study: AssembledStudy, *, locate: Locate | None = None) -> StudyPrediction:
        return self.analyse(study, locate=locate).prediction

    def analyse(self, study: AssembledStudy, *, locate: Locate | None = None) -> PredictionOutcome:
        """Prepare on this thread, wait for the device pass (shared with whichever studies are waiting), finish
        on this thread. Raises what the predictor raises for this study."""
        self.predictor.check_locate(study, locate)
        ticket = _Ticket(self.predictor.prepare(study))
        if self._submit(ticket):
            ticket.done.wait()
            if ticket.error is not None:
                raise ticket.error
        else:  # closed (its model replaced) while this study was on its way: a pass of its own
            ticket.runs = self.predictor.run([ticket.prepared])[0]
        return self.predictor.finish(ticket.prepared, ticket.runs, locate=locate)

    def close(self) -> None:
        """Stop the device thread once the studies already waiting are done, so a replaced model lets its
        weights go; a study that still arrives gets a pass of its own on its thread."""
        with self._start_lock:
            self._closed = True
            if self._thread is not None:
                self._waiting.put(None)
                self._thread.join()

    def _submit(self, ticket: _Ticket) -> bool:
        """Queue ``ticket`` for the device thread; False once closed."""
        with self._start_lock:  # never behind close()'s stop mark
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._device_loop, name="ortho-device", daemon=True)
                self._thread.start()
            self._waiting.put(ticket)
            return True

    def _device_loop(self) -> None:
        while (first := self._waiting.get()) is not None:
            batch = [first]
            while len(batch) < self.max_studies:
                try:
                    waiting = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:  # closing: run what was taken, then stop
                    self._waiting.put(None)
                    break
                batch.append(waiting)
            self._run(batch)

    def _run(self, batch: list[_Ticket]) -> None:
        try:
            runs = self.predictor.run([ticket.prepared for ticket in batch])
        except BaseException as error:  # e.g. device out of memory: these studies' jobs fail and are retried
            logger.error("device pass over %d studies failed: %s: %s", len(batch), type(error).__name__, error)
            for ticket in batch:
                ticket.error = error
                ticket.done.set()
            return
        self.passes += 1
        self.studies += len(batch)
        for ticket, plane_runs in zip(batch, runs):
            ticket.runs = plane_runs
            ticket.done.set()
