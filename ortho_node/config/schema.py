"""The node's settings: one frozen dataclass per section, each field with its documentation and checks.

Field checks (type, range, choices, AE title, plane and contrast names) are declared in the field metadata and
applied by :func:`validate_field`; rules that relate several fields live in each section's ``check``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ortho_node.config.users import parse_user
from ortho_node.labels import MODEL_JOINTS

_ADDRESS = re.compile(r"^(?P<ae>[^@\\]{1,16})@(?P<host>\[[0-9a-fA-F:]+\]|[^:@]+):(?P<port>\d{1,5})$")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 chars, no backslash
_CONTRAST = re.compile(r"^(PD|T1|T2|T2\*)( FS)?$")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it."""


def parse_dicom_address(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` (HOST may be ``[IPv6]``) -> (AE title, host, port); raises ValueError."""
    match = _ADDRESS.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"expected AE@HOST:PORT, got {text!r}")
    return match["ae"].strip(), match["host"].strip("[]"), int(match["port"])


def usable_cores() -> int:
    """Cores this process may keep busy: its CPU affinity (a container's cpuset), else the machine's, and no more
    than its cgroup's CPU quota allows (a container's ``--cpus`` or Kubernetes CPU limit), whole cores, at least
    one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return cores if quota is None else max(1, min(cores, int(quota)))


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
                     ) -> float | None:
    """CPUs per period this process's cgroup (or the tightest of its parents) may use, from cgroup v2's
    ``cpu.max`` or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None when unlimited or unreadable."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = Path(path.lstrip("/"))
        if controllers == "" and path:  # v2: every level from the process's group up to the root may set cpu.max
            for level in (relative, *relative.parents):
                quota, _, period = _read(root / level / "cpu.max").partition(" ")
                limits.append(_ratio(quota, period))
        elif "cpu" in controllers.split(","):
            for mount in {root / controllers, root / "cpu", root / "cpu,cpuacct"}:
                limits.append(_ratio(_read(mount / relative / "cpu.cfs_quota_us"),
                                     _read(mount / relative / "cpu.cfs_period_us")))
    return min((limit for limit in limits if limit is not None), default=None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return ""


def _ratio(quota: str, period: str) -> float | None:
    """quota / period in CPUs; None for "max", -1 (v1's unlimited), a missing file or anything unreadable."""
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _field(default: Any, doc: str, **checks: Any) -> Any:
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"doc": doc, **checks})
    return dataclasses.field(default=default, metadata={"doc": doc, **checks})


@dataclasses.dataclass(frozen=True)
class DicomSettings:
    ae_title: str = _field("ORTHODIFF", "Our AE title; the called AE title of every association must match it.",
                           ae_title=True)
    host: str = _field("0.0.0.0", "Address the Storage SCP listens on.")
    port: int = _field(11112, "TCP port of the Storage SCP (0 picks a free port).", min=0, max=65535)
    allowed_calling_aets: list[str] = _field(
        [], "If not empty, only these calling AE titles are accepted; an entry 'AE@host' also requires the "
            "association to come from that host (IP address or name).")
    max_associations: int = _field(16, "Simultaneous associations; more are rejected as transient.", min=1)
    workers: int = _field(0, "Processes running associations: 1 in the node's own process, N > 1 in N processes "
                             "behind the one port (e.g. the number of cores for many simultaneous senders); 0: two "
                             "where the node may use two cores or more, else one.", min=0, max=64)
    acse_timeout: float = _field(30.0, "Seconds to wait for association messages.", min=0.1)
    dimse_timeout: float = _field(60.0, "Seconds to wait for DIMSE messages.", min=0.1)
    network_timeout: float = _field(60.0, "Seconds of network silence before an association is aborted.",
                                    min=0.1)
    max_pdu_size: int = _field(262144, "Largest P-DATA PDU we accept (bytes), announced to peers.",
                               min=4096, max=16 * 1024 * 1024)

    @property
    def receiving_processes(self) -> int:
        """``workers`` resolved: with one process, one Python interpreter serves every association; several
        senders at once are served faster by two (README, bench/ingest.py)."""
        return self.workers or (2 if usable_cores() >= 2 else 1)

    def check(self) -> None:
        for entry in self.allowed_calling_aets:
            ae, _, _host = entry.partition("@")
            if not _AE_TITLE.match(ae.strip() or "-"):
                raise ConfigError(f"dicom.allowed_calling_aets: not a valid AE title: {entry!r}")


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    enabled: bool = _field(False, "Accept DICOM TLS (TLS 1.2 or newer) instead of plain TCP.")
    certificate: str = _field("", "PEM certificate chain of this node.")
    private_key: str = _field("", "PEM private key of this node.")
    ca_certificates: str = _field("", "PEM bundle of CAs trusted to sign peer certificates.")
    require_client_certificate: bool = _field(False, "Reject peers that present no valid certificate.")

    def check(self) -> None:
        if not self.enabled:
            return
        for key in ("certificate", "private_key"):
            if not getattr(self, key):
                raise ConfigError(f"tls.{key}: required when tls.enabled is true")
        if self.require_client_certificate and not self.ca_certificates:
            raise ConfigError("tls.ca_certificates: required when tls.require_client_certificate is true")
        for key in ("certificate", "private_key", "ca_certificates"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"tls.{key}: file {value} does not exist")


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    data_dir: str = _field("./ortho-node-data", "Folder for received instances, results and the SQLite "
                                                "database.")
    min_free_mb: int = _field(1024, "Below this much free disk space new associations are rejected as "
                                    "transient.", min=0)
    fsync: bool = _field(True, "fsync every instance before it is acknowledged (turn off only for tests "
                               "on throwaway data).")


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """``[retention]``: when stored data is deleted (``ortho_node.retention``). Every period 0 and no watermark: the
    node keeps everything, as before the section existed."""

    instances_days: int = _field(0, "Days after a study's results were delivered (or built, when no destination "
                                    "was owed them) before its received instances are deleted; 0: never by "
                                    "age.", min=0, max=36500)
    unanalysable_days: int = _field(0, "Days after a study was found unanalysable (its job skipped) before its "
                                       "received instances are deleted; 0: never by age.", min=0, max=36500)
    results_days: int = _field(0, "Days a study's result objects (SEG, SR, summary) are kept after they were "
                                  "built and delivered; 0: kept for ever.", min=0, max=36500)
    purge_below_free_mb: int = _field(0, "High watermark: when free disk space in the data folder falls below "
                                         "this many MB, the instances of the oldest eligible studies are deleted "
                                         "before their time; 0: no watermark.", min=0)
    purge_until_free_mb: int = _field(0, "Low watermark: a watermark purge stops once this many MB are free; must "
                                         "be above purge_below_free_mb.", min=0)
    min_keep_hours: float = _field(24.0, "The watermark never deletes a study delivered (or found unanalysable) "
                                         "less than this many hours ago.", min=0.0)
    purge_interval: float = _field(600.0, "Seconds between purge passes of the serving node (only when a period "
                                          "or the watermark is set).", min=10.0)
    supersede_results: bool = _field(True, "Delete the result files of a study's earlier job once a newer job's "
                                           "results are written and no pending or failed delivery needs them "
                                           "(their record stays): one copy of results per study.")

    @property
    def enabled(self) -> bool:
        """Whether anything is ever deleted by age or watermark (superseded results aside)."""
        return bool(self.instances_days or self.unanalysable_days or self.results_days or self.purge_below_free_mb)

    def check(self) -> None:
        if self.purge_until_free_mb and not self.purge_below_free_mb:
            raise ConfigError("retention.purge_until_free_mb: set retention.purge_below_free_mb too (the mark "
                              "that starts a purge)")
        if self.purge_below_free_mb and self.purge_until_free_mb <= self.purge_below_free_mb:
            raise ConfigError("retention.purge_until_free_mb: must be above retention.purge_below_free_mb "
                              f"({self.purge_below_free_mb}), got {self.purge_until_free_mb}")


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = _field("", "SQLAlchemy URL; empty means SQLite at <data_dir>/ortho-node.db. PostgreSQL: "
                          "postgresql+psycopg://user:pass@host/db")
    busy_timeout: float = _field(5.0, "Seconds a statement waits for a locked database before failing.",
                                 min=0.0)

    def check(self) -> None:
        if self.url and not (self.url.startswith("sqlite") or self.url.startswith("postgresql")):
            raise ConfigError("database.url: only sqlite and postgresql URLs are supported, got "
                              f"{self.url.split(':')[0]}")


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    level: str = _field("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = _field("text", "Log line format.", choices=("text", "json"))


_PLANES = ("sagittal", "coronal", "axial")
_JOINT_POLICIES = ("skip", *(joint.value for joint in MODEL_JOINTS))


@dataclasses.dataclass(frozen=True)
class AssemblySettings:
    oblique_angle: float = _field(40.0, "Degrees between the slice normal and its nearest patient axis beyond "
                                        "which a series counts as oblique (not used as a model plane); shoulder "
                                        "coronal and sagittal planes follow the scapula, often 30-35 degrees off.",
                                  min=0.0, max=54.7)
    min_slices: int = _field(5, "Volumes with fewer slices are not usable.", min=1)
    spacing_tolerance: float = _field(0.1, "Relative deviation from the median slice spacing tolerated "
                                           "before a gap or irregular spacing is reported.", min=0.0, max=1.0)
    preferred_contrasts: list[str] = _field(
        ["PD FS", "T2 FS", "PD", "T2", "T1 FS", "T1"],
        "Input volume per plane, most wanted first: weighting (PD, T2, T1, T2*) with ' FS' for fat "
        "suppression; anything not listed comes last.", contrasts=True)
    unknown_joint: str = _field("skip", "A study whose joint cannot be told from its headers: 'skip' (the "
                                        "reason is recorded) or process it as this joint.",
                                choices=_JOINT_POLICIES)
    knee_planes: list[str] = _field(list(_PLANES), "Planes a knee study is expected to have.", planes=True)
    ankle_planes: list[str] = _field(list(_PLANES), "Planes an ankle study is expected to have.", planes=True)
    shoulder_planes: list[str] = _field(list(_PLANES), "Planes a shoulder study is expected to have.",
                                        planes=True)


@dataclasses.dataclass(frozen=True)
class SchedulingSettings:
    quiet_period: float = _field(10.0, "Seconds without new instances after which a study whose expected "
                                       "planes have arrived is ready.", min=0.0)
    long_timeout: float = _field(120.0, "Seconds without new instances after which a study with at least one "
                                        "usable plane is ready even if planes are missing.", min=0.0)
    settle_time: float = _field(2.0, "Seconds to wait once every series is complete by the sender's signals "
                                     "(ImagesInAcquisition reached, association released).", min=0.0)
    concurrency: int = _field(2, "Jobs processed at the same time: each reads its study and builds its results on "
                                 "its own thread; device passes are one at a time (model.batch_studies).",
                              min=1, max=64)
    max_attempts: int = _field(5, "Attempts per job before it is marked failed.", min=1)
    retry_base: float = _field(30.0, "Seconds before the first retry; doubled per attempt.", min=0.0)
    retry_cap: float = _field(3600.0, "Longest wait between retries (seconds).", min=0.0)
    poll_interval: float = _field(5.0, "Seconds between looks at the job table for work queued by other "
                                       "processes (ortho-node reprocess).", min=0.1)

    def check(self) -> None:
        if self.long_timeout < self.quiet_period:
            raise ConfigError("scheduling.long_timeout: must be at least scheduling.quiet_period")
        if self.retry_cap < self.retry_base:
            raise ConfigError("scheduling.retry_cap: must be at least scheduling.retry_base")


@dataclasses.dataclass(frozen=True)
class ResultsSettings:
    seg_series_number_offset: int = _field(1000, "A DICOM-SEG's series number is its source series number plus "
                                                 "this.", min=1, max=100000)
    sr_series_number: int = _field(9901, "Series number of the TID 1500 Structured Report.", min=1)
    summary_series_number: int = _field(9902, "Series number of the summary (secondary capture) series.", min=1)
    seg_series_description: str = _field("AI segmentation {plane} - not for diagnostic use",
                                         "Description of each SEG series; {plane} is the source series' plane.")
    sr_series_description: str = _field("AI findings - not for diagnostic use", "Description of the SR series.")
    summary_series_description: str = _field("AI summary - not for diagnostic use",
                                             "Description of the summary series.")
    summary: bool = _field(True, "Build the summary series (key images with overlay and a findings table).")
    manufacturer: str = _field("OrthoDiffusion Node", "Manufacturer written into every result object.")
    institution_name: str = _field("", "Institution Name written into result objects (empty: none).")
    device_serial_number: str = _field("ORTHODIFF-1", "Device Serial Number of this node in result objects.")
    build_processes: int = _field(0, "Processes that build and write the result objects (0: each job's own "
                                     "thread). Building is pure Python, about 1.4 s of CPU a study, so one thread "
                                     "caps a node near 2,500 studies an hour: a GPU node sets this near its cores.",
                                  min=0, max=64)

    def check(self) -> None:
        for key in ("seg_series_description", "sr_series_description", "summary_series_description"):
            try:
                text = getattr(self, key).format(plane="sagittal")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"results.{key}: only the placeholder {{plane}} is allowed ({exc!r})") from None
            if not 0 < len(text) <= 64:
                raise ConfigError(f"results.{key}: must give 1-64 characters (DICOM LO), got {len(text)}")
        if self.sr_series_number == self.summary_series_number:
            raise ConfigError("results.summary_series_number: must differ from results.sr_series_number")


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    retry_for_hours: float = _field(24.0, "Hours a result is retried after transient failures before it is "
                                          "flagged as undeliverable.", min=0.0)
    initial_backoff: float = _field(30.0, "Seconds before the first retry; doubled per attempt.", min=0.1)
    max_backoff: float = _field(1800.0, "Longest wait between retries (seconds).", min=0.1)
    batch_size: int = _field(200, "Objects sent per association at most.", min=1, max=10000)
    poll_interval: float = _field(5.0, "Seconds between looks at the delivery queue.", min=0.1)
    timeout: float = _field(60.0, "ACSE, DIMSE and network timeout of delivery associations (seconds).",
                            min=0.1)
    calling_ae: str = _field("", "Calling AE title for deliveries (empty: dicom.ae_title).")


def _check_https_files(section: str, cert: str, key: str) -> None:
    """An HTTPS listener's certificate chain and key: both or neither, and each an existing file."""
    if bool(cert) != bool(key):
        missing = "tls_key" if cert else "tls_cert"
        raise ConfigError(f"{section}.{missing}: required when {section}.tls_cert or {section}.tls_key is set")
    for name, value in (("tls_cert", cert), ("tls_key", key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{section}.{name}: file {value} does not exist")


@dataclasses.dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = _field(False, "Serve the admin web console and the REST API (login required).")
    host: str = _field("127.0.0.1", "Address the console listens on (for access from other machines set "
                                    "tls_cert and tls_key, or put an HTTPS reverse proxy in front of it).")
    port: int = _field(8080, "TCP port of the console (0 picks a free port).", min=0, max=65535)
    users: list[str] = _field([], "Console users as 'NAME:HASH' (a viewer: reads) or 'NAME:operator:HASH' (also "
                                  "acts: reprocess, resend, retry, pause destinations, mark studies) entries; make "
                                  "one with `ortho-node console hash-password NAME [--role operator]` (scrypt; "
                                  "plaintext passwords are refused).")
    session_hours: float = _field(8.0, "Hours a login stays valid.", min=0.01, max=24 * 30)
    secure_cookie: bool = _field(False, "Mark the session cookie Secure (set it when users reach the console "
                                        "through HTTPS; always set when the console serves TLS itself).")
    tls_cert: str = _field("", "PEM certificate chain: the console serves HTTPS (TLS 1.2 or newer) itself; "
                               "empty: plain HTTP (a reverse proxy in front does TLS).")
    tls_key: str = _field("", "PEM private key of tls_cert.")
    max_failed_logins: int = _field(5, "Failed logins for one user name in a row before it is locked out.",
                                    min=1, max=1000)
    lockout_minutes: float = _field(15.0, "Minutes a user name stays locked out after max_failed_logins.",
                                    min=0.01, max=24 * 60)
    time_zone: str = _field("UTC", "IANA time zone the console shows times in, named on each (e.g. "
                                   "'Europe/Berlin'); the API and the CSV exports answer UTC.")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def check(self) -> None:
        _check_https_files("console", self.tls_cert, self.tls_key)
        if self.time_zone != "UTC":
            try:
                zoneinfo.ZoneInfo(self.time_zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"console.time_zone: {self.time_zone!r} is not an IANA time zone "
                                  "(e.g. 'Europe/Berlin')") from None
        names = set()
        for index, entry in enumerate(self.users):
            try:
                name = parse_user(entry).name
            except ValueError as exc:
                raise ConfigError(f"console.users[{index}]: {exc}") from None
            if name in names:
                raise ConfigError(f"console.users[{index}]: user {name!r} is listed twice")
            names.add(name)
        if self.enabled and not names:
            raise ConfigError("console.users: at least one user is required when console.enabled is true")


@dataclasses.dataclass(frozen=True)
class DicomwebSettings:
    """``[dicomweb]``: the STOW-RS receiver (``POST /dicomweb/studies``, PS3.18 10.5)."""

    enabled: bool = _field(True, "Accept instances by STOW-RS at /dicomweb/studies: on the console's port (when "
                                 "console.enabled), or on a listener of its own (own_listener).")
    own_listener: bool = _field(False, "Serve STOW-RS on its own host and port (below) instead of the console's.")
    host: str = _field("127.0.0.1", "Address of the DICOMweb listener (own_listener).")
    port: int = _field(8042, "TCP port of the DICOMweb listener (own_listener; 0 picks a free port).", min=0,
                       max=65535)
    tls_cert: str = _field("", "PEM certificate chain: the DICOMweb listener serves HTTPS (TLS 1.2 or newer); "
                               "empty: plain HTTP. On the console's port the console's TLS applies.")
    tls_key: str = _field("", "PEM private key of tls_cert.")
    max_request_mb: int = _field(2048, "Largest STOW-RS request body (MiB); a larger one is refused with 413 "
                                       "before anything is stored.", min=1, max=1024 * 1024)
    workers: int = _field(0, "Processes serving the DICOMweb listener of its own (own_listener): 1 the node's own "
                             "process, N > 1 that many (e.g. the number of cores for many simultaneous STOW-RS "
                             "senders); 0: two where the node may use two cores or more, else one. On the "
                             "console's port: the node's own process.", min=0, max=64)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def serving_processes(self) -> int:
        """``workers`` resolved: one Python process serves STOW-RS on about one core whatever the number of
        senders; several at once are served faster by two (README, bench/stow.py)."""
        if not self.own_listener:
            return 1
        return self.workers or (2 if usable_cores() >= 2 else 1)

    def check(self) -> None:
        _check_https_files("dicomweb", self.tls_cert, self.tls_key)
        if self.workers > 1 and not self.own_listener:
            raise ConfigError("dicomweb.workers > 1 needs dicomweb.own_listener = true: the console's port is "
                              "served by the node's own process")


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = _field(False, "Serve Prometheus metrics (/metrics) and the health check (/healthz).")
    host: str = _field("127.0.0.1", "Address the metrics endpoint listens on.")
    port: int = _field(9110, "TCP port of the metrics endpoint (0 picks a free port).", min=0, max=65535)


#: The model shipped with the package (``ortho-node train bundle`` writes it): used when ``model.path`` is empty.
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "bundled"
_DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    enabled: bool = _field(True, "Run the model on every ready study and deliver its results; false gives a "
                                 "receive-only node (studies are stored, assembled and recorded, not analysed).")
    path: str = _field("", "Task model folder (model.safetensors + model_card.json); empty: the bundled model "
                           "(trained on synthetic data only, not for clinical use).")
    device: str = _field("auto", "Where the model runs: auto (CUDA when available, else CPU), cpu or cuda "
                                 "(start-up fails when no CUDA device is available).", choices=_DEVICES)
    threads: int = _field(0, "torch CPU threads for inference (0: torch's default, one per core).", min=0,
                          max=256)
    batch_studies: int = _field(1, "Studies that may share one device pass (their windows batched through each "
                                   "backbone; each still gets its own result): more than 1 pays on a GPU. At most "
                                   "scheduling.concurrency, the studies in work at once.", min=1, max=64)
    window_batch: int = _field(4, "Windows per backbone pass (on a GPU e.g. 16-32; on a CPU larger batches are "
                                  "no faster).", min=1, max=256)
    shadow: str = _field("", "An imported candidate model (id or NAME@VERSION, see `ortho-node model list`) run "
                             "beside the active one on every study: its results are stored under "
                             "<data>/shadow and never delivered (`ortho-node model agreement`). Empty: the one "
                             "`ortho-node model shadow` chose, if any; set, it pins the shadow model.")


ROLES = ("all", "receive", "process")
_NODE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """``[cluster]``: what this process does among several sharing one PostgreSQL database and one store."""

    role: str = _field("all", "all: one process does everything (the only role on SQLite); receive: Storage SCP, "
                              "catalog and completeness, never loads the model; process: claims ready studies, "
                              "analyses them and delivers the results (no DICOM port).", choices=ROLES)
    node_id: str = _field("", "This process's name in the nodes table and on the work it claims; empty: "
                              "<host>-<process id>. Two live processes never share one.")
    heartbeat_interval: float = _field(10.0, "Seconds between heartbeats; each renews the leases on the work "
                                             "this process holds.", min=0.1, max=3600.0)
    missed_heartbeats: int = _field(3, "Heartbeats a process may miss before it is flagged in `ortho-node "
                                       "nodes` and its leases expire (other processes take its work over).",
                                    min=1, max=100)
    forget_stopped_days: int = _field(7, "Days a cleanly stopped process stays in the nodes table; a starting "
                                         "process then removes its row (audited). 0 keeps them until `ortho-node "
                                         "nodes --forget`.", min=0, max=3650)

    def check(self) -> None:
        if self.node_id and not _NODE_ID.match(self.node_id):
            raise ConfigError(f"cluster.node_id: must be 1-64 letters, digits, '.', '_', ':' or '-', got "
                              f"{self.node_id!r}")


