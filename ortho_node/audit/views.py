"""Read-only views of what the node holds, for the CLI (``studies``, ``jobs``, ``audit``) and the web console:
studies with their status, findings and turnaround, a study's timeline, jobs, deliveries, failures, a daily
summary, CSV export.

Patient identifiers (patient ID and name, accession number, study date: ``IDENTIFIER_COLUMNS``) are in the
study rows for the console's pages and the API's JSON, which are behind a login; never in ``STUDY_COLUMNS``,
so the CSV exports and the CLI's tables carry none. Nothing here logs.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ortho_node.audit.lifecycle import storage_facts, storage_state
from ortho_node.audit.timeline import FAILURE_STEPS, Step
from ortho_node.clock import as_utc, utcnow
from ortho_node.db.models import DeliveryItem, Instance, Job, Series, Study, StudyAssembly, StudyResult, TimelineEntry
from ortho_node.labels import Joint

STATUSES = ("receiving", "ignored", "queued", "processing", "skipped", "failed", "processed", "delivering",
            "delivered", "delivery_failed")
JOINTS = tuple(joint.value for joint in Joint)
STUDY_COLUMNS = ("study_instance_uid", "study_description", "calling_aes", "first_received_at", "last_received_at",
                 "instance_count", "joint", "laterality", "status", "job_state", "waiting", "completeness_reason",
                 "missing_planes", "findings_present", "model_version", "results_at", "delivered", "pending",
                 "failed", "failure_reasons", "turnaround_seconds", "storage")
#: In a study row, for the console and the API only (behind their logins): never logged, never in CSV.
IDENTIFIER_COLUMNS = ("accession_number", "patient_id", "patient_name", "study_date")
DELIVERY_COLUMNS = ("study_instance_uid", "destination", "kind", "sop_instance_uid", "state", "attempts",
                    "queued_at", "last_attempt_at", "delivered_at", "last_status", "last_error")
TIMELINE_COLUMNS = ("at", "step", "job_id", "detail")
FAILURE_COLUMNS = ("at", "study_instance_uid", "step", "job_id", "detail")


@dataclass(frozen=True)
class Filters:
    """What the CLI flags and the console's query string narrow a listing to (all optional)."""

    since: dt.date | None = None  # last instance received on or after this day (UTC)
    until: dt.date | None = None  # ... on or before this day
    status: str | None = None
    joint: str | None = None
    calling_ae: str | None = None
    search: str | None = None  # part of a Study Instance UID, description, accession number, patient ID or name
    study_date: dt.date | None = None  # the Study Date in the header
    limit: int = 500
    offset: int = 0  # matching rows skipped (the console's and the API's pages)

    @property
    def computed(self) -> bool:
        """Filters on what a row computes (status, joint, sender), not on a column: SQL cannot page them."""
        return bool(self.status or self.joint or self.calling_ae)


def _day_bounds(filters: Filters) -> tuple[dt.datetime | None, dt.datetime | None]:
    start = dt.datetime.combine(filters.since, dt.time(), dt.timezone.utc) if filters.since else None
    end = (dt.datetime.combine(filters.until, dt.time(), dt.timezone.utc) + dt.timedelta(days=1)
           if filters.until else None)
    return start, end


def list_studies(session_factory: sessionmaker[Session], filters: Filters = Filters()) -> list[dict[str, Any]]:
    """Studies, newest first, with joint, status, findings present, model version, delivery counts,
    failure reasons and turnaround (last instance received -> last result acknowledged, seconds).

    Only the rows a page needs are built: the column filters, the order and the page are SQL (indexed); with
    filters on what a row computes (status, joint, sender) the studies are read in growing batches until
    ``offset + limit`` rows match."""
    query = _study_query(filters)
    if not filters.computed:
        with session_factory() as session:
            studies = session.scalars(query.offset(filters.offset).limit(filters.limit)).all()
            context = _StudyContext.load(session, studies)
        return [context.row(study) for study in studies]
    wanted = filters.offset + filters.limit
    batch = wanted
    rows: list[dict[str, Any]] = []
    with session_factory() as session:
        read = 0
        while len(rows) < wanted:
            studies = session.scalars(query.offset(read).limit(batch)).all()
            context = _StudyContext.load(session, studies)
            rows += [row for row in map(context.row, studies) if _matches(row, filters)]
            read += len(studies)
            if len(studies) < batch:
                break
            batch = min(batch * 4, 5000)  # few rows match: read more at a time
    return rows[filters.offset:wanted]


