"""The processing pipeline of an assembled study: ``Pipeline.run(assembled_study)``.

It records the assembly decision (joint, laterality, chosen volume per plane and why, missing planes,
completeness reason) so it is durable and visible (``ortho-node studies``). ``run`` is idempotent per job: a
job re-run after a crash replaces its own record instead of adding a second one.

With :class:`ResultStages` (plugged in by the composition root when a model is configured, the usual case
for ``ortho-node serve``) a study that was not skipped then goes predictor -> result objects written ->
delivery queue, each step on the study's timeline (``ortho_node.audit.timeline``) with the model card version
recorded with the results. Several job threads may be in the predictor at once: the node's predictor
(``ortho_node.inference.batching.DeviceBatcher``) runs one device pass at a time, shared by the studies waiting,
and reads and finishes each study on its own job thread, as building and writing the objects is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.study import AssembledStudy
from ortho_node.audit.trail import AuditKind, Severity, make_event
from ortho_node.db.models import Study, StudyAssembly
from ortho_node.prediction import StudyPrediction
from ortho_node.audit.timeline import BuiltObject, Step, Timeline, entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    assembly_id: int
    skipped: bool
    result_id: int | None = None  # study_results row, when the inference stages ran


#: SOP Instance UID -> the stored file (the node's catalog and store), for the masks' slice references.
Locate = Callable[[str], Path]


class StudyPredictor(Protocol):
    """What the node's predictor offers the pipeline (loaded once, reused for every study, safe to call from
    several job threads at once)."""

    def predict(self, assembled: AssembledStudy, *, locate: Locate | None = None) -> StudyPrediction: ...


@dataclass(frozen=True)
class WrittenResults:
    """Result files written durably for one prediction, and the SEGs left out (source series UID -> why)."""

    paths: list[Path]
    seg_not_built: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultStages:
    """The stages after assembly: the predictor, a writer that builds the result objects of a prediction
    and writes them durably (returns their paths; ``reports.results`` in the composition root), the
    delivery queue (``DeliveryService.enqueue_files``), and where stored instances are."""

    predictor: StudyPredictor
    write_results: Callable[[StudyPrediction, int | None], WrittenResults]
    deliver: Callable[[Sequence[Path]], int]
    describe_object: Callable[[Path], BuiltObject]
    locate: Locate
    # After the new set is queued: the study's earlier result sets give up their files (one copy of results per
    # study; ortho_node.retention.superseded, wired by the composition root when retention.supersede_results).
    supersede: Callable[[str], None] | None = None
    close: Callable[[], None] | None = None  # at the node's stop, once no job runs (e.g. result-building processes)
    # Shadow mode (ortho_node.inference.shadow): a candidate model on the same study, called with the active
    # prediction, the job and the active result's id once that result is queued; it stores, never delivers.
    shadow: Callable[[AssembledStudy, StudyPrediction, int | None, int], object] | None = None


class Pipeline:
    def __init__(self, session_factory: sessionmaker[Session], *, stages: ResultStages | None = None) -> None:
        self._session_factory = session_factory
        self.stages = stages
        self.timeline = Timeline(session_factory)

    def close(self) -> None:
        """Let the stages go (the scheduler has stopped: no job runs)."""
        if self.stages is not None and self.stages.close is not None:
            self.stages.close()

    def run(self, assembled: AssembledStudy, *, job_id: int | None = None) -> PipelineResult:
        """Process one assembled study (for ``job_id`` when run by the scheduler)."""
        recorded = self._record(assembled, job_id)
        if self.stages is None or assembled.skipped:
            return recorded
        return PipelineResult(recorded.assembly_id, False, self._infer_and_deliver(self.stages, assembled, job_id))

    def _infer_and_deliver(self, stages: ResultStages, assembled: AssembledStudy, job_id: int | None) -> int:
        uid = assembled.study_instance_uid
        started = self.timeline.inference_started(uid, job_id=job_id, planes=[p.value for p in assembled.planes])
        prediction = stages.predictor.predict(assembled, locate=stages.locate)
        finished = self.timeline.inference_finished(prediction, job_id=job_id, started_at=started)
        written = stages.write_results(prediction, job_id)
        result_id = self.timeline.objects_built(prediction, [stages.describe_object(p) for p in written.paths],
                                                job_id=job_id, inference_started_at=started,
                                                inference_finished_at=finished, seg_not_built=written.seg_not_built)
        queued = stages.deliver(written.paths)
        log.info("study %s: %d result objects written, %d deliveries queued", uid, len(written.paths), queued)
        if stages.supersede is not None:
            stages.supersede(uid)
        if stages.shadow is not None:  # after the queueing above: a candidate never delays the delivery
            stages.shadow(assembled, prediction, job_id, result_id)
        return result_id

    def _record(self, assembled: AssembledStudy, job_id: int | None) -> PipelineResult:
        uid = assembled.study_instance_uid
        with self._session_factory.begin() as session:
            study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
            if study_id is None:
                raise LookupError(f"study {uid} is not stored")
            if job_id is not None:
                session.execute(delete(StudyAssembly).where(StudyAssembly.job_id == job_id))
            record = StudyAssembly(
                job_id=job_id, study_id=study_id, outcome="skipped" if assembled.skipped else "assembled",
                joint=assembled.joint.value, laterality=assembled.laterality.value,
                completeness_reason=assembled.completeness_reason, skip_reason=assembled.skip_reason,
                summary=assembled.summary())
            session.add(record)
            session.flush()
            session.add(_event(assembled, job_id, record.id))
            session.add(_timeline_entry(assembled, job_id, record.id))
        return PipelineResult(record.id, assembled.skipped)


def _event(assembled: AssembledStudy, job_id: int | None, assembly_id: int):
    details = {"job_id": job_id, "assembly_id": assembly_id, "joint": assembled.joint.value,
               "laterality": assembled.laterality.value, "conflicts": list(assembled.conflicts),
               "planes": {p.value: v.geometry.series_instance_uid for p, v in assembled.planes.items()},
               "missing_planes": [p.value for p in assembled.missing_planes]}
    if assembled.skipped:
        return make_event(AuditKind.STUDY_SKIPPED, f"study skipped: {assembled.skip_reason}",
                          severity=Severity.WARNING, study_instance_uid=assembled.study_instance_uid,
                          details=details)
    planes = ", ".join(p.value for p in assembled.planes)
    severity = Severity.WARNING if assembled.conflicts else Severity.INFO
    return make_event(AuditKind.STUDY_ASSEMBLED, f"{assembled.joint.value} study assembled with {planes}",
                      severity=severity, study_instance_uid=assembled.study_instance_uid, details=details)


def _timeline_entry(assembled: AssembledStudy, job_id: int | None, assembly_id: int):
    planes = {p.value: v.geometry.series_instance_uid for p, v in assembled.planes.items()}
    missing = [p.value for p in assembled.missing_planes]
    data = {"assembly_id": assembly_id, "joint": assembled.joint.value, "laterality": assembled.laterality.value,
            "planes": planes, "missing_planes": missing, "completeness_reason": assembled.completeness_reason}
    if assembled.skipped:
        return entry(Step.SKIPPED, assembled.study_instance_uid, f"skipped: {assembled.skip_reason}",
                     job_id=job_id, data=data)
    detail = (f"{assembled.joint.value} {assembled.laterality.value} assembled with {', '.join(planes) or 'no planes'}"
              + (f"; missing {', '.join(missing)}" if missing else ""))
    return entry(Step.ASSEMBLED, assembled.study_instance_uid, detail, job_id=job_id, data=data)
