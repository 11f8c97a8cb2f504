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
    reason: str  # ready: why; not ready: what it waits for and until when ("waiting: ...")
    next_check: dt.datetime | None  # when to look again if not ready
    missing_planes: tuple[str, ...] = ()


def _planes(planes) -> str:
    return ", ".join(p.value for p in planes)


def _clock(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%H:%M:%S UTC")


def evaluate(plan: StudyPlan, signals: Sequence[SeriesSignal], last_activity: dt.datetime, now: dt.datetime,
             rules: CompletenessRules) -> Readiness:
    present = [p for p in plan.expected_planes if p in plan.choices]
    missing = plan.missing_planes
    contributing = [s for s in signals if s.series_instance_uid not in plan.excluded_series]
    # A study already known to be skipped (joint unknown) has no expected planes to wait for.
    found = (f"planes {_planes(plan.choices) or 'none'} present ({plan.skip_reason})" if plan.skip_reason and
             plan.choices else f"expected planes {_planes(present)} present")
    deadlines: list[tuple[dt.datetime, str, str]] = []  # (when, ready reason, waiting reason)
    if not missing:
        if contributing and all(s.complete for s in contributing):
            settle = last_activity + rules.settle_time
            signalled = (f"complete by sender signals (every series reached ImagesInAcquisition and its "
                         f"association was released; {found}); settled {rules.settle_time.total_seconds():g} s")
            deadlines.append((settle, signalled, f"{found}, complete by sender signals; settling until "
                                                 f"{_clock(settle)}"))
        quiet = last_activity + rules.quiet_period
        deadlines.append((quiet, f"{found}; quiet for {rules.quiet_period.total_seconds():g} s",
                          f"{found}; quiet period until {_clock(quiet)}"))
    timeout_at = last_activity + rules.long_timeout
    seconds = f"{rules.long_timeout.total_seconds():g} s"
    if plan.choices:
        have = _planes(present) if present else _planes(plan.choices)
        timeout = f"long quiet timeout ({seconds}) passed with {have} present"
        waiting = f"expected planes {_planes(missing)} missing ({have} present)"
        if missing:
            timeout += f"; {_planes(missing)} missing"
    else:
        timeout = f"long quiet timeout ({seconds}) passed with no usable plane"
        waiting = f"no usable plane yet (expected planes {_planes(missing)} missing)"
    deadlines.append((timeout_at, timeout, f"{waiting}; ready at the long timeout {_clock(timeout_at)}"))
    when, reason, waiting = min(deadlines, key=lambda d: d[0])
    missing_values = tuple(p.value for p in missing)
    if now >= when:
        return Readiness(True, reason, None, missing_values)
    return Readiness(False, f"waiting: {waiting}", when, missing_values)
