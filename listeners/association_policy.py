"""Association policy: which association requests the node accepts, and the standard reason when not.

Rejections use the A-ASSOCIATE-RJ result/source/reason values of PS3.8 section 9.3.4.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03


class Rejection(enum.Enum):
    """(result, source, reason) triples and a readable text."""

    CALLED_AE_NOT_RECOGNIZED = (PERMANENT, SERVICE_USER, 0x07, "called AE title not recognized")
    CALLING_AE_NOT_RECOGNIZED = (PERMANENT, SERVICE_USER, 0x03, "calling AE title not recognized")
    PEER_HOST_NOT_ALLOWED = (PERMANENT, SERVICE_USER, 0x03,
                             "calling AE title not allowed from this host")
    TOO_MANY_ASSOCIATIONS = (TRANSIENT, SERVICE_PROVIDER_PRESENTATION, 0x02,
                             "local limit exceeded: too many associations")
    LOW_DISK_SPACE = (TRANSIENT, SERVICE_PROVIDER_PRESENTATION, 0x01,
                      "temporary congestion: free disk space below the watermark")

    @property
    def result(self) -> int:
        return self.value[0]

    @property
    def source(self) -> int:
        return self.value[1]

    @property
    def reason(self) -> int:
        return self.value[2]

    @property
    def text(self) -> str:
        return self.value[3]


@dataclass(frozen=True)
class AllowedPeer:
    ae_title: str
    hosts: frozenset[str]  # resolved IP addresses; empty = any host

    @classmethod
    def parse(cls, entry: str) -> AllowedPeer:
        ae_title, _, host = entry.partition("@")
        return cls(ae_title.strip(), _resolve(host.strip()) if host.strip() else frozenset())


def _resolve(host: str) -> frozenset[str]:
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, None))
    except socket.gaierror as exc:
        raise ValueError(f"host {host!r} in dicom.allowed_calling_aets cannot be resolved: {exc}") from None


@dataclass(frozen=True)
class AssociationRequest:
    called_ae: str
    calling_ae: str
    peer_host: str
    active_associations: int  # including this one


class AssociationPolicy:
    """Decides on association requests; returns ``None`` to accept or the :class:`Rejection`."""

    def __init__(self, ae_title: str, *, allowed: Sequence[str], max_associations: int,
                 min_free_bytes: int, free_bytes: Callable[[], int]) -> None:
        self.ae_title = ae_title.strip()
        self.allowed = [AllowedPeer.parse(entry) for entry in allowed]
        self.max_associations = max_associations
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes

    def evaluate(self, request: AssociationRequest) -> Rejection | None:
        if request.called_ae.strip() != self.ae_title:
            return Rejection.CALLED_AE_NOT_RECOGNIZED
        if self.allowed:
            matches = [p for p in self.allowed if p.ae_title == request.calling_ae.strip()]
            if not matches:
                return Rejection.CALLING_AE_NOT_RECOGNIZED
            if not any(not p.hosts or _normalise(request.peer_host) in p.hosts for p in matches):
                return Rejection.PEER_HOST_NOT_ALLOWED
        if request.active_associations > self.max_associations:
            return Rejection.TOO_MANY_ASSOCIATIONS
        if self._free_bytes() < self.min_free_bytes:
            return Rejection.LOW_DISK_SPACE
        return None


def _normalise(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)
