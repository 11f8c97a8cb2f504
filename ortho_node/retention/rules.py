"""What of one study may be deleted, and why: the storage lifecycle's rules as pure functions of its facts.

Nothing is deleted of a study marked to keep, one with instances no finished job covers (still receiving,
queued, running, or failed), or one with a delivery pending or failed. Beyond that, its received instances go
``retention.instances_days`` after its results were delivered (after they were built when no destination was
owed them), or ``retention.unanalysable_days`` after its job was skipped (after its last arrival when an accept
rule ignored every instance: no job ever comes); its result objects go ``retention.results_days`` after the same
moment, never counted from before the study's last instance arrived (one received again after a purge). Under the watermark the oldest studies past
``min_keep_hours`` lose their instances first, before their time.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from ortho_node.clock import as_utc
from ortho_node.config.schema import RetentionSettings

#: Job states after which a study's instances are no longer needed (``scheduling.jobs.JobState`` values).
DONE_STATES = ("succeeded", "skipped")
#: Job states of work still to come.
ACTIVE_STATES = ("pending", "running")


class Action(str, enum.Enum):
    INSTANCES = "instances"  # the study's received instances
    RESULTS = "results"  # its result objects (retention.results_days)


@dataclass(frozen=True)
class StudyFacts:
    """One study as the purger sees it (``ortho_node.retention.inventory`` reads them in a few queries)."""

    id: int
    uid: str
    keep: bool
    instances_purged: bool
    results_purged: bool
    first_received_at: dt.datetime
    last_received_at: dt.datetime | None
    newest_instance_id: int | None  # None: no instance rows
    newest_analysed_id: int | None  # the newest instance no accept rule ignored; None: an accept rule ignored all
    instance_files: int
    instance_bytes: int
    job_state: str | None  # the newest job's
    jobs_cover: int  # the highest instance id any job was queued for
    job_finished_at: dt.datetime | None
    jobs_active: bool  # a job pending or running
    deliveries_pending: int
    deliveries_failed: int
    last_delivered_at: dt.datetime | None
    results_on_disk: tuple[int, ...]  # study_results ids whose files were not removed

    @property
    def all_ignored(self) -> bool:
        """An accept rule ignored every instance: stored, never analysed, no job will come."""
        return self.newest_instance_id is not None and self.newest_analysed_id is None

    @property
    def done_at(self) -> dt.datetime | None:
        """When the study's work ended: its last delivery, else its newest job's end (nothing owed); never
        before its last instance arrived (a study ignored by an accept rule, or received again after a purge)."""
        times = [as_utc(t) for t in (self.last_delivered_at, self.job_finished_at, self.last_received_at)
                 if t is not None]
        if self.job_state is None and not self.all_ignored:
            return None
        return max(times) if times else None

    @property
    def unanalysable(self) -> bool:
        return self.job_state == "skipped" or (self.job_state is None and self.all_ignored)


def hold_reason(facts: StudyFacts) -> str | None:
    """Why nothing of this study may be deleted now; None when the age rules and the watermark may apply."""
    if facts.keep:
        return "marked to keep"
    # Instances an accept rule ignored are never processed: only the others wait for a job.
    if facts.newest_analysed_id is not None and facts.jobs_cover < facts.newest_analysed_id:
        return "not processed yet"
    if facts.jobs_active:
        return "job queued or running"
    if facts.job_state == "failed":  # given up after its attempts: an operator may reprocess it
        return "job failed"
    if facts.job_state not in DONE_STATES and not (facts.job_state is None and facts.all_ignored):
        return "not processed yet"
    if facts.deliveries_pending:
        return "delivery pending"
    if facts.deliveries_failed:
        return "delivery failed"
    if facts.done_at is None:
        return "no end time recorded"
    return None


def instances_due(facts: StudyFacts, settings: RetentionSettings, now: dt.datetime) -> str | None:
    """The reason its received instances are due for deletion by age, or None."""
    if facts.instances_purged or facts.newest_instance_id is None or hold_reason(facts):
        return None
    done = facts.done_at
    if done is None:  # hold_reason excludes it; kept for the type checker
        return None
    if facts.unanalysable:
        days, key = settings.unanalysable_days, "unanalysable_days"
        what = "ignored by an accept rule" if facts.all_ignored and facts.job_state is None else "found unanalysable"
    else:
        days, key, what = settings.instances_days, "instances_days", "delivered" if facts.last_delivered_at else \
            "processed (nothing to deliver)"
    if not days or now < done + dt.timedelta(days=days):
        return None
    return f"{what} {(now - done).days} days ago (retention.{key} {days})"


def results_due(facts: StudyFacts, settings: RetentionSettings, now: dt.datetime) -> str | None:
    """The reason its result objects are due for deletion by age, or None."""
    if not settings.results_days or not facts.results_on_disk or hold_reason(facts):
        return None
    done = facts.done_at
    if done is None:
        return None
    if now < done + dt.timedelta(days=settings.results_days):
        return None
    return f"results delivered {(now - done).days} days ago (retention.results_days {settings.results_days})"


def watermark_eligible(facts: StudyFacts, settings: RetentionSettings, now: dt.datetime) -> bool:
    """May the watermark delete its instances before their time: not held, and done ``min_keep_hours`` ago."""
    if facts.instances_purged or facts.newest_instance_id is None or hold_reason(facts):
        return False
    done = facts.done_at
    return done is not None and now >= done + dt.timedelta(hours=settings.min_keep_hours)
