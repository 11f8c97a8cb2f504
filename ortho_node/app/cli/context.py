"""What every command shares: finding the node (``--config``, ``--data-dir``), validated settings and a session
factory on the node's existing database."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.config import Settings, load_settings


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $ORTHO_NODE_CONFIG)")


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that find a node, the same on ``serve`` and on every command that reads its state."""
    add_config_flag(parser)
    parser.add_argument("--data-dir", help="data folder (storage.data_dir; default: $ORTHO_NODE_STORAGE_DATA_DIR, "
                                           "the configuration file, else ./ortho-node-data)")


def node_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted settings keys set by the node flags (None: not given, the file or environment decides)."""
    return {"storage.data_dir": getattr(args, "data_dir", None)}


def settings_of(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the file, the environment and the node flags; ``overrides`` add a command's own flags."""
    return load_settings(getattr(args, "config", None), overrides={**node_overrides(args), **overrides})


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the node's existing database; raises :class:`~ortho_node.app.checks.StartupError` (one line,
    exit 2) when there is none, creating nothing."""
    from ortho_node.app.checks import open_node_database

    return open_node_database(settings)
