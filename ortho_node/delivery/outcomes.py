"""What a C-STORE or STOW-RS outcome means for delivery (PS3.4 B.2.3, PS3.7 C.4.2, PS3.8 9.3.4, PS3.18 10.5.3) and
the retry backoff. A STOW-RS instance's Failure Reason or Warning Reason is the C-STORE status it stands for."""

from __future__ import annotations

import datetime as dt
import enum

from ortho_node.clock import RetryPolicy
from ortho_node.config import DeliverySettings
from ortho_node.delivery.scu import Failure, SendResult

#: C-STORE warnings (coercion, elements discarded, data set does not match SOP class): the object is stored.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
#: Failures with no status that a later attempt may get past.
TRANSIENT_FAILURES = frozenset({Failure.NO_ASSOCIATION, Failure.REJECTED_TRANSIENT, Failure.ABORTED,
                                Failure.HTTP_TRANSIENT})


class Outcome(str, enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retried with backoff until the retry time is over
    PERMANENT = "permanent"  # stops and is flagged for an administrator


def classify(result: SendResult) -> Outcome:
    """Success and warnings are delivered; A7xx (out of resources), timeouts, refused, aborted or transiently
    rejected associations, HTTP 408, 429 and 5xx are transient; every other status (A9xx, Cxxx, 01xx, 02xx), a
    permanent association rejection, a missing presentation context, another HTTP 4xx or an unreadable file is
    permanent."""
    if result.status is None:
        return Outcome.TRANSIENT if result.failure in TRANSIENT_FAILURES else Outcome.PERMANENT
    if result.status == 0x0000 or result.status in WARNING_STATUSES:
        return Outcome.DELIVERED
    if 0xA700 <= result.status <= 0xA7FF:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def retry_policy(settings: DeliverySettings) -> RetryPolicy:
    """The deliveries' backoff: ``initial_backoff`` seconds doubled per attempt up to ``max_backoff``, for
    ``retry_for_hours`` after the object was queued, however many attempts that takes."""
    return RetryPolicy.of_seconds(settings.initial_backoff, max(settings.max_backoff, settings.initial_backoff),
                                  retry_for=dt.timedelta(hours=settings.retry_for_hours))
