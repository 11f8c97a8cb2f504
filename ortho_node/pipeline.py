"""The processing pipeline of an assembled study: ``Pipeline.run(assembled_study)``.

Today it records the assembly decision (joint, laterality, chosen volume per plane and why, missing
planes, completeness reason) so it is durable and visible (``ortho-node studies``). Inference, result
objects and delivery are added as stages here; stages that use the GPU hold ``gpu_lock`` so GPU work is
serialized whatever the worker concurrency. ``run`` is idempotent per job: a job re-run after a crash
replaces its own record instead of adding a second one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.study import AssembledStudy
from ortho_node.audit import AuditKind, Severity, make_event
from ortho_node.db.models import Study, StudyAssembly

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    assembly_id: int
    skipped: bool


class Pipeline:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory
        self.gpu_lock = threading.Lock()

    def run(self, assembled: AssembledStudy, *, job_id: int | None = None) -> PipelineResult:
        """Process one assembled study (for ``job_id`` when run by the scheduler)."""
        return self._record(assembled, job_id)

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
