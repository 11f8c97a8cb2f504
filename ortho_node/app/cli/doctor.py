"""``ortho-node doctor``: every check an operator needs on a node's set-up, as one table (check, status,
detail); exit status 1 when a check fails, 0 when only warnings remain."""

from __future__ import annotations

import argparse
import enum
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from ortho_node.app.cli.context import add_node_flags, settings_of
from ortho_node.config import ConfigError, Settings

#: Seconds each destination and the listener get to answer a C-ECHO.
ECHO_TIMEOUT = 5.0
#: Our calling AE title for the listener's C-ECHO (the shell's, as ``ortho-node echo``).
DOCTOR_AE = "ORTHOSCU"


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail}


def register(sub) -> None:
    doctor = sub.add_parser("doctor", help="check configuration, database, disk, model, GPU, destinations and "
                                           "the DICOM port; exit 1 when a check fails")
    add_node_flags(doctor)
    doctor.add_argument("--json", action="store_true", help="the checks as JSON")
    doctor.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        settings = settings_of(args)
    except ConfigError as exc:
        checks = [Check("configuration", Status.FAIL, str(exc))]
    else:
        checks = run_checks(settings, source=getattr(args, "config", None))
    failed = any(c.status is Status.FAIL for c in checks)
    if args.json:
        overall = Status.FAIL if failed else Status.WARN if any(c.status is Status.WARN for c in checks) else Status.OK
        print(json.dumps({"status": overall.value, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(format_table(checks))
    return 1 if failed else 0


def run_checks(settings: Settings, *, source: str | None = None) -> list[Check]:
    """Every check, in the order an operator would fix them."""
    where = source or os.environ.get("ORTHO_NODE_CONFIG") or "defaults and environment"
    checks = [Check("configuration", Status.OK, f"valid ({where}); data folder {settings.data_dir}")]
    steps: list[Callable[[Settings], list[Check]]] = [_database, _disk, _retention, _model, _gpu, _destinations,
                                                      _listener, _warnings]
    for step in steps:
        checks.extend(step(settings))
    return checks


def format_table(checks: list[Check]) -> str:
    width = max(len("check"), *(len(c.check) for c in checks))
    lines = [f"{'check':{width}}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.check:{width}}  {c.status.value:6}  {c.detail}" for c in checks]
    return "\n".join(lines)


def _database(settings: Settings) -> list[Check]:
    from ortho_node.app.checks import (
        StartupError,
        open_node_database,
        redacted,
        sqlite_path,
    )
    from ortho_node.db.migrations import head_revision

    path = sqlite_path(settings.database_url)
    where = str(path) if path is not None else redacted(settings.database_url)
    try:
        sessions = open_node_database(settings)  # reachable, with a schema, at the head revision
    except StartupError as exc:
        return [Check("database", Status.FAIL, str(exc))]
    sessions.kw["bind"].dispose()
    return [Check("database", Status.OK, f"{where} at revision {head_revision()} (head)")]


def _disk(settings: Settings) -> list[Check]:
    folder = settings.data_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free_mb = shutil.disk_usage(folder).free // (1024 * 1024)
    minimum = settings.storage.min_free_mb
    detail = f"{free_mb} MB free at {folder}; storage.min_free_mb {minimum}"
    if free_mb < minimum:
        return [Check("disk", Status.FAIL, f"{detail}: new associations are rejected")]
    if free_mb < 2 * minimum:
        return [Check("disk", Status.WARN, f"{detail}: less than twice the minimum left")]
    return [Check("disk", Status.OK, detail)]


def _retention(settings: Settings) -> list[Check]:
    """The [retention] rules in one line, and the free space against the watermarks."""
    retention, minimum = settings.retention, settings.storage.min_free_mb
    supersede = "; superseded result files removed" if retention.supersede_results else ""
    if not retention.enabled:
        return [Check("retention", Status.OK, f"off: received instances and results are kept{supersede}")]
    periods = (f"instances {retention.instances_days or '-'} d after delivery, unanalysable "
               f"{retention.unanalysable_days or '-'} d, results {retention.results_days or '-'} d{supersede}")
    below, until = retention.purge_below_free_mb, retention.purge_until_free_mb
    if not below:
        return [Check("retention", Status.OK, f"{periods}; no watermark")]
    free_mb = shutil.disk_usage(_existing(settings.data_dir.absolute())).free // (1024 * 1024)
    detail = f"{periods}; {free_mb} MB free, watermark below {below} MB until {until} MB"
    if below <= minimum:
        return [Check("retention", Status.WARN, f"{detail}: purge_below_free_mb is not above storage.min_free_mb "
                                                f"{minimum}, so studies are refused before the watermark purges")]
    if free_mb < below:
        return [Check("retention", Status.WARN, f"{detail}: below the watermark, the purger deletes the oldest "
                                                "eligible studies (see `ortho-node purge --dry-run`)")]
    return [Check("retention", Status.OK, detail)]


def _existing(folder):
    """The folder, or its nearest existing parent (a data folder not created yet)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _model(settings: Settings) -> list[Check]:
    if not settings.model.enabled:
        return [Check("model", Status.OK, "model.enabled is false: a receive-only node")]
    from ortho_node.model.card import verify_weights
    from ortho_node.model.system import read_system_card

    folder = settings.model_path
    where = f"model.path ({folder})" if settings.model.path else f"bundled model ({folder})"
    if not folder.is_dir():
        return [Check("model", Status.FAIL, f"{where}: folder does not exist")]
    try:
        card = read_system_card(folder)
        verify_weights(folder / card.weights_file, card.weights_sha256)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # CheckpointError and bad JSON are ValueErrors
        return [Check("model", Status.FAIL, f"{where}: {exc}")]
    return [Check("model", Status.OK, f"{card.name} {card.version} at {where}: card read, weights sha256 "
                                      f"matches the card")]


def _gpu(settings: Settings) -> list[Check]:
    device = settings.model.device
    if not settings.model.enabled:
        return [Check("gpu", Status.OK, "not used (model.enabled is false)")]
    import torch

    if torch.cuda.is_available():
        return [Check("gpu", Status.OK, f"CUDA device {torch.cuda.get_device_name(0)}; model.device {device}")]
    if device == "cuda":
        return [Check("gpu", Status.FAIL, "model.device is cuda but no CUDA device is available")]
    return [Check("gpu", Status.OK, f"no CUDA device: the model runs on the CPU (model.device {device})")]


def _destinations(settings: Settings) -> list[Check]:
    from ortho_node.delivery.scu import RemoteNode, echo_peer
    from ortho_node.delivery.worker import client_ssl_context

    calling_ae = settings.delivery.calling_ae or settings.dicom.ae_title
    checks = []
    for dest in settings.destinations:
        remote = RemoteNode(dest.ae_title, dest.host, dest.port)
        label = f"{remote}{' (TLS)' if dest.tls else ''}"
        try:
            context = client_ssl_context(dest, settings.tls)
        except (OSError, ValueError) as exc:  # a CA bundle or our certificate that cannot be read
            checks.append(Check(f"destination {dest.name}", Status.FAIL, f"{label}: TLS set-up: {exc}"))
            continue
        result = echo_peer(remote, calling_ae=calling_ae, timeout=ECHO_TIMEOUT, ssl_context=context)
        if result.status == 0:
            checks.append(Check(f"destination {dest.name}", Status.OK, f"{label} answers C-ECHO from {calling_ae}"))
            continue
        why = (f"status 0x{result.status:04X}" if result.status is not None else
               f"association rejected: {result.rejection}" if result.rejection else result.reason)
        checks.append(Check(f"destination {dest.name}", Status.FAIL, f"{label}: C-ECHO from {calling_ae}: {why}"))
    return checks


def _listener(settings: Settings) -> list[Check]:
    from ortho_node.app.checks import StartupError, check_port_free
    from ortho_node.audit.status import is_loopback
    from ortho_node.delivery.scu import RemoteNode, echo_peer

    dicom = settings.dicom
    name = f"dicom port {dicom.port}"
    if dicom.port == 0:
        return [Check(name, Status.OK, "port 0: serve listens on a free port it picks")]
    try:
        check_port_free(dicom.host, dicom.port, "dicom.port")
    except StartupError:
        pass
    else:
        return [Check(name, Status.OK, f"free on {dicom.host}: no node is listening (serve can bind it)")]
    host = "127.0.0.1" if dicom.host in ("0.0.0.0", "::", "") or is_loopback(dicom.host) else dicom.host
    result = echo_peer(RemoteNode(dicom.ae_title, host, dicom.port), calling_ae=DOCTOR_AE, timeout=ECHO_TIMEOUT)
    if result.status == 0:
        return [Check(name, Status.OK, f"in use by a running node: {dicom.ae_title} answers C-ECHO")]
    if result.rejection is not None:
        return [Check(name, Status.WARN, f"in use by a DICOM node that refused {DOCTOR_AE}: {result.rejection}")]
    return [Check(name, Status.FAIL, f"in use by another program on {dicom.host} ({result.reason}): serve cannot "
                                     f"listen there (dicom.port)")]


def _warnings(settings: Settings) -> list[Check]:
    from ortho_node.audit.status import configuration_warnings

    return [Check("warning", Status.WARN, text) for text in configuration_warnings(settings)]