OBJECT_KINDS = ("seg", "sr", "summary")
_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


PROTOCOLS = ("dimse", "dicomweb")
#: A secret given as ``env:NAME`` is read from the environment variable NAME when the settings are loaded.
ENV_REFERENCE = "env:"
SECRET_FIELDS = ("password", "bearer_token")


@dataclasses.dataclass(frozen=True)
class DestinationSettings:
    """One ``[[destinations]]`` table: a node that receives results by C-STORE (``protocol = "dimse"``) or by
    STOW-RS (``protocol = "dicomweb"``)."""

    name: str = _field("", "Name used by `ortho-node resend --to` and in the delivery queue.")
    protocol: str = _field("dimse", "dimse: C-STORE to ae_title@host:port; dicomweb: STOW-RS to url.",
                           choices=PROTOCOLS)
    ae_title: str = _field("", "Called AE title (dimse).", ae_title=True)
    host: str = _field("", "Host name or IP address (dimse).")
    port: int = _field(104, "TCP port (dimse).", min=1, max=65535)
    tls: bool = _field(False, "Use DICOM TLS (dimse; TLS 1.2 or newer; the [tls] certificate is presented if set).")
    ca_certificates: str = _field("", "PEM bundle trusted for this destination's certificate (empty: system).")
    url: str = _field("", "STOW-RS base URL (dicomweb), e.g. https://pacs.example/dicom-web: results are POSTed "
                          "to <url>/studies; https:// verifies the server against ca_certificates.")
    username: str = _field("", "HTTP basic user name (dicomweb); empty: no basic authentication.")
    password: str = dataclasses.field(default="", repr=False, metadata={
        "doc": "HTTP basic password (dicomweb); 'env:NAME' reads it from the environment variable NAME."})
    bearer_token: str = dataclasses.field(default="", repr=False, metadata={
        "doc": "Bearer token sent as 'Authorization: Bearer ...' (dicomweb); 'env:NAME' reads it from the "
               "environment variable NAME."})
    client_certificate: str = _field("", "PEM certificate (chain) presented to an https:// url (dicomweb).")
    client_key: str = _field("", "PEM private key of client_certificate.")
    kinds: list[str] = _field(list(OBJECT_KINDS), "Result objects it accepts: seg, sr, summary.")

    @property
    def address(self) -> str:
        """Where it is, for logs and the delivery queue: ``AE@HOST:PORT`` or the STOW-RS URL."""
        return self.url if self.protocol == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"

    def check(self, where: str) -> None:
        if not _DESTINATION_NAME.match(self.name):
            raise ConfigError(f"{where}: destination name must be 1-64 letters, digits, '.', '_' or '-', got "
                              f"{self.name!r}")
        if self.protocol == "dicomweb":
            self._check_dicomweb(where)
        else:
            if not _AE_TITLE.match(self.ae_title.strip() or "-"):
                raise ConfigError(f"{where}: not a valid AE title: {self.ae_title!r}")
            if not self.host:
                raise ConfigError(f"{where}: host is required")
        unknown = [kind for kind in self.kinds if kind not in OBJECT_KINDS]
        if unknown or not self.kinds:
            raise ConfigError(f"{where}: kinds must be some of {', '.join(OBJECT_KINDS)}, got {self.kinds!r}")
        for key in ("ca_certificates", "client_certificate", "client_key"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"{where}: {key} file {value} does not exist")

    def _check_dicomweb(self, where: str) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigError(f"{where}: url must be an http:// or https:// STOW-RS base URL, got {self.url!r}")
        if self.bearer_token and self.username:
            raise ConfigError(f"{where}: give bearer_token or username/password, not both")
        if bool(self.client_certificate) != bool(self.client_key):
            raise ConfigError(f"{where}: client_certificate and client_key go together")
        if self.password and not self.username:
            raise ConfigError(f"{where}: password needs a username")
        for key in ("password", "bearer_token"):
            if getattr(self, key).startswith(ENV_REFERENCE):
                raise ConfigError(f"{where}: {key}: the environment variable {getattr(self, key)[4:]!r} is not set")


