"""The STOW-RS Store Instances Response (PS3.18 10.5.3) in the DICOM JSON Model (PS3.18 F.2), and its HTTP status.

Per instance: stored ones (duplicates too, as over DIMSE) in the Referenced SOP Sequence; refused ones in the
Failed SOP Sequence with Failure Reason, the same status intake gives a C-STORE (0xA700, 0xA900, 0xC210, ...).
Retrieve URL is present and empty (Type 2): the node serves no WADO-RS, so there is no URL to retrieve from.

HTTP status: 200 when every instance was stored; 202 when some were and some failed; 409 when none was stored;
503 (with Retry-After) when none was stored and every failure is Refused: Out of Resources (A7xx: disk full,
database away), so the sender retries later instead of giving the instances up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from listeners.dicomweb.stow import InstanceOutcome

DICOM_JSON = "application/dicom+json"
RETRY_AFTER_S = 30  # what a 503 asks the sender to wait

# PS3.6 tags, as DICOM JSON keys.
_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_CLASS_UID = "00081150"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _reference(instance: InstanceOutcome) -> dict[str, Any]:
    return {_REFERENCED_SOP_CLASS_UID: _uid(instance.sop_class_uid),
            _REFERENCED_SOP_INSTANCE_UID: _uid(instance.sop_instance_uid)}


def response_body(instances: Sequence[InstanceOutcome]) -> dict[str, Any]:
    """The response data set: Retrieve URL, and the Referenced / Failed SOP Sequences that have items (Type 1C)."""
    body: dict[str, Any] = {_RETRIEVE_URL: {"vr": "UR"}}
    failed = [{**_reference(i), _FAILURE_REASON: {"vr": "US", "Value": [int(i.status)]}}
              for i in instances if not i.stored]
    stored = [{**_reference(i), _RETRIEVE_URL: {"vr": "UR"}} for i in instances if i.stored]
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    return body


def http_status(instances: Sequence[InstanceOutcome]) -> int:
    """200 all stored, 202 some failed, 409 none stored, 503 none stored for want of resources (see above)."""
    failures = [i for i in instances if not i.stored]
    if not failures:
        return 200
    if len(failures) < len(instances):
        return 202
    if all(0xA700 <= i.status <= 0xA7FF for i in failures):
        return 503
    return 409
