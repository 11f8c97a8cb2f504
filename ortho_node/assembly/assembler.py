"""Assembler: a stored study -> its header-only plan (for completeness) or an :class:`AssembledStudy`.

Header facts come from the instance rows written at intake; files are opened only for Enhanced MR
per-frame groups (cached per SOP instance) and for the pixel data of the chosen volumes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.assembly.analysis_mark import skip_cause
from ortho_node.assembly.completeness import SeriesSignal
from ortho_node.assembly.pixels import read_volume
from ortho_node.assembly.plan import AssemblyRules, PlaneChoice, StudyPlan, plan_study
from ortho_node.assembly.slices import SeriesFacts, SliceRef, multi_frame, single_frame
from ortho_node.assembly.study import AssembledStudy, ClinicalFacts, PlaneVolume, VolumeGeometry
from ortho_node.db.models import Association, Instance, Series, Study

log = logging.getLogger(__name__)

#: Multi-frame objects whose per-frame facts are kept between completeness checks.
FRAME_CACHE_SIZE = 256


class StudyNotFound(LookupError):
    pass


class Assembler:
    def __init__(self, session_factory: sessionmaker[Session], resolve: Callable[[str], Path],
                 rules: AssemblyRules) -> None:
        self._session_factory = session_factory
        self._resolve = resolve  # relative file path -> absolute (InstanceStore.absolute)
        self.rules = rules
        self._frames: dict[str, list[SliceRef]] = {}
        self._frames_lock = threading.Lock()

    def plan(self, study_uid: str) -> tuple[StudyPlan, list[SeriesSignal], Study]:
        """The header-only plan of the study as stored now, with each series' completeness signals."""
        with self._session_factory() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            if study is None:
                raise StudyNotFound(study_uid)
            # Instances an accept rule ignored are kept out of analysis, and series left without any with them;
            # so are those whose files the purger deleted (a study received again after a purge: what is on disk).
            instances = session.scalars(select(Instance).join(Series).where(Series.study_id == study.id,
                                                                            Instance.ignored_by.is_(None),
                                                                            Instance.purged_at.is_(None))
                                        .order_by(Instance.id)).all()
            analysed = {row.series_id for row in instances}
            series_rows = [s for s in session.scalars(select(Series).where(Series.study_id == study.id)
                                                      .order_by(Series.series_number, Series.id))
                           if s.id in analysed or not s.instance_count]
            released = self._released_associations(session, {i.association_id for i in instances})
        by_series: dict[int, list[Instance]] = defaultdict(list)
        for row in instances:
            by_series[row.series_id].append(row)
        series = [(SeriesFacts.from_row(s), self._slices(by_series[s.id])) for s in series_rows]
        plan = plan_study(study_uid, study.study_description, series, self.rules)
        signals = [_signal(s, by_series[s.id], released) for s in series_rows]
        return plan, signals, study

    def assemble(self, study_uid: str, completeness_reason: str) -> AssembledStudy:
        plan, _signals, study = self.plan(study_uid)
        clinical = ClinicalFacts(study.patient_age, study.patient_sex, study.patient_size, study.patient_weight)
        skip_reason = skip_cause(study) or plan.skip_reason  # an operator's mark before what the plan found
        planes = {} if skip_reason else {p: self._volume(p, c) for p, c in plan.choices.items()}
        assembled = AssembledStudy(
            study_instance_uid=study_uid, joint=plan.joint, joint_reason=plan.joint_reason,
            laterality=plan.laterality, laterality_reason=plan.laterality_reason, clinical=clinical,
            planes=planes, missing_planes=plan.missing_planes, completeness_reason=completeness_reason,
            conflicts=plan.conflicts, excluded=plan.excluded, skip_reason=skip_reason,
            candidates=plan.candidates)
        log.info("study %s assembled: joint %s, laterality %s, planes %s, missing %s%s", study_uid,
                 plan.joint.value, plan.laterality.value, ",".join(p.value for p in planes) or "none",
                 ",".join(p.value for p in plan.missing_planes) or "none",
                 f"; skipped: {skip_reason}" if skip_reason else "")
        return assembled

    def _slices(self, rows: list[Instance]) -> list[SliceRef]:
        slices: list[SliceRef] = []
        for row in rows:
            if (row.number_of_frames or 1) > 1:
                slices.extend(self._multi_frame(row))
            else:
                slices.append(single_frame(row))
        return slices

    def _multi_frame(self, row: Instance) -> list[SliceRef]:
        # Completeness checks plan a study many times while it arrives; read each object's groups once.
        with self._frames_lock:
            cached = self._frames.get(row.sop_instance_uid)
        if cached is None:
            cached = multi_frame(row, self._resolve(row.file_path))
            with self._frames_lock:
                if len(self._frames) >= FRAME_CACHE_SIZE:
                    self._frames.clear()  # cheap bound; a study's objects are re-read at most once more
                self._frames[row.sop_instance_uid] = cached
        return cached

    @staticmethod
    def _released_associations(session: Session, ids: set[int | None]) -> set[int]:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return set()
        return set(session.scalars(select(Association.id).where(Association.id.in_(wanted),
                                                                 Association.end_state == "released")))

    def _volume(self, plane, choice: PlaneChoice) -> PlaneVolume:
        volume = choice.volume
        slices = volume.slices
        first = slices[0]
        geometry = VolumeGeometry(
            series_instance_uid=volume.series.series_instance_uid,
            sop_instance_uids=tuple(s.sop_instance_uid for s in slices),
            frame_numbers=tuple(None if s.frame is None else s.frame + 1 for s in slices),
            image_orientation_patient=volume.orientation.values,  # type: ignore[arg-type]
            image_positions=tuple(tuple(s.position) for s in slices),  # type: ignore[misc]
            pixel_spacing=tuple(first.pixel_spacing),  # type: ignore[arg-type]
            slice_spacing=volume.slice_spacing, slice_thickness=first.slice_thickness,
            frame_of_reference_uid=volume.series.frame_of_reference_uid,
        )
        pixels = read_volume(slices, self._resolve)
        return PlaneVolume(plane, pixels, geometry, volume.contrast, volume.name, choice.reason, volume.notes)


def _signal(series: Series, rows: list[Instance], released: set[int]) -> SeriesSignal:
    if rows and all((r.number_of_frames or 1) > 1 for r in rows):
        expected: int | None = len(rows)  # each multi-frame object carries its whole stack
    else:
        counts = [r.images_in_acquisition for r in rows if r.images_in_acquisition]
        expected = max(counts) if counts else None
    carried_by = {r.association_id for r in rows}
    # Rows without an association were indexed at start-up recovery: nothing more is coming on them.
    done = all(a is None or a in released for a in carried_by)
    return SeriesSignal(series.series_instance_uid, len(rows), expected, done)