def _study_query(filters: Filters) -> Select[tuple[Study]]:
    """The studies the column filters keep, newest first (``ix_studies_last_received_at``)."""
    start, end = _day_bounds(filters)
    query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc())
    if start is not None:
        query = query.where(Study.last_received_at >= start)
    if end is not None:
        query = query.where(Study.last_received_at < end)
    if filters.study_date is not None:
        query = query.where(Study.study_date == filters.study_date)
    if filters.search and filters.search.strip():
        text = filters.search.strip()
        pattern = f"%{text}%"
        query = query.where(or_(Study.study_instance_uid.like(pattern), Study.study_description.ilike(pattern),
                                Study.accession_number.ilike(pattern), Study.patient_id.ilike(pattern),
                                Study.patient_name.ilike(pattern)))
    return query


def study_row(session_factory: sessionmaker[Session], study_instance_uid: str) -> dict[str, Any] | None:
    """One study's row as :func:`list_studies` gives it; None when it is not stored."""
    with session_factory() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            return None
        context = _StudyContext.load(session, [study])
    return context.row(study)


def destination_queues(session_factory: sessionmaker[Session]) -> dict[str, dict[str, Any]]:
    """Per destination name in the delivery queue: objects pending, delivered and failed, and the last
    delivery (UTC)."""
    with session_factory() as session:
        rows = session.execute(select(DeliveryItem.destination, DeliveryItem.state, func.count(DeliveryItem.id),
                                      func.max(DeliveryItem.delivered_at))
                               .group_by(DeliveryItem.destination, DeliveryItem.state)).all()
    queues: dict[str, dict[str, Any]] = {}
    for name, state, count, delivered_at in rows:
        queue = queues.setdefault(name, {"pending": 0, "delivered": 0, "failed": 0, "last_delivered_at": None})
        queue[state] = queue.get(state, 0) + count
        if state == "delivered" and delivered_at is not None:
            queue["last_delivered_at"] = as_utc(delivered_at)
    return queues


def _matches(row: dict[str, Any], filters: Filters) -> bool:
    if filters.status and row["status"] != filters.status:
        return False
    if filters.joint and (row["joint"] or "unknown") != filters.joint:
        return False
    if filters.calling_ae and filters.calling_ae.strip().upper() not in (ae.upper() for ae in row["calling_aes"]):
        return False
    return True


_RESULT_FIELDS = (StudyResult.study_instance_uid, StudyResult.joint, StudyResult.laterality, StudyResult.findings,
                  StudyResult.objects, StudyResult.model_name, StudyResult.model_version, StudyResult.created_at)
_DELIVERY_FIELDS = (DeliveryItem.study_instance_uid, DeliveryItem.destination, DeliveryItem.state,
                    DeliveryItem.delivered_at, DeliveryItem.last_error)


