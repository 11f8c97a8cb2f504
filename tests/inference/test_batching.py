"""Issue 27: job threads share one predictor through the device batcher: each study gets the outcome it gets
alone, studies waiting together share a device pass, and a failure stays with its studies."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ortho_node.inference.batching import DeviceBatcher
from ortho_node.inference.predictor import PredictionError, Predictor
from ortho_node.model.system import load_system
from tests.inference.conftest import assert_same_outcome, locate, with_planes


class HeldDevice(Predictor):
    """A device whose first pass waits until the test lets it go (a stand-in for a busy GPU), and whose pass
    fails when told to (e.g. out of memory)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.fail_next = False
        self.batch_sizes: list[int] = []

    def run(self, prepared):
        self.batch_sizes.append(len(prepared))
        if len(self.batch_sizes) == 1:
            self.release.wait(timeout=60)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA out of memory")
        return super().run(prepared)


@pytest.fixture
def device(model_dir) -> HeldDevice:
    return HeldDevice(load_system(model_dir), torch.device("cpu"), locate=locate)


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def test_studies_waiting_together_share_a_pass_and_each_gets_its_own_outcome(device, knee_study):
    short = with_planes(knee_study, {p: v.pixels[:10] for p, v in knee_study.planes.items()})
    studies = [knee_study, short, knee_study, short]
    batcher = DeviceBatcher(device, max_studies=3)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.analyse, studies[0])
        _wait_for(lambda: device.batch_sizes == [1])  # the device is busy with the first study
        rest = [pool.submit(batcher.analyse, study) for study in studies[1:]]
        _wait_for(lambda: batcher._waiting.qsize() == 3)
        device.release.set()
        outcomes = [first.result(), *(f.result() for f in rest)]
    assert device.batch_sizes == [1, 3] and (batcher.passes, batcher.studies) == (2, 4)
    for study, outcome in zip(studies, outcomes):
        assert outcome.prediction.study_instance_uid == study.study_instance_uid
        assert_same_outcome(outcome, device.analyse(study), device, study)


def test_a_failed_pass_fails_its_studies_alone_and_the_next_pass_works(device, knee_study):
    device.release.set()
    batcher = DeviceBatcher(device)
    device.fail_next = True
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.predict(knee_study)
    blank = with_planes(knee_study, {p: np.zeros_like(v.pixels) for p, v in knee_study.planes.items()})
    with pytest.raises(PredictionError, match="no analysable plane"):  # refused on its own thread, no pass
        batcher.predict(blank)
    assert batcher.predict(knee_study).segmentations and batcher.passes == 1
    batcher.close()  # a replaced model: its device thread stops; a straggler still gets its result
    assert not batcher._thread.is_alive()
    assert batcher.predict(knee_study).segmentations and batcher.passes == 1
    with pytest.raises(ValueError, match="max_studies"):
        DeviceBatcher(device, max_studies=0)
