"""Node settings: defaults, one TOML file, ``ORTHO_NODE_<SECTION>_<KEY>`` environment overrides, CLI flags.

Precedence, lowest first: built-in defaults, the TOML file, the environment, command-line flags. Every value
is validated once, at start-up, and a bad one is reported by its dotted key (``dicom.port``) or by the
environment variable that set it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "ORTHO_NODE_"
CONFIG_ENV = "ORTHO_NODE_CONFIG"  # names the TOML file; not a setting itself

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 chars, no backslash
_CONTRAST = re.compile(r"^(PD|T1|T2|T2\*)( FS)?$")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it."""


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
    workers: int = _field(1, "Processes running associations (1: in the node's own process). Set to the number "
                             "of cores for many simultaneous senders.", min=1, max=64)
    acse_timeout: float = _field(30.0, "Seconds to wait for association messages.", min=0.1)
    dimse_timeout: float = _field(60.0, "Seconds to wait for DIMSE messages.", min=0.1)
    network_timeout: float = _field(60.0, "Seconds of network silence before an association is aborted.",
                                    min=0.1)
    max_pdu_size: int = _field(262144, "Largest P-DATA PDU we accept (bytes), announced to peers.",
                               min=4096, max=16 * 1024 * 1024)


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    enabled: bool = _field(False, "Accept DICOM TLS (TLS 1.2 or newer) instead of plain TCP.")
    certificate: str = _field("", "PEM certificate chain of this node.")
    private_key: str = _field("", "PEM private key of this node.")
    ca_certificates: str = _field("", "PEM bundle of CAs trusted to sign peer certificates.")
    require_client_certificate: bool = _field(False, "Reject peers that present no valid certificate.")


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    data_dir: str = _field("./ortho-node-data", "Folder for received instances, results and the SQLite "
                                                "database.")
    min_free_mb: int = _field(1024, "Below this much free disk space new associations are rejected as "
                                    "transient.", min=0)
    fsync: bool = _field(True, "fsync every instance before it is acknowledged (turn off only for tests "
                               "on throwaway data).")


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    url: str = _field("", "SQLAlchemy URL; empty means SQLite at <data_dir>/ortho-node.db. PostgreSQL: "
                          "postgresql+psycopg://user:pass@host/db")
    busy_timeout: float = _field(5.0, "Seconds a statement waits for a locked database before failing.",
                                 min=0.0)


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    level: str = _field("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = _field("text", "Log line format.", choices=("text", "json"))


_PLANES = ("sagittal", "coronal", "axial")
_JOINT_POLICIES = ("skip", "knee", "ankle", "shoulder")


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
    concurrency: int = _field(2, "Jobs processed at the same time (GPU stages are serialized anyway).",
                              min=1, max=64)
    max_attempts: int = _field(5, "Attempts per job before it is marked failed.", min=1)
    retry_base: float = _field(30.0, "Seconds before the first retry; doubled per attempt.", min=0.0)
    retry_cap: float = _field(3600.0, "Longest wait between retries (seconds).", min=0.0)
    poll_interval: float = _field(5.0, "Seconds between looks at the job table for work queued by other "
                                       "processes (ortho-node reprocess).", min=0.1)


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


@dataclasses.dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = _field(False, "Serve the read-only admin web console (login required).")
    host: str = _field("127.0.0.1", "Address the console listens on (put an HTTPS reverse proxy in front of it "
                                    "for access from other machines).")
    port: int = _field(8080, "TCP port of the console (0 picks a free port).", min=0, max=65535)
    users: list[str] = _field([], "Console users as 'NAME:HASH' entries; make one with `ortho-node console "
                                  "hash-password NAME` (scrypt; plaintext passwords are refused).")
    session_hours: float = _field(8.0, "Hours a login stays valid.", min=0.01, max=24 * 30)
    secure_cookie: bool = _field(False, "Mark the session cookie Secure (set it when users reach the console "
                                        "through HTTPS).")


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = _field(False, "Serve Prometheus metrics (/metrics) and the health check (/healthz).")
    host: str = _field("127.0.0.1", "Address the metrics endpoint listens on.")
    port: int = _field(9110, "TCP port of the metrics endpoint (0 picks a free port).", min=0, max=65535)


#: The model shipped with the package (``ortho-node train bundle`` writes it): used when ``model.path`` is empty.
BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled"
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


OBJECT_KINDS = ("seg", "sr", "summary")
DESTINATIONS_ENV = "ORTHO_NODE_DESTINATIONS"  # NAME=AE@HOST:PORT,...
_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class DestinationSettings:
    """One ``[[destinations]]`` table: a DICOM node that receives results by C-STORE."""

    name: str = _field("", "Name used by `ortho-node resend --to` and in the delivery queue.")
    ae_title: str = _field("", "Called AE title.", ae_title=True)
    host: str = _field("", "Host name or IP address.")
    port: int = _field(104, "TCP port.", min=1, max=65535)
    tls: bool = _field(False, "Use DICOM TLS (TLS 1.2 or newer; the [tls] certificate is presented if set).")
    ca_certificates: str = _field("", "PEM bundle trusted for this destination's certificate (empty: system).")
    kinds: list[str] = _field(list(OBJECT_KINDS), "Result objects it accepts: seg, sr, summary.")


@dataclasses.dataclass(frozen=True)
class Settings:
    dicom: DicomSettings = dataclasses.field(default_factory=DicomSettings)
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    storage: StorageSettings = dataclasses.field(default_factory=StorageSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    logging: LoggingSettings = dataclasses.field(default_factory=LoggingSettings)
    assembly: AssemblySettings = dataclasses.field(default_factory=AssemblySettings)
    scheduling: SchedulingSettings = dataclasses.field(default_factory=SchedulingSettings)

    results: ResultsSettings = dataclasses.field(default_factory=ResultsSettings)
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)
    destinations: tuple[DestinationSettings, ...] = ()
    console: ConsoleSettings = dataclasses.field(default_factory=ConsoleSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)

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
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "dicom": DicomSettings,
    "tls": TlsSettings,
    "storage": StorageSettings,
    "database": DatabaseSettings,
    "logging": LoggingSettings,
    "assembly": AssemblySettings,
    "scheduling": SchedulingSettings,
    "results": ResultsSettings,
    "delivery": DeliverySettings,
    "console": ConsoleSettings,
    "metrics": MetricsSettings,
    "model": ModelSettings,
}


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings.

    ``config_file`` falls back to ``$ORTHO_NODE_CONFIG``; ``overrides`` maps dotted keys (``dicom.port``) to
    values from command-line flags. Raises :class:`ConfigError` naming the offending key.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, tuple[Any, str]]] = {name: {} for name in SECTIONS}
    path = config_file or environ.get(CONFIG_ENV)
    if path:
        for section, key, value in _read_toml(Path(path)):
            raw[section][key] = (value, f"{section}.{key} in {path}")
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name not in (CONFIG_ENV, DESTINATIONS_ENV):
            section, key = _split_env_name(name)
            raw[section][key] = (_parse_env_value(SECTIONS[section], key, value, name), name)
    for dotted, value in (overrides or {}).items():
        if value is not None and dotted != "destinations":
            section, _, key = dotted.partition(".")
            _check_known(section, key, dotted)
            raw[section][key] = (value, f"{dotted} (command line)")
    sections = {name: _build_section(cls, raw[name]) for name, cls in SECTIONS.items()}
    destinations = load_destinations(Path(path) if path else None, environ.get(DESTINATIONS_ENV),
                                     (overrides or {}).get("destinations"))
    settings = Settings(**sections, destinations=destinations)
    _check_cross_field(settings)
    return settings


