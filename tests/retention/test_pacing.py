"""A purge pass gives way to intake: while the node receives it works at most a quarter of the time."""

from __future__ import annotations

import time

import pytest

from ortho_node.retention.purger import BUSY_DUTY, Pacer


def _paced(busy: bool, work: float) -> list[float]:
    slept: list[float] = []
    pace = Pacer(lambda: busy, sleep=slept.append)
    pace.start()
    for _ in range(3):
        time.sleep(work)  # one study's deletions
        pace()
    return slept


def test_a_pass_sleeps_three_times_its_work_while_the_node_receives():
    slept = _paced(True, 0.02)
    assert len(slept) == 3
    for pause in slept:  # duty 0.25: 3x the work; the timer's slack only adds
        assert 3 * 0.02 <= pause < 3 * 0.02 + 0.2 and BUSY_DUTY == 0.25


def test_an_idle_node_purges_at_full_speed():
    assert _paced(False, 0.0) == []


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_a_duty_outside_0_1_is_refused(duty):
    with pytest.raises(ValueError, match="duty"):
        Pacer(lambda: True, duty=duty)
