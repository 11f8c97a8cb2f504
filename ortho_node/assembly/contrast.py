"""Sequence characterization: weighting and fat suppression guessed from the headers, and the preference
that ranks candidate volumes of one plane.

Keywords in SeriesDescription / ProtocolName win over timing (they are what the technologist chose);
otherwise TE/TR/TI and ScanningSequence decide, with the usual spin-echo rules of thumb.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Weighting(str, enum.Enum):
    PD = "PD"
    T1 = "T1"
    T2 = "T2"
    T2_STAR = "T2*"
    UNKNOWN = "unknown"


#: TE (ms) each weighting is best read at; picks one echo of a multi-echo series.
_IDEAL_ECHO_TIME = {Weighting.PD: 30.0, Weighting.T2: 80.0, Weighting.T1: 12.0, Weighting.T2_STAR: 15.0}
_FAT_SUPPRESSION_WORDS = {"FS", "FATSAT", "FAT_SAT", "SPAIR", "SPIR", "STIR", "TIRM", "FSAT", "SPECIAL",
                          "WATER", "CHESS", "WE"}  # WE: water(-selective) excitation, e.g. "DESS WE"
_FAT_SUPPRESSION_OPTIONS = {"FS", "SFS", "FAT_SAT", "FSS", "SP_GEMS_FS", "FSP_GEMS", "WE"}
_WEIGHTING_WORDS = {"PD": Weighting.PD, "DP": Weighting.PD, "PDW": Weighting.PD, "INTERMEDIATE": Weighting.PD,
                    "T1": Weighting.T1, "T1W": Weighting.T1, "T2": Weighting.T2, "T2W": Weighting.T2,
                    "STIR": Weighting.T2, "TIRM": Weighting.T2, "MEDIC": Weighting.T2_STAR,
                    "T2*": Weighting.T2_STAR, "T2STAR": Weighting.T2_STAR, "MERGE": Weighting.T2_STAR,
                    # double echo steady state: a gradient echo with bright fluid and cartilage (T2/T1-like)
                    "DESS": Weighting.T2_STAR}
_TOKEN = re.compile(r"[A-Z0-9*]+")


@dataclass(frozen=True)
class SequenceFacts:
    """The header facts a guess is made from (all optional: scanners and anonymizers drop them)."""

    series_description: str | None = None
    protocol_name: str | None = None
    scanning_sequence: str | None = None
    scan_options: str | None = None
    echo_time: float | None = None
    repetition_time: float | None = None
    inversion_time: float | None = None
    flip_angle: float | None = None
    acquisition_contrast: str | None = None  # Enhanced MR (0008,9209)


@dataclass(frozen=True)
class Contrast:
    weighting: Weighting
    fat_suppressed: bool
    echo_time: float | None
    basis: str  # how it was guessed, for the chosen-series reason

    @property
    def label(self) -> str:
        return f"{self.weighting.value}{' FS' if self.fat_suppressed else ''}"


def _tokens(*texts: str | None) -> list[str]:
    return [t for text in texts if text for t in _TOKEN.findall(text.upper())]


def characterize(facts: SequenceFacts) -> Contrast:
    words = _tokens(facts.series_description, facts.protocol_name)
    options = set(_tokens(facts.scan_options))
    short_tau = (facts.inversion_time is not None and 80.0 <= facts.inversion_time <= 250.0
                 and "IR" in _tokens(facts.scanning_sequence))
    fat = bool(_FAT_SUPPRESSION_WORDS & set(words) or _FAT_SUPPRESSION_OPTIONS & options or short_tau)
    for word in words:
        if word in _WEIGHTING_WORDS:
            return Contrast(_WEIGHTING_WORDS[word], fat, facts.echo_time, f"description keyword {word}")
    if short_tau:
        return Contrast(Weighting.T2, True, facts.echo_time, f"short-tau inversion recovery (TI {facts.inversion_time:g} ms)")
    enhanced = {"PROTON_DENSITY": Weighting.PD, "T1": Weighting.T1, "T2": Weighting.T2, "T2_STAR": Weighting.T2_STAR}
    if facts.acquisition_contrast in enhanced:
        return Contrast(enhanced[facts.acquisition_contrast], fat, facts.echo_time, "AcquisitionContrast")
    return Contrast(_from_timing(facts), fat, facts.echo_time, _timing_basis(facts))


def _from_timing(facts: SequenceFacts) -> Weighting:
    te, tr = facts.echo_time, facts.repetition_time
    if te is None or tr is None:
        return Weighting.UNKNOWN
    gradient_echo = "GR" in _tokens(facts.scanning_sequence) and "SE" not in _tokens(facts.scanning_sequence)
    if gradient_echo and tr < 1000.0:
        small_flip = facts.flip_angle is None or facts.flip_angle <= 40.0
        return Weighting.T2_STAR if te >= 10.0 and small_flip else Weighting.T1
    if tr < 1000.0:
        return Weighting.T1 if te < 30.0 else Weighting.UNKNOWN
    return Weighting.T2 if te >= 60.0 else Weighting.PD


def _timing_basis(facts: SequenceFacts) -> str:
    if facts.echo_time is None or facts.repetition_time is None:
        return "no description keyword, TE or TR"
    return f"TE {facts.echo_time:g} ms, TR {facts.repetition_time:g} ms"


@dataclass(frozen=True)
class Preference:
    """Ranks contrasts: ``wanted`` holds labels like 'PD FS' most wanted first (setting
    ``assembly.preferred_contrasts``)."""

    wanted: tuple[str, ...]

    def rank(self, contrast: Contrast) -> tuple[int, float]:
        """Smaller is better: position in the wanted list, then distance of TE from the weighting's ideal."""
        label = contrast.label
        position = self.wanted.index(label) if label in self.wanted else len(self.wanted)
        ideal = _IDEAL_ECHO_TIME.get(contrast.weighting)
        distance = abs(contrast.echo_time - ideal) if ideal is not None and contrast.echo_time is not None else 1e6
        return position, distance

    def explain(self, contrast: Contrast) -> str:
        label = contrast.label
        if label in self.wanted:
            place = self.wanted.index(label) + 1
            return f"{label} ({contrast.basis}) is preference {place} of {len(self.wanted)}"
        return f"{label} ({contrast.basis}) is not in the preference list; closest available"
