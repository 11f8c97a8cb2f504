"""Read-only views of what the node holds, shared by the CLI and (later) the admin console."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ortho_node.db.models import Series, Study


def list_studies(session_factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Received studies, newest first, with their series and instance counts."""
    with session_factory() as session:
        studies = session.scalars(
            select(Study).options(selectinload(Study.series)).order_by(Study.last_received_at.desc())
        ).all()
        return [_study(study) for study in studies]


def _study(study: Study) -> dict[str, Any]:
    series = [_series(s) for s in study.series]
    return {
        "study_instance_uid": study.study_instance_uid,
        "study_description": study.study_description,
        "first_received_at": study.first_received_at,
        "last_received_at": study.last_received_at,
        "instance_count": sum(s["instance_count"] for s in series),
        "series": series,
    }


def _series(series: Series) -> dict[str, Any]:
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "modality": series.modality,
        "series_description": series.series_description,
        "body_part_examined": series.body_part_examined,
        "laterality": series.laterality,
        "instance_count": series.instance_count,
    }