def _read_toml(path: Path) -> list[tuple[str, str, Any]]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    items = []
    for section, table in document.items():
        if section == "destinations":
            continue  # an array of tables, read by load_destinations
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}] in {path}; known: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"'{section}' in {path} must be a table ([{section}])")
        for key, value in table.items():
            _check_known(section, key, f"{section}.{key} in {path}")
            items.append((section, key, value))
    return items


def _split_env_name(name: str) -> tuple[str, str]:
    rest = name[len(ENV_PREFIX):].lower()
    section, _, key = rest.partition("_")
    _check_known(section, key, f"environment variable {name}")
    return section, key


def _check_known(section: str, key: str, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}'; known: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if key not in names:
        raise ConfigError(f"{where}: unknown setting '{section}.{key}'; known: {', '.join(names)}")


def _field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def _parse_env_value(cls: type, key: str, text: str, where: str) -> Any:
    kind = _field_type(cls, key)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if kind is int or kind is float:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
    if typing.get_origin(kind) is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _build_section(cls: type, values: dict[str, tuple[Any, str]]) -> Any:
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value, where = values[field.name]
        kwargs[field.name] = _validate(value, _field_type(cls, field.name), field.metadata, where)
    return cls(**kwargs)


def _validate(value: Any, kind: Any, checks: Mapping[str, Any], where: str) -> Any:
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


def _check_cross_field(settings: Settings) -> None:
    for entry in settings.dicom.allowed_calling_aets:
        ae, _, _host = entry.partition("@")
        if not _AE_TITLE.match(ae.strip() or "-"):
            raise ConfigError(f"dicom.allowed_calling_aets: not a valid AE title: {entry!r}")
    tls = settings.tls
    if tls.enabled:
        for key in ("certificate", "private_key"):
            if not getattr(tls, key):
                raise ConfigError(f"tls.{key}: required when tls.enabled is true")
        if tls.require_client_certificate and not tls.ca_certificates:
            raise ConfigError("tls.ca_certificates: required when tls.require_client_certificate is true")
        for key in ("certificate", "private_key", "ca_certificates"):
            value = getattr(tls, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"tls.{key}: file {value} does not exist")
    scheduling = settings.scheduling
    if scheduling.long_timeout < scheduling.quiet_period:
        raise ConfigError("scheduling.long_timeout: must be at least scheduling.quiet_period")
    if scheduling.retry_cap < scheduling.retry_base:
        raise ConfigError("scheduling.retry_cap: must be at least scheduling.retry_base")
    _check_results(settings.results)
    _check_console(settings.console)
    url = settings.database.url
    if url and not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise ConfigError(f"database.url: only sqlite and postgresql URLs are supported, got {url.split(':')[0]}")


