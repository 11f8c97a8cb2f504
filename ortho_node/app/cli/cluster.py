"""``ortho-node nodes``: the processes sharing the node's database, their roles, versions and heartbeats."""

from __future__ import annotations

import argparse
import json

from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of


def register(sub) -> None:
    nodes = sub.add_parser("nodes", help="list the node processes sharing the database (roles, heartbeats)")
    add_node_flags(nodes)
    nodes.add_argument("--json", action="store_true")
    nodes.set_defaults(handler=cmd_nodes)


def cmd_nodes(args: argparse.Namespace) -> int:
    from ortho_node.clock import SystemClock
    from ortho_node.cluster.registry import NodeRegistry, NodeState

    settings = settings_of(args)
    registry = NodeRegistry(session_factory(settings), SystemClock(),
                            missed_heartbeats=settings.cluster.missed_heartbeats)
    nodes = registry.nodes()
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
