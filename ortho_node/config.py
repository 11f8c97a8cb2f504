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


@dataclasses.dataclass(frozen=True)
class Settings:
    dicom: DicomSettings = dataclasses.field(default_factory=DicomSettings)
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    storage: StorageSettings = dataclasses.field(default_factory=StorageSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    logging: LoggingSettings = dataclasses.field(default_factory=LoggingSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

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
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            section, key = _split_env_name(name)
            raw[section][key] = (_parse_env_value(SECTIONS[section], key, value, name), name)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            _check_known(section, key, dotted)
            raw[section][key] = (value, f"{dotted} (command line)")
    sections = {name: _build_section(cls, raw[name]) for name, cls in SECTIONS.items()}
    settings = Settings(**sections)
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
    return rows
