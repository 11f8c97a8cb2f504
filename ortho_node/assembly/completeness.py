"""When a study is ready: the expected planes present and quiet, the sender's own signals, or a long timeout.

Rules (DESIGN.md section 2), evaluated on the header-only plan, earliest first:

* signals: the expected planes are present and every contributing series is complete by what the sender
  told us (its instance count reached ImagesInAcquisition, or it is one multi-frame object, and the
  associations that carried it were released) -> ready ``settle_time`` after the last activity;
* quiet: the expected planes are present -> ready ``quiet_period`` after the last activity;
* timeout: ``long_timeout`` after the last activity, whatever arrived (missing planes are recorded; a study
  without a usable plane is then processed only to record why it was skipped).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from ortho_node.assembly.plan import StudyPlan
from ortho_node.config import SchedulingSettings


@dataclass(frozen=True)
class SeriesSignal:
    series_instance_uid: str
    received: int
    expected: int | None  # ImagesInAcquisition (None when the sender gave no count)
    released: bool  # every association that carried the series ended with an A-RELEASE

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.received >= self.expected and self.released


@dataclass(frozen=True)
class CompletenessRules:
    quiet_period: dt.timedelta
    long_timeout: dt.timedelta
    settle_time: dt.timedelta

    @classmethod
    def from_settings(cls, settings: SchedulingSettings) -> CompletenessRules:
        return cls(dt.timedelta(seconds=settings.quiet_period), dt.timedelta(seconds=settings.long_timeout),
                   dt.timedelta(seconds=settings.settle_time))


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    next_check: dt.datetime | None  # when to look again if not ready


def _planes(planes) -> str:
    return ", ".join(p.value for p in planes)


def evaluate(plan: StudyPlan, signals: Sequence[SeriesSignal], last_activity: dt.datetime, now: dt.datetime,
             rules: CompletenessRules) -> Readiness:
    present = [p for p in plan.expected_planes if p in plan.choices]
    missing = plan.missing_planes
    contributing = [s for s in signals if s.series_instance_uid not in plan.excluded_series]
    deadlines: list[tuple[dt.datetime, str]] = []
    if not missing:
        if contributing and all(s.complete for s in contributing):
            deadlines.append((last_activity + rules.settle_time,
                              f"complete by sender signals (every series reached ImagesInAcquisition and its "
                              f"association was released; expected planes {_planes(present)} present); "
                              f"settled {rules.settle_time.total_seconds():g} s"))
        deadlines.append((last_activity + rules.quiet_period,
                          f"expected planes {_planes(present)} present; quiet for "
                          f"{rules.quiet_period.total_seconds():g} s"))
    if plan.choices:
        found = _planes(present) if present else _planes(plan.choices)
        timeout = f"long quiet timeout ({rules.long_timeout.total_seconds():g} s) passed with {found} present"
        if missing:
            timeout += f"; {_planes(missing)} missing"
    else:
        timeout = f"long quiet timeout ({rules.long_timeout.total_seconds():g} s) passed with no usable plane"
    deadlines.append((last_activity + rules.long_timeout, timeout))
    when, reason = min(deadlines, key=lambda d: d[0])
    if now >= when:
        return Readiness(True, reason, None)
    return Readiness(False, f"waiting: {reason}", when)