ACCEPT_ACTIONS = ("analyse", "ignore", "refuse")
#: Rule fields matched against the data set's header (a refusal by them answers a content status, not 0x0122).
ACCEPT_CONTENT_FIELDS = ("modalities", "body_parts", "series_descriptions", "study_descriptions")
_PATTERN_FIELDS = ("body_parts", "series_descriptions", "study_descriptions")
REGEX_PREFIX = "re:"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclasses.dataclass(frozen=True)
class AcceptRule:
    """One ``[[accept.rules]]`` table: the instances it matches get its action; the first matching rule decides.

    Conditions left empty match anything; a rule with several conditions needs all of them, a list any entry.
    Patterns are globs (``*knee*``) or, prefixed ``re:``, regular expressions (searched); both ignore case.
    """

    name: str = _field("", "Named in logs, audit events and a study's state ('ignored by accept rule NAME').")
    action: str = _field("ignore", "analyse; ignore (stored and recorded, never analysed); refuse (not stored: "
                                   "its SOP classes rejected at association negotiation, or a failure status "
                                   "that does not invite a retry).", choices=ACCEPT_ACTIONS)
    modalities: list[str] = _field([], "Modality values (CT, MR, SR, ...), any case.")
    sop_classes: list[str] = _field([], "SOP Class UIDs or their keywords (CTImageStorage).")
    body_parts: list[str] = _field([], "Body Part Examined patterns.")
    series_descriptions: list[str] = _field([], "Series Description patterns.")
    study_descriptions: list[str] = _field([], "Study Description patterns.")
    calling_aets: list[str] = _field([], "Calling AE titles of the sending association.")

    def check(self, where: str) -> None:
        if not _DESTINATION_NAME.match(self.name):
            raise ConfigError(f"{where}: rule name must be 1-64 letters, digits, '.', '_' or '-', got {self.name!r}")
        for value in self.sop_classes:
            if sop_class_uid(value) is None:
                raise ConfigError(f"{where}: sop_classes: {value!r} is neither a SOP Class UID nor the keyword "
                                  "of one (CTImageStorage)")
        for key in _PATTERN_FIELDS:
            for pattern in getattr(self, key):
                if pattern.startswith(REGEX_PREFIX):
                    try:
                        re.compile(pattern[len(REGEX_PREFIX):])
                    except re.error as exc:
                        raise ConfigError(f"{where}: {key}: {pattern!r} is not a valid regular expression "
                                          f"({exc})") from None


