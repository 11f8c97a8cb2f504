"""Where a study's built result objects are: the results folder layout and the latest result set, for
queueing them (again) to destinations that did not exist when they were built."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.db.models import Job, Study, StudyResult
from ortho_node.delivery.queue import ResultFile

log = logging.getLogger(__name__)


def results_folder(data_dir: Path, study_instance_uid: str, job_id: int | None) -> Path:
    """``<data>/results/<study>/job-<id>``: where the job's result objects are written (``manual`` without a
    job)."""
    return data_dir / "results" / study_instance_uid / (f"job-{job_id}" if job_id is not None else "manual")


def latest_result_files(session_factory: sessionmaker[Session], data_dir: Path,
                        study_instance_uid: str) -> list[ResultFile]:
    """The study's newest result set: the objects of its latest ``study_results`` record, else the files in the
    results folder of its latest successful job. Files no longer on disk are left out (logged)."""
    with session_factory() as session:
        result = session.scalars(select(StudyResult).where(StudyResult.study_instance_uid == study_instance_uid)
                                 .order_by(StudyResult.id.desc()).limit(1)).first()
        if result is not None:
            paths = [Path(obj["path"]) for obj in result.objects if obj.get("path")]
        else:
            job_id = session.scalars(select(Job.id).join(Study).where(
                Study.study_instance_uid == study_instance_uid, Job.state == "succeeded")
                .order_by(Job.id.desc()).limit(1)).first()
            folder = results_folder(data_dir, study_instance_uid, job_id) if job_id is not None else None
            paths = sorted(folder.glob("*.dcm")) if folder is not None and folder.is_dir() else []
    files = []
    for path in paths:
        if not path.is_file():
            log.warning("study %s: result object %s is no longer on disk", study_instance_uid, path)
            continue
        try:
            file = ResultFile.read(path)
            file.kind  # noqa: B018 - raises ValueError for a class that is no result object
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:  # not a readable result object
            log.warning("study %s: %s is not a readable result object (%s)", study_instance_uid, path, exc)
            continue
        files.append(file)
    return files
