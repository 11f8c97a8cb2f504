"""``ortho-node api-token create|list|revoke``: the REST API's bearer tokens (hashed at rest, scoped to a role)."""

from __future__ import annotations

import argparse
import json
import sys

from ortho_node.config.users import Role

from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of


def register(sub) -> None:
    tokens = sub.add_parser("api-token", help="REST API tokens (bearer, scoped viewer or operator)")
    tokens_sub = tokens.add_subparsers(dest="api_token_command", required=True)

    create = tokens_sub.add_parser("create", help="create a token and print it once (only its digest is stored)")
    add_node_flags(create)
    create.add_argument("name", metavar="NAME", help="who or what uses it (shown in the audit trail as token:NAME)")
    create.add_argument("--role", choices=tuple(r.value for r in Role), default="viewer",
                        help="viewer (default): GET only; operator: also the actions (POST) and STOW-RS; stow: only STOW-RS "
                             "(POST /dicomweb/studies)")
    create.set_defaults(handler=cmd_create)

    listing = tokens_sub.add_parser("list", help="every token: id, name, role, prefix, created, last used, revoked")
    add_node_flags(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    revoke = tokens_sub.add_parser("revoke", help="revoke a token for good (its next request answers 401)")
    add_node_flags(revoke)
    revoke.add_argument("token_id", metavar="ID", type=int)
    revoke.set_defaults(handler=cmd_revoke)


def cmd_create(args: argparse.Namespace) -> int:
    from ortho_node.access.tokens import create_token

    try:
        created = create_token(session_factory(settings_of(args)), args.name, Role(args.role))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    holder = created.holder
    print(f"API token {holder.token_id} ({holder.name}, {holder.role.value}); shown only now, store it safely:",
          file=sys.stderr)
    print(created.token)  # alone on stdout, for a script to capture
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ortho_node.access.tokens import list_tokens

    tokens = list_tokens(session_factory(settings_of(args)))
    if args.json:
        print(json.dumps(tokens, indent=2, default=str))
        return 0
    for t in tokens:
        used = f"{t['last_used_at']:%Y-%m-%d %H:%M} UTC" if t["last_used_at"] else "never"
        state = f"revoked {t['revoked_at']:%Y-%m-%d %H:%M} UTC" if t["revoked_at"] else "active"
        print(f"{t['id']:4d}  {t['name']:20} {t['role']:8} {t['prefix']}...  created "
              f"{t['created_at']:%Y-%m-%d %H:%M} UTC  last used {used}  {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from ortho_node.access.tokens import revoke_token

    try:
        print(revoke_token(session_factory(settings_of(args)), args.token_id))
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0
