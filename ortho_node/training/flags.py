"""Command-line flags generated from a settings dataclass: a new hyper-parameter is one field with its help.

Each field becomes ``--field-name`` with the field's type and default; :func:`param` puts the help (and
choices) in the field's metadata. Enum fields take their members' values; ``bool`` fields are switches.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

Settings = TypeVar("Settings")


def param(default: Any, help: str = "", *, choices: Sequence[str] | None = None) -> Any:  # noqa: A002 - argparse's name
    """A settings field with its default and the help (and choices) of its flag."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, settings: type, *, skip: Sequence[str] = ()) -> None:
    """One flag per field of the ``settings`` dataclass (except ``skip``), in field order."""
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if field.name in skip:
            continue
        kind, help_text = hints[field.name], field.metadata.get("help") or None
        if kind is bool:
            parser.add_argument(flag_name(field.name), action="store_true", help=help_text)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            parser.add_argument(flag_name(field.name), choices=[m.value for m in kind], default=field.default.value,
                                help=help_text)
        else:
            parser.add_argument(flag_name(field.name), type=kind, default=field.default,
                                choices=field.metadata.get("choices"), help=help_text)


def from_flags(settings: type[Settings], args: argparse.Namespace, **given: Any) -> Settings:
    """The ``settings`` dataclass from parsed flags (enum values turned back into members); ``given`` fields
    are taken as they are."""
    hints = typing.get_type_hints(settings)
    values = dict(given)
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        if field.name in values:
            continue
        value, kind = getattr(args, field.name), hints[field.name]
        values[field.name] = kind(value) if isinstance(kind, type) and issubclass(kind, enum.Enum) else value
    return settings(**values)
