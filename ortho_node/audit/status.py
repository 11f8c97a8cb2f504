"""Facts about the node's set-up that an operator should know: read by ``serve`` at start-up, ``/healthz``,
and the console, so that all of them say the same thing."""

from __future__ import annotations

import ipaddress

from ortho_node.config import Settings

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for a loopback address or name; a host name that is not localhost counts as reachable from outside."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def configuration_warnings(settings: Settings) -> list[str]:
    """Set-ups that work but are probably not what a department wants; each a one-line warning."""
    warnings: list[str] = []
    role = settings.cluster.role  # a receiver delivers nothing, a processor listens on no DICOM port
    if settings.model.enabled and not settings.destinations and role != "receive":
        warnings.append("no destination configured: studies are analysed but their results are delivered "
                        "nowhere (add [[destinations]] or --destination)")
    dicom = settings.dicom
    if not dicom.allowed_calling_aets and not is_loopback(dicom.host) and role != "process":
        warnings.append(f"any calling AE title is accepted on {dicom.host}:{dicom.port} (dicom.allowed_calling_aets "
                        "is empty and dicom.host is not a loopback address)")
    console = settings.console
    if console.enabled and not is_loopback(console.host):
        warnings.append(f"the admin console listens on {console.host}:{console.port}, not a loopback address: "
                        "serve it through an HTTPS reverse proxy and set console.host to 127.0.0.1")
    return warnings
