"""Named DICOM status codes the node answers with (PS3.4 Annex B, PS3.7 Annex C); one place for all."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    SUCCESS = 0x0000
    #: Refused: SOP Class Not Supported (PS3.7 C.4.2): an accept rule refuses every instance of this SOP class
    #: from this sender (its presentation context is rejected at negotiation where the sender proposes it).
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Refused: Out of Resources (disk full, database unavailable): the sender should retry later.
    OUT_OF_RESOURCES = 0xA700
    #: Error: Data Set does not match SOP Class (or the request's Affected SOP Instance UID; or native Pixel Data
    #: shorter than Rows x Columns x Samples per Pixel x Bits Allocated x Number of Frames).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Error: Cannot understand - the data set could not be decoded (an element, the Pixel Data too, runs past its
    #: end).
    CANNOT_UNDERSTAND_UNDECODABLE = 0xC210
    #: Error: Cannot understand - the request's command set carries a value no C-STORE request may carry (an
    #: element of the wrong length, no data set); its Message ID is readable, so it is answered.
    CANNOT_UNDERSTAND_INVALID_COMMAND = 0xC212
    #: Error: Cannot understand - Study, Series or SOP Instance UID is missing.
    CANNOT_UNDERSTAND_MISSING_UID = 0xC220
    #: Error: Cannot understand - a UID is not a valid DICOM UID (and is never used as a file name).
    CANNOT_UNDERSTAND_INVALID_UID = 0xC221
    #: Error: Cannot understand - an accept rule refuses the instance by its content (modality, body part,
    #: description). A failure, not Refused (A7xx): re-sending the same instance gives the same answer.
    CANNOT_UNDERSTAND_NOT_ACCEPTED = 0xC230


def describe(status: int) -> str:
    """A human-readable name for any status value, ours or a peer's."""
    try:
        return Status(status).name.replace("_", " ").lower()
    except ValueError:
        pass
    if status in (0xB000, 0xB007, 0xB006):
        return "warning"
    if 0xA700 <= status <= 0xA7FF:
        return "refused: out of resources"
    if 0xA900 <= status <= 0xA9FF:
        return "error: data set does not match SOP class"
    if 0xC000 <= status <= 0xCFFF:
        return "error: cannot understand"
    return "unknown status"
