"""Where settings come from: built-in defaults, one TOML file, ``ORTHO_NODE_<SECTION>_<KEY>`` environment
variables and command-line flags, in that order of precedence (lowest first).

Every value is validated once, at start-up (:mod:`ortho_node.config.schema`), and a bad one is reported by its
dotted key (``dicom.port``) or by the environment variable that set it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ortho_node.config.schema import (ENV_REFERENCE, SECTIONS, AcceptRule, ConfigError, DestinationSettings,
                                      Settings, parse_dicom_address, validate_field)

ENV_PREFIX = "ORTHO_NODE_"
CONFIG_ENV = "ORTHO_NODE_CONFIG"  # names the TOML file; not a setting itself
DESTINATIONS_ENV = "ORTHO_NODE_DESTINATIONS"  # NAME=AE@HOST:PORT,...
#: Settings that are arrays of tables: read from the configuration file only.
_FILE_ONLY = {("accept", "rules")}


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
    sections["accept"] = dataclasses.replace(sections["accept"], rules=load_accept_rules(Path(path) if path else None))
    destinations = load_destinations(Path(path) if path else None, environ.get(DESTINATIONS_ENV),
                                     (overrides or {}).get("destinations"), environ=environ)
    settings = Settings(**sections, destinations=destinations)
    settings.check()
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
            if (section, key) in _FILE_ONLY:
                continue  # an array of tables, read by its own loader (load_accept_rules)
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
    if (section, key) in _FILE_ONLY:
        raise ConfigError(f"{where}: {section}.{key} can be set only in the configuration file "
                          f"([[{section}.{key}]] tables)")


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
        kwargs[field.name] = validate_field(value, _field_type(cls, field.name), field.metadata, where)
    return cls(**kwargs)




def describe(settings: Settings) -> list[tuple[str, Any, str]]:
    """(dotted key, effective value, documentation) for every setting; used by ``config show``."""
    rows = []
    for section, cls in SECTIONS.items():
        current = getattr(settings, section)
        for field in dataclasses.fields(cls):
            if (section, field.name) not in _FILE_ONLY:
                rows.append((f"{section}.{field.name}", getattr(current, field.name), field.metadata["doc"]))
    for rule in settings.accept.rules:
        rows.append((f"accept.rules.{rule.name}", rule.action, describe_rule(rule)))
    for dest in settings.destinations:
        secured = "; TLS" if dest.tls or dest.url.startswith("https:") else ""
        rows.append((f"destinations.{dest.name}", dest.address,
                     f"{dest.protocol}, accepts {', '.join(dest.kinds)}{secured}"))
    return rows

def load_destinations(config_file: Path | None, env_value: str | None,
                      flags: list[str] | None, *, environ: Mapping[str, str] | None = None
                      ) -> tuple[DestinationSettings, ...]:
    """Result destinations: ``[[destinations]]`` in the file, then ``$ORTHO_NODE_DESTINATIONS`` and
    ``--destination`` flags (``NAME=AE@HOST:PORT``, every object kind, no TLS); a later one replaces an
    earlier one of the same name. A DICOMweb destination's ``password`` or ``bearer_token`` given as ``env:NAME``
    is read from ``environ`` (default: the process's environment), so the secret stays out of the file."""
    environ = os.environ if environ is None else environ
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
            _add_destination(merged, _resolve_secrets(_build_section(DestinationSettings, values), environ), where)
    for where, specs in ((DESTINATIONS_ENV, (env_value or "").split(",")), ("--destination", flags or [])):
        for spec in (item.strip() for item in specs):
            if spec:
                _add_destination(merged, _parse_destination(spec, where), where)
    return tuple(merged.values())


def _resolve_secrets(dest: DestinationSettings, environ: Mapping[str, str]) -> DestinationSettings:
    """``env:NAME`` secrets replaced by the variable's value; an unset one stays as it is, and the destination's
    check names it."""
    resolved = {}
    for key in ("password", "bearer_token"):
        value = getattr(dest, key)
        if value.startswith(ENV_REFERENCE) and environ.get(value[len(ENV_REFERENCE):]):
            resolved[key] = environ[value[len(ENV_REFERENCE):]]
    return dataclasses.replace(dest, **resolved) if resolved else dest


def _check_known_destination_key(key: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(DestinationSettings)]
    if key not in names:
        raise ConfigError(f"{where}: unknown setting '{key}'; known: {', '.join(names)}")


def _parse_destination(spec: str, where: str) -> DestinationSettings:
    name, sep, address = spec.partition("=")
    try:
        if not sep:
            raise ValueError("missing NAME=")
        ae_title, host, port = parse_dicom_address(address)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected NAME=AE@HOST:PORT, got {spec!r} ({exc})") from None
    return DestinationSettings(name=name.strip(), ae_title=ae_title, host=host, port=port)


def _add_destination(merged: dict[str, DestinationSettings], dest: DestinationSettings, where: str) -> None:
    dest.check(where)
    merged[dest.name] = dest


def load_accept_rules(config_file: Path | None) -> tuple[AcceptRule, ...]:
    """``[[accept.rules]]`` tables of the configuration file, in order (the first match decides)."""
    if config_file is None:
        return ()
    accept = tomllib.loads(config_file.read_text(encoding="utf-8")).get("accept", {})
    tables = accept.get("rules", []) if isinstance(accept, dict) else []
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"accept.rules in {config_file}: expected an array of tables ([[accept.rules]])")
    names = [f.name for f in dataclasses.fields(AcceptRule)]
    rules = []
    for index, table in enumerate(tables):
        where = f"accept.rules[{index}] in {config_file}"
        for key in table:
            if key not in names:
                raise ConfigError(f"{where}: unknown setting '{key}'; known: {', '.join(names)}")
        rule = _build_section(AcceptRule, {key: (value, f"{where}: {key}") for key, value in table.items()})
        rule.check(where)
        rules.append(rule)
    return tuple(rules)


def describe_rule(rule: AcceptRule) -> str:
    """A rule's conditions in one line (``modalities CT; calling_aets PACS``), for ``config show``."""
    conditions = [f"{f.name} {', '.join(getattr(rule, f.name))}" for f in dataclasses.fields(AcceptRule)
                  if isinstance(getattr(rule, f.name), list) and getattr(rule, f.name)]
    return "; ".join(conditions) or "every instance"
