"""Studies through the predictor in three overlapping stages, so the device is not left idle while a study is
read from disk or its results are built.

Each stage runs on its own thread, with a bounded queue in front of it (a full queue holds the stage before
it back):

1. **prepare** (CPU): load the study (assembly reads its pixels) and :meth:`Predictor.prepare` it;
2. **device**: the prepared studies waiting, up to ``batch_studies`` at once, in one :meth:`Predictor.run` (their
   windows pooled through each backbone); it never waits for a batch to fill, it takes what is ready;
3. **finish** (CPU): :meth:`Predictor.finish`, then the caller's ``on_result`` (where the result objects are
   built and written), off the device's path.

A study that fails at any stage reaches ``on_result`` with its exception instead of an outcome; the stream goes
on with the others. Torch and the result builders release the GIL in their heavy parts, so the stages overlap
on a CPU-only machine too, only less.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from ortho_node.assembly.study import AssembledStudy
from ortho_node.inference.predictor import Locate, PredictionOutcome, PreparedStudy, Predictor

logger = logging.getLogger(__name__)

Outcome = PredictionOutcome | Exception
OnResult = Callable[[Hashable, Outcome], None]
_CLOSED = object()  # travels down the queues once every study has been submitted


@dataclass(frozen=True)
class _Work:
    key: Hashable
    load: Callable[[], AssembledStudy]
    locate: Locate | None
    submitted: float


@dataclass
class StageSeconds:
    """Seconds each stage spent working (not waiting): their sum is what one study at a time would take."""

    prepare: float = 0.0
    device: float = 0.0
    finish: float = 0.0
    device_passes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            setattr(self, stage, getattr(self, stage) + seconds)
            if stage == "device":
                self.device_passes += 1


class PredictionStream:
    """``submit`` studies, ``close`` when done (or use as a context manager); each study's outcome reaches
    ``on_result(key, outcome_or_exception)`` on the finish thread, in the order the device completed them."""

    def __init__(self, predictor: Predictor, on_result: OnResult, *, batch_studies: int = 1,
                 queue_studies: int | None = None) -> None:
        if batch_studies < 1:
            raise ValueError(f"batch_studies must be at least 1, not {batch_studies}")
        depth = queue_studies or 2 * batch_studies
        if depth < batch_studies:
            raise ValueError(f"queue_studies ({depth}) must hold at least one batch ({batch_studies})")
        self.predictor = predictor
        self.on_result = on_result
        self.batch_studies = batch_studies
        self.seconds = StageSeconds()
        self._to_prepare: queue.Queue = queue.Queue(maxsize=depth)
        self._to_device: queue.Queue = queue.Queue(maxsize=depth)
        self._to_finish: queue.Queue = queue.Queue(maxsize=depth)
        self._threads = [threading.Thread(target=target, name=f"prediction-{name}", daemon=True)
                         for name, target in (("prepare", self._prepare_loop), ("device", self._device_loop),
                                              ("finish", self._finish_loop))]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, key: Hashable, load: Callable[[], AssembledStudy], *, locate: Locate | None = None) -> None:
        """Queue one study; blocks while the prepare stage's queue is full."""
        if self._closed:
            raise RuntimeError("the stream is closed")
        self._to_prepare.put(_Work(key, load, locate, time.perf_counter()))

    def close(self) -> None:
        """No more studies: wait until every submitted one has reached ``on_result``."""
        if not self._closed:
            self._closed = True
            self._to_prepare.put(_CLOSED)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> PredictionStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare_loop(self) -> None:
        while (work := self._to_prepare.get()) is not _CLOSED:
            started = time.perf_counter()
            try:
                study = work.load()
                self.predictor.check_locate(study, work.locate)
                prepared = self.predictor.prepare(study)
            except Exception as error:  # noqa: BLE001 - the study fails alone; its caller is told why
                self._to_finish.put((work, error))
            else:
                self._to_device.put((work, prepared))
            finally:
                self.seconds.add("prepare", time.perf_counter() - started)
        self._to_device.put(_CLOSED)

    def _device_loop(self) -> None:
        closed = False
        while not closed:
            batch = [self._to_device.get()]
            while batch[-1] is not _CLOSED and len(batch) < self.batch_studies:
                try:
                    batch.append(self._to_device.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _CLOSED:
                closed = True
                batch.pop()
            if batch:
                self._run(batch)
        self._to_finish.put(_CLOSED)

    def _run(self, batch: Sequence[tuple[_Work, PreparedStudy]]) -> None:
        started = time.perf_counter()
        try:
            runs = self.predictor.run([prepared for _, prepared in batch])
        except Exception as error:  # noqa: BLE001 - e.g. device out of memory: these studies fail, others go on
            logger.error("device pass over %d studies failed: %s", len(batch), error)
            for work, _ in batch:
                self._to_finish.put((work, error))
            return
        finally:
            self.seconds.add("device", time.perf_counter() - started)
        for (work, prepared), plane_runs in zip(batch, runs):
            self._to_finish.put((work, (prepared, plane_runs)))

    def _finish_loop(self) -> None:
        while (item := self._to_finish.get()) is not _CLOSED:
            work, done = item
            started = time.perf_counter()
            outcome: Outcome
            if isinstance(done, Exception):
                outcome = done
            else:
                try:
                    outcome = self.predictor.finish(*done, locate=work.locate)
                except Exception as error:  # noqa: BLE001
                    outcome = error
            try:
                self.on_result(work.key, outcome)
            except Exception:  # a failing consumer must not stop the stream: it is told about every study
                logger.exception("on_result failed for a study")
            self.seconds.add("finish", time.perf_counter() - started)