def sop_class_uid(value: str) -> str | None:
    """A SOP Class UID given as the UID or its keyword (``CTImageStorage``); None when it names none."""
    from pydicom import uid as uids  # imported on use: most configurations name no SOP class

    text = value.strip()
    if text.isidentifier():
        known = getattr(uids, text, None)
        return str(known) if isinstance(known, uids.UID) and known.type == "SOP Class" else None
    return text if len(text) <= 64 and _UID.match(text) else None  # private SOP classes are unknown to pydicom


@dataclasses.dataclass(frozen=True)
class AcceptSettings:
    """``[accept]``: which received instances go to analysis. Without rules everything does (as before)."""

    default: str = _field("analyse", "What happens to instances no rule matches: analyse, ignore or refuse.",
                          choices=ACCEPT_ACTIONS)
    rules: tuple[AcceptRule, ...] = dataclasses.field(default=(), metadata={
        "doc": "[[accept.rules]] tables, first match decides (configuration file only)."})

    def check(self) -> None:
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            where = f"accept.rules[{index}]"
            rule.check(where)
            if rule.name in names:
                raise ConfigError(f"{where}: rule name {rule.name!r} is used twice")
            names.add(rule.name)


@dataclasses.dataclass(frozen=True)
class Settings:
    dicom: DicomSettings = dataclasses.field(default_factory=DicomSettings)
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    storage: StorageSettings = dataclasses.field(default_factory=StorageSettings)
    retention: RetentionSettings = dataclasses.field(default_factory=RetentionSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    logging: LoggingSettings = dataclasses.field(default_factory=LoggingSettings)
    assembly: AssemblySettings = dataclasses.field(default_factory=AssemblySettings)
    scheduling: SchedulingSettings = dataclasses.field(default_factory=SchedulingSettings)

    results: ResultsSettings = dataclasses.field(default_factory=ResultsSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    destinations: tuple[DestinationSettings, ...] = ()
    console: ConsoleSettings = dataclasses.field(default_factory=ConsoleSettings)
    dicomweb: DicomwebSettings = dataclasses.field(default_factory=DicomwebSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    accept: AcceptSettings = dataclasses.field(default_factory=AcceptSettings)
    cluster: ClusterSettings = dataclasses.field(default_factory=ClusterSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def model_path(self) -> Path:
        return Path(self.model.path) if self.model.path else BUNDLED_MODEL

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'ortho-node.db'}"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting, for ``config show --json``; destination secrets shown as set or not, never themselves."""
        values = dataclasses.asdict(self)
        for dest in values["destinations"]:
            for key in SECRET_FIELDS:
                dest[key] = "(set)" if dest[key] else ""
        return values

    def check(self) -> None:
        """The rules that relate several fields of a section, section by section."""
        self.accept.check()
        for section in (self.dicom, self.tls, self.scheduling, self.results, self.console, self.dicomweb,
                        self.database, self.cluster):
            section.check()
        self.retention.check()
        if self.model.batch_studies > self.scheduling.concurrency:
            raise ConfigError(f"model.batch_studies ({self.model.batch_studies}) is above scheduling.concurrency "
                              f"({self.scheduling.concurrency}): no more studies than that are ever in work at once")
        if self.cluster.role != "all" and not self.shared_database:
            raise ConfigError(f"cluster.role: '{self.cluster.role}' needs a PostgreSQL database (database.url) "
                              "shared by every process; SQLite serves one process: role 'all'")

    @property
    def shared_database(self) -> bool:
        """Several processes may share the database (PostgreSQL): work is claimed under leases, and leases
        that expire are taken over; SQLite is one process's."""
        return self.database_url.startswith("postgresql")


SECTIONS: dict[str, type] = {
    "dicom": DicomSettings,
    "tls": TlsSettings,
    "storage": StorageSettings,
    "retention": RetentionSettings,
    "database": DatabaseSettings,
    "logging": LoggingSettings,
    "assembly": AssemblySettings,
    "scheduling": SchedulingSettings,
    "results": ResultsSettings,
    "delivery": DeliverySettings,
    "console": ConsoleSettings,
    "dicomweb": DicomwebSettings,
    "metrics": MetricsSettings,
    "model": ModelSettings,
    "accept": AcceptSettings,
    "cluster": ClusterSettings,
}



def validate_field(value: Any, kind: Any, checks: Mapping[str, Any], where: str) -> Any:
    """``value`` checked against its field's type and metadata checks; ``where`` names it in the error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typing.get_origin(kind) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    if "min" in checks and value < checks["min"]:
        raise ConfigError(f"{where}: must be at least {checks['min']}, got {value!r}")
    if "max" in checks and value > checks["max"]:
        raise ConfigError(f"{where}: must be at most {checks['max']}, got {value!r}")
    if "choices" in checks and value not in checks["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(checks['choices'])}, got {value!r}")
    if checks.get("planes"):
        for item in value:
            if item not in _PLANES:
                raise ConfigError(f"{where}: {item!r} is not a plane; expected some of {', '.join(_PLANES)}")
    if checks.get("contrasts"):
        for item in value:
            if not _CONTRAST.match(item):
                raise ConfigError(f"{where}: {item!r} is not a contrast like 'PD FS', 'T2', 'T1' or 'T2*'")
    if checks.get("ae_title") and not _AE_TITLE.match(value.strip() or "-"):
        raise ConfigError(f"{where}: not a valid AE title (1-16 characters, no backslash): {value!r}")
    return value
