"""The STOW-RS Store Instances Response (PS3.18 10.5.3) in the DICOM JSON Model (PS3.18 F.2) or, when the request
asks for it, the Native DICOM Model in XML (PS3.19 A.1); the media type chosen from the Accept header; the HTTP
status.

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
from xml.etree import ElementTree

from pydicom.datadict import keyword_for_tag

from listeners.dicomweb.stow import InstanceOutcome

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
# What each Accept media range stands for: application/json and wildcards get the default, DICOM JSON.
_ACCEPTED = {DICOM_JSON: DICOM_JSON, "application/json": DICOM_JSON, "application/*": DICOM_JSON,
             "*/*": DICOM_JSON, DICOM_XML: DICOM_XML}
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


class NotAcceptable(ValueError):
    """The Accept header names no response type the node writes (HTTP 406, before anything is stored)."""


def response_type(accept: str | None) -> str:
    """DICOM JSON or DICOM XML, whichever the Accept header ranks first (RFC 9110 quality values; DICOM JSON
    when it has no preference or no header); :class:`NotAcceptable` when it accepts neither."""
    if not accept or not accept.strip():
        return DICOM_JSON
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media_range, *parameters = (piece.strip() for piece in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        chosen = _ACCEPTED.get(media_range.lower())
        if chosen is not None and quality > 0:
            ranked.append((-quality, chosen != media_range.lower(), position, chosen))
    if not ranked:
        raise NotAcceptable(f"the response can be {DICOM_JSON} or {DICOM_XML}; Accept names neither")
    return min(ranked)[3]


def native_xml(body: dict[str, Any]) -> bytes:
    """A data set of the DICOM JSON Model as the Native DICOM Model (PS3.19 A.1): what an XML client reads."""
    root = ElementTree.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NAMESPACE)
    _add_attributes(root, body)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8",
                                                                           xml_declaration=False)


def _add_attributes(parent: ElementTree.Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        attribute = ElementTree.SubElement(parent, "DicomAttribute", tag=tag, vr=element["vr"])
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attribute.set("keyword", keyword)
        for number, value in enumerate(element.get("Value", ()), start=1):
            if element["vr"] == "SQ":
                _add_attributes(ElementTree.SubElement(attribute, "Item", number=str(number)), value)
            else:
                ElementTree.SubElement(attribute, "Value", number=str(number)).text = str(value)