@dataclass
class _StudyContext:
    counts: dict[int, int]
    aes: dict[int, list[str]]
    jobs: dict[int, Job]
    assemblies: dict[int, StudyAssembly]
    results: dict[str, Any]  # rows of _RESULT_FIELDS
    deliveries: dict[str, list[Any]]  # rows of _DELIVERY_FIELDS
    waiting: dict[int, str]
    ignored: dict[int, str]

    @classmethod
    def load(cls, session: Session, studies: Sequence[Study]) -> _StudyContext:
        ids = [s.id for s in studies]
        uids = [s.study_instance_uid for s in studies]
        counts: dict[int, int] = {}
        aes: dict[int, list[str]] = defaultdict(list)
        results: dict[str, Any] = {}
        deliveries: dict[str, list[Any]] = defaultdict(list)
        for chunk in _chunks(ids):
            counts.update(session.execute(select(Series.study_id, func.sum(Series.instance_count))
                                          .where(Series.study_id.in_(chunk)).group_by(Series.study_id)).all())
            for study_id, ae in session.execute(
                    select(Series.study_id, Instance.calling_ae).join(Instance, Instance.series_id == Series.id)
                    .where(Series.study_id.in_(chunk), Instance.calling_ae.is_not(None)).distinct()):
                aes[study_id].append(ae)
        for chunk in _chunks(uids):  # the columns a row shows (a result's model card is large, and not shown)
            for result in session.execute(select(*_RESULT_FIELDS).where(StudyResult.study_instance_uid.in_(chunk))
                                          .order_by(StudyResult.id)):
                results[result.study_instance_uid] = result
            for item in session.execute(select(*_DELIVERY_FIELDS).where(DeliveryItem.study_instance_uid.in_(chunk))
                                        .order_by(DeliveryItem.id)):
                deliveries[item.study_instance_uid].append(item)
        jobs = _latest(session, Job, ids)
        return cls(counts, aes, jobs, _latest(session, StudyAssembly, ids), results, deliveries,
                   waiting_states(session, studies, jobs), ignored_states(session, studies))

    def row(self, study: Study) -> dict[str, Any]:
        job = self.jobs.get(study.id)
        assembly = self.assemblies.get(study.id)
        result = self.results.get(study.study_instance_uid)
        items = self.deliveries.get(study.study_instance_uid, [])
        delivered = [i for i in items if i.state == "delivered"]
        failed = [i for i in items if i.state == "failed"]
        pending = [i for i in items if i.state == "pending"]
        last_received = as_utc(study.last_received_at)
        last_ack = max((as_utc(i.delivered_at) for i in delivered if i.delivered_at), default=None)
        reasons = sorted({f"{i.destination}: {i.last_error}" for i in failed + pending if i.last_error})
        if job is not None and job.last_error and job.state in ("failed", "pending"):
            reasons.insert(0, f"job {job.id}: {job.last_error}")
        ignored = self.ignored.get(study.id)
        if ignored is not None and job is None:
            reasons.insert(0, ignored)
        if job is not None and job.state == "skipped":
            reasons.insert(0, f"skipped: {job.last_error}")
        elif assembly is not None and assembly.skip_reason:  # skipped before jobs recorded it (older nodes)
            reasons.insert(0, f"skipped: {assembly.skip_reason}")
        return {
            "study_instance_uid": study.study_instance_uid,
            "study_description": study.study_description,
            "calling_aes": sorted(self.aes.get(study.id, [])),
            "first_received_at": as_utc(study.first_received_at),
            "last_received_at": last_received,
            "instance_count": int(self.counts.get(study.id) or 0),
            "joint": (result.joint if result else assembly.joint if assembly else None),
            "laterality": (assembly.laterality if assembly else result.laterality if result else None),
            "status": _status(job, assembly, result, delivered, pending, failed, ignored=ignored is not None),
            "job_state": job.state if job else None,
            "waiting": self.waiting.get(study.id),
            "ignored": ignored,
            "completeness_reason": assembly.completeness_reason if assembly else (job.reason if job else None),
            "missing_planes": (assembly.summary.get("missing_planes", []) if assembly else []),
            "findings": list(result.findings) if result else [],
            "findings_present": [f["label"] for f in result.findings if f.get("present")] if result else [],
            "model_name": result.model_name if result else None,
            "model_version": result.model_version if result else None,
            "results_at": as_utc(result.created_at) if result else None,
            "delivered": len(delivered), "pending": len(pending), "failed": len(failed),
            "failure_reasons": reasons,
            "turnaround_seconds": (round((last_ack - last_received).total_seconds(), 3)
                                   if last_ack and last_received and not pending else None),
            "summary_images": [o for o in (result.objects if result else []) if o.get("kind") == "summary"],
            "storage": storage_state(study), **storage_facts(study),
            "not_for_analysis": bool(study.not_for_analysis), "not_for_analysis_reason": study.not_for_analysis_reason,
            **{column: getattr(study, column) for column in IDENTIFIER_COLUMNS},
        }


def _status(job: Job | None, assembly: StudyAssembly | None, result: Any,
            delivered: list, pending: list, failed: list, *, ignored: bool = False) -> str:
    if job is None:
        return "ignored" if ignored else "receiving"
    if job.state == "pending":
        return "queued"
    if job.state == "running":
        return "processing"
    if job.state == "failed":
        return "failed"
    if job.state == "skipped" or (assembly is not None and assembly.outcome == "skipped"):
        return "skipped"
    if failed:
        return "delivery_failed"
    if pending:
        return "delivering"
    if delivered:
        return "delivered"
    return "processed"


