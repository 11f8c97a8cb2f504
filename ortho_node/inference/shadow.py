"""Shadow mode: a candidate model (``model.shadow`` or ``ortho-node model shadow``) run beside the active one
on every study the node analyses. Its result objects are written under ``<data>/shadow/<study>/job-<id>`` and
recorded (``shadow_results``, with the model version and its agreement with the active result); they are never
queued for delivery.

The pipeline calls the runner after the active result is queued, so the candidate never delays, changes or
fails the delivery; a shadow failure is logged and audited, and the job still succeeds (a failed job would be
retried and its active result delivered again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.study import AssembledStudy
from ortho_node.audit.trail import AuditKind, AuditTrail, Severity, make_event
from ortho_node.db.models import ShadowResult
from ortho_node.inference.agreement import compare
from ortho_node.inference.batching import DeviceBatcher
from ortho_node.inference.predictor import Locate
from ortho_node.inference.served import LoadPredictor
from ortho_node.model.registry import SHADOW_FOLDER, ModelEntry, ModelRegistry
from ortho_node.prediction import StudyPrediction

log = logging.getLogger(__name__)

#: Writes a prediction's result objects into a folder; returns their paths (``reports.results``, wired by the
#: composition root).
WriteObjects = Callable[[StudyPrediction, Path], list[Path]]


def shadow_folder(data_dir: Path, study_instance_uid: str, job_id: int | None) -> Path:
    """``<data>/shadow/<study>/job-<id>`` (``manual`` without a job): apart from ``results``, which delivery,
    resending and retention read."""
    return data_dir / SHADOW_FOLDER / study_instance_uid / (f"job-{job_id}" if job_id is not None else "manual")


class ShadowRunner:
    """Called by the pipeline with each study, its active prediction, its job and its active result id."""

    def __init__(self, registry: ModelRegistry, load: LoadPredictor, audit: AuditTrail,
                 session_factory: sessionmaker[Session], data_dir: Path, write: WriteObjects, locate: Locate) -> None:
        self._registry = registry
        self._load = load
        self._audit = audit
        self._session_factory = session_factory
        self._data_dir = Path(data_dir)
        self._write = write
        self._locate = locate
        self._lock = threading.Lock()
        self._entry: ModelEntry | None = None
        self._predictor: DeviceBatcher | None = None

    def _current(self) -> tuple[ModelEntry, DeviceBatcher] | None:
        """The shadow model's predictor, (re)loaded when the choice changed; None without a shadow."""
        entry = self._registry.shadow()
        with self._lock:
            if self._entry is not None and (entry is None or entry.id != self._entry.id):
                replaced, self._entry, self._predictor = self._predictor, None, None
                if replaced is not None:
                    replaced.close()
            if entry is None:
                return None
            if self._predictor is None:
                self._predictor = self._load(entry.folder)
                self._entry = entry
                self._audit.record(AuditKind.MODEL_LOADED, f"shadow model {entry.label} loaded",
                                   details={"model_id": entry.id, "name": entry.name, "version": entry.version,
                                            "shadow": True})
                log.info("shadow model %s loaded from %s", entry.label, entry.folder)
            return self._entry, self._predictor

    def __call__(self, assembled: AssembledStudy, active: StudyPrediction, job_id: int | None,
                 active_result_id: int | None) -> int | None:
        """Run the shadow model on the study; the shadow result's id, None without a shadow or on failure."""
        uid = assembled.study_instance_uid
        try:
            current = self._current()
            if current is None:
                return None
            entry, predictor = current
            prediction = predictor.predict(assembled, locate=self._locate)
            paths = self._write(prediction, shadow_folder(self._data_dir, uid, job_id))
            return self._record(entry, prediction, active, paths, job_id, active_result_id)
        except Exception as exc:  # any failure of the candidate: the active result is queued and must stand
            log.error("study %s: shadow model failed: %s: %s", uid, type(exc).__name__, exc)
            self._audit.record(AuditKind.SHADOW_FAILED, f"shadow model failed: {type(exc).__name__}: {exc}",
                               severity=Severity.WARNING, study_instance_uid=uid, details={"job_id": job_id})
            return None

    def _record(self, entry: ModelEntry, prediction: StudyPrediction, active: StudyPrediction, paths: list[Path],
                job_id: int | None, active_result_id: int | None) -> int:
        uid = prediction.study_instance_uid
        findings = [{"label": f.label, "probability": f.probability, "threshold": f.threshold, "present": f.present}
                    for f in prediction.findings]
        with self._session_factory.begin() as session:
            row = ShadowResult(study_instance_uid=uid, job_id=job_id, active_result_id=active_result_id,
                               model_id=entry.id, model_name=prediction.model.name,
                               model_version=prediction.model.version, active_model_version=active.model.version,
                               findings=findings, agreement=compare(active, prediction),
                               objects=[str(p.relative_to(self._data_dir)) for p in paths])
            session.add(row)
            session.flush()
            session.add(make_event(AuditKind.SHADOW_STORED, f"shadow model {entry.label}: {len(paths)} result "
                                                            "objects stored, not delivered",
                                   study_instance_uid=uid, details={"shadow_result_id": row.id, "job_id": job_id,
                                                                    "active_result_id": active_result_id}))
            row_id = row.id
        log.info("study %s: shadow model %s result stored (%d objects, not delivered)", uid, entry.label, len(paths))
        return row_id