def describe(settings: Settings) -> list[tuple[str, Any, str]]:
    """(dotted key, effective value, documentation) for every setting; used by ``config show``."""
    rows = []
    for section, cls in SECTIONS.items():
        current = getattr(settings, section)
        for field in dataclasses.fields(cls):
            rows.append((f"{section}.{field.name}", getattr(current, field.name), field.metadata["doc"]))
    for dest in settings.destinations:
        rows.append((f"destinations.{dest.name}", f"{dest.ae_title}@{dest.host}:{dest.port}",
                     f"accepts {', '.join(dest.kinds)}{'; TLS' if dest.tls else ''}"))
    return rows


def load_destinations(config_file: Path | None, env_value: str | None,
                      flags: list[str] | None) -> tuple[DestinationSettings, ...]:
    """Result destinations: ``[[destinations]]`` in the file, then ``$ORTHO_NODE_DESTINATIONS`` and
    ``--destination`` flags (``NAME=AE@HOST:PORT``, every object kind, no TLS); a later one replaces an
    earlier one of the same name."""
    merged: dict[str, DestinationSettings] = {}
    if config_file is not None:
        document = tomllib.loads(config_file.read_text(encoding="utf-8"))
        tables = document.get("destinations", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"destinations in {config_file}: expected an array of tables ([[destinations]])")
        for index, table in enumerate(tables):
            where = f"destinations[{index}] in {config_file}"
            for key in table:
                _check_known_destination_key(key, where)
            values = {key: (value, f"{where}: {key}") for key, value in table.items()}
            _add_destination(merged, _build_section(DestinationSettings, values), where)
    for where, specs in ((DESTINATIONS_ENV, (env_value or "").split(",")), ("--destination", flags or [])):
        for spec in (item.strip() for item in specs):
            if spec:
                _add_destination(merged, _parse_destination(spec, where), where)
    return tuple(merged.values())


def _check_known_destination_key(key: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(DestinationSettings)]
    if key not in names:
        raise ConfigError(f"{where}: unknown setting '{key}'; known: {', '.join(names)}")


def _parse_destination(spec: str, where: str) -> DestinationSettings:
    from ortho_node.delivery.scu import RemoteNode  # pynetdicom is imported only when destinations are given

    name, sep, address = spec.partition("=")
    try:
        if not sep:
            raise ValueError("missing NAME=")
        remote = RemoteNode.parse(address)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected NAME=AE@HOST:PORT, got {spec!r} ({exc})") from None
    return DestinationSettings(name=name.strip(), ae_title=remote.ae_title, host=remote.host, port=remote.port)


def _add_destination(merged: dict[str, DestinationSettings], dest: DestinationSettings, where: str) -> None:
    if not _DESTINATION_NAME.match(dest.name):
        raise ConfigError(f"{where}: destination name must be 1-64 letters, digits, '.', '_' or '-', got "
                          f"{dest.name!r}")
    if not _AE_TITLE.match(dest.ae_title.strip() or "-"):
        raise ConfigError(f"{where}: not a valid AE title: {dest.ae_title!r}")
    if not dest.host:
        raise ConfigError(f"{where}: host is required")
    unknown = [kind for kind in dest.kinds if kind not in OBJECT_KINDS]
    if unknown or not dest.kinds:
        raise ConfigError(f"{where}: kinds must be some of {', '.join(OBJECT_KINDS)}, got {dest.kinds!r}")
    if dest.ca_certificates and not Path(dest.ca_certificates).is_file():
        raise ConfigError(f"{where}: ca_certificates file {dest.ca_certificates} does not exist")
    merged[dest.name] = dest


def _check_results(results: ResultsSettings) -> None:
    for key in ("seg_series_description", "sr_series_description", "summary_series_description"):
        template = getattr(results, key)
        try:
            text = template.format(plane="sagittal")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"results.{key}: only the placeholder {{plane}} is allowed ({exc!r})") from None
        if not 0 < len(text) <= 64:
            raise ConfigError(f"results.{key}: must give 1-64 characters (DICOM LO), got {len(text)}")
    numbers = {results.sr_series_number, results.summary_series_number}
    if len(numbers) < 2:
        raise ConfigError("results.summary_series_number: must differ from results.sr_series_number")


def _check_console(console: ConsoleSettings) -> None:
    from listeners.console.passwords import parse_user

    names = set()
    for index, user in enumerate(console.users):
        try:
            name, _ = parse_user(user)
        except ValueError as exc:
            raise ConfigError(f"console.users[{index}]: {exc}") from None
        if name in names:
            raise ConfigError(f"console.users[{index}]: user {name!r} is listed twice")
        names.add(name)
    if console.enabled and not names:
        raise ConfigError("console.users: at least one user is required when console.enabled is true")
