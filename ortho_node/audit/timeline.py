"""The per-study timeline (``study_timeline``) and the result record (``study_results``): one write path.

Each step is written by the part of the node that owns it, in the same transaction as its audit event
(``entry`` returns a row to add there): the job queue (waiting and until when, ready and why, started,
succeeded or skipped and why, retried, failed, superseded, requeued), the pipeline (assembled or skipped; inference start and end; objects built) and the
delivery queue (queued, each object acknowledged, flagged, resent). First and last instance received are
the study row's own timestamps (``studies.first_received_at`` / ``last_received_at``); the ready step also
copies them, so the timeline of a job is complete on its own.

The inference stage calls :class:`Timeline`: ``inference_started`` before the predictor runs,
``inference_finished`` after it, and ``objects_built`` once the result files are written; the last one
stores the model name, version and card with the findings and the objects.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.clock import utcnow
from ortho_node.db.models import Study, StudyResult, TimelineEntry

if TYPE_CHECKING:  # annotations only: the CLI's audit views must not pull numpy in with the prediction types
    from ortho_node.prediction import StudyPrediction

log = logging.getLogger(__name__)


class Step(str, enum.Enum):
    FIRST_RECEIVED = "first_received"  # synthesized from the study row by the queries, never stored
    LAST_RECEIVED = "last_received"  # idem
    IGNORED = "ignored"  # idem, from instances.ignored_by: a series an accept rule kept out of analysis
    WAITING = "waiting"  # not ready yet: what the study waits for and until when (the completeness timer)
    READY = "ready"  # completeness decided, a job queued (reason in the detail)
    REQUESTED = "requested"  # queued on request (ortho-node reprocess)
    JOB_STARTED = "job_started"
    ASSEMBLED = "assembled"
    SKIPPED = "skipped"
    INFERENCE_STARTED = "inference_started"
    INFERENCE_FINISHED = "inference_finished"
    OBJECTS_BUILT = "objects_built"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_SKIPPED = "job_skipped"  # the study cannot be analysed (assembly or model): the cause in the detail
    JOB_RETRY = "job_retry"
    JOB_FAILED = "job_failed"
    JOB_SUPERSEDED = "job_superseded"
    JOB_REQUEUED = "job_requeued"
    DELIVERY_QUEUED = "delivery_queued"
    DELIVERED = "delivered"  # one object acknowledged by one destination
    DELIVERY_FAILED = "delivery_failed"  # flagged: permanent rejection or retry time exhausted
    DELIVERY_RESEND = "delivery_resend"
    INSTANCES_PURGED = "instances_purged"  # received instances deleted; why, how many files and bytes
    RESULTS_PURGED = "results_purged"
    RECEIVED_AFTER_PURGE = "received_after_purge"  # instances after a purge: the purge mark cleared
    RESULTS_SUPERSEDED = "results_superseded"  # an earlier job's result files deleted (a newer set replaces them)
    KEEP_SET = "keep_set"
    KEEP_CLEARED = "keep_cleared"
    DELIVERY_RETRY = "delivery_retry"  # a flagged object queued again by an operator (console, API)
    NOT_FOR_ANALYSIS_SET = "not_for_analysis_set"  # an operator's mark: its jobs end skipped
    NOT_FOR_ANALYSIS_CLEARED = "not_for_analysis_cleared"


#: Steps that mark a failure, for the failures view and the metrics. A skipped study counts once, by its job's
#: ``job_skipped`` (the pipeline's ``skipped`` step records the assembly decision beside it).
FAILURE_STEPS = (Step.JOB_RETRY, Step.JOB_FAILED, Step.DELIVERY_FAILED, Step.JOB_SKIPPED)


def entry(step: Step, study_instance_uid: str, detail: str, *, job_id: int | None = None,
          at: dt.datetime | None = None, data: dict[str, Any] | None = None) -> TimelineEntry:
    """A timeline row for callers that add it inside their own transaction."""
    return TimelineEntry(step=step.value, study_instance_uid=study_instance_uid, detail=detail, job_id=job_id,
                         at=at or utcnow(), data=data)


@dataclass(frozen=True)
class BuiltObject:
    """One result object written to disk (what ``objects_built`` records and the console shows)."""

    kind: str  # seg, sr, summary
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    path: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "sop_instance_uid": self.sop_instance_uid,
                "series_instance_uid": self.series_instance_uid, "sop_class_uid": self.sop_class_uid,
                "path": self.path}


class Timeline:
    """Steps recorded in their own transaction: the calls the inference stage makes."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def record(self, step: Step, study_instance_uid: str, detail: str, *, job_id: int | None = None,
               at: dt.datetime | None = None, data: dict[str, Any] | None = None) -> dt.datetime:
        when = at or utcnow()
        with self._session_factory.begin() as session:
            session.add(entry(step, study_instance_uid, detail, job_id=job_id, at=when, data=data))
        return when

    def inference_started(self, study_instance_uid: str, *, job_id: int | None,
                          planes: Sequence[str] = ()) -> dt.datetime:
        """Before the predictor runs; returns the start time to hand to ``objects_built``."""
        return self.record(Step.INFERENCE_STARTED, study_instance_uid,
                           f"inference started on {', '.join(planes) or 'no planes'}", job_id=job_id,
                           data={"planes": list(planes)})

    def inference_finished(self, prediction: StudyPrediction, *, job_id: int | None,
                           started_at: dt.datetime) -> dt.datetime:
        model = prediction.model
        when = utcnow()
        seconds = (when - started_at).total_seconds()
        present = [f.label for f in prediction.findings if f.present]
        self.record(Step.INFERENCE_FINISHED, prediction.study_instance_uid,
                    f"inference by {model.name} {model.version} in {seconds:.1f} s; findings present: "
                    f"{', '.join(present) or 'none'}", job_id=job_id, at=when,
                    data={"seconds": seconds, "model_name": model.name, "model_version": model.version})
        return when

    def objects_built(self, prediction: StudyPrediction, objects: Sequence[BuiltObject], *, job_id: int | None,
                      inference_started_at: dt.datetime | None = None,
                      inference_finished_at: dt.datetime | None = None,
                      seg_not_built: Mapping[str, str] | None = None) -> int:
        """Record the result set (model card version, findings, objects) and its timeline step, with the SEGs
        that could not be built (source series UID -> reason); returns the ``study_results`` row id."""
        model = prediction.model
        kinds: dict[str, int] = {}
        for obj in objects:
            kinds[obj.kind] = kinds.get(obj.kind, 0) + 1
        with self._session_factory.begin() as session:
            # A job run again (its process died after this step) replaces its one result set, as the pipeline
            # replaces its assembly record: a study is recorded analysed once per job.
            replaced = list(session.scalars(delete(StudyResult).where(StudyResult.job_id == job_id)
                                            .returning(StudyResult.id))) if job_id is not None else []
            result = StudyResult(
                study_instance_uid=prediction.study_instance_uid, job_id=job_id, created_at=utcnow(),
                joint=prediction.joint.value, laterality=prediction.laterality, model_name=model.name,
                model_version=model.version, model_card=dict(model.card), findings=findings_of(prediction),
                objects=[obj.as_dict() for obj in objects], inference_started_at=inference_started_at,
                inference_finished_at=inference_finished_at)
            session.add(result)
            session.flush()
            if replaced:  # sets the replaced one had already superseded point at its replacement
                session.execute(update(StudyResult).where(StudyResult.superseded_by.in_(replaced))
                                .values(superseded_by=result.id))
            summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "no objects"
            detail = f"{summary} built by {model.name} {model.version}"
            data: dict[str, Any] = {"result_id": result.id, "model_version": model.version, "objects": kinds}
            if seg_not_built:
                detail += "; no SEG for " + "; ".join(f"series {uid}: {why}" for uid, why in seg_not_built.items())
                data["seg_not_built"] = dict(seg_not_built)
            session.add(entry(Step.OBJECTS_BUILT, prediction.study_instance_uid, detail, job_id=job_id, data=data))
            # Results on disk again after the purger deleted earlier ones: the study's mark follows (the purge
            # stays on its timeline), and retention.results_days applies to these from their delivery.
            session.execute(update(Study).where(Study.study_instance_uid == prediction.study_instance_uid,
                                                Study.results_purged_at.is_not(None)).values(results_purged_at=None))
            return result.id


def findings_of(prediction: StudyPrediction) -> list[dict[str, Any]]:
    """The findings as the result row keeps them (``Finding.figures``: with the card's operating point)."""
    return [f.figures() for f in prediction.findings]
