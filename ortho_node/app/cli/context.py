"""What every command shares: the ``--config`` flag, validated settings and a database session factory."""

from __future__ import annotations

import argparse

from ortho_node.config import Settings, load_settings


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $ORTHO_NODE_CONFIG)")


def settings_of(args: argparse.Namespace, **overrides) -> Settings:
    return load_settings(getattr(args, "config", None), overrides=overrides)


def session_factory(settings: Settings):
    from ortho_node.db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.database_url))
