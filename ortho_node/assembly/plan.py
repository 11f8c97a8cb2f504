"""The header-only plan of a study: joint, laterality, candidate volumes and the one chosen per plane.

Used twice: by the completeness check while a study is arriving (cheap, no pixel data) and by the assembler,
which then reads the pixels of the chosen volumes only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ortho_node.assembly.anatomy import HeaderSource, Laterality, joint_from, laterality_from
from ortho_node.assembly.contrast import Preference
from ortho_node.assembly.slices import SeriesFacts, SliceRef
from ortho_node.assembly.volumes import CandidateVolume, GeometryRules, plan_series
from ortho_node.config import AssemblySettings
from ortho_node.labels import MODEL_PLANES, Joint, Plane


@dataclass(frozen=True)
class AssemblyRules:
    geometry: GeometryRules
    preference: Preference
    unknown_joint: str  # "skip" or a joint value
    expected_planes: dict[Joint, tuple[Plane, ...]]

    @classmethod
    def from_settings(cls, settings: AssemblySettings) -> AssemblyRules:
        expected = {Joint.KNEE: settings.knee_planes, Joint.ANKLE: settings.ankle_planes,
                    Joint.SHOULDER: settings.shoulder_planes}
        return cls(
            GeometryRules(settings.oblique_angle, settings.min_slices, settings.spacing_tolerance),
            Preference(tuple(settings.preferred_contrasts)), settings.unknown_joint,
            {joint: tuple(Plane(p) for p in planes) for joint, planes in expected.items()},
        )

    def expected_for(self, joint: Joint) -> tuple[Plane, ...]:
        return self.expected_planes.get(joint, MODEL_PLANES)


@dataclass(frozen=True)
class PlaneChoice:
    volume: CandidateVolume
    reason: str


@dataclass(frozen=True)
class StudyPlan:
    study_instance_uid: str
    study_description: str | None
    joint: Joint
    joint_reason: str
    laterality: Laterality
    laterality_reason: str
    conflicts: tuple[str, ...]
    expected_planes: tuple[Plane, ...]
    choices: dict[Plane, PlaneChoice]
    excluded: tuple[str, ...]
    candidates: tuple[str, ...]  # usable stacks that were not chosen
    skip_reason: str | None

    @property
    def missing_planes(self) -> tuple[Plane, ...]:
        return tuple(p for p in self.expected_planes if p not in self.choices)

    @property
    def excluded_series(self) -> set[str]:
        return {entry.split(":", 1)[0] for entry in self.excluded}


def plan_study(study_uid: str, study_description: str | None,
               series: Sequence[tuple[SeriesFacts, Sequence[SliceRef]]], rules: AssemblyRules) -> StudyPlan:
    volumes: list[CandidateVolume] = []
    excluded: list[str] = []
    causes: list[str] = []  # the same, named as the operator sees the series: why no plane may come of it
    for facts, slices in series:
        candidates, exclusion = plan_series(facts, slices, rules.geometry)
        if exclusion is not None:
            excluded.append(f"{exclusion.series_instance_uid}: {exclusion.reason}")
            causes.append(f"{_series_name(facts)}: {exclusion.reason}")
        volumes.extend(candidates)
        excluded.extend(f"{v.series.series_instance_uid}: {v.name}: {v.problem}" for v in candidates if not v.usable)
        causes.extend(f"{v.name}: {v.problem}" for v in candidates if not v.usable)
    joint, joint_reason, joint_conflicts = joint_from(_joint_sources(study_description, series))
    skip_reason = None
    if joint is Joint.UNKNOWN:
        if rules.unknown_joint == "skip":
            skip_reason = f"joint unknown ({joint_reason}); assembly.unknown_joint is 'skip'"
        else:
            joint = Joint(rules.unknown_joint)
            joint_reason = f"{joint_reason}; configured default {joint.value} (assembly.unknown_joint)"
    laterality, laterality_reason, side_conflicts = laterality_from(_side_sources(study_description, series))
    choices, others = _choose(volumes, rules.preference)
    if skip_reason is None and not choices:
        skip_reason = "no usable plane: " + ("; ".join(causes) if causes else "no image series")
    return StudyPlan(study_uid, study_description, joint, joint_reason, laterality, laterality_reason,
                     joint_conflicts + side_conflicts, rules.expected_for(joint), choices, tuple(excluded),
                     tuple(others), skip_reason)


def _series_name(facts: SeriesFacts) -> str:
    number = facts.series_number
    return f"series {number}" if number is not None else f"series {facts.series_instance_uid}"


_JOINT_KEYWORDS = (("BodyPartExamined", "body_part_examined"), ("StudyDescription", "study_description"),
                   ("SeriesDescription", "series_description"), ("ProtocolName", "protocol_name"),
                   ("ReceiveCoilName", "receive_coil_name"))


def _joint_sources(study_description: str | None,
                   series: Sequence[tuple[SeriesFacts, Sequence[SliceRef]]]) -> list[HeaderSource]:
    """Most trusted first: BodyPartExamined, descriptions, protocol, coil."""
    sources = []
    for keyword, attribute in _JOINT_KEYWORDS:
        if attribute == "study_description":
            values = [study_description]
        else:
            values = [getattr(facts, attribute) for facts, _ in series]
        sources.extend(HeaderSource(keyword, v) for v in dict.fromkeys(values) if v)
    return sources


def _side_sources(study_description: str | None,
                  series: Sequence[tuple[SeriesFacts, Sequence[SliceRef]]]) -> list[HeaderSource]:
    sources = [HeaderSource("StudyDescription", study_description)] if study_description else []
    for facts, slices in series:
        if facts.laterality:
            sources.append(HeaderSource("Laterality", facts.laterality))
        sources.extend(HeaderSource("ImageLaterality", v) for v in {s.image_laterality for s in slices} if v)
        if facts.series_description:
            sources.append(HeaderSource("SeriesDescription", facts.series_description))
    return sources


def _choose(volumes: list[CandidateVolume],
            preference: Preference) -> tuple[dict[Plane, PlaneChoice], list[str]]:
    """Per model plane the best usable volume: preferred contrast, original, gap-free, most slices."""
    choices: dict[Plane, PlaneChoice] = {}
    others: list[str] = []
    for plane in MODEL_PLANES:
        ranked = sorted((v for v in volumes if v.usable and v.plane is plane),
                        key=lambda v: (preference.rank(v.contrast), v.slices[0].is_derived, v.has_gaps,
                                       -len(v.slices)))
        if not ranked:
            continue
        best, rest = ranked[0], ranked[1:]
        reason = preference.explain(best.contrast)
        if rest:
            reason += f"; preferred over {', '.join(f'{v.name} ({v.contrast.label})' for v in rest)}"
        choices[plane] = PlaneChoice(best, reason)
        others.extend(f"{plane.value}: {v.series.series_instance_uid} {v.name} ({v.contrast.label})" for v in rest)
    return choices, others
