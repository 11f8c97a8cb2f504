"""Joint and laterality from the headers, with every source that disagrees reported as a conflict.

Sources, most trusted first: BodyPartExamined, StudyDescription, SeriesDescription, ProtocolName,
ReceiveCoilName (coil names such as "HD TR Knee PA" or "Shoulder 16" are often the only hint left after
anonymization). Laterality comes from Laterality (series), ImageLaterality (image) and description words.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ortho_node.labels import Joint


class Laterality(str, enum.Enum):
    RIGHT = "R"
    LEFT = "L"
    UNKNOWN = "U"  # absent, both sides, or conflicting sources


_JOINT_WORDS: dict[Joint, tuple[str, ...]] = {
    Joint.KNEE: ("KNEE", "KNIE", "GENOU", "GINOCCHIO", "RODILLA", "PATELLA", "MENISC"),
    Joint.ANKLE: ("ANKLE", "SPRUNGGELENK", "CHEVILLE", "CAVIGLIA", "TOBILLO", "TALUS", "ACHILL", "HINDFOOT"),
    Joint.SHOULDER: ("SHOULDER", "SHLDR", "SCHULTER", "EPAULE", "SPALLA", "HOMBRO", "ROTATOR", "GLENO"),
}
_RIGHT_WORDS = ("RIGHT", "RECHTS", "DROIT", "DROITE")
_LEFT_WORDS = ("LEFT", "LINKS", "GAUCHE")
_WORD = re.compile(r"[A-Z]+")


@dataclass(frozen=True)
class HeaderSource:
    """One header value and where it came from, e.g. ('ReceiveCoilName', 'HD TR Knee PA')."""

    keyword: str
    value: str


def joint_from(sources: Iterable[HeaderSource]) -> tuple[Joint, str, tuple[str, ...]]:
    """(joint, reason, conflicts): the first source naming a joint wins; others naming another are conflicts."""
    votes: list[tuple[Joint, HeaderSource]] = []
    for source in sources:
        words = _WORD.findall(source.value.upper())
        for joint, stems in _JOINT_WORDS.items():
            if any(word.startswith(stem) for word in words for stem in stems):
                votes.append((joint, source))
    if not votes:
        return Joint.UNKNOWN, "no header names a knee, ankle or shoulder", ()
    joint, first = votes[0]
    conflicts = tuple(sorted({f"{s.keyword} {s.value!r} suggests {j.value}" for j, s in votes if j != joint}))
    return joint, f"{first.keyword} {first.value!r}", conflicts


def laterality_from(sources: Iterable[HeaderSource]) -> tuple[Laterality, str, tuple[str, ...]]:
    """(laterality, reason, conflicts); right and left both named -> unknown, flagged as a conflict."""
    sides: dict[Laterality, list[HeaderSource]] = {Laterality.RIGHT: [], Laterality.LEFT: []}
    for source in sources:
        side = _side(source)
        if side is not None:
            sides[side].append(source)
    right, left = sides[Laterality.RIGHT], sides[Laterality.LEFT]
    if right and left:
        conflict = (f"laterality conflict: {_names(right)} say right, {_names(left)} say left",)
        return Laterality.UNKNOWN, "right and left both named", conflict
    for side, found in ((Laterality.RIGHT, right), (Laterality.LEFT, left)):
        if found:
            return side, _names(found), ()
    return Laterality.UNKNOWN, "no header names a side", ()


def _side(source: HeaderSource) -> Laterality | None:
    value = source.value.strip().upper()
    if source.keyword in ("Laterality", "ImageLaterality"):
        return {"R": Laterality.RIGHT, "L": Laterality.LEFT}.get(value)  # B (both) and U name no side
    words = set(_WORD.findall(value))
    if words & set(_RIGHT_WORDS):
        return Laterality.RIGHT
    if words & set(_LEFT_WORDS):
        return Laterality.LEFT
    return None


def _names(sources: list[HeaderSource]) -> str:
    return ", ".join(sorted({f"{s.keyword} {s.value!r}" for s in sources}))
