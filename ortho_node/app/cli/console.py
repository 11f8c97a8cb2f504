"""``ortho-node console hash-password``: a ``console.users`` entry (with its role) for a password typed at a
prompt."""

from __future__ import annotations

import argparse
import sys

from ortho_node.config.users import Role


def register(sub) -> None:
    console = sub.add_parser("console", help="admin web console")
    console_sub = console.add_subparsers(dest="console_command", required=True)
    hash_password = console_sub.add_parser(
        "hash-password", help="print a console.users entry NAME:HASH for a password read from stdin or a prompt")
    hash_password.add_argument("user", metavar="NAME")
    hash_password.add_argument("--role", choices=tuple(r.value for r in Role), default="viewer",
                               help="viewer (default): reads; operator: also reprocesses, resends, retries, pauses "
                                    "destinations, marks studies and sends by STOW-RS; stow: only sends by STOW-RS "
                                    "(HTTP basic; no console login)")
    hash_password.set_defaults(handler=cmd_console_hash_password)


def cmd_console_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from listeners.console.passwords import hash_password
    from ortho_node.config.users import valid_user_name

    if not valid_user_name(args.user):
        print("error: user names are 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("error: the password must have at least 8 characters", file=sys.stderr)
        return 2
    role = "" if args.role == "viewer" else f"{args.role}:"  # an entry without a role is a viewer
    print(f"{args.user}:{role}{hash_password(password)}")
    return 0
