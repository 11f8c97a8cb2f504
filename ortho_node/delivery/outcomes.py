"""What a C-STORE outcome means for delivery (PS3.4 B.2.3, PS3.7 C.4.2, PS3.8 9.3.4) and when to retry."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Protocol

from ortho_node.delivery.scu import Failure, SendResult

#: C-STORE warnings (coercion, elements discarded, data set does not match SOP class): the object is stored.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
#: Failures with no status that a later attempt may get past.
TRANSIENT_FAILURES = frozenset({Failure.NO_ASSOCIATION, Failure.REJECTED_TRANSIENT, Failure.ABORTED})


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retried with backoff until the retry time is over
    PERMANENT = "permanent"  # stops and is flagged for an administrator


def classify(result: SendResult) -> Outcome:
    """Success and warnings are delivered; A7xx (out of resources), timeouts, refused, aborted or transiently
    rejected associations are transient; every other status (A9xx, Cxxx, 01xx, 02xx), a permanent
    association rejection, a missing presentation context or an unreadable file is permanent."""
    if result.status is None:
        return Outcome.TRANSIENT if result.failure in TRANSIENT_FAILURES else Outcome.PERMANENT
    if result.status == 0x0000 or result.status in WARNING_STATUSES:
        return Outcome.DELIVERED
    if 0xA700 <= result.status <= 0xA7FF:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff: ``initial * 2**(attempts - 1)`` seconds, at most ``maximum``, for at most
    ``retry_for`` after the object was queued."""

    initial: dt.timedelta = dt.timedelta(seconds=30)
    maximum: dt.timedelta = dt.timedelta(minutes=30)
    retry_for: dt.timedelta = dt.timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.initial <= dt.timedelta(0) or self.maximum < self.initial:
            raise ValueError("backoff needs 0 < initial <= maximum")

    def delay(self, attempts: int) -> dt.timedelta:
        exponent = min(max(attempts - 1, 0), 32)  # 2**32 initial delays exceed any sensible cap
        return min(self.initial * (2 ** exponent), self.maximum)

    def next_attempt(self, attempts: int, queued_at: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """When to try again after ``attempts`` failed attempts; None when the retry time is used up."""
        when = now + self.delay(attempts)
        return when if when <= queued_at + self.retry_for else None
