"""A study's storage state in words (marked to keep, instances or results purged, and why), the one wording of
``ortho-node studies``, the audit views, the timeline and the console."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ortho_node.clock import as_utc
from ortho_node.db.models import Study


def storage_facts(study: Study) -> dict[str, Any]:
    """The study row's keep and purge marks, for the ``--json`` views."""
    return {"keep": bool(study.keep), "keep_reason": study.keep_reason,
            "instances_purged_at": _utc(study.instances_purged_at), "purge_reason": study.purge_reason,
            "results_purged_at": _utc(study.results_purged_at)}


def storage_state(study: Study) -> str | None:
    """"kept: training data", "instances purged 2026-03-01 08:00 UTC: age: delivered 31 days ago (...)",
    "results purged ..." joined by "; "; None when nothing is kept or purged (the ordinary case)."""
    parts = []
    if study.keep:
        parts.append(f"kept: {study.keep_reason}" if study.keep_reason else "kept (never purged)")
    if study.instances_purged_at is not None:
        reason = f": {study.purge_reason}" if study.purge_reason else ""
        parts.append(f"instances purged {_day(study.instances_purged_at)}{reason}")
    if study.results_purged_at is not None:
        parts.append(f"results purged {_day(study.results_purged_at)}")
    return "; ".join(parts) or None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else as_utc(value)


def _day(value: dt.datetime) -> str:
    return f"{as_utc(value):%Y-%m-%d %H:%M} UTC"
