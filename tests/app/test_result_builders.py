"""Issue 27: result objects built in processes (results.build_processes) are the objects built on the job's
thread; a killed builder process fails its study alone and the next study gets a fresh pool."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest
from pydicom import dcmread

from ortho_node.app.result_builders import ResultBuilders
from ortho_node.config import load_settings
from tests.reports.study_factory import make_knee_study


def _objects(paths):
    return {(ds.Modality, ds.SOPInstanceUID): ds.get("PixelData") for ds in map(dcmread, paths)}


def test_processes_build_what_the_thread_builds_and_survive_a_killed_worker(tmp_path):
    knee = make_knee_study(tmp_path / "knee")
    on_thread = ResultBuilders(load_settings(environ={}, overrides={"storage.fsync": False}))
    builders = ResultBuilders(load_settings(environ={}, overrides={"results.build_processes": 2,
                                                                    "storage.fsync": False}))
    try:
        expected, expected_not_built = on_thread(knee.prediction, tmp_path / "thread")
        paths, not_built = builders(knee.prediction, tmp_path / "processes")
        assert not_built == expected_not_built == {}
        assert _objects(paths) == _objects(expected) and {p.parent for p in paths} == {tmp_path / "processes"}
        workers = list(builders._pool._processes.values())
        assert len(workers) >= 1 and all(w.pid != os.getpid() for w in workers)
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            builders(knee.prediction, tmp_path / "broken")
        again, _ = builders(knee.prediction, tmp_path / "again")  # a fresh pool
        assert _objects(again) == _objects(expected)
    finally:
        builders.close()
    assert builders._pool is None and not any(w.is_alive() for w in workers)
