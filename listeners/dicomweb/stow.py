"""STOW-RS Store Instances (PS3.18 10.5): each application/dicom part of a request handed to the same intake as a
C-STORE, and the status intake answers kept per instance for the response (``listeners.dicomweb.response``).

A part is a PS3.10 file. Its File Meta Information plays the C-STORE request's part: Media Storage SOP Class and
Instance UID are what the data set must match (as the Affected SOP Class and Instance UID of a C-STORE), its
Transfer Syntax UID says how the data set is encoded. The file is stored as received, file meta included (a part
sent without the 128-byte preamble and 'DICM' gets them).
Intake makes each instance durable (fsynced file, committed row) before the response is sent, refuses what it
would refuse over DIMSE with the same status, and audits each refusal; the request as a whole is one audit event
with its counts, as an association's end is. The instances go to intake in batches, each made durable together
(one fsync per series folder, one transaction); a batch's instances are in memory together, the body is not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.filereader import data_element_generator

from ortho_node.audit.trail import AuditKind, AuditTrail, Severity
from ortho_node.dicom_status import Status
from ortho_node.intake.header import EncodedHeader, InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance, Intake, IntakeResult
from listeners.dicomweb.multipart import DICOM_MEDIA_TYPE, BodyParts, Part

log = logging.getLogger(__name__)

_PREAMBLE = 128
_MAGIC = b"DICM"
_FILE_META_GROUP = b"\x02\x00"  # group 0002, little endian: where a file meta group without preamble opens
_MEDIA_STORAGE_SOP_CLASS, _MEDIA_STORAGE_SOP_INSTANCE, _TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010
#: A batch of a request's instances ends at this many instances or bytes, whichever comes first.
BATCH_INSTANCES = 64
BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Sender:
    """Who sent a STOW-RS request: the user or token name (standing in for a calling AE title: cut to 16
    characters in the catalog and in accept rules' ``calling_aets``), how it signed in, and its address."""

    name: str
    via: str  # "token" or "basic"
    peer_host: str

    @property
    def ref(self) -> AssociationRef:
        return AssociationRef(None, self.name.removeprefix("token:")[:16], self.peer_host)


@dataclass(frozen=True)
class InstanceOutcome:
    """What became of one part: the UIDs it named (None when unreadable) and intake's status."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: Status
    reason: str
    duplicate: bool = False

    @property
    def stored(self) -> bool:
        return self.status == Status.SUCCESS


@dataclass
class StoreReport:
    """The request's instances in order, and its byte count (the sum of the stored parts)."""

    instances: list[InstanceOutcome] = field(default_factory=list)
    bytes_stored: int = 0

    @property
    def stored(self) -> int:
        return sum(i.stored and not i.duplicate for i in self.instances)

    @property
    def duplicates(self) -> int:
        return sum(i.duplicate for i in self.instances)

    @property
    def failed(self) -> int:
        return sum(not i.stored for i in self.instances)


@dataclass(frozen=True)
class FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int  # where the data set begins, after the file meta group


class NotPart10(ValueError):
    """A part that is not a PS3.10 file with the file meta elements a stored instance needs."""


def as_part10(content: bytes) -> bytes:
    """``content`` as a PS3.10 file: unchanged when it is one; with the preamble and 'DICM' put in front when it
    opens with the File Meta group itself (dicomweb-client sends parts so), since every reader of the stored file
    expects them; anything else is refused."""
    if content[_PREAMBLE:_PREAMBLE + 4] == _MAGIC:
        return content
    if content[:2] == _FILE_META_GROUP:
        return bytes(_PREAMBLE) + _MAGIC + content
    raise NotPart10("not a DICOM PS3.10 file (no 'DICM' after the preamble, no file meta information)")


def read_file_meta(content: bytes) -> FileMeta:
    """The File Meta Information of a PS3.10 file (PS3.10 7.1; always Explicit VR Little Endian); raises
    :class:`NotPart10` naming what is missing, never a value."""
    if content[_PREAMBLE:_PREAMBLE + 4] != _MAGIC:
        raise NotPart10("not a DICOM PS3.10 file (no 'DICM' after the preamble)")
    stream = BytesIO(content)
    stream.seek(_PREAMBLE + 4)
    try:
        elements = {int(element.tag): element.value for element in data_element_generator(
            stream, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 0x0002)}
    except Exception as exc:  # noqa: BLE001 - pydicom signals a corrupt element with many exception types
        raise NotPart10(f"file meta information cannot be read ({type(exc).__name__})") from None
    values = []
    for tag, name in ((_MEDIA_STORAGE_SOP_CLASS, "Media Storage SOP Class UID"),
                      (_MEDIA_STORAGE_SOP_INSTANCE, "Media Storage SOP Instance UID"),
                      (_TRANSFER_SYNTAX, "Transfer Syntax UID")):
        raw = elements.get(tag)
        text = raw.decode("ascii", "replace").rstrip("\0 ") if isinstance(raw, bytes) else ""
        if not text:
            raise NotPart10(f"file meta information without {name}")
        values.append(text)
    return FileMeta(*values, dataset_offset=stream.tell())


class StowReceiver:
    """Stores the instances of STOW-RS requests through intake and audits each request."""

    def __init__(self, intake: Intake, audit: AuditTrail) -> None:
        self.intake = intake
        self._audit = audit

    def store(self, body: BodyParts, parts: Sequence[Part], sender: Sender, *,
              study_instance_uid: str | None = None) -> StoreReport:
        """Each part through intake, in batches, its outcome in the parts' order; ``study_instance_uid``: the
        request's target study (``/studies/{StudyInstanceUID}``), which every instance must belong to."""
        outcomes: list[InstanceOutcome | None] = []
        batch: dict[int, IncomingInstance] = {}  # position among the outcomes -> instance read from its part
        batch_bytes = stored_bytes = 0
        for part in parts:
            prepared = self._prepare(body, part, sender, study_instance_uid)
            if isinstance(prepared, InstanceOutcome):
                outcomes.append(prepared)
                continue
            batch[len(outcomes)] = prepared
            outcomes.append(None)
            batch_bytes += len(prepared.encoded)
            if len(batch) >= BATCH_INSTANCES or batch_bytes >= BATCH_BYTES:
                stored_bytes += self._store_batch(batch, outcomes, sender)
                batch, batch_bytes = {}, 0
        stored_bytes += self._store_batch(batch, outcomes, sender)
        report = StoreReport([outcome for outcome in outcomes if outcome is not None], stored_bytes)
        if len(report.instances) != len(outcomes):  # an error, not an assert: no part may go unanswered
            raise RuntimeError("a STOW-RS part left without an outcome")
        self._record(report, sender)
        return report

    def _prepare(self, body: BodyParts, part: Part, sender: Sender,
                 target_study: str | None) -> InstanceOutcome | IncomingInstance:
        """The part as an instance for intake, or its outcome when refused before intake's own checks."""
        ref = sender.ref
        if part.content_type not in (DICOM_MEDIA_TYPE, ""):  # a part without Content-Type: the root type
            refused = self.intake.refuse_undecodable(ref, "", f"a part of type {part.content_type[:64]}, not "
                                                              f"{DICOM_MEDIA_TYPE}")
            return _outcome(None, None, refused)
        try:
            content = as_part10(body.content(part))
            meta = read_file_meta(content)
        except NotPart10 as exc:
            return _outcome(None, None, self.intake.refuse_undecodable(ref, "", str(exc)))
        incoming = self._incoming(content, meta, ref)
        if isinstance(incoming, IntakeResult):
            return _outcome(meta.sop_class_uid, meta.sop_instance_uid, incoming)
        if target_study is not None and incoming.header.study_uid != target_study:
            refused = self.intake.refuse_instance(incoming, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                                  "StudyInstanceUID differs from the STOW-RS request's study")
            return _outcome(meta.sop_class_uid, meta.sop_instance_uid, refused)
        return incoming

    def _store_batch(self, batch: dict[int, IncomingInstance], outcomes: list[InstanceOutcome | None],
                 sender: Sender) -> int:
        """The batch through intake, its outcomes put in their places; returns the bytes newly stored."""
        if not batch:
            return 0
        try:
            results = self.intake.receive_many(list(batch.values()))
        except Exception:  # noqa: BLE001 - a bug must not be acknowledged as success; the sender retries
            log.exception("unexpected failure storing %d STOW-RS instances from %s; answered 0xA700", len(batch),
                          sender.name)
            results = [IntakeResult(Status.OUT_OF_RESOURCES, "internal error")] * len(batch)
        stored = 0
        for (position, incoming), result in zip(batch.items(), results, strict=True):
            outcomes[position] = _outcome(incoming.affected_sop_class_uid, incoming.affected_sop_instance_uid, result)
            if result.newly_stored:
                stored += len(incoming.encoded)
        return stored

    def _incoming(self, content: bytes, meta: FileMeta, ref: AssociationRef) -> IncomingInstance | IntakeResult:
        try:
            header = InstanceHeader.from_dataset(EncodedHeader(content[meta.dataset_offset:],
                                                               meta.transfer_syntax_uid))
        except Exception as exc:  # noqa: BLE001 - pydicom signals corrupt data with many exception types
            return self.intake.refuse_undecodable(ref, meta.sop_instance_uid, type(exc).__name__)
        return IncomingInstance(encoded=content, header=header, transfer_syntax_uid=meta.transfer_syntax_uid,
                                affected_sop_class_uid=meta.sop_class_uid,
                                affected_sop_instance_uid=meta.sop_instance_uid, association=ref)

    def _record(self, report: StoreReport, sender: Sender) -> None:
        statuses: dict[str, int] = {}
        for instance in report.instances:
            key = f"0x{int(instance.status):04X}"
            statuses[key] = statuses.get(key, 0) + 1
        summary = (f"STOW-RS request from {sender.name}: {report.stored} stored, {report.duplicates} duplicates, "
                   f"{report.failed} failed")
        log.info("%s (from %s)", summary, sender.peer_host)
        self._audit.record(AuditKind.STOW_REQUEST, summary,
                           severity=Severity.INFO if report.failed == 0 else Severity.WARNING,
                           calling_ae=sender.ref.calling_ae, peer_host=sender.peer_host,
                           details={"user": sender.name, "via": sender.via, "statuses": statuses,
                                    "instances": len(report.instances), "bytes": report.bytes_stored})


def _outcome(sop_class: str | None, sop_instance: str | None, result: IntakeResult) -> InstanceOutcome:
    return InstanceOutcome(sop_class, sop_instance, result.status, result.reason, result.duplicate)
