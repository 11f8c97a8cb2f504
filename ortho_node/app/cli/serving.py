"""``ortho-node serve``, ``db upgrade`` and ``config show``: running the node and checking its set-up."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading

from ortho_node.app.checks import StartupError, check_database_reachable, preflight, redacted
from ortho_node.app.cli.context import add_node_flags, settings_of
from ortho_node.app.logs import configure_logging
from ortho_node.config import ROLES, describe

log = logging.getLogger("ortho_node")


def register(sub) -> None:
    serve = sub.add_parser("serve", help="run the DICOM node")
    add_node_flags(serve)
    serve.add_argument("--aet", help="our AE title (dicom.ae_title)")
    serve.add_argument("--host", help="listen address (dicom.host)")
    serve.add_argument("--port", type=int, help="listen port (dicom.port)")
    serve.add_argument("--destination", action="append", metavar="NAME=AE@HOST:PORT",
                       help="deliver results to this node (repeatable; adds to or replaces [[destinations]])")
    serve.add_argument("--role", choices=ROLES, help="cluster.role: receive (Storage SCP and completeness), process "
                                                     "(analysis and delivery) or all (default); receive and "
                                                     "process need PostgreSQL")
    serve.set_defaults(handler=cmd_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply Alembic migrations up to the newest schema")
    add_node_flags(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective settings")
    add_node_flags(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_config_show)


def cmd_serve(args: argparse.Namespace) -> int:
    from ortho_node.app.node import Node, load_predictor
    from ortho_node.cluster.registry import NodeIdInUse

    settings = settings_of(args, **{"dicom.ae_title": args.aet, "dicom.host": args.host, "dicom.port": args.port,
                                  "destinations": args.destination, "cluster.role": args.role})
    configure_logging(settings.logging.level, settings.logging.format)
    preflight(settings)  # ports, data folder, database: seconds, before the model and the migrations
    # Loaded once, before the Storage SCP accepts anything; every study reuses it.
    node = Node(settings, predictor=load_predictor(settings))
    node.prepare()
    try:
        node.start()
    except NodeIdInUse as exc:
        node.stop()
        raise StartupError(str(exc)) from None
    except OSError as exc:  # a port taken between the check and the bind: stop what did start, say which
        node.stop()
        raise StartupError(f"cannot listen: {exc.strerror or exc} (dicom.port / console.port / "
                           "metrics.port)") from None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    node.stop()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ortho_node.db import migrations
    from ortho_node.db.engine import make_engine

    settings = settings_of(args)
    check_database_reachable(settings)  # one line, not a traceback, for a server that does not answer
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    print(f"database at revision {migrations.current_revision(engine)}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if args.json:
        print(json.dumps(settings.to_dict(), indent=2))
        return 0
    for key, value, doc in describe(settings):
        print(f"{key} = {json.dumps(value)}    # {doc}")
    print(f"# effective database URL: {redacted(settings.database_url)}")
    return 0