def _chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for index in range(0, len(values), size):
        yield values[index:index + size]


def _latest(session: Session, model: type[Job] | type[StudyAssembly], ids: Sequence[int]) -> dict[int, Any]:
    """The newest job (or assembly decision) of each of the studies ``ids``, by study id."""
    latest: dict[int, Any] = {}
    for chunk in _chunks(ids):
        for row in session.scalars(select(model).where(model.study_id.in_(chunk)).order_by(model.id)):
            latest[row.study_id] = row
    return latest


def waiting_states(session: Session, studies: Sequence[Study], jobs: dict[int, Job]) -> dict[int, str]:
    """What each study with instances that no job covers yet waits for, by study id: the completeness timer's
    last recorded state ("waiting: expected planes coronal, axial missing (...); ready at the long timeout
    12:34:56 UTC", "... quiet period until ..."), or "receiving" with the last instance's time before the
    first check. ``jobs``: the newest job of each study. The one source of the CLI's, the timeline's and the
    console's waiting line."""
    newest: dict[int, int] = {}
    for chunk in _chunks([s.id for s in studies]):  # instances an accept rule ignored wait for nothing
        newest.update(session.execute(select(Series.study_id, func.max(Instance.id)).join(Instance)
                                      .where(Series.study_id.in_(chunk), Instance.ignored_by.is_(None))
                                      .group_by(Series.study_id)).all())
    # Only studies with instances that no job covers wait (nothing received yet: nothing to wait for).
    open_studies = [s for s in studies if newest.get(s.id) and (
        jobs.get(s.id) is None or jobs[s.id].last_instance_id < newest[s.id])]
    latest: dict[str, TimelineEntry] = {}
    steps = [Step.WAITING.value, Step.READY.value, Step.REQUESTED.value]
    for chunk in _chunks([s.study_instance_uid for s in open_studies]):
        for row in session.scalars(select(TimelineEntry).where(TimelineEntry.study_instance_uid.in_(chunk),
                                                               TimelineEntry.step.in_(steps))
                                   .order_by(TimelineEntry.id)):
            latest[row.study_instance_uid] = row
    states: dict[int, str] = {}
    for study in open_studies:
        noted = latest.get(study.study_instance_uid)
        if noted is not None and noted.step == Step.WAITING.value:
            states[study.id] = noted.detail
        else:
            states[study.id] = (f"receiving: last instance at "
                                f"{as_utc(study.last_received_at).strftime('%H:%M:%S UTC')}; not checked yet")
    return states


def ignored_by_series(session: Session, study_ids: Sequence[int]) -> dict[int, dict[int, str | None]]:
    """By study id, by series id: the accept rule that ignored the series' instances (None: some analysed)."""
    series: dict[int, dict[int, str | None]] = defaultdict(dict)
    for chunk in _chunks(study_ids):
        rows = session.execute(select(Series.study_id, Series.id, func.min(Instance.ignored_by),
                                      func.count(Instance.id) - func.count(Instance.ignored_by))
                               .join(Instance, Instance.series_id == Series.id)
                               .where(Series.study_id.in_(chunk)).group_by(Series.study_id, Series.id))
        for study_id, series_id, rule, analysed in rows:
            series[study_id][series_id] = None if analysed else rule
    return series


def ignored_reason(rule: str) -> str:
    """As :attr:`ortho_node.intake.accept.Decision.reason` words it (tests hold the two to the same text)."""
    if rule == "accept.default":
        return "ignored by accept.default (no accept rule matched)"
    return f"ignored by accept rule '{rule}'"


def ignored_states(session: Session, studies: Sequence[Study]) -> dict[int, str]:
    """Studies whose every instance an accept rule kept out of analysis, by study id: why ("ignored by
    accept rule 'no-ct'"; several rules joined)."""
    states = {study_id: _study_ignored(series)
              for study_id, series in ignored_by_series(session, [s.id for s in studies]).items()}
    return {study_id: state for study_id, state in states.items() if state is not None}


