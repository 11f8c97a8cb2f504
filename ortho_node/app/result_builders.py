"""Building and writing a prediction's result objects (SEG, SR, summary) for the pipeline: on the job's own
thread, or in ``results.build_processes`` processes.

Building is pure Python (highdicom, pydicom, the summary's drawing: about 1.4 s of CPU a study), so threads
cannot share it out: one interpreter caps a node near 2,500 studies an hour whatever its GPU does. The processes
are spawned (not forked: the node holds threads and, on a GPU, a CUDA context) when the first study needs them,
log the node's way, and a pool broken by a killed worker is replaced at the next study (the study that met it
fails and its job is retried).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ortho_node.app.logs import configure_logging
from ortho_node.config import Settings
from ortho_node.prediction import StudyPrediction
from reports.results import build_and_write

log = logging.getLogger(__name__)


class ResultBuilders:
    """``builders(prediction, folder) -> (written paths, SEGs not built)``; ``close()`` at the node's stop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._processes = settings.results.build_processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, prediction: StudyPrediction, folder: Path) -> tuple[list[Path], dict[str, str]]:
        if not self._processes:
            return build_and_write(prediction, self._settings, folder)
        pool = self._started()
        try:
            return pool.submit(build_and_write, prediction, self._settings, folder).result()
        except BrokenProcessPool:
            log.error("a result-building process died; the pool is replaced for the next study")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                logs = self._settings.logging
                self._pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=configure_logging, initargs=(logs.level, logs.format))
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
