"""``ortho-node nodes``: the processes sharing the node's database, their roles, versions and heartbeats; ``--forget``
removes a stopped or missed one's row."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of

if TYPE_CHECKING:
    from ortho_node.cluster.registry import NodeRegistry


def register(sub) -> None:
    nodes = sub.add_parser("nodes", help="list the node processes sharing the database (roles, heartbeats)")
    add_node_flags(nodes)
    nodes.add_argument("--json", action="store_true")
    nodes.add_argument("--forget", metavar="ID", help="remove a stopped or missed process's row (audited); a live "
                                                      "one is refused")
    nodes.add_argument("--by", help="who removes it (--forget; default: the operating-system user)")
    nodes.set_defaults(handler=cmd_nodes)


def _registry(args: argparse.Namespace) -> NodeRegistry:
    from ortho_node.clock import SystemClock
    from ortho_node.cluster.registry import NodeRegistry

    settings = settings_of(args)
    return NodeRegistry(session_factory(settings), SystemClock(), missed_heartbeats=settings.cluster.missed_heartbeats)


def cmd_nodes(args: argparse.Namespace) -> int:
    from ortho_node.cluster.registry import NodeState

    if args.forget is not None:
        return cmd_forget(args)
    nodes = _registry(args).nodes()
    if args.json:
        print(json.dumps([node.as_dict() for node in nodes], indent=2))
        return 0
    if not nodes:
        print("no node process has registered (start `ortho-node serve`)")
        return 0
    for node in nodes:
        if node.state is NodeState.MISSED:
            state = f"MISSED {node.missed_heartbeats} heartbeats: leases expired, work taken over"
        elif node.state is NodeState.STOPPED:
            state = f"stopped {node.stopped_at:%Y-%m-%d %H:%M:%S} UTC"
        else:
            state = "live"
        model = f"model {node.model_version}" if node.model_version else "no model"
        gpu = f" on {node.gpu}" if node.gpu else ""
        print(f"{node.node_id}  {node.role:7}  {node.host} (pid {node.pid})  ortho-node {node.version}  {model}{gpu}  "
              f"last heartbeat {node.last_heartbeat_at:%Y-%m-%d %H:%M:%S} UTC  {state}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """One line saying what was removed; a refusal (live, unknown, a bad ``--by``) is one ``error:`` line, exit 2."""
    from ortho_node.cluster.registry import NodeIsLive, UnknownNode
    from ortho_node.model.registry import RegistryError, who

    try:
        status = _registry(args).forget(args.forget, by=who(args.by))
    except (NodeIsLive, UnknownNode, RegistryError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"node {status.node_id} ({status.role} on {status.host}, {status.state.value}) removed from the nodes table")
    return 0