def _study_ignored(series: dict[int, str | None]) -> str | None:
    """Why a study is not analysed at all when no series of it is (``ignored_by_series`` of one study)."""
    rules = set(series.values())
    if not rules or None in rules:
        return None
    return "; ".join(ignored_reason(rule) for rule in sorted(r for r in rules if r))


def study_inventory(session_factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """What ``ortho-node studies`` lists: every received study, newest first, with its series and instance
    counts, the latest assembly decision (joint, laterality, planes with the chosen series and why,
    completeness reason) and the latest job; timestamps as the database returns them."""
    with session_factory() as session:
        studies = session.scalars(
            select(Study).options(selectinload(Study.series)).order_by(Study.last_received_at.desc())).all()
        ids = [s.id for s in studies]
        jobs, assemblies = _latest(session, Job, ids), _latest(session, StudyAssembly, ids)
        waiting = waiting_states(session, studies, jobs)
        ignored = ignored_by_series(session, ids)
        return [_inventory_row(study, jobs.get(study.id), assemblies.get(study.id), waiting.get(study.id),
                               ignored.get(study.id, {})) for study in studies]


def _inventory_row(study: Study, job: Job | None, assembly: StudyAssembly | None, waiting: str | None,
                   ignored: dict[int, str | None]) -> dict[str, Any]:
    series = [{"series_instance_uid": s.series_instance_uid, "series_number": s.series_number,
               "modality": s.modality, "series_description": s.series_description,
               "body_part_examined": s.body_part_examined, "laterality": s.laterality,
               "instance_count": s.instance_count,
               "ignored": ignored_reason(ignored[s.id]) if ignored.get(s.id) else None} for s in study.series]
    return {"study_instance_uid": study.study_instance_uid, "study_description": study.study_description,
            "first_received_at": study.first_received_at, "last_received_at": study.last_received_at,
            "instance_count": sum(s["instance_count"] for s in series), "series": series,
            "job": _job(job) if job is not None else None, "assembly": _assembly(assembly), "waiting": waiting,
            "ignored": _study_ignored(ignored), "storage": storage_state(study), **storage_facts(study)}


def study_series(session_factory: sessionmaker[Session], study_instance_uid: str) -> dict[str, Any] | None:
    """The study's series (number, modality, description, instances, an accept rule's ignore) with the planes the
    latest assembly chose each for and why, or why it was left out; with that assembly's decision (None: the
    study is not stored)."""
    with session_factory() as session:
        study = session.scalar(select(Study).options(selectinload(Study.series))
                               .where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            return None
        assembly = _assembly(_latest(session, StudyAssembly, [study.id]).get(study.id))
        ignored = ignored_by_series(session, [study.id]).get(study.id, {})
        series = _inventory_row(study, None, None, None, ignored)["series"]
    chosen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    excluded: dict[str, list[str]] = defaultdict(list)
    if assembly is not None:
        for plane, volume in assembly["planes"].items():
            chosen[volume.get("series_instance_uid", "")].append({"plane": plane, "reason": volume.get("reason"),
                                                                 "contrast": volume.get("contrast")})
        for line in assembly["excluded"]:
            uid, _, why = line.partition(": ")
            excluded[uid].append(why)
    for row in series:
        row["chosen_for"] = chosen.get(row["series_instance_uid"], [])
        row["left_out"] = excluded.get(row["series_instance_uid"], [])
    series.sort(key=lambda r: (r["series_number"] is None, r["series_number"] or 0, r["series_instance_uid"]))
    return {"series": series, "assembly": assembly}


def _assembly(record: StudyAssembly | None) -> dict[str, Any] | None:
    if record is None:
        return None
    summary = record.summary
    return {"job_id": record.job_id, "outcome": record.outcome, "joint": record.joint,
            "joint_reason": summary.get("joint_reason"), "laterality": record.laterality,
            "laterality_reason": summary.get("laterality_reason"), "conflicts": summary.get("conflicts", []),
            "planes": summary.get("planes", {}), "missing_planes": summary.get("missing_planes", []),
            "completeness_reason": record.completeness_reason, "skip_reason": record.skip_reason,
            "excluded": summary.get("excluded", [])}


def delivery_queue(session_factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every queued object with its state, for ``ortho-node deliveries``."""
    with session_factory() as session:
        items = session.scalars(select(DeliveryItem).order_by(DeliveryItem.study_instance_uid,
                                                              DeliveryItem.destination, DeliveryItem.id))
        return [{column: getattr(item, column) for column in (
            "study_instance_uid", "destination", "kind", "sop_instance_uid", "state", "attempts", "queued_at",
            "next_attempt_at", "last_attempt_at", "delivered_at", "last_status", "last_error")} for item in items]


def list_jobs(session_factory: sessionmaker[Session], *, limit: int = 200) -> list[dict[str, Any]]:
    """The most recent jobs, newest first (``ortho-node jobs``)."""
    with session_factory() as session:
        rows = session.execute(select(Job, Study.study_instance_uid).join(Study).order_by(Job.id.desc())
                               .limit(limit)).all()
        return [{**_job(job), "study_instance_uid": uid} for job, uid in rows]


def _job(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "reason": job.reason,
            "skip_cause": job.last_error if job.state == "skipped" else None, "attempts": job.attempts,
            "next_attempt_at": job.next_attempt_at, "last_error": job.last_error,
            "supersedes_job_id": job.supersedes_job_id, "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at}


def study_timeline(session_factory: sessionmaker[Session], study_instance_uid: str) -> list[dict[str, Any]] | None:
    """The study's timeline in the order it happened (None when the study is not stored): first and last
    instance received, each series an accept rule kept out of analysis, then every recorded step."""
    with session_factory() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            return None
        rows = session.scalars(select(TimelineEntry).where(TimelineEntry.study_instance_uid == study_instance_uid)
                               .order_by(TimelineEntry.id)).all()
        ignored = ignored_by_series(session, [study.id]).get(study.id, {})
        ignored_series = session.scalars(select(Series).where(Series.id.in_([i for i, r in ignored.items() if r]))
                                         .order_by(Series.first_received_at)).all()
    entries = [{"at": as_utc(study.first_received_at), "step": Step.FIRST_RECEIVED.value, "job_id": None,
                "detail": "first instance received", "data": None},
               {"at": as_utc(study.last_received_at), "step": Step.LAST_RECEIVED.value, "job_id": None,
                "detail": "last instance received", "data": None}]
    entries += [{"at": as_utc(s.first_received_at), "step": Step.IGNORED.value, "job_id": None,
                 "detail": f"series {s.series_instance_uid} {ignored_reason(ignored[s.id])}: stored, not analysed",
                 "data": {"accept_rule": ignored[s.id]}} for s in ignored_series]
    entries += [{"at": as_utc(r.at), "step": r.step, "job_id": r.job_id, "detail": r.detail, "data": r.data}
                for r in rows]
    return entries


def study_storage(session_factory: sessionmaker[Session], study_instance_uid: str) -> dict[str, Any] | None:
    """The study's keep and purge marks now and, in words, its storage state (None: not stored)."""
    with session_factory() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        return None if study is None else {"state": storage_state(study), **storage_facts(study)}


def study_results(session_factory: sessionmaker[Session], study_instance_uid: str) -> list[dict[str, Any]]:
    """Every result set built for the study, newest first, with its model card version and objects."""
    with session_factory() as session:
        rows = session.scalars(select(StudyResult).where(StudyResult.study_instance_uid == study_instance_uid)
                               .order_by(StudyResult.id.desc())).all()
    return [{"id": r.id, "job_id": r.job_id, "created_at": as_utc(r.created_at), "joint": r.joint,
             "laterality": r.laterality, "model_name": r.model_name, "model_version": r.model_version,
             "model_card": r.model_card, "findings": r.findings, "objects": r.objects,
             "inference_started_at": as_utc(r.inference_started_at),
             "inference_finished_at": as_utc(r.inference_finished_at)} for r in rows]


def list_deliveries(session_factory: sessionmaker[Session], filters: Filters = Filters(), *,
                    study_instance_uid: str | None = None) -> list[dict[str, Any]]:
    """Delivery queue rows, newest first; ``filters.status`` is a queue state (pending/delivered/failed)."""
    start, end = _day_bounds(filters)
    with session_factory() as session:
        query = select(DeliveryItem).order_by(DeliveryItem.queued_at.desc(), DeliveryItem.id.desc())
        if study_instance_uid:
            query = query.where(DeliveryItem.study_instance_uid == study_instance_uid)
        if filters.status:
            query = query.where(DeliveryItem.state == filters.status)
        if start is not None:
            query = query.where(DeliveryItem.queued_at >= start)
        if end is not None:
            query = query.where(DeliveryItem.queued_at < end)
        if filters.search:
            query = query.where(DeliveryItem.study_instance_uid.like(f"%{filters.search.strip()}%"))
        items = session.scalars(query.limit(filters.limit)).all()
    return [{"id": item.id, **{column: (as_utc(value) if isinstance(value := getattr(item, column), dt.datetime)
                                        else value) for column in DELIVERY_COLUMNS}} for item in items]


def list_failures(session_factory: sessionmaker[Session], filters: Filters = Filters()) -> list[dict[str, Any]]:
    """Failed steps (job retries and failures, skipped studies, flagged deliveries), newest first."""
    start, end = _day_bounds(filters)
    with session_factory() as session:
        query = (select(TimelineEntry).where(TimelineEntry.step.in_([s.value for s in FAILURE_STEPS]))
                 .order_by(TimelineEntry.at.desc(), TimelineEntry.id.desc()))
        if start is not None:
            query = query.where(TimelineEntry.at >= start)
        if end is not None:
            query = query.where(TimelineEntry.at < end)
        if filters.status:
            query = query.where(TimelineEntry.step == filters.status)
        if filters.search:
            query = query.where(TimelineEntry.study_instance_uid.like(f"%{filters.search.strip()}%"))
        rows = session.scalars(query.limit(filters.limit)).all()
    return [{"at": as_utc(r.at), "study_instance_uid": r.study_instance_uid, "step": r.step, "job_id": r.job_id,
             "detail": r.detail} for r in rows]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def daily_summary(session_factory: sessionmaker[Session], *, days: int = 14,
                  today: dt.date | None = None) -> list[dict[str, Any]]:
    """Per UTC day, oldest first: studies received (by last instance), instances received, result sets built,
    objects delivered, failures (job failures, flagged deliveries, skipped studies) and the turnaround
    percentiles of the studies received that day."""
    today = today or utcnow().date()
    first = today - dt.timedelta(days=days - 1)
    studies = list_studies(session_factory, Filters(since=first, until=today, limit=10**9))
    start = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
    with session_factory() as session:
        instance_days = session.scalars(select(Instance.received_at).where(Instance.received_at >= start)).all()
        result_days = session.scalars(select(StudyResult.created_at).where(StudyResult.created_at >= start)).all()
        delivered_days = session.scalars(select(DeliveryItem.delivered_at)
                                         .where(DeliveryItem.delivered_at >= start)).all()
        failure_days = session.scalars(select(TimelineEntry.at).where(
            TimelineEntry.at >= start,
            TimelineEntry.step.in_([Step.JOB_FAILED.value, Step.DELIVERY_FAILED.value, Step.JOB_SKIPPED.value]))).all()
    summary = {first + dt.timedelta(days=n): {"studies": 0, "instances": 0, "results": 0, "delivered": 0,
                                              "failures": 0, "turnarounds": []} for n in range(days)}

    def bump(values: Iterable[dt.datetime | None], key: str) -> None:
        for value in values:
            day = as_utc(value).date() if value else None
            if day in summary:
                summary[day][key] += 1

    bump(instance_days, "instances")
    bump(result_days, "results")
    bump(delivered_days, "delivered")
    bump(failure_days, "failures")
    for study in studies:
        day = study["last_received_at"].date()
        if day in summary:
            summary[day]["studies"] += 1
            if study["turnaround_seconds"] is not None:
                summary[day]["turnarounds"].append(study["turnaround_seconds"])
    rows = []
    for day, counts in summary.items():
        turnarounds = counts.pop("turnarounds")
        rows.append({"day": day.isoformat(), **counts,
                     **{f"turnaround_p{q}": percentile(turnarounds, q) for q in (50, 90, 95)}})
    return rows


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header row; lists joined with '; ', datetimes in ISO 8601, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        value = "; ".join(str(v) for v in value)
    text = str(value)
    if isinstance(value, str) and text[:1] in _FORMULA_PREFIXES:
        return "'" + text  # a sender-controlled description must not run as a spreadsheet formula
    return text


_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
