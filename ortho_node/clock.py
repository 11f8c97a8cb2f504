"""Time for the whole node: the UTC helpers, the Clock protocol with its wall clock, and the one retry backoff."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, overload


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC: every timestamp the node writes is one of these."""
    return dt.datetime.now(dt.timezone.utc)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timezone-aware columns back naive; every timestamp the node writes is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> dt.datetime:
        return utcnow()


#: Doubling past 2**32 initial delays only overflows: no sensible cap is that far out.
_MAX_DOUBLINGS = 32


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff: ``initial * 2**(attempts - 1)``, at most ``maximum``; given up after
    ``max_attempts`` attempts (jobs) or after an attempt at ``retry_for`` past the time the work was queued
    (deliveries), whichever limits are set. The last retry falls at the end of ``retry_for`` rather than up to
    one backoff before it: a destination down exactly ``retry_for`` still gets the work queued as it went
    down."""

    initial: dt.timedelta = dt.timedelta(seconds=30)
    maximum: dt.timedelta = dt.timedelta(minutes=30)
    retry_for: dt.timedelta | None = dt.timedelta(hours=24)
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial < dt.timedelta(0) or self.maximum < self.initial:
            raise ValueError("backoff needs 0 <= initial <= maximum")

    @classmethod
    def of_seconds(cls, initial: float, maximum: float, *, retry_for: dt.timedelta | None = None,
                   max_attempts: int | None = None) -> RetryPolicy:
        """From the settings' seconds."""
        return cls(dt.timedelta(seconds=initial), dt.timedelta(seconds=maximum), retry_for, max_attempts)

    def delay(self, attempts: int) -> dt.timedelta:
        """The wait after ``attempts`` failed attempts."""
        exponent = min(max(attempts - 1, 0), _MAX_DOUBLINGS)
        return min(self.initial * (2 ** exponent), self.maximum)

    def next_attempt(self, attempts: int, queued_at: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """When to try again after ``attempts`` failed attempts (at the latest at the end of the retry time);
        None when the attempts or the retry time are used up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        when = now + self.delay(attempts)
        if self.retry_for is not None:
            deadline = queued_at + self.retry_for
            if now >= deadline:
                return None
            when = min(when, deadline)
        return when
