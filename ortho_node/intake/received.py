"""What intake takes and gives: a received instance and who sent it, the status intake answers, and what later
stages learn of each stored instance."""

from __future__ import annotations

from dataclasses import dataclass

from ortho_node.dicom_status import Status
from ortho_node.intake.header import InstanceHeader


@dataclass(frozen=True)
class AssociationRef:
    """Who sent an instance: the association row and its peer, for rows, audit events and logs."""

    id: int | None
    calling_ae: str
    peer_host: str


@dataclass(frozen=True)
class IncomingInstance:
    encoded: bytes  # file meta + data set, as received
    header: InstanceHeader
    transfer_syntax_uid: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    association: AssociationRef


@dataclass(frozen=True)
class StoredInstance:
    """What later stages learn about each newly stored instance (after its row is committed)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    association_id: int | None


@dataclass(frozen=True)
class IntakeResult:
    status: Status
    reason: str
    duplicate: bool = False

    @property
    def newly_stored(self) -> bool:
        return self.status == Status.SUCCESS and not self.duplicate
