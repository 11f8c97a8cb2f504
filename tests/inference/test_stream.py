"""Issue 27: the three-stage prediction stream gives every submitted study the outcome the predictor gives it
alone, and a study that fails at any stage fails alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ortho_node.assembly.study import AssemblyError
from ortho_node.inference.predictor import PredictionError, PredictionOutcome, Predictor
from ortho_node.inference.stream import PredictionStream
from tests.inference.conftest import assert_same_outcome, locate, with_planes


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_checkpoint(model_dir, "cpu", locate=locate, window_batch=6)


def _unreadable():
    raise AssemblyError("sagittal series: slice 3 has no pixel data")


def test_every_study_gets_its_own_outcome_and_failures_stay_with_their_study(predictor, knee_study):
    short = with_planes(knee_study, {p: v.pixels[:9] for p, v in knee_study.planes.items()})
    blank = with_planes(knee_study, {p: np.zeros_like(v.pixels) for p, v in knee_study.planes.items()})
    loads = {"knee": lambda: knee_study, "short": lambda: short, "unreadable": _unreadable,
             "blank": lambda: blank, "again": lambda: knee_study}
    results, threads = {}, set()

    def on_result(key, outcome):
        threads.add(threading.current_thread().name)
        results[key] = outcome
        if key == "short":
            raise RuntimeError("the consumer failed on this one")  # must not stop the stream

    with PredictionStream(predictor, on_result, batch_studies=3) as stream:
        for key, load in loads.items():
            stream.submit(key, load)
    assert set(results) == set(loads) and threads == {"prediction-finish"}
    assert isinstance(results["unreadable"], AssemblyError)
    assert isinstance(results["blank"], PredictionError) and "no analysable plane" in str(results["blank"])
    for key, study in (("knee", knee_study), ("short", short), ("again", knee_study)):
        outcome = results[key]
        assert isinstance(outcome, PredictionOutcome)
        assert_same_outcome(outcome, predictor.analyse(study), predictor, study)
    seconds = stream.seconds
    assert seconds.device_passes <= 3 and seconds.prepare > 0 and seconds.device > 0 and seconds.finish > 0


def test_a_closed_stream_takes_no_more_studies_and_a_batch_needs_room(predictor, knee_study):
    stream = PredictionStream(predictor, lambda key, outcome: None)
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.submit("late", lambda: knee_study)
    with pytest.raises(ValueError, match="batch_studies"):
        PredictionStream(predictor, lambda key, outcome: None, batch_studies=0)
    with pytest.raises(ValueError, match="at least one batch"):
        PredictionStream(predictor, lambda key, outcome: None, batch_studies=4, queue_studies=2)
