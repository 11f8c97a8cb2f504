"""Series to candidate volumes: localizers and scouts excluded, echoes and contrasts split, slices sorted
along the normal, duplicate positions resolved, spacing checked. Header facts only; no pixel data.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ortho_node.assembly.contrast import Contrast, SequenceFacts, characterize
from ortho_node.assembly.geometry import Orientation, OrientationError
from ortho_node.assembly.slices import SeriesFacts, SliceRef
from ortho_node.labels import Plane

log = logging.getLogger(__name__)

#: Positions closer than this fraction of the slice spacing (or 0.01 mm) are the same position.
SAME_POSITION = 0.05


@dataclass(frozen=True)
class GeometryRules:
    oblique_angle: float
    min_slices: int
    spacing_tolerance: float


@dataclass(frozen=True)
class CandidateVolume:
    """One stack of slices that could feed the model: one orientation, one contrast, sorted, deduplicated."""

    series: SeriesFacts
    split: str  # what distinguishes it inside its series, e.g. "echo 5 (TE 31.6 ms)"; "" if whole series
    plane: Plane
    orientation: Orientation
    slices: tuple[SliceRef, ...]  # in slice order: increasing position along the normal
    distances: tuple[float, ...]  # position of each slice along the normal (mm)
    slice_spacing: float
    contrast: Contrast
    notes: tuple[str, ...]  # duplicates dropped, gaps, irregular spacing
    problem: str | None  # why it is not usable; None if usable

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def has_gaps(self) -> bool:
        return any("gap" in note or "irregular" in note for note in self.notes)

    @property
    def name(self) -> str:
        number = self.series.series_number
        label = f"series {number}" if number is not None else f"series {self.series.series_instance_uid}"
        return f"{label} {self.split}".strip()


@dataclass(frozen=True)
class ExcludedSeries:
    series_instance_uid: str
    reason: str


def plan_series(series: SeriesFacts, slices: Sequence[SliceRef],
                rules: GeometryRules) -> tuple[list[CandidateVolume], ExcludedSeries | None]:
    """Candidate volumes of one series, or the reason the whole series is excluded."""
    images = [s for s in slices if s.rows and s.columns]
    reason = _exclusion(series, images)
    if reason is None:
        try:
            orientations = _orientations(images)
        except OrientationError as exc:
            reason = str(exc)
        else:
            if len(orientations) > 1:
                reason = f"mixed orientations ({len(orientations)} stacks): three-plane scout or localizer"
    if reason is not None:
        log.info("series %s excluded: %s", series.series_instance_uid, reason)
        return [], ExcludedSeries(series.series_instance_uid, reason)
    orientation = orientations[0]
    groups = _split(images)
    volumes = [_volume(series, split, group, orientation, rules) for split, group in groups.items()]
    return volumes, None


def _exclusion(series: SeriesFacts, images: Sequence[SliceRef]) -> str | None:
    if series.modality not in (None, "MR"):
        return f"modality {series.modality}, not MR"
    if not images:
        return "no images"
    if any(s.is_localizer for s in images):
        return "localizer (ImageType LOCALIZER)"
    if any(s.position is None or s.pixel_spacing is None for s in images):
        return "ImagePositionPatient or PixelSpacing missing"
    return None


def _orientations(images: Sequence[SliceRef]) -> list[Orientation]:
    distinct: list[Orientation] = []
    for values in {s.orientation for s in images}:
        orientation = Orientation.from_values(values)
        if not any(orientation.same_as(known) for known in distinct):
            distinct.append(orientation)
    return distinct


def _split(images: Sequence[SliceRef]) -> dict[str, list[SliceRef]]:
    """Separate echoes and contrasts (and matrix sizes) sharing a series into their own stacks."""
    groups: dict[tuple, list[SliceRef]] = defaultdict(list)
    for s in images:
        echo = s.echo_number if s.echo_number is not None else _round(s.echo_time)
        key = (echo, _round(s.echo_time), _round(s.repetition_time), _round(s.inversion_time), s.image_type,
               s.rows, s.columns, tuple(_round(v, 3) for v in s.pixel_spacing or ()))
        groups[key].append(s)
    if len(groups) == 1:
        return {"": next(iter(groups.values()))}
    return {_describe_split(key, groups): members for key, members in sorted(groups.items(), key=_order)}


def _order(item: tuple[tuple, list[SliceRef]]):
    return tuple((v is None, v if not isinstance(v, tuple) else str(v)) for v in item[0])


def _describe_split(key: tuple, groups: dict) -> str:
    echo, te, tr, ti, image_type, rows, columns, spacing = key
    parts = []
    if len({k[0] for k in groups}) > 1 and echo is not None:
        parts.append(f"echo {echo:g}" if isinstance(echo, float) else f"echo {echo}")
    if te is not None:
        parts.append(f"TE {te:g} ms")
    if len({k[2] for k in groups}) > 1 and tr is not None:
        parts.append(f"TR {tr:g} ms")
    if len({k[3] for k in groups}) > 1 and ti is not None:
        parts.append(f"TI {ti:g} ms")
    if len({k[4] for k in groups}) > 1:
        parts.append(f"ImageType {image_type}")
    if len({k[5:] for k in groups}) > 1:
        parts.append(f"{rows}x{columns}")
    return ", ".join(parts)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _volume(series: SeriesFacts, split: str, group: list[SliceRef], orientation: Orientation,
            rules: GeometryRules) -> CandidateVolume:
    normal = orientation.normal
    distance = {id(s): float(np.dot(s.position, normal)) for s in group}
    ordered = sorted(group, key=lambda s: (distance[id(s)], s.received_order))
    nominal = _nominal_spacing(ordered, [distance[id(s)] for s in ordered])
    kept, notes = _drop_duplicates(series, ordered, distance, nominal)
    distances = [distance[id(s)] for s in kept]
    spacing, spacing_notes = _check_spacing(distances, nominal, rules.spacing_tolerance)
    notes += spacing_notes + _check_stacking(kept, orientation)
    first = kept[0]
    contrast = characterize(SequenceFacts(
        series.series_description, series.protocol_name, first.scanning_sequence, first.scan_options,
        first.echo_time, first.repetition_time, first.inversion_time, first.flip_angle, first.acquisition_contrast))
    plane = orientation.plane(rules.oblique_angle)
    problem = None
    if plane is Plane.OBLIQUE:
        problem = f"oblique: normal {orientation.obliquity():.1f} degrees from the nearest axis " \
                  f"(limit {rules.oblique_angle:g}, assembly.oblique_angle)"
    elif len(kept) < rules.min_slices:
        problem = f"{len(kept)} slices, fewer than {rules.min_slices} (assembly.min_slices)"
    return CandidateVolume(series, split, plane, orientation, tuple(kept), tuple(distances), spacing, contrast,
                           tuple(notes), problem)


def _nominal_spacing(ordered: list[SliceRef], distances: list[float]) -> float:
    steps = np.diff(distances)
    steps = steps[steps > 0.01]
    if steps.size:
        return float(np.median(steps))
    first = ordered[0]
    return float(first.spacing_between_slices or first.slice_thickness or 1.0)


def _drop_duplicates(series: SeriesFacts, ordered: list[SliceRef], distance: dict[int, float],
                     nominal: float) -> tuple[list[SliceRef], list[str]]:
    """Keep one slice per position: the higher AcquisitionNumber, then the one received last."""
    tolerance = max(0.01, SAME_POSITION * nominal)
    kept: list[SliceRef] = []
    notes: list[str] = []
    for s in ordered:
        if kept and distance[id(s)] - distance[id(kept[-1])] < tolerance:
            winner, loser = max((kept[-1], s), key=_duplicate_rank), min((kept[-1], s), key=_duplicate_rank)
            kept[-1] = winner
            note = (f"duplicate position {distance[id(s)]:.2f} mm: kept {_slice_name(winner)}, "
                    f"dropped {_slice_name(loser)} ({_why_kept(winner, loser)})")
            log.info("series %s: %s", series.series_instance_uid, note)
            notes.append(note)
        else:
            kept.append(s)
    return kept, notes


def _duplicate_rank(s: SliceRef) -> tuple[int, int]:
    return (s.acquisition_number if s.acquisition_number is not None else -1, s.received_order)


def _why_kept(winner: SliceRef, loser: SliceRef) -> str:
    if (winner.acquisition_number or -1) != (loser.acquisition_number or -1):
        return "higher AcquisitionNumber"
    return "same AcquisitionNumber, received later"


def _slice_name(s: SliceRef) -> str:
    frame = f" frame {s.frame + 1}" if s.frame is not None else ""
    return f"{s.sop_instance_uid}{frame} (AcquisitionNumber {s.acquisition_number})"


def _check_spacing(distances: list[float], nominal: float, tolerance: float) -> tuple[float, list[str]]:
    if len(distances) < 2:
        return nominal, []
    steps = np.diff(distances)
    spacing = float(np.median(steps))
    notes = []
    for index, step in enumerate(steps):
        if abs(step - spacing) <= tolerance * spacing:
            continue
        missing = round(step / spacing) - 1
        if missing >= 1 and abs(step - (missing + 1) * spacing) <= tolerance * spacing:
            notes.append(f"gap of {missing} missing slice(s) after slice {index + 1}")
        else:
            notes.append(f"irregular spacing {step:.2f} mm after slice {index + 1} (median {spacing:.2f} mm)")
    return spacing, notes


def _check_stacking(kept: list[SliceRef], orientation: Orientation) -> list[str]:
    """Slices of one volume should lie on one line along the normal (no in-plane shift between them)."""
    positions = np.array([s.position for s in kept])
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ orientation.normal, orientation.normal)
    shift = float(np.max(np.linalg.norm(in_plane, axis=1))) if len(kept) > 1 else 0.0
    pixel = min(kept[0].pixel_spacing or (1.0,))
    return [f"slices shifted in-plane by up to {shift:.1f} mm"] if shift > pixel else []
